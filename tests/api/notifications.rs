//! Delivery through the outbox: signed webhooks received by a real HTTP
//! server in the test (verifying signatures as the README tells receivers
//! to), retries on the schedule, FAILED and RetryDelivery, and email to a
//! real SMTP server (Python's aiosmtpd, writing a maildir the test reads).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use billing::grpc::pb::notification_service_client::NotificationServiceClient;
use billing::grpc::pb::{self, PlanKind};
use billing::service::DeliveryConfig;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use sha2::Sha256;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tonic::Code;
use tonic::transport::Channel;

use crate::helpers::{AppOptions, TestApp, assert_status, at, spawn_app_with};
use crate::invoices::{add_call_at, invoice_of, plan_with};

/// A request the receiver got.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    pub delivery_id: String,
    pub event: String,
    pub signature: String,
    pub body: Vec<u8>,
}

/// A webhook receiver: answers each request with the next status of
/// `answers` (then 200; 0: never answers), and reports every request on a
/// channel.
pub(crate) struct Receiver {
    pub addr: SocketAddr,
    pub requests: mpsc::UnboundedReceiver<Received>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(crate) async fn receiver_on(listener: TcpListener, answers: Vec<u16>) -> Receiver {
    let addr = listener.local_addr().unwrap();
    let (tx, requests) = mpsc::unbounded_channel();
    let answers = Arc::new(Mutex::new(answers.into_iter()));
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (tx, answers) = (tx.clone(), answers.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| {
                        let (tx, answers) = (tx.clone(), answers.clone());
                        async move {
                            let header = |name: &str| {
                                request
                                    .headers()
                                    .get(name)
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or_default()
                                    .to_owned()
                            };
                            let received = Received {
                                delivery_id: header("billing-delivery-id"),
                                event: header("billing-event"),
                                signature: header("billing-signature"),
                                body: Vec::new(),
                            };
                            let body = request.into_body().collect().await?.to_bytes().to_vec();
                            let status = answers.lock().unwrap().next().unwrap_or(200);
                            let _ = tx.send(Received { body, ..received });
                            if status == 0 {
                                std::future::pending::<()>().await;
                            }
                            Ok::<_, hyper::Error>(
                                hyper::Response::builder()
                                    .status(status)
                                    .body(Full::new(Bytes::from_static(b"ok")))
                                    .unwrap(),
                            )
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Receiver {
        addr,
        requests,
        task,
    }
}

pub(crate) async fn receiver(answers: Vec<u16>) -> Receiver {
    receiver_on(TcpListener::bind("127.0.0.1:0").await.unwrap(), answers).await
}

impl Receiver {
    pub(crate) async fn next(&mut self) -> Received {
        tokio::time::timeout(Duration::from_secs(30), self.requests.recv())
            .await
            .expect("a delivery within 30 s")
            .expect("receiver running")
    }
}

/// Verifies a `Billing-Signature` exactly as the README tells receivers
/// to: parse `t` and `v1`, recompute the HMAC of "<t>.<body>", compare in
/// constant time, and reject timestamps more than 5 minutes from now.
pub(crate) fn verify(secret: &str, header: &str, body: &[u8], now_unix: i64) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", value)) => t = value.parse::<i64>().ok(),
            Some(("v1", value)) => v1 = hex::decode(value).ok(),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    if (now_unix - t).abs() > 300 {
        return false;
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    mac.verify_slice(&v1).is_ok()
}

fn notifications(app: &TestApp) -> NotificationServiceClient<Channel> {
    NotificationServiceClient::new(app.channel.clone())
}

fn insecure(schedule: &str) -> DeliveryConfig {
    DeliveryConfig {
        retry_schedule: billing::domain::delivery::RetrySchedule::parse(schedule).unwrap(),
        allow_insecure_webhooks: true,
        ..DeliveryConfig::default()
    }
}

async fn app_delivering(delivery: DeliveryConfig) -> TestApp {
    spawn_app_with(AppOptions {
        clock: billing::clock::Clock::starting_at(at("2026-10-01T00:00:00Z")),
        delivery,
        ..AppOptions::default()
    })
    .await
}

/// An operator with a webhook at `url`, a customer of it with one October
/// call, and the clock at 1 November: `(operator id, customer id, secret)`.
async fn october_customer(app: &TestApp, url: &str) -> (i64, pb::Customer, String) {
    let operator = app.operator("acme").await;
    let webhook = notifications(app)
        .create_webhook(pb::CreateWebhookRequest {
            operator_id: operator.id,
            url: url.to_owned(),
            events: vec!["invoice.issued".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(webhook.secret.starts_with("whsec_"), "{webhook:?}");
    let plan = plan_with(app, PlanKind::Postpaid, 1_000_000, 60_000, 1, 0).await;
    let customer = app.customer(plan.id, 1, vec![operator.id]).await;
    app.clock.set(at("2026-10-31T23:00:00Z"));
    add_call_at(app, customer.id, 60, "2026-10-15T10:00:00Z").await;
    app.clock.set(at("2026-11-01T00:00:01Z"));
    (operator.id, customer, webhook.secret)
}

async fn deliveries_of(app: &TestApp, invoice_id: i64) -> Vec<pb::Delivery> {
    notifications(app)
        .list_deliveries(pb::ListDeliveriesRequest {
            invoice_id,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .deliveries
}

/// Waits (up to 30 s, polling) until `invoice_id`'s only delivery has
/// `status`.
async fn delivery_reaching(
    app: &TestApp,
    invoice_id: i64,
    status: pb::DeliveryStatus,
) -> pb::Delivery {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let deliveries = deliveries_of(app, invoice_id).await;
        assert_eq!(deliveries.len(), 1, "{deliveries:?}");
        if deliveries[0].status == i32::from(status) {
            return deliveries[0].clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "{deliveries:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_issued_invoice_is_posted_signed_and_retried_until_the_receiver_accepts_it() {
    let app = app_delivering(insecure("100ms,100ms,100ms")).await;
    let mut receiver = receiver(vec![500, 500]).await;
    let url = format!("http://{}/billing-hook", receiver.addr);
    let (_, customer, secret) = october_customer(&app, &url).await;
    let invoice = invoice_of(&app, customer.id, 2026, 10).await;

    let mut attempts = Vec::new();
    for _ in 0..3 {
        attempts.push(receiver.next().await);
    }
    let first = &attempts[0];
    assert!(first.delivery_id.starts_with("dlv_"), "{first:?}");
    assert!(attempts.iter().all(|a| a.delivery_id == first.delivery_id));
    assert!(attempts.iter().all(|a| a.event == "invoice.issued"));
    for attempt in &attempts {
        // Signed at the wall clock's time, though the app's clock runs
        // from 1 November 2026: receivers compare it with their own.
        let t = chrono::Utc::now().timestamp();
        assert!(
            verify(&secret, &attempt.signature, &attempt.body, t),
            "{attempt:?}"
        );
        assert!(!verify("whsec_wrong", &attempt.signature, &attempt.body, t));
        assert!(!verify(&secret, &attempt.signature, b"{}", t));
        assert!(
            !verify(&secret, &attempt.signature, &attempt.body, t + 301),
            "old timestamps are rejected"
        );
    }
    let body: serde_json::Value = serde_json::from_slice(&first.body).unwrap();
    assert_eq!(body["id"], first.delivery_id.as_str());
    assert_eq!(body["type"], "invoice.issued");
    assert_eq!(body["data"]["invoice"]["number"], invoice.number.as_str());
    assert_eq!(
        body["data"]["invoice"]["totalMicros"],
        invoice.total_micros.to_string()
    );
    assert_eq!(
        body["data"]["document"]["invoiceId"],
        invoice.id.to_string()
    );

    let delivery = delivery_reaching(&app, invoice.id, pb::DeliveryStatus::Delivered).await;
    assert_eq!(delivery.id, first.delivery_id);
    assert_eq!(delivery.attempts, 3);
    assert_eq!(delivery.channel, i32::from(pb::DeliveryChannel::Webhook));
    assert!(delivery.deliver_time.is_some() && delivery.next_attempt_time.is_none());
    // Nothing more arrives once delivered.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), receiver.requests.recv())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_receiver_down_for_the_whole_schedule_fails_and_retry_delivery_delivers_once_it_is_back()
{
    let app = app_delivering(insecure("50ms,50ms")).await;
    // A port that refuses connections until the receiver binds it again.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let (_, customer, _) = october_customer(&app, &format!("http://{addr}/hook")).await;
    let invoice = invoice_of(&app, customer.id, 2026, 10).await;
    let failed = delivery_reaching(&app, invoice.id, pb::DeliveryStatus::Failed).await;
    assert_eq!(failed.attempts, 3, "one attempt and one per delay");
    assert!(failed.last_error.contains("connect"), "{failed:?}");

    let mut receiver = receiver_on(TcpListener::bind(addr).await.unwrap(), Vec::new()).await;
    let mut notifications = notifications(&app);
    let rearmed = notifications
        .retry_delivery(pb::RetryDeliveryRequest {
            delivery_id: failed.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rearmed.status, i32::from(pb::DeliveryStatus::Pending));
    assert_eq!(receiver.next().await.delivery_id, failed.id);
    let delivered = delivery_reaching(&app, invoice.id, pb::DeliveryStatus::Delivered).await;
    assert_eq!(delivered.attempts, 1);
    assert_status(
        notifications
            .retry_delivery(pb::RetryDeliveryRequest {
                delivery_id: failed.id.clone(),
            })
            .await,
        Code::FailedPrecondition,
        "only a FAILED delivery",
    );
    assert_status(
        notifications
            .retry_delivery(pb::RetryDeliveryRequest {
                delivery_id: "dlv_nope".into(),
            })
            .await,
        Code::NotFound,
        "dlv_nope",
    );
}

#[tokio::test]
async fn webhooks_must_be_https_to_public_addresses_unless_insecure_webhooks_are_allowed() {
    let app = app_delivering(DeliveryConfig::default()).await;
    let operator = app.operator("acme").await;
    let mut notifications = notifications(&app);
    let create = |url: &str, events: &[&str]| pb::CreateWebhookRequest {
        operator_id: operator.id,
        url: url.to_owned(),
        events: events.iter().map(|e| (*e).to_owned()).collect(),
    };
    for url in [
        "http://hooks.example.com/billing",
        "https://127.0.0.1/hook",
        "https://10.0.0.8/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]/hook",
        "https://localhost/hook",
        "not a url",
        "",
    ] {
        assert_status(
            notifications.create_webhook(create(url, &[])).await,
            Code::InvalidArgument,
            "url",
        );
    }
    assert_status(
        notifications
            .create_webhook(create("https://hooks.example.com/", &["invoice.paid"]))
            .await,
        Code::InvalidArgument,
        "events",
    );
    let created = notifications
        .create_webhook(create("https://hooks.example.com/billing", &[]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        created.events,
        ["invoice.issued", "balance.low", "balance.recovered"]
    );
    let listed = notifications
        .list_webhooks(pb::ListWebhooksRequest::default())
        .await
        .unwrap()
        .into_inner()
        .webhooks;
    assert_eq!(listed.len(), 1);
    assert!(listed[0].secret.is_empty(), "secrets are shown once");
    notifications
        .delete_webhook(pb::DeleteWebhookRequest {
            webhook_id: created.id,
        })
        .await
        .unwrap();
    assert_status(
        notifications
            .delete_webhook(pb::DeleteWebhookRequest {
                webhook_id: created.id,
            })
            .await,
        Code::NotFound,
        "webhook",
    );
}

/// A real SMTP server: Python's aiosmtpd, storing what it receives in a
/// maildir. `.ci/run` installs it (`pip install aiosmtpd`).
struct SmtpServer {
    child: std::process::Child,
    port: u16,
    maildir: tempfile::TempDir,
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn smtp_server() -> SmtpServer {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let maildir = tempfile::tempdir().unwrap();
    let child = std::process::Command::new("python3")
        .args(["-m", "aiosmtpd", "-n", "-l"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["-c", "aiosmtpd.handlers.Mailbox"])
        .arg(maildir.path().join("mail"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("python3 -m aiosmtpd runs (pip install aiosmtpd; .ci/run installs it)");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(tokio::time::Instant::now() < deadline, "aiosmtpd listens");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    SmtpServer {
        child,
        port,
        maildir,
    }
}

/// The messages of a maildir, each parsed by Python's `email` package into
/// its recipient, subject, text and HTML parts and attachments.
fn received_mail(maildir: &std::path::Path) -> Vec<serde_json::Value> {
    let script = r#"
import base64, json, mailbox, sys
out = []
for message in mailbox.Maildir(sys.argv[1], create=False):
    parts = {"to": message["To"], "from": message["From"], "subject": str(message["Subject"]),
             "text": None, "html": None, "attachments": []}
    for part in message.walk():
        if part.get_content_maintype() == "multipart":
            continue
        if part.get_filename():
            parts["attachments"].append({"name": part.get_filename(),
                "type": part.get_content_type(),
                "content": base64.b64encode(part.get_payload(decode=True)).decode()})
        elif part.get_content_type() == "text/plain":
            parts["text"] = part.get_payload(decode=True).decode(part.get_content_charset() or "utf-8")
        elif part.get_content_type() == "text/html":
            parts["html"] = part.get_payload(decode=True).decode(part.get_content_charset() or "utf-8")
    out.append(parts)
print(json.dumps(out))
"#;
    let output = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(maildir)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice::<Vec<serde_json::Value>>(&output.stdout).unwrap()
}

#[tokio::test]
async fn a_customer_with_an_email_receives_its_invoice_with_the_pdf_attached_in_its_language() {
    let smtp = smtp_server().await;
    let url = format!("smtp://127.0.0.1:{}?tls=opportunistic", smtp.port);
    let mailer =
        billing::delivery::email::Mailer::new(&url, "ACME Billing <billing@acme.example>").unwrap();
    let app = app_delivering(DeliveryConfig {
        mailer: Some(mailer),
        ..insecure("100ms")
    })
    .await;
    let operator = app.operator("acme").await;
    let plan = plan_with(&app, PlanKind::Postpaid, 1_000_000, 60_000, 1, 0).await;
    let customer = app
        .customers
        .clone()
        .create_customer(pb::CreateCustomerRequest {
            name: "Jürgen Müller".into(),
            phone_number: "+49301234567".into(),
            plan_id: plan.id,
            operator_ids: vec![operator.id],
            email: "juergen@example.com".into(),
            language: "de".into(),
            low_balance_threshold_micros: None,
        })
        .await
        .unwrap()
        .into_inner();
    app.clock.set(at("2026-10-31T23:00:00Z"));
    add_call_at(&app, customer.id, 90, "2026-10-15T10:00:00Z").await;
    app.clock.set(at("2026-11-01T00:00:01Z"));
    let invoice = invoice_of(&app, customer.id, 2026, 10).await;
    let delivery = delivery_reaching(&app, invoice.id, pb::DeliveryStatus::Delivered).await;
    assert_eq!(delivery.channel, i32::from(pb::DeliveryChannel::Email));

    let mail = received_mail(&smtp.maildir.path().join("mail"));
    assert_eq!(mail.len(), 1, "{mail:?}");
    let message = &mail[0];
    assert_eq!(message["to"], "juergen@example.com");
    let subject = message["subject"].as_str().unwrap();
    assert!(
        subject.contains("Rechnung") && subject.contains(&invoice.number),
        "{subject}"
    );
    let text = message["text"].as_str().unwrap();
    assert!(
        text.contains("Guten Tag Jürgen Müller") && text.contains("1,09 EUR"),
        "{text}"
    );
    let html = message["html"].as_str().unwrap();
    assert!(
        html.contains("<html lang=\"de\">") && html.contains("1,09 EUR"),
        "{html}"
    );
    let attachments = message["attachments"].as_array().unwrap();
    assert_eq!(attachments.len(), 1);
    assert_eq!(attachments[0]["name"], format!("{}.pdf", invoice.number));
    assert_eq!(attachments[0]["type"], "application/pdf");
    let pdf = base64_decode(attachments[0]["content"].as_str().unwrap());
    let served = crate::documents::document(&app, invoice.id, pb::DocumentFormat::Pdf).await;
    assert_eq!(
        pdf, served.content,
        "the attachment is the invoice's document"
    );
    let pdf_text = crate::documents::pdf_text(&pdf);
    assert!(
        pdf_text.contains(&invoice.number) && pdf_text.contains("1,09 EUR"),
        "{pdf_text}"
    );
}

fn base64_decode(text: &str) -> Vec<u8> {
    let output = std::process::Command::new("python3")
        .args([
            "-c",
            "import base64,sys; sys.stdout.buffer.write(base64.b64decode(sys.argv[1]))",
        ])
        .arg(text)
        .output()
        .unwrap();
    output.stdout
}

async fn top_up(app: &TestApp, customer_id: i64, amount_micros: i64, request_id: &str) -> i64 {
    app.customers
        .clone()
        .top_up(pb::TopUpRequest {
            customer_id,
            amount_micros,
            request_id: request_id.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .balance_micros
}

/// Waits (up to 30 s, polling) until `customer_id` has `count` deliveries,
/// all delivered.
async fn customer_deliveries_delivered(
    app: &TestApp,
    customer_id: i64,
    count: usize,
) -> Vec<pb::Delivery> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let deliveries = notifications(app)
            .list_deliveries(pb::ListDeliveriesRequest {
                customer_id,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .deliveries;
        let delivered = i32::from(pb::DeliveryStatus::Delivered);
        if deliveries.len() == count && deliveries.iter().all(|d| d.status == delivered) {
            return deliveries;
        }
        assert!(tokio::time::Instant::now() < deadline, "{deliveries:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_prepaid_balance_crossing_its_threshold_alerts_once_each_way_by_webhook_and_email() {
    let smtp = smtp_server().await;
    let url = format!("smtp://127.0.0.1:{}?tls=opportunistic", smtp.port);
    let mailer = billing::delivery::email::Mailer::new(&url, "billing@acme.example").unwrap();
    let app = app_delivering(DeliveryConfig {
        mailer: Some(mailer),
        ..insecure("100ms")
    })
    .await;
    let mut receiver = receiver(vec![]).await;
    let operator = app.operator("acme").await;
    let webhook = notifications(&app)
        .create_webhook(pb::CreateWebhookRequest {
            operator_id: operator.id,
            url: format!("http://{}/alerts", receiver.addr),
            events: vec!["balance.low".into(), "balance.recovered".into()],
        })
        .await
        .unwrap()
        .into_inner();
    // 1 EUR a minute, billed by the minute.
    let plan = plan_with(&app, PlanKind::Prepaid, 0, 1_000_000, 60, 0).await;
    let customer = app
        .customers
        .clone()
        .create_customer(pb::CreateCustomerRequest {
            name: "Ada".into(),
            phone_number: "+14155550100".into(),
            plan_id: plan.id,
            operator_ids: vec![operator.id],
            email: "ada@example.com".into(),
            low_balance_threshold_micros: Some(5_000_000),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(customer.low_balance_threshold_micros, Some(5_000_000));
    app.clock.set(at("2026-10-20T12:00:00Z"));

    // From 0, below the threshold but never alerted, to 10 EUR: nothing.
    assert_eq!(
        top_up(&app, customer.id, 10_000_000, "t1").await,
        10_000_000
    );
    // 10 → 7 EUR, nothing; 7 → 4 EUR crosses: one balance.low; 4 → 1 EUR,
    // still low: nothing more.
    for (n, started) in ["10:00", "10:10", "10:20"].iter().enumerate() {
        let call = add_call_at(&app, customer.id, 180, &format!("2026-10-20T{started}:00Z")).await;
        assert_eq!(call.cost_micros, 3_000_000, "call {n}");
    }
    let low = receiver.next().await;
    assert_eq!(low.event, "balance.low");
    let t = chrono::Utc::now().timestamp();
    assert!(
        verify(&webhook.secret, &low.signature, &low.body, t),
        "{low:?}"
    );
    let body: serde_json::Value = serde_json::from_slice(&low.body).unwrap();
    assert_eq!(body["type"], "balance.low");
    assert_eq!(body["id"], low.delivery_id.as_str());
    assert_eq!(body["data"]["customerId"], customer.id.to_string());
    assert_eq!(body["data"]["balanceMicros"], "4000000");
    assert_eq!(body["data"]["thresholdMicros"], "5000000");
    assert_eq!(body["data"]["currencyCode"], "EUR");

    // 1 → 3 EUR, still low: nothing; 3 → 6 EUR: one balance.recovered; a
    // repeated top-up request credits nothing and alerts nothing.
    assert_eq!(top_up(&app, customer.id, 2_000_000, "t2").await, 3_000_000);
    assert_eq!(top_up(&app, customer.id, 3_000_000, "t3").await, 6_000_000);
    assert_eq!(top_up(&app, customer.id, 3_000_000, "t3").await, 6_000_000);
    let recovered = receiver.next().await;
    assert_eq!(recovered.event, "balance.recovered");
    let body: serde_json::Value = serde_json::from_slice(&recovered.body).unwrap();
    assert_eq!(body["data"]["balanceMicros"], "6000000");

    // Two alerts, each by webhook and email, and nothing else.
    let deliveries = customer_deliveries_delivered(&app, customer.id, 4).await;
    let mut kinds: Vec<(String, i32)> = deliveries
        .iter()
        .map(|d| (d.event.clone(), d.channel))
        .collect();
    kinds.sort();
    let (email, hook) = (
        i32::from(pb::DeliveryChannel::Email),
        i32::from(pb::DeliveryChannel::Webhook),
    );
    assert_eq!(
        kinds,
        [
            ("balance.low".to_owned(), email),
            ("balance.low".to_owned(), hook),
            ("balance.recovered".to_owned(), email),
            ("balance.recovered".to_owned(), hook),
        ]
    );
    assert!(
        receiver.requests.try_recv().is_err(),
        "one request per alert"
    );
    let mut mail = received_mail(&smtp.maildir.path().join("mail"));
    mail.sort_by_key(|m| m["subject"].as_str().unwrap().to_owned());
    assert_eq!(mail.len(), 2, "{mail:?}");
    assert!(mail.iter().all(|m| m["to"] == "ada@example.com"));
    assert_eq!(mail[0]["subject"], "Your balance is back above EUR 5.00");
    assert_eq!(mail[1]["subject"], "Your balance is low: EUR 4.00");
    let text = mail[1]["text"].as_str().unwrap();
    assert!(
        text.contains("EUR 4.00") && text.contains("EUR 5.00"),
        "{text}"
    );
    assert!(mail[1]["html"].as_str().unwrap().contains("EUR 4.00"));
}

#[tokio::test]
async fn a_low_balance_threshold_is_set_and_cleared_for_prepaid_customers_only() {
    let app = app_delivering(insecure("100ms")).await;
    let prepaid = plan_with(&app, PlanKind::Prepaid, 0, 1_000_000, 60, 0).await;
    let postpaid = plan_with(&app, PlanKind::Postpaid, 0, 1_000_000, 60, 0).await;
    let create = |plan_id: i64, threshold: Option<i64>| pb::CreateCustomerRequest {
        name: "Ada".into(),
        phone_number: "+14155550100".into(),
        plan_id,
        low_balance_threshold_micros: threshold,
        ..Default::default()
    };
    assert_status(
        app.customers
            .clone()
            .create_customer(create(postpaid.id, Some(1)))
            .await,
        Code::FailedPrecondition,
        "low_balance_threshold_micros",
    );
    assert_status(
        app.customers
            .clone()
            .create_customer(create(prepaid.id, Some(-1)))
            .await,
        Code::InvalidArgument,
        "low_balance_threshold_micros",
    );
    let customer = app
        .customers
        .clone()
        .create_customer(create(prepaid.id, None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(customer.low_balance_threshold_micros, None);

    let update = |threshold: Option<i64>, mask: &[&str]| pb::UpdateCustomerRequest {
        customer: Some(pb::Customer {
            id: customer.id,
            low_balance_threshold_micros: threshold,
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: mask.iter().map(|p| (*p).to_owned()).collect(),
        }),
    };
    let set = app
        .customers
        .clone()
        .update_customer(update(Some(0), &[]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        set.low_balance_threshold_micros,
        Some(0),
        "0 is a threshold"
    );
    let cleared = app
        .customers
        .clone()
        .update_customer(update(None, &["low_balance_threshold_micros"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cleared.low_balance_threshold_micros, None);
    assert_eq!(
        app.get_customer(customer.id)
            .await
            .low_balance_threshold_micros,
        None
    );
    assert_status(
        app.customers
            .clone()
            .update_customer(update(Some(2_000_000_000_000_000), &[]))
            .await,
        Code::InvalidArgument,
        "customer.low_balance_threshold_micros",
    );
}
