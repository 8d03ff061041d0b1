//! Throughput of the ingestion paths and of a billing cycle, through real
//! gRPC clients against the real server on a fresh database.
//!
//! `cargo bench --bench throughput` (SQLite in a temporary directory), or with
//! `BENCH_DATABASE_URL=postgres://…/db_that_may_be_wiped` for PostgreSQL.
//! Compare the ratios within one run: the machine is shared and noisy.

use std::time::{Duration, Instant};

use billing::app::{Application, Config, Limits};
use billing::clock::Clock;
use billing::grpc::pb::call_service_client::CallServiceClient;
use billing::grpc::pb::customer_service_client::CustomerServiceClient;
use billing::grpc::pb::invoice_service_client::InvoiceServiceClient;
use billing::grpc::pb::{self, add_call_request::Duration as CallDuration};
use chrono::{DateTime, Utc};
use tonic::transport::Channel;

const CUSTOMERS: i64 = 1_000;
const UNARY_CALLS: i64 = 2_000;
const CONCURRENT_CLIENTS: i64 = 16;
const STREAMED_CALLS: i64 = 50_000;
/// Customers on a plan with tariffs (peak, off-peak, weekend, one
/// international prefix with a connect fee), streamed to after the others.
const TARIFFED_CUSTOMERS: i64 = 100;

fn tariff(name: &str, prefix: &str, window: (i32, i32), days: &[i32], rate: i64) -> pb::Tariff {
    pb::Tariff {
        name: name.into(),
        destination_prefix: prefix.into(),
        days: days.to_vec(),
        start_minute: window.0,
        end_minute: window.1,
        per_minute_micros: rate,
        connect_fee_micros: if prefix.is_empty() { 0 } else { 50_000 },
        first_increment_seconds: if prefix.is_empty() { 0 } else { 60 },
        billing_increment_seconds: 1,
    }
}

fn record(customer_id: i64, n: i64, start: DateTime<Utc>) -> pb::AddCallRequest {
    pb::AddCallRequest {
        customer_id,
        duration: Some(CallDuration::DurationSeconds(1 + n % 900)),
        started_at: Some(prost_types::Timestamp {
            seconds: start.timestamp() + n,
            nanos: 0,
        }),
        call_id: format!("bench-{n}"),
        caller_number: "+14155550100".into(),
        callee_number: "+12025550123".into(),
    }
}

