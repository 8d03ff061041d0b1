//! Two real `billing serve` processes on one PostgreSQL database, racing:
//! clients ingest through both with overlapping call ids while both
//! schedulers and explicit `RunBillingCycle`/`GenerateInvoice` calls issue
//! the same ended month, and one replica is killed with SIGKILL and
//! restarted midway. Afterwards every guarantee is checked from outside.
//! Two replicas' delivery workers share one outbox and deliver each
//! invoice exactly once; a server killed mid-delivery delivers it again
//! after its restart, once the dead worker's lease lapses.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use billing::grpc::pb::call_service_client::CallServiceClient;
use billing::grpc::pb::customer_service_client::CustomerServiceClient;
use billing::grpc::pb::invoice_service_client::InvoiceServiceClient;
use billing::grpc::pb::{self, PlanKind};
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::helpers::{fresh_database, history_of, on_postgres, ts};
use crate::invoices::period;
use crate::process::{Process, billing};

/// Customers, all created in June 2026.
const CUSTOMERS: usize = 12;
/// Call ids sent by AddCall to both replicas in June.
const JUNE_CALLS: usize = 240;
/// Call ids each AddCall client still sends after June is invoiced.
const CALLS_AFTER_ISSUING: usize = 20;
/// AddCall clients per replica.
const UNARY_CLIENTS: usize = 3;
/// IngestCalls streams per replica, each sent to both.
const STREAMS: usize = 2;
/// Records per stream.
const STREAM_RECORDS: usize = 400;
/// AddCalls replica B acknowledges in July before it is killed.
const KILL_AFTER: usize = 60;
/// How long one operation is retried while a replica is down.
const RETRY_FOR: Duration = Duration::from_secs(60);
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// A lazily connecting channel: after a replica restarts on the same port,
/// the next request reconnects.
fn channel(addr: &str) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect_timeout(Duration::from_secs(5))
        .connect_lazy()
}

/// Runs `op` until it succeeds, for at most [`RETRY_FOR`], as a client of
/// a replica that may be down does. Only the statuses of a server that is
/// unreachable or died mid-request are retried. Returns the result and
/// whether any attempt failed (its outcome is then unknown to the client).
async fn retry<T, F, Fut>(op: F) -> (T, bool)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    retry_also(op, |_| false).await
}

/// Issues June, retrying also while June has not closed on the replica's
/// clock.
async fn issue_june<T, F, Fut>(op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    retry_also(op, |status| {
        status.code() == Code::FailedPrecondition && status.message().contains("has not closed")
    })
    .await
    .0
}

