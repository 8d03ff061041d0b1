//! Running as one of several replicas: reads routed to a read replica,
//! readiness that follows the database.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use billing::clock::Clock;
use billing::grpc::pb::{self, PlanKind, generate_invoice_response::Result as Generated};
use billing::storage::Store;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use crate::helpers::{
    AppOptions, TEST_NOW, TestApp, at, call, fresh_database, on_postgres, spawn_app_with, ts,
};
use crate::invoices::period;

/// `url` opened so that any write fails: SQLite's read-only mode, or
/// PostgreSQL sessions whose transactions are read-only.
fn read_only(url: &str) -> String {
    if url.starts_with("postgres") {
        format!("{url}?options=-c%20default_transaction_read_only%3Don")
    } else {
        format!("{url}?mode=ro")
    }
}

/// A postpaid plan, an operator and one of its customers, created on
/// 2026-07-01, with two calls added and three ingested on 2026-07-15.
async fn customer_with_calls(app: &TestApp) -> pb::Customer {
    let plan = app.plan(PlanKind::Postpaid, 60_000, 1).await;
    let operator = app.operator("Scale Telecom").await;
    let customer = app.customer(plan.id, 1, vec![operator.id]).await;
    app.clock.set(at("2026-07-15T12:00:00Z"));
    for n in 0..2 {
        let mut record = call(customer.id, 60);
        record.call_id = format!("unary-{n}");
        app.calls.clone().add_call(record).await.expect("AddCall");
    }
    let records = (0..3)
        .map(|n| {
            let mut record = call(customer.id, 30);
            record.call_id = format!("stream-{n}");
            record.started_at = Some(ts("2026-07-14T08:00:00Z"));
            record
        })
        .collect();
    assert_eq!(app.ingest(records).await.accepted, 3);
    customer
}