fn rate(label: &str, count: i64, elapsed: Duration) -> f64 {
    let per_second = count as f64 / elapsed.as_secs_f64();
    println!(
        "{label:<44} {count:>7} in {:>8.3} s = {per_second:>9.0}/s",
        elapsed.as_secs_f64()
    );
    per_second
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let database_url = std::env::var("BENCH_DATABASE_URL")
        .unwrap_or_else(|_| format!("sqlite://{}", dir.path().join("bench.db").display()));
    let start: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().expect("instant");
    let clock = Clock::starting_at("2026-03-15T00:00:00Z".parse().expect("instant"));
    let app = Application::build(Config {
        listen: "127.0.0.1:0".parse().expect("address"),
        database_url: database_url.clone(),
        clock: clock.clone(),
        billing_tz: chrono_tz::Tz::UTC,
        scheduler: false,
        shutdown_grace: Duration::from_secs(1),
        limits: Limits::default(),
        auth: false,
        token_ttl: billing::app::DEFAULT_TOKEN_TTL,
        tls: None,
    })
    .await
    .expect("application starts");
    let addr = app.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut customers = CustomerServiceClient::new(channel.clone());
    let mut calls = CallServiceClient::new(channel.clone());
    let mut invoices = InvoiceServiceClient::new(channel.clone());
    println!(
        "database: {}",
        database_url.split('?').next().unwrap_or_default()
    );

    clock.set("2026-01-01T00:00:00Z".parse().expect("instant"));
    let plan = customers
        .create_plan(pb::CreatePlanRequest {
            name: "bench".into(),
            kind: pb::PlanKind::Postpaid.into(),
            currency_code: "USD".into(),
            monthly_fee_micros: 5_000_000,
            per_minute_micros: 120_000,
            billing_increment_seconds: 6,
            included_minutes: 10,
            tariffs: Vec::new(),
            included_minutes_tariffs: Vec::new(),
        })
        .await
        .expect("plan")
        .into_inner();
    let mut ids = Vec::new();
    for n in 0..CUSTOMERS {
        let customer = customers
            .create_customer(pb::CreateCustomerRequest {
                name: format!("Customer {n}"),
                phone_number: format!("+1555{n:07}"),
                plan_id: plan.id,
                operator_ids: vec![],
            })
            .await
            .expect("customer")
            .into_inner();
        ids.push(customer.id);
    }
    let weekdays = [1, 2, 3, 4, 5];
    let tariffed_plan = customers
        .create_plan(pb::CreatePlanRequest {
            name: "bench tariffs".into(),
            kind: pb::PlanKind::Postpaid.into(),
            currency_code: "USD".into(),
            monthly_fee_micros: 5_000_000,
            per_minute_micros: 120_000,
            billing_increment_seconds: 6,
            included_minutes: 10,
            tariffs: vec![
                tariff("peak", "", (480, 1320), &weekdays, 120_000),
                tariff("off-peak", "", (1320, 480), &weekdays, 60_000),
                tariff("weekend", "", (0, 0), &[6, 7], 30_000),
                tariff("uk", "44", (0, 0), &[], 600_000),
            ],
            included_minutes_tariffs: Vec::new(),
        })
        .await
        .expect("tariffed plan")
        .into_inner();
    let mut tariffed_ids = Vec::new();
    for n in 0..TARIFFED_CUSTOMERS {
        let customer = customers
            .create_customer(pb::CreateCustomerRequest {
                name: format!("Tariffed {n}"),
                phone_number: format!("+1666{n:07}"),
                plan_id: tariffed_plan.id,
                operator_ids: vec![],
            })
            .await
            .expect("customer")
            .into_inner();
        tariffed_ids.push(customer.id);
    }
    clock.set("2026-01-31T00:00:00Z".parse().expect("instant"));
    let customer_of = |n: i64| ids[usize::try_from(n % CUSTOMERS).unwrap_or(0)];

    let began = Instant::now();
    for n in 0..UNARY_CALLS {
        calls
            .add_call(record(customer_of(n), n, start))
            .await
            .expect("add call");
    }
    let unary = rate(
        "AddCall, one client, sequential",
        UNARY_CALLS,
        began.elapsed(),
    );

    let began = Instant::now();
    let per_client = UNARY_CALLS / CONCURRENT_CLIENTS;
    let tasks: Vec<_> = (0..CONCURRENT_CLIENTS)
        .map(|client| {
            let mut calls = calls.clone();
            let ids = ids.clone();
            tokio::spawn(async move {
                for i in 0..per_client {
                    let n = UNARY_CALLS + client * per_client + i;
                    let customer = ids[usize::try_from(n % CUSTOMERS).unwrap_or(0)];
                    calls
                        .add_call(record(customer, n, start))
                        .await
                        .expect("add call");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("client task");
    }
    rate(
        "AddCall, 16 concurrent clients",
        per_client * CONCURRENT_CLIENTS,
        began.elapsed(),
    );

    let first = 2 * UNARY_CALLS;
    let records: Vec<_> = (first..first + STREAMED_CALLS)
        .map(|n| record(customer_of(n), n, start))
        .collect();
    let began = Instant::now();
    let report = calls
        .ingest_calls(tokio_stream::iter(records.clone()))
        .await
        .expect("ingest")
        .into_inner();
    assert_eq!(report.accepted, STREAMED_CALLS);
    let streamed = rate("IngestCalls, one stream", STREAMED_CALLS, began.elapsed());

    let began = Instant::now();
    let replay = calls
        .ingest_calls(tokio_stream::iter(records))
        .await
        .expect("replay")
        .into_inner();
    assert_eq!(replay.duplicates, STREAMED_CALLS);
    rate(
        "IngestCalls, replay (all duplicates)",
        STREAMED_CALLS,
        began.elapsed(),
    );

    let first = first + STREAMED_CALLS;
    let tariffed: Vec<_> = (first..first + STREAMED_CALLS)
        .map(|n| {
            let customer = tariffed_ids[usize::try_from(n % TARIFFED_CUSTOMERS).unwrap_or(0)];
            let mut call = record(customer, n, start);
            if n % 4 == 0 {
                call.callee_number = "+442071234567".into();
            }
            call
        })
        .collect();
    let began = Instant::now();
    let report = calls
        .ingest_calls(tokio_stream::iter(tariffed))
        .await
        .expect("ingest tariffed")
        .into_inner();
    assert_eq!(report.accepted, STREAMED_CALLS);
    let tariffed_rate = rate(
        "IngestCalls, one stream, tariffed plan",
        STREAMED_CALLS,
        began.elapsed(),
    );

    clock.set("2026-02-01T00:00:01Z".parse().expect("instant"));
    let began = Instant::now();
    let cycle = invoices
        .run_billing_cycle(pb::RunBillingCycleRequest {
            period: Some(pb::BillingPeriod {
                year: 2026,
                month: 1,
            }),
        })
        .await
        .expect("cycle")
        .into_inner();
    assert_eq!(cycle.issued, CUSTOMERS + TARIFFED_CUSTOMERS);
    rate(
        "RunBillingCycle, invoices issued",
        CUSTOMERS + TARIFFED_CUSTOMERS,
        began.elapsed(),
    );

    println!("IngestCalls / sequential AddCall: {:.1}x", streamed / unary);
    println!(
        "IngestCalls tariffed / untariffed: {:.2}x",
        tariffed_rate / streamed
    );
    let _ = stop.send(());
    let _ = server.await;
}