/// [`retry`], also retrying the statuses `also` accepts.
async fn retry_also<T, F, Fut>(mut op: F, also: impl Fn(&Status) -> bool) -> (T, bool)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let deadline = tokio::time::Instant::now() + RETRY_FOR;
    let mut failed = false;
    loop {
        match op().await {
            Ok(value) => return (value, failed),
            Err(status) => {
                assert!(
                    matches!(
                        status.code(),
                        Code::Unavailable | Code::Unknown | Code::Cancelled
                    ) || also(&status),
                    "not a transient failure: {status:?}"
                );
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no answer for {RETRY_FOR:?}: {status:?}"
                );
                failed = true;
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
}

/// A call record: customer, start (June 1st to 19th, before the first
/// phase's clock) and duration derived from `n`.
fn record(call_id: String, customers: &[i64], n: usize) -> pb::AddCallRequest {
    let day = 1 + n % 19;
    let hour = n % 24;
    pb::AddCallRequest {
        customer_id: customers[n % customers.len()],
        call_id,
        started_at: Some(ts(&format!("2026-06-{day:02}T{hour:02}:15:00Z"))),
        duration: Some(pb::add_call_request::Duration::DurationSeconds(
            1 + i64::try_from(n % 600).unwrap(),
        )),
        ..Default::default()
    }
}

/// Starts `billing serve` on `port` (0: any) with the service clock
/// starting at `clock`, authentication off, the scheduler on.
fn start_replica(url: &str, port: u16, clock: &str) -> Process {
    let listen = format!("127.0.0.1:{port}");
    billing(
        &[
            "serve",
            "--listen",
            &listen,
            "--no-auth",
            "--clock-start",
            clock,
            "--database-max-connections",
            "8",
            "--shutdown-grace-seconds",
            "1",
            "--invoice-grace-period",
            "0s",
        ],
        url,
    )
}

/// [`start_replica`], once it listens, with its address.
fn replica(url: &str, port: u16, clock: &str) -> (Process, String) {
    let server = start_replica(url, port, clock);
    let addr = server.serving_addr();
    (server, addr)
}

/// Stops a replica: SIGTERM and a wait, off the runtime.
async fn stop(mut process: Process) {
    let pid = process.child.id().to_string();
    let status = tokio::task::spawn_blocking(move || {
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill runs");
        process.child.wait()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(status.success(), "{status:?}");
}

/// What the AddCall clients saw for one call id.
#[derive(Debug, Default, Clone)]
struct UnaryOutcome {
    /// `duplicate` of each acknowledgement (one per replica).
    acks: Vec<bool>,
    /// Whether some attempt failed (and may have stored the call unseen).
    uncertain: bool,
}

/// Follows `WatchInvoices` on a replica from the start, reconnecting with
/// the last id received whenever the stream breaks; publishes every id.
fn follow_feed(addr: String, received: watch::Sender<Vec<i64>>) {
    tokio::spawn(async move {
        let mut invoices = InvoiceServiceClient::new(channel(&addr));
        loop {
            let after_invoice_id = received.borrow().last().copied().unwrap_or(0);
            if let Ok(response) = invoices
                .watch_invoices(pb::WatchInvoicesRequest { after_invoice_id })
                .await
            {
                let mut stream = response.into_inner();
                while let Some(Ok(invoice)) = stream.next().await {
                    received.send_modify(|ids| ids.push(invoice.id));
                }
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    });
}

/// Per (stream, replica): the final report and whether an attempt failed.
type StreamReports = BTreeMap<(usize, usize), (pb::IngestCallsResponse, bool)>;

/// The clients that ingest calls through both replicas, and what they saw.
#[derive(Default, Clone)]
struct Ingestion {
    /// Per AddCall id.
    unary: Arc<Mutex<HashMap<String, UnaryOutcome>>>,
    /// Per (stream, replica): the report and whether an attempt failed.
    streams: Arc<Mutex<StreamReports>>,
    /// AddCalls the second replica acknowledged.
    b_acks: Arc<watch::Sender<usize>>,
}

impl Ingestion {
    /// Sends the AddCall ids of `unary` and each stream of `streams` to
    /// both `replicas` (three AddCall clients and one stream client per
    /// replica and stream), every request retried until acknowledged. With
    /// `until`, the AddCall clients stop [`CALLS_AFTER_ISSUING`] calls after
    /// it turns true.
    fn start(
        &self,
        replicas: &[String],
        customers: &[i64],
        unary: std::ops::RangeFrom<usize>,
        until: Option<watch::Receiver<bool>>,
        streams: std::ops::Range<usize>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let mut clients = Vec::new();
        for (side, addr) in replicas.iter().enumerate() {
            for client in 0..UNARY_CLIENTS {
                let calls = CallServiceClient::new(channel(addr));
                let (outcomes, b_acks, customers) =
                    (self.unary.clone(), self.b_acks.clone(), customers.to_vec());
                let ids = unary.clone();
                let until = until.clone();
                clients.push(tokio::spawn(async move {
                    let mut after = 0;
                    for n in ids.skip(client).step_by(UNARY_CLIENTS) {
                        match &until {
                            None if n >= JUNE_CALLS => break,
                            Some(until) if *until.borrow() => {
                                after += 1;
                                if after > CALLS_AFTER_ISSUING {
                                    break;
                                }
                            }
                            _ => {}
                        }
                        let request = record(format!("unary-{n}"), &customers, n);
                        let (response, failed) = retry(|| {
                            let mut calls = calls.clone();
                            let request = request.clone();
                            async move { calls.add_call(request).await }
                        })
                        .await;
                        let mut outcomes = outcomes.lock().unwrap();
                        let outcome = outcomes.entry(request.call_id).or_default();
                        outcome.acks.push(response.into_inner().duplicate);
                        outcome.uncertain |= failed;
                        if side == 1 {
                            b_acks.send_modify(|acks| *acks += 1);
                        }
                    }
                }));
            }
        }
        // Each stream's records go to both replicas; the reports per replica.
        for stream in streams.clone() {
            let records: Vec<pb::AddCallRequest> = (0..STREAM_RECORDS)
                .map(|n| record(format!("stream-{stream}-{n}"), customers, n + stream))
                .collect();
            for (side, addr) in replicas.iter().enumerate() {
                let calls = CallServiceClient::new(channel(addr));
                let (records, reports) = (records.clone(), self.streams.clone());
                clients.push(tokio::spawn(async move {
                    let (report, failed) = retry(|| {
                        let mut calls = calls.clone();
                        let records = records.clone();
                        async move {
                            calls
                                .ingest_calls(tokio_stream::iter(records))
                                .await
                                .map(tonic::Response::into_inner)
                        }
                    })
                    .await;
                    reports
                        .lock()
                        .unwrap()
                        .insert((stream, side), (report, failed));
                }));
            }
        }
        clients
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_racing_with_one_killed_keep_every_guarantee() {
    if !on_postgres() {
        eprintln!("skipped: needs PostgreSQL (TEST_DATABASE_URL)");
        return;
    }
    let database = fresh_database().await;
    let url = database.url.as_str();

    // June 20th: both replicas start together on the empty database (their
    // migrations race) and the customers are created through both.
    let june = "2026-06-20T12:00:00Z";
    let (first, second) = (start_replica(url, 0, june), start_replica(url, 0, june));
    let addrs = [first.serving_addr(), second.serving_addr()];
    let setup: Vec<_> = addrs
        .iter()
        .map(|addr| CustomerServiceClient::new(channel(addr)))
        .collect();
    let plan = setup[0]
        .clone()
        .create_plan(pb::CreatePlanRequest {
            name: "Postpaid".into(),
            kind: PlanKind::Postpaid.into(),
            monthly_fee_micros: 5_000_000,
            per_minute_micros: 60_000,
            billing_increment_seconds: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut customers = Vec::new();
    for n in 0..CUSTOMERS {
        let customer = setup[n % 2]
            .clone()
            .create_customer(pb::CreateCustomerRequest {
                name: format!("Replica customer {n}"),
                phone_number: format!("+1415666{n:04}"),
                plan_id: plan.id,
                operator_ids: Vec::new(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        customers.push(customer.id);
    }
    // Half of the calls arrive in June, through both replicas.
    let ingestion = Ingestion::default();
    for client in ingestion.start(&addrs, &customers, 0.., None, 0..1) {
        client.await.expect("client task");
    }
    stop(first).await;
    stop(second).await;

    // Both replicas start again a moment before June ends, with clients
    // ingesting June's calls through both: the schedulers and the explicit
    // issuing below bill June while calls still arrive (those that arrive
    // after their customer's invoice stay for July's).
    let month_end = "2026-06-30T23:59:59.500Z";
    let (a, a_addr) = replica(url, 0, month_end);
    let (b, b_addr) = replica(url, 0, month_end);
    let b_port: u16 = b_addr.rsplit(':').next().unwrap().parse().unwrap();
    let replicas = [a_addr.clone(), b_addr.clone()];

    let feeds: Vec<watch::Sender<Vec<i64>>> = replicas
        .iter()
        .map(|addr| {
            let feed = watch::Sender::new(Vec::new());
            follow_feed(addr.clone(), feed.clone());
            feed
        })
        .collect();

    // The clients go on until the watcher on A has seen June's invoices.
    let (issued, until) = watch::channel(false);
    let mut june_issued = feeds[0].subscribe();
    tokio::spawn(async move {
        if june_issued
            .wait_for(|ids| ids.len() >= CUSTOMERS)
            .await
            .is_ok()
        {
            issued.send_replace(true);
        }
    });
    let mut clients = ingestion.start(&replicas, &customers, JUNE_CALLS.., Some(until), 1..STREAMS);
    // Explicit issuing of June at both replicas, racing the schedulers.
    for addr in &replicas {
        let invoices = InvoiceServiceClient::new(channel(addr));
        let customers = customers.clone();
        clients.push(tokio::spawn(async move {
            for round in 0..4 {
                let cycle = issue_june(|| {
                    let mut invoices = invoices.clone();
                    async move {
                        invoices
                            .run_billing_cycle(pb::RunBillingCycleRequest {
                                period: period(2026, 6),
                            })
                            .await
                    }
                })
                .await
                .into_inner();
                assert_eq!(cycle.failed, 0, "{cycle:?}");
                let customer_id = customers[round % customers.len()];
                issue_june(|| {
                    let mut invoices = invoices.clone();
                    async move {
                        invoices
                            .generate_invoice(pb::GenerateInvoiceRequest {
                                customer_id,
                                period: period(2026, 6),
                            })
                            .await
                    }
                })
                .await;
            }
        }));
    }

    // Midway, replica B dies without warning and comes back on its port.
    ingestion
        .b_acks
        .subscribe()
        .wait_for(|acks| *acks >= JUNE_CALLS + KILL_AFTER)
        .await
        .unwrap();
    let restart_url = url.to_owned();
    let b = tokio::task::spawn_blocking(move || {
        let mut b = b;
        b.child.kill().unwrap();
        b.child.wait().unwrap();
        replica(&restart_url, b_port, month_end).0
    })
    .await
    .unwrap();

    for client in clients {
        client.await.expect("client task");
    }

    // Every call sent was acknowledged (clients retried until it was) and
    // is stored exactly once.
    let mut stored: Vec<pb::Call> = Vec::new();
    for &customer_id in &customers {
        stored.extend(history_of(CallServiceClient::new(channel(&a_addr)), customer_id).await);
    }
    let stored_ids: BTreeSet<&str> = stored.iter().map(|c| c.call_id.as_str()).collect();
    assert_eq!(stored_ids.len(), stored.len(), "a call stored twice");
    let outcomes = ingestion.unary.lock().unwrap().clone();
    let sent: BTreeSet<String> = outcomes
        .keys()
        .cloned()
        .chain(
            (0..STREAMS).flat_map(|s| (0..STREAM_RECORDS).map(move |n| format!("stream-{s}-{n}"))),
        )
        .collect();
    let stored_owned: BTreeSet<String> = stored_ids.iter().map(|&id| id.to_owned()).collect();
    assert_eq!(
        stored_owned, sent,
        "stored calls differ from those acknowledged"
    );

    // Duplicates were reported as duplicates: a call acknowledged by one or
    // both replicas was new to exactly one of them (to at most one if an
    // attempt failed unseen).
    let interrupted = outcomes.values().filter(|o| o.uncertain).count();
    assert!(
        interrupted > 0,
        "the kill interrupted no client: not midway"
    );
    for (call_id, outcome) in outcomes.iter() {
        assert!(
            (1..=2).contains(&outcome.acks.len()),
            "{call_id}: {outcome:?}"
        );
        let new = outcome.acks.iter().filter(|duplicate| !**duplicate).count();
        if outcome.uncertain {
            assert!(new <= 1, "{call_id}: {outcome:?}");
        } else {
            assert_eq!(new, 1, "{call_id}: {outcome:?}");
        }
    }
    let reports = ingestion.streams.lock().unwrap().clone();
    for stream in 0..STREAMS {
        let (a_report, a_failed) = &reports[&(stream, 0)];
        let (b_report, b_failed) = &reports[&(stream, 1)];
        for report in [a_report, b_report] {
            assert_eq!(report.rejected, 0, "{report:?}");
            assert_eq!(
                usize::try_from(report.accepted + report.duplicates).unwrap(),
                STREAM_RECORDS
            );
        }
        if !a_failed && !b_failed {
            assert_eq!(
                usize::try_from(a_report.accepted + b_report.accepted).unwrap(),
                STREAM_RECORDS,
                "stream {stream}: {a_report:?} {b_report:?}"
            );
        }
    }

    // Exactly one June invoice per customer, and nothing else; each one's
    // figures are those of the calls it claimed, its total the sum of its
    // lines.
    let mut invoices = InvoiceServiceClient::new(channel(&b_addr));
    let mut issued: Vec<pb::Invoice> = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = invoices
            .list_invoices(pb::ListInvoicesRequest {
                page_size: 1000,
                page_token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        issued.extend(page.invoices);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let per_customer: BTreeSet<(i64, i32, i32)> = issued
        .iter()
        .map(|i| {
            let period = i.period.unwrap();
            (i.customer_id, period.year, period.month)
        })
        .collect();
    assert_eq!(per_customer.len(), issued.len(), "a month invoiced twice");
    let expected: BTreeSet<(i64, i32, i32)> = customers.iter().map(|&id| (id, 2026, 6)).collect();
    assert_eq!(per_customer, expected);
    for invoice in &issued {
        let claimed: Vec<&pb::Call> = stored
            .iter()
            .filter(|call| call.invoice_id == invoice.id)
            .collect();
        assert_eq!(invoice.call_count, i64::try_from(claimed.len()).unwrap());
        assert_eq!(
            invoice.usage_micros,
            claimed.iter().map(|call| call.cost_micros).sum::<i64>(),
            "{invoice:?}"
        );
        assert_eq!(
            invoice.total_micros,
            invoice
                .lines
                .iter()
                .map(|line| line.amount_micros)
                .sum::<i64>(),
            "{invoice:?}"
        );
    }
    let invoice_ids: BTreeSet<i64> = issued.iter().map(|i| i.id).collect();
    assert!(
        stored
            .iter()
            .all(|call| call.invoice_id == 0 || invoice_ids.contains(&call.invoice_id))
    );

    // A watcher on each replica got every invoice once, in id order, the
    // one on B across its death.
    let all: Vec<i64> = invoice_ids.iter().copied().collect();
    for feed in &feeds {
        let mut received = feed.subscribe();
        let got = tokio::time::timeout(
            Duration::from_secs(60),
            received.wait_for(|ids| ids.len() >= all.len()),
        )
        .await
        .expect("every invoice reaches each watcher within a minute")
        .expect("the watcher runs")
        .clone();
        assert_eq!(got, all);
    }
    let claimed = stored.iter().filter(|call| call.invoice_id != 0).count();
    eprintln!(
        "{} calls ({claimed} on invoices), {} invoices, {interrupted} AddCalls interrupted by the kill",
        stored.len(),
        issued.len()
    );
    drop(feeds);
    stop(a).await;
    stop(b).await;
}

/// Invoices the two replicas deliver in [`two_replicas_deliver_each_invoice_exactly_once`].
const DELIVERED_INVOICES: usize = 1000;

/// `billing serve` on any port with the clock starting at `clock`, the
/// scheduler on, webhooks to this machine allowed and a short retry
/// schedule.
fn delivering_replica(url: &str, clock: &str) -> (Process, String) {
    let server = billing(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--no-auth",
            "--clock-start",
            clock,
            "--database-max-connections",
            "8",
            "--shutdown-grace-seconds",
            "1",
            "--invoice-grace-period",
            "0s",
            "--allow-insecure-webhooks",
            "--delivery-retry-schedule",
            "100ms",
        ],
        url,
    );
    let addr = server.serving_addr();
    (server, addr)
}

/// Through the server at `addr`: an operator with a webhook to `receiver`
/// for `invoice.issued`, and a postpaid plan with a monthly fee, so every
/// customer gets an invoice. Returns their ids.
async fn hooked_operator_and_plan(addr: &str, receiver: std::net::SocketAddr) -> (i64, i64) {
    let mut customers = CustomerServiceClient::new(channel(addr));
    let operator = customers
        .create_operator(pb::CreateOperatorRequest {
            name: "North".into(),
        })
        .await
        .unwrap()
        .into_inner();
    pb::notification_service_client::NotificationServiceClient::new(channel(addr))
        .create_webhook(pb::CreateWebhookRequest {
            operator_id: operator.id,
            url: format!("http://{receiver}/hook"),
            events: vec!["invoice.issued".into()],
        })
        .await
        .unwrap();
    let plan = customers
        .create_plan(pb::CreatePlanRequest {
            name: "Flat".into(),
            kind: PlanKind::Postpaid.into(),
            currency_code: "EUR".into(),
            monthly_fee_micros: 5_000_000,
            per_minute_micros: 60_000,
            billing_increment_seconds: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    (operator.id, plan.id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_deliver_each_invoice_exactly_once() {
    if !on_postgres() {
        eprintln!("skipped: needs PostgreSQL (TEST_DATABASE_URL)");
        return;
    }
    let database = fresh_database().await;
    let url = database.url.as_str();
    let mut receiver = crate::notifications::receiver(Vec::new()).await;

    // June: an operator with a webhook, and its customers on a plan with a
    // monthly fee, created through both replicas.
    let june = "2026-06-20T12:00:00Z";
    let (a, b) = (delivering_replica(url, june), delivering_replica(url, june));
    let setup = [
        CustomerServiceClient::new(channel(&a.1)),
        CustomerServiceClient::new(channel(&b.1)),
    ];
    let (operator_id, plan_id) = hooked_operator_and_plan(&a.1, receiver.addr).await;
    let mut created = Vec::new();
    for chunk in (0..DELIVERED_INVOICES).collect::<Vec<_>>().chunks(16) {
        let batch = chunk.iter().map(|&n| {
            let mut client = setup[n % 2].clone();
            async move {
                client
                    .create_customer(pb::CreateCustomerRequest {
                        name: format!("Customer {n}"),
                        phone_number: format!("+1415777{n:04}"),
                        plan_id,
                        operator_ids: vec![operator_id],
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .id
            }
        });
        created.extend(futures_util::future::join_all(batch).await);
    }
    assert_eq!(created.len(), DELIVERED_INVOICES);
    stop(a.0).await;
    stop(b.0).await;

    // July 1st: both replicas restart, both schedulers issue June, and both
    // workers deliver.
    let july = "2026-07-01T00:00:05Z";
    let (a, b) = (delivering_replica(url, july), delivering_replica(url, july));
    let mut notifications =
        pb::notification_service_client::NotificationServiceClient::new(channel(&b.1));
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut invoices: HashMap<String, usize> = HashMap::new();
    while seen.len() < DELIVERED_INVOICES {
        let request = receiver.next().await;
        let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
        let invoice_id = body["data"]["invoice"]["id"].as_str().unwrap().to_owned();
        *invoices.entry(invoice_id).or_default() += 1;
        *seen.entry(request.delivery_id).or_default() += 1;
    }
    // Every delivery is recorded delivered, after one attempt each.
    let mut delivered = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = notifications
            .list_deliveries(pb::ListDeliveriesRequest {
                page_size: 1000,
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        delivered.extend(page.deliveries);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(delivered.len(), DELIVERED_INVOICES);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while delivered
        .iter()
        .any(|d| d.status != i32::from(pb::DeliveryStatus::Delivered))
    {
        // The receiver has answered every request; recording the last
        // outcomes may still be under way.
        assert!(tokio::time::Instant::now() < deadline, "{delivered:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        for d in &mut delivered {
            if d.status != i32::from(pb::DeliveryStatus::Delivered) {
                *d = notifications
                    .list_deliveries(pb::ListDeliveriesRequest {
                        invoice_id: d.invoice_id,
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .deliveries
                    .remove(0);
            }
        }
    }
    assert!(delivered.iter().all(|d| d.attempts == 1), "{delivered:?}");
    stop(a.0).await;
    stop(b.0).await;
    // Each delivery id, and each invoice, reached the receiver once.
    while let Ok(request) = receiver.requests.try_recv() {
        *seen.entry(request.delivery_id).or_default() += 1;
    }
    assert_eq!(seen.len(), DELIVERED_INVOICES);
    assert!(seen.values().all(|&n| n == 1), "repeats: {seen:?}");
    assert_eq!(invoices.len(), DELIVERED_INVOICES);
    assert!(invoices.values().all(|&n| n == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_delivery_cut_off_by_a_killed_server_is_delivered_after_its_restart() {
    let database = fresh_database().await;
    let url = database.url.as_str();
    // The first request is received and never answered.
    let mut receiver = crate::notifications::receiver(vec![0]).await;
    let (server, addr) = delivering_replica(url, "2026-06-20T12:00:00Z");
    let (operator_id, plan_id) = hooked_operator_and_plan(&addr, receiver.addr).await;
    let mut customers = CustomerServiceClient::new(channel(&addr));
    customers
        .create_customer(pb::CreateCustomerRequest {
            name: "Ada".into(),
            phone_number: "+14155550100".into(),
            plan_id,
            operator_ids: vec![operator_id],
            ..Default::default()
        })
        .await
        .unwrap();
    stop(server).await;

    // July: June is issued and its delivery attempted; the server is
    // killed while the receiver holds the request.
    let (mut server, _) = delivering_replica(url, "2026-07-01T00:00:05Z");
    let cut_off = receiver.next().await;
    server.child.kill().unwrap();
    server.child.wait().unwrap();

    // Restarted on a clock past the dead worker's lease (60 s), the
    // delivery is claimed again and delivered, with the same id.
    let (server, addr) = delivering_replica(url, "2026-07-01T00:05:00Z");
    let again = receiver.next().await;
    assert_eq!(again.delivery_id, cut_off.delivery_id);
    assert_eq!(again.body, cut_off.body, "the same event");
    let mut notifications =
        pb::notification_service_client::NotificationServiceClient::new(channel(&addr));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let delivery = loop {
        let deliveries = notifications
            .list_deliveries(pb::ListDeliveriesRequest::default())
            .await
            .unwrap()
            .into_inner()
            .deliveries;
        assert_eq!(deliveries.len(), 1, "{deliveries:?}");
        if deliveries[0].status == i32::from(pb::DeliveryStatus::Delivered) {
            break deliveries.into_iter().next().unwrap();
        }
        assert!(tokio::time::Instant::now() < deadline, "{deliveries:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(delivery.id, cut_off.delivery_id);
    assert_eq!(delivery.attempts, 2, "the cut-off attempt counts");
    stop(server).await;
    assert!(
        receiver.requests.try_recv().is_err(),
        "delivered once more, not twice"
    );
}