#[tokio::test]
async fn with_a_read_only_read_url_every_rpc_works_so_no_write_goes_there() {
    let database = fresh_database().await;
    let app = spawn_app_with(AppOptions {
        clock: Clock::starting_at(at(TEST_NOW)),
        read_url: Some(read_only(&database.url)),
        database: Some(database.clone()),
        ..AppOptions::default()
    })
    .await;
    let customer = customer_with_calls(&app).await;
    let mut customers = app.customers.clone();
    let mut calls = app.calls.clone();
    let mut invoices = app.invoices.clone();

    // The routed reads answer from the read URL, here the same database.
    assert_eq!(app.history(customer.id).await.len(), 5);
    let listed = calls
        .list_calls(pb::ListCallsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.calls.len(), 5);
    let listed = customers
        .list_customers(pb::ListCustomersRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.customers.len(), 1);
    let plans = customers
        .list_plans(pb::ListPlansRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(plans.plans.len(), 1);
    let operators = customers
        .list_operators(pb::ListOperatorsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(operators.operators.len(), 1);

    // Issuing writes on the primary; reading the invoice back is routed.
    app.clock.set(at("2026-08-01T00:00:01Z"));
    let generated = invoices
        .generate_invoice(pb::GenerateInvoiceRequest {
            customer_id: customer.id,
            period: period(2026, 7),
        })
        .await
        .unwrap()
        .into_inner();
    let Some(Generated::Invoice(invoice)) = generated.result else {
        panic!("expected an invoice: {generated:?}");
    };
    assert_eq!(invoice.call_count, 5);
    let cycle = invoices
        .run_billing_cycle(pb::RunBillingCycleRequest {
            period: period(2026, 7),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((cycle.issued, cycle.already_issued), (0, 1));
    let month = invoices
        .get_month_invoice(pb::GetMonthInvoiceRequest {
            customer_id: customer.id,
            period: period(2026, 7),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(month, invoice);
    let listed = invoices
        .list_invoices(pb::ListInvoicesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.invoices, vec![invoice.clone()]);
    let months: Vec<pb::ConsolidatedMonth> = invoices
        .stream_consolidated(pb::StreamConsolidatedRequest {
            customer_id: customer.id,
            from_period: period(2026, 7),
            to_period: period(2026, 8),
        })
        .await
        .unwrap()
        .into_inner()
        .map(|month| month.unwrap())
        .collect()
        .await;
    assert_eq!(months.len(), 2);
    assert_eq!(months[0].invoice_number, invoice.number);
    assert_eq!(months[0].total_micros, invoice.total_micros);
    assert!(
        app.history(customer.id)
            .await
            .iter()
            .all(|call| call.invoice_id == invoice.id)
    );
}

#[tokio::test]
async fn a_lagging_read_replica_serves_the_routed_reads_and_never_the_writes() {
    // The "replica" is a second, empty database with the same schema: what
    // a replica that has not caught up yet would answer.
    let replica = fresh_database().await;
    let store = Store::connect(&replica.url).await.unwrap();
    store.migrate().await.unwrap();
    store.close().await.unwrap();
    let app = spawn_app_with(AppOptions {
        clock: Clock::starting_at(at(TEST_NOW)),
        read_url: Some(replica.url.clone()),
        ..AppOptions::default()
    })
    .await;
    let customer = customer_with_calls(&app).await;

    // Routed reads come from the replica, which holds nothing yet.
    let mut customers = app.customers.clone();
    let listed = customers
        .list_customers(pb::ListCustomersRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.customers.is_empty(), "{listed:?}");
    let plans = customers
        .list_plans(pb::ListPlansRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(plans.plans.is_empty(), "{plans:?}");
    assert!(app.history(customer.id).await.is_empty());

    // Reads of one's own writes stay on the primary.
    assert_eq!(app.get_customer(customer.id).await.name, "Customer 1");
    let mut again = call(customer.id, 60);
    again.call_id = "unary-0".into();
    let duplicate = app
        .calls
        .clone()
        .add_call(again)
        .await
        .unwrap()
        .into_inner();
    assert!(duplicate.duplicate);

    // Everything was written to the primary.
    let primary = spawn_app_with(AppOptions {
        clock: Clock::starting_at(at("2026-07-15T12:00:00Z")),
        database: Some(app.database.clone()),
        ..AppOptions::default()
    })
    .await;
    assert_eq!(primary.history(customer.id).await.len(), 5);
}

/// A TCP proxy in front of the database that the test can cut (every
/// connection closed, new ones closed at once) and restore.
struct Proxy {
    addr: SocketAddr,
    cut: Arc<watch::Sender<bool>>,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(watch::Sender::new(false));
        let state = cut.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if *state.borrow() {
                    continue;
                }
                let upstream = upstream.clone();
                let mut cut = state.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        Proxy { addr, cut }
    }

    fn cut(&self) {
        self.cut.send_replace(true);
    }

    fn restore(&self) {
        self.cut.send_replace(false);
    }
}

/// The next status a health watch reports, within a minute.
async fn next_status(watch: &mut tonic::Streaming<HealthCheckResponse>) -> ServingStatus {
    tokio::time::timeout(Duration::from_secs(60), watch.next())
        .await
        .expect("health changes within a minute")
        .expect("the watch goes on")
        .expect("a health status")
        .status()
}

#[tokio::test]
async fn health_is_not_serving_while_the_database_is_unreachable_and_rpcs_fail_fast() {
    if !on_postgres() {
        eprintln!("skipped: needs a PostgreSQL server to cut off (TEST_DATABASE_URL)");
        return;
    }
    let database = fresh_database().await;
    // postgres://user@HOST:PORT/name: the proxy takes HOST:PORT's place.
    let (scheme_user, rest) = database.url.split_once('@').unwrap();
    let (upstream, name) = rest.split_once('/').unwrap();
    let proxy = Proxy::start(upstream.to_owned()).await;
    let mut proxied = database.clone();
    proxied.url = format!("{scheme_user}@{}/{name}", proxy.addr);
    let app = spawn_app_with(AppOptions {
        clock: Clock::starting_at(at(TEST_NOW)),
        database: Some(proxied),
        ..AppOptions::default()
    })
    .await;
    let mut health = HealthClient::new(app.channel.clone());
    let mut watch = health
        .watch(HealthCheckRequest {
            service: "billing.v1.CallService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next_status(&mut watch).await, ServingStatus::Serving);
    let plan = app.plan(PlanKind::Postpaid, 60_000, 1).await;

    proxy.cut();
    assert_eq!(next_status(&mut watch).await, ServingStatus::NotServing);
    let overall = health
        .check(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(overall.status(), ServingStatus::NotServing);
    let refused = app
        .customers
        .clone()
        .list_plans(pb::ListPlansRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("database"), "{refused:?}");

    proxy.restore();
    assert_eq!(next_status(&mut watch).await, ServingStatus::Serving);
    let plans = app
        .customers
        .clone()
        .list_plans(pb::ListPlansRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(plans.plans, vec![plan]);
}

#[tokio::test]
async fn a_watcher_on_one_replica_receives_the_invoices_another_replica_issues() {
    // On PostgreSQL the catch-up is an hour away, so only a notification
    // can deliver within the test's bound; on SQLite (no notifications) the
    // catch-up every second does.
    let catch_up = if on_postgres() {
        Duration::from_secs(3600)
    } else {
        Duration::from_secs(1)
    };
    let options = |database| AppOptions {
        clock: Clock::starting_at(at(TEST_NOW)),
        database,
        feed_catch_up: catch_up,
        ..AppOptions::default()
    };
    let watched = spawn_app_with(options(None)).await;
    let issuer = spawn_app_with(options(Some(watched.database.clone()))).await;
    let plan = issuer.plan(PlanKind::Postpaid, 60_000, 1).await;
    let mut customers = Vec::new();
    for n in 0..3 {
        customers.push(issuer.customer(plan.id, n, Vec::new()).await);
    }
    let mut feed = watched
        .invoices
        .clone()
        .watch_invoices(pb::WatchInvoicesRequest {
            after_invoice_id: 0,
        })
        .await
        .unwrap()
        .into_inner();
    issuer.clock.set(at("2026-08-01T00:00:01Z"));
    let mut issued = Vec::new();
    for customer in &customers[..2] {
        let generated = issuer
            .invoices
            .clone()
            .generate_invoice(pb::GenerateInvoiceRequest {
                customer_id: customer.id,
                period: period(2026, 7),
            })
            .await
            .unwrap()
            .into_inner();
        let Some(Generated::Invoice(invoice)) = generated.result else {
            panic!("expected an invoice: {generated:?}");
        };
        issued.push(invoice);
    }
    let cycle = issuer
        .invoices
        .clone()
        .run_billing_cycle(pb::RunBillingCycleRequest {
            period: period(2026, 7),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((cycle.issued, cycle.already_issued), (1, 2));
    let mut received = Vec::new();
    while received.len() < 3 {
        let invoice = tokio::time::timeout(Duration::from_secs(30), feed.next())
            .await
            .expect("the other replica's invoice arrives within 30 s")
            .expect("the feed goes on")
            .expect("an invoice");
        received.push(invoice);
    }
    assert_eq!(&received[..2], &issued[..]);
    assert_eq!(received[2].customer_id, customers[2].id);
    assert!(received.windows(2).all(|pair| pair[0].id < pair[1].id));
}
