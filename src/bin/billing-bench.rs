//! `billing-bench`: drives a separately started `billing serve` over
//! loopback and prints every figure of BENCHMARKS.md beside a reference
//! measured in the same run, and their ratio.
//!
//! ```text
//! cargo build --release --bins
//! target/release/billing-bench                                  # SQLite
//! target/release/billing-bench --database postgres://postgres@127.0.0.1:5432/test
//! ```
//!
//! It starts `billing serve` (the binary next to its own) on a fresh
//! database, generates its data from a fixed seed, and measures:
//! - unary load: `AddCall` against `grpc.health.v1.Health/Check` on the
//!   same server with the same client (connections × streams in flight);
//! - ingestion: `IngestCalls` against a raw prepared multi-row insert of
//!   the same rows into a second database with the same migrated schema;
//! - the billing cycle: `RunBillingCycle` against the aggregate reference
//!   (one `GROUP BY customer_id` over the month's calls feeding a
//!   set-based insert of the invoices and lines) on that copy, and the old
//!   reference beside it (the same plus an update rewriting every call
//!   row, as billing once did); on PostgreSQL the call rows the cycle
//!   updated, and `GetCallHistory` just before and just after it (before
//!   the references run);
//! - `GetCallHistory` pages of a customer with many calls, 16 clients;
//! - streaming a customer's consolidated months, the invoice feed and a
//!   whole call history page by page;
//! - the server's peak resident memory after each phase.
//!
//! Nothing here asserts a timing; it checks only that both sides did the
//! same work (same rows, same invoice totals).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write as _};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use billing::domain::invoice::InvoiceLineKind;
use billing::domain::money::cost_of;
use billing::grpc::pb;
use billing::grpc::pb::account_service_client::AccountServiceClient;
use billing::grpc::pb::call_service_client::CallServiceClient;
use billing::grpc::pb::customer_service_client::CustomerServiceClient;
use billing::grpc::pb::invoice_service_client::InvoiceServiceClient;
use chrono::{DateTime, Datelike, Months, TimeZone, Utc};
use clap::Parser;
use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseBackend, DatabaseConnection, Statement,
    TransactionTrait,
};
use tokio_stream::StreamExt;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// The plan every generated customer is on: postpaid, flat rate.
const MONTHLY_FEE_MICROS: i64 = 5_000_000;
const PER_MINUTE_MICROS: i64 = 120_000;
const INCREMENT_SECONDS: i64 = 6;
/// Rows per statement and per transaction of the raw insert.
const RAW_ROWS_PER_STATEMENT: usize = 100;
const RAW_ROWS_PER_TRANSACTION: u64 = 100_000;
/// Records per IngestCalls stream.
const RECORDS_PER_STREAM: u64 = 1_000_000;
/// Concurrent clients paging call history.
const HISTORY_CLIENTS: usize = 16;
/// The paced loads of `--delivery`: AddCall from 16 streams, one request
/// every 16 ms each (1,000/s); history from 4, every 10 ms (400/s).
const ADD_CALL_PACE: Duration = Duration::from_millis(16);
const HISTORY_PACE: Duration = Duration::from_millis(10);

#[derive(Debug, Parser)]
#[command(
    about = "Benchmarks a running billing server against references measured in the same run"
)]
struct Args {
    /// `sqlite` (two files in a temporary directory) or a PostgreSQL URL;
    /// on PostgreSQL the databases `billing_bench` and `billing_bench_raw`
    /// are dropped and created on that server.
    #[arg(long, default_value = "sqlite")]
    database: String,
    /// Customers, all on one postpaid plan.
    #[arg(long, default_value_t = 10_000)]
    customers: u64,
    /// Calls in last month, all unbilled, ingested through IngestCalls.
    #[arg(long, default_value_t = 1_000_000)]
    calls: u64,
    /// Of those, the calls of customer 1 (the one whose history is paged).
    #[arg(long, default_value_t = 100_000)]
    heavy_calls: u64,
    /// Seed of the generated data.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Seconds each load (health, AddCall, history) runs.
    #[arg(long, default_value_t = 5)]
    load_seconds: u64,
    /// The `billing` binary; default: next to this one.
    #[arg(long)]
    server: Option<PathBuf>,
    /// The server's log filter (`RUST_LOG`); when given, its log lines are
    /// copied to this program's stderr.
    #[arg(long)]
    server_log: Option<String>,
    /// Also measure the raw insert rate with each index of `calls` added or
    /// dropped, on scratch databases.
    #[arg(long)]
    index_study: bool,
    /// Stop after the unary load (to profile or tune it alone).
    #[arg(long)]
    unary_only: bool,
    /// Put the customers on a prepaid plan instead (every call debits a
    /// balance, so each AddCall batch is a transaction with debits rather
    /// than one insert); implies --unary-only, since the references of the
    /// later figures are written for the postpaid plan.
    #[arg(long)]
    prepaid: bool,
    /// Run the server with authentication on, as in production: every
    /// customer is linked to one operator, and the AddCall load presents
    /// the API key of that operator's switch (`authorization: Bearer …`),
    /// so each call is authenticated and checked against the switch's
    /// operator links, while the health check needs no credentials;
    /// implies --unary-only.
    #[arg(long)]
    auth: bool,
    /// Instead of the figures above: IngestCalls and RunBillingCycle
    /// throughput with 1 and then 2 replicas of the server on one database
    /// (a fresh one per run; meant for PostgreSQL).
    #[arg(long)]
    scale_out: bool,
    /// Concurrent IngestCalls streams in --scale-out, spread over the
    /// replicas.
    #[arg(long, default_value_t = 4)]
    streams: u64,
    /// After the unary load: GenerateInvoice and AddCall latency with no
    /// invoice watcher, then with this many open WatchInvoices streams
    /// (each told of every invoice); implies --unary-only.
    #[arg(long)]
    watchers: Option<usize>,
    /// Instead of the figures above: PDF rendering rates on one core, then
    /// the billing cycle's invoices delivered by email (to a local
    /// aiosmtpd) and by webhook (to a receiver in this program), with
    /// AddCall and history latency without and during delivery.
    #[arg(long)]
    delivery: bool,
    /// Instead of the figures above: `billing import-cdr` of an Asterisk
    /// file of --calls lines against IngestCalls of the same calls (each
    /// into a fresh database), then NATS JetStream ingestion of
    /// --nats-messages messages (skipped when --nats does not answer).
    #[arg(long)]
    switch: bool,
    /// The NATS server of --switch.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats: String,
    /// Messages published for the NATS figure of --switch.
    #[arg(long, default_value_t = 200_000)]
    nats_messages: u64,
}

/// SplitMix64: a fixed seed gives the same data on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound.max(1)
    }
}

/// One generated call, as sent and as the raw insert stores it.
struct Record {
    call_id: String,
    customer_id: i64,
    started_at: DateTime<Utc>,
    duration_seconds: i64,
}

impl Record {
    fn billed_seconds(&self) -> i64 {
        (self.duration_seconds + INCREMENT_SECONDS - 1) / INCREMENT_SECONDS * INCREMENT_SECONDS
    }

    fn request(&self) -> pb::AddCallRequest {
        pb::AddCallRequest {
            customer_id: self.customer_id,
            duration: Some(pb::add_call_request::Duration::DurationSeconds(
                self.duration_seconds,
            )),
            started_at: Some(timestamp(self.started_at)),
            call_id: self.call_id.clone(),
            caller_number: customer_number(self.customer_id),
            callee_number: "+12025550123".into(),
        }
    }
}

/// The number the benchmark's customer `id` holds.
fn customer_number(id: i64) -> String {
    format!("+1555{id:08}")
}

/// The month the data lives in (last month) and how it is generated.
#[derive(Clone, Copy)]
struct Data {
    seed: u64,
    customers: u64,
    calls: u64,
    heavy_calls: u64,
    month_start: DateTime<Utc>,
    month_end: DateTime<Utc>,
    /// The plan's kind: `prepaid` or `postpaid`.
    plan_kind: &'static str,
    /// Whether every customer is linked to operator 1, whose switch pushes
    /// the calls (with --auth).
    operator_links: bool,
}

impl Data {
    /// The calls, in the order a switch would send them: by start time,
    /// spread evenly over the month, of random customers.
    fn records(self) -> impl Iterator<Item = Record> {
        let mut rng = Rng(self.seed);
        let span = u64::try_from((self.month_end - self.month_start).num_seconds()).unwrap_or(1);
        let heavy = self.heavy_calls.min(self.calls);
        (0..self.calls).map(move |n| {
            // Every `calls / heavy`-th call is customer 1's.
            let customer_id = if heavy > 0 && n % (self.calls / heavy).max(1) == 0 {
                1
            } else {
                2 + rng.below(self.customers.saturating_sub(1))
            };
            // A switch sends its records roughly in the order the calls
            // started, numbered in sequence.
            let offset = n * span.saturating_sub(1) / self.calls.max(1);
            Record {
                call_id: format!("switch-1-{n:012}"),
                customer_id: i64::try_from(customer_id).unwrap_or(1),
                started_at: self.month_start + chrono::TimeDelta::seconds(offset as i64),
                duration_seconds: 1 + rng.below(900) as i64,
            }
        })
    }
}

fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: 0,
    }
}

fn micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

type Failure = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Failure> {
    let args = Args::parse();
    let server_binary = match &args.server {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("billing"),
    };
    if !server_binary.exists() {
        return Err(format!(
            "{} not found: build it first (`cargo build --release --bins`) or pass --server",
            server_binary.display()
        )
        .into());
    }
    let now = Utc::now();
    let this_month = Utc
        .with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
        .single()
        .ok_or("no first of the month")?;
    let data = Data {
        seed: args.seed,
        customers: args.customers.max(2),
        calls: args.calls,
        heavy_calls: args.heavy_calls,
        month_start: this_month - Months::new(1),
        month_end: this_month,
        plan_kind: if args.prepaid { "prepaid" } else { "postpaid" },
        operator_links: args.auth || args.watchers.is_some(),
    };
    let scratch = Scratch::new()?;
    if args.scale_out {
        return scale_out(&args, &server_binary, scratch.path(), data).await;
    }
    if args.switch {
        return switch_bench(&args, &server_binary, scratch.path(), data).await;
    }
    if args.delivery {
        let data = Data {
            operator_links: true,
            ..data
        };
        return delivery_bench(&args, &server_binary, scratch.path(), data).await;
    }
    let (service_url, raw_url) = databases(&args.database, scratch.path()).await?;
    println!(
        "billing-bench: {} customers, {} calls in {} ({} of customer 1), seed {}, {} backend",
        data.customers,
        data.calls,
        data.month_start.format("%Y-%m"),
        data.heavy_calls.min(data.calls),
        data.seed,
        if args.database == "sqlite" {
            "SQLite"
        } else {
            "PostgreSQL"
        }
    );
    for url in [&service_url, &raw_url] {
        migrate(&server_binary, url)?;
        let db = connect(url).await?;
        seed_customers(&db, data).await?;
        db.close().await?;
    }

    let auth = args.auth || args.watchers.is_some();
    if auth {
        create_admin(&server_binary, &service_url)?;
    }
    let watcher_flags: Vec<String> = args.watchers.map_or_else(Vec::new, |watchers| {
        vec![
            "--max-invoice-watchers".into(),
            (2 * watchers).max(1024).to_string(),
            "--max-invoice-watchers-per-account".into(),
            watchers.to_string(),
        ]
    });
    let mut server = Server::start(
        &server_binary,
        &service_url,
        args.server_log.as_deref(),
        auth,
        &watcher_flags,
    )?;
    let url = format!("http://{}", server.addr);
    println!("server: pid {} at {}", server.child.id(), server.addr);
    let credentials = if auth {
        let key = api_key(&url).await?;
        println!("authentication on: the AddCall load presents the API key of operator 1's switch");
        Some(key)
    } else {
        None
    };
    println!();

    // 1. Unary load.
    println!("## Unary load ({} s each)", args.load_seconds);
    println!(
        "{:<28} {:>10} {:>9} {:>9} {:>7}",
        "load", "req/s", "p50 ms", "p99 ms", "ratio"
    );
    let seconds = Duration::from_secs(args.load_seconds);
    for (connections, streams) in [(8, 32), (16, 64)] {
        let health = load(&url, connections, streams, seconds, Rpc::Health).await?;
        let add = load(
            &url,
            connections,
            streams,
            seconds,
            Rpc::AddCall {
                customers: data.customers,
                run: connections,
                credentials: credentials.clone(),
            },
        )
        .await?;
        health.print(&format!("Health/Check {connections}x{streams}"), None);
        add.print(
            &format!("AddCall {connections}x{streams}"),
            Some(add.rate() / health.rate()),
        );
    }
    server.memory("after the unary load");
    println!();
    if args.auth {
        login_burst(&url).await?;
        server.memory("after the login burst");
        println!();
    }
    if let Some(watchers) = args.watchers {
        watcher_study(&url, data, watchers, seconds, credentials).await?;
        server.memory(&format!("with {watchers} watchers"));
        return Ok(());
    }
    if args.unary_only || args.prepaid || args.auth {
        return Ok(());
    }

    // 2. Ingestion.
    println!("## Ingestion ({} records)", data.calls);
    let began = Instant::now();
    let accepted = ingest_all(url.clone(), data).await?;
    let mut calls = CallServiceClient::connect(url.clone()).await?;
    let ingest = began.elapsed();
    let raw_db = connect(&raw_url).await?;
    let began = Instant::now();
    let inserted = raw_insert(&raw_db, data.records()).await?;
    let raw = began.elapsed();
    if accepted != inserted as i64 {
        return Err(format!("IngestCalls stored {accepted}, the raw insert {inserted}").into());
    }
    let ingest_rate = rate(accepted as f64, ingest);
    let raw_rate = rate(inserted as f64, raw);
    println!("{:<44} {:>12} {:>9}", "", "rows/s", "ratio");
    println!(
        "{:<44} {:>12.0}",
        "raw prepared insert (same schema, 100k/txn)", raw_rate
    );
    println!(
        "{:<44} {:>12.0} {:>8.2}x",
        "IngestCalls (one stream per 1M records)",
        ingest_rate,
        ingest_rate / raw_rate
    );
    server.memory("after ingestion");
    if raw_db.get_database_backend() == DatabaseBackend::Postgres {
        // What autovacuum does after a bulk load, at a time of its own
        // choosing: without statistics the planner misjudges the pages.
        for url in [&service_url, &raw_url] {
            let db = connect(url).await?;
            db.execute_unprepared("ANALYZE").await?;
            db.close().await?;
        }
        println!("(ANALYZE run on both PostgreSQL databases)");
    }
    println!();

    // 3. Billing cycle.
    println!("## Billing cycle ({} customers)", data.customers);
    let mut invoices = InvoiceServiceClient::connect(url.clone())
        .await?
        .max_decoding_message_size(64 * 1024 * 1024);
    let period = pb::BillingPeriod {
        year: data.month_start.year(),
        month: i32::try_from(data.month_start.month()).unwrap_or(1),
    };
    let history_before = load(&url, 1, HISTORY_CLIENTS, seconds, Rpc::History { data }).await?;
    let updates_before = call_row_updates(&service_url).await?;
    let began = Instant::now();
    let cycle = invoices
        .run_billing_cycle(pb::RunBillingCycleRequest {
            period: Some(period),
        })
        .await?
        .into_inner();
    let service_cycle = began.elapsed();
    // Right after the cycle, before the references: their statements run
    // on the same database server and would leave their own traces in its
    // buffers.
    let history = load(&url, 1, HISTORY_CLIENTS, seconds, Rpc::History { data }).await?;
    let updates_after = call_row_updates(&service_url).await?;
    let began = Instant::now();
    aggregate_cycle(&raw_db, data).await?;
    let raw_cycle_time = began.elapsed();
    let began = Instant::now();
    claim_every_call(&raw_db, data).await?;
    let old_reference_time = raw_cycle_time + began.elapsed();
    let service_db = connect(&service_url).await?;
    let (service_count, service_total) = invoice_totals(&service_db).await?;
    let (raw_count, raw_total) = invoice_totals(&raw_db).await?;
    if (service_count, service_total) != (raw_count, raw_total) || cycle.failed > 0 {
        return Err(format!(
            "the cycle issued {service_count} invoices totalling {service_total} ({} failed); \
             the raw SQL {raw_count} totalling {raw_total}",
            cycle.failed
        )
        .into());
    }
    println!(
        "{:<44} {:>9} {:>12} {:>9}",
        "", "seconds", "invoices/s", "ratio"
    );
    println!(
        "{:<44} {:>9.2} {:>12.0}",
        "aggregate reference (GROUP BY; invoices, lines)",
        raw_cycle_time.as_secs_f64(),
        rate(raw_count as f64, raw_cycle_time)
    );
    println!(
        "{:<44} {:>9.2} {:>12.0} {:>8.2}x",
        "old reference (the same + claim every call)",
        old_reference_time.as_secs_f64(),
        rate(raw_count as f64, old_reference_time),
        old_reference_time.as_secs_f64() / raw_cycle_time.as_secs_f64()
    );
    println!(
        "{:<44} {:>9.2} {:>12.0} {:>8.2}x",
        "RunBillingCycle",
        service_cycle.as_secs_f64(),
        rate(cycle.issued as f64, service_cycle),
        service_cycle.as_secs_f64() / raw_cycle_time.as_secs_f64()
    );
    println!("(both issued {service_count} invoices totalling {service_total} micros)");
    if let (Some(before), Some(after)) = (updates_before, updates_after) {
        println!(
            "calls rows updated by the cycle (pg_stat_user_tables.n_tup_upd): {}",
            after - before
        );
    }
    server.memory("after the billing cycle");
    println!();

    // 4. History.
    println!(
        "## GetCallHistory, pages of 100 of customer 1 ({} calls), {HISTORY_CLIENTS} clients",
        data.heavy_calls.min(data.calls)
    );
    println!(
        "{:<28} {:>10} {:>9} {:>9}",
        "load", "req/s", "p50 ms", "p99 ms"
    );
    history_before.print("before the billing cycle", None);
    history.print(
        "after it (ratio: p99)",
        Some(history.percentile(0.99) / history_before.percentile(0.99).max(1e-9)),
    );
    server.memory("after history");
    println!();

    // 5. Streams over everything.
    println!("## Streams");
    let began = Instant::now();
    let mut pages = 0;
    let mut paged = 0;
    let mut token = String::new();
    loop {
        let page = calls
            .get_call_history(pb::GetCallHistoryRequest {
                customer_id: 1,
                page_size: 1000,
                page_token: token,
                ..Default::default()
            })
            .await?
            .into_inner();
        pages += 1;
        paged += page.calls.len();
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    println!(
        "whole history of customer 1: {paged} calls in {pages} pages, {:.2} s",
        began.elapsed().as_secs_f64()
    );
    let began = Instant::now();
    let mut months = invoices
        .stream_consolidated(pb::StreamConsolidatedRequest {
            customer_id: 1,
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut consolidated = 0;
    while let Some(month) = months.next().await {
        month?;
        consolidated += 1;
    }
    println!(
        "StreamConsolidated of customer 1: {consolidated} months, {:.3} s",
        began.elapsed().as_secs_f64()
    );
    let began = Instant::now();
    let mut feed = invoices
        .watch_invoices(pb::WatchInvoicesRequest {
            after_invoice_id: 0,
        })
        .await?
        .into_inner();
    let mut watched = 0;
    while watched < service_count {
        match feed.next().await {
            Some(invoice) => {
                invoice?;
                watched += 1;
            }
            None => break,
        }
    }
    drop(feed);
    println!(
        "WatchInvoices replay: {watched} invoices, {:.2} s",
        began.elapsed().as_secs_f64()
    );
    server.memory("after the streams");
    println!();
    println!(
        "peak RSS of the server: {:.0} MB",
        server.peak_kib() as f64 / 1024.0
    );
    drop(server);

    if args.index_study {
        println!();
        index_study(&server_binary, &args.database, scratch.path(), data).await?;
    }
    Ok(())
}

/// `--scale-out`: for 1 and 2 replicas of the server on a fresh database
/// each time, the same records ingested through `--streams` concurrent
/// IngestCalls streams spread over the replicas, then `RunBillingCycle` of
/// last month sent to every replica at once. Checks that both runs issued
/// the same invoices.
async fn scale_out(
    args: &Args,
    binary: &PathBuf,
    scratch: &std::path::Path,
    data: Data,
) -> Result<(), Failure> {
    println!(
        "billing-bench --scale-out: {} customers, {} calls in {}, seed {}, {} streams",
        data.customers,
        data.calls,
        data.month_start.format("%Y-%m"),
        data.seed,
        args.streams
    );
    println!(
        "{:<9} {:>14} {:>12} {:>14} {:>12}",
        "replicas", "ingest rows/s", "ingest s", "invoices/s", "cycle s"
    );
    let mut first: Option<(i64, i64)> = None;
    for replicas in [1_usize, 2] {
        let (url, _) = databases(&args.database, scratch).await?;
        migrate(binary, &url)?;
        let db = connect(&url).await?;
        seed_customers(&db, data).await?;
        let servers = (0..replicas)
            .map(|_| Server::start(binary, &url, args.server_log.as_deref(), false, &[]))
            .collect::<Result<Vec<_>, _>>()?;
        let endpoints: Vec<String> = servers
            .iter()
            .map(|server| format!("http://{}", server.addr))
            .collect();

        let began = Instant::now();
        let streams = args.streams.max(1);
        let mut tasks = Vec::new();
        for stream in 0..streams {
            let endpoint = endpoints[stream as usize % replicas].clone();
            tasks.push(tokio::spawn(async move {
                let mut calls = CallServiceClient::connect(endpoint)
                    .await?
                    .max_encoding_message_size(64 * 1024 * 1024);
                let records: Vec<pb::AddCallRequest> = data
                    .records()
                    .enumerate()
                    .filter(|(n, _)| *n as u64 % streams == stream)
                    .map(|(_, record)| record.request())
                    .collect();
                let report = calls
                    .ingest_calls(tokio_stream::iter(records))
                    .await?
                    .into_inner();
                Ok::<i64, Failure>(report.accepted)
            }));
        }
        let mut accepted = 0;
        for task in tasks {
            accepted += task.await??;
        }
        let ingest = began.elapsed();
        if accepted != data.calls as i64 {
            return Err(format!("IngestCalls stored {accepted} of {} calls", data.calls).into());
        }
        db.execute_unprepared("ANALYZE").await?;

        let period = pb::BillingPeriod {
            year: data.month_start.year(),
            month: i32::try_from(data.month_start.month()).unwrap_or(1),
        };
        let began = Instant::now();
        let mut cycles = Vec::new();
        for endpoint in &endpoints {
            let endpoint = endpoint.clone();
            cycles.push(tokio::spawn(async move {
                let mut invoices = InvoiceServiceClient::connect(endpoint).await?;
                let cycle = invoices
                    .run_billing_cycle(pb::RunBillingCycleRequest {
                        period: Some(period),
                    })
                    .await?
                    .into_inner();
                Ok::<_, Failure>(cycle)
            }));
        }
        for cycle in cycles {
            let cycle = cycle.await??;
            if cycle.failed > 0 {
                return Err(
                    format!("RunBillingCycle failed for {} customers", cycle.failed).into(),
                );
            }
        }
        let cycle = began.elapsed();
        let totals = invoice_totals(&db).await?;
        if *first.get_or_insert(totals) != totals {
            return Err(
                format!("the runs issued different invoices: {first:?} and {totals:?}").into(),
            );
        }
        println!(
            "{:<9} {:>14.0} {:>12.2} {:>14.0} {:>12.2}",
            replicas,
            rate(accepted as f64, ingest),
            ingest.as_secs_f64(),
            rate(totals.0 as f64, cycle),
            cycle.as_secs_f64()
        );
        drop(servers);
        db.close().await?;
    }
    if let Some((count, total)) = first {
        println!("(each run issued {count} invoices totalling {total} micros)");
    }
    Ok(())
}

/// A directory for the SQLite files, removed at the end.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Scratch, Failure> {
        let path = std::env::temp_dir().join(format!("billing-bench-{}", std::process::id()));
        std::fs::create_dir_all(&path)?;
        Ok(Scratch(path))
    }

    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The service's and the reference's database URLs, both empty.
async fn databases(database: &str, scratch: &std::path::Path) -> Result<(String, String), Failure> {
    if database == "sqlite" {
        let url = |name: &str| format!("sqlite://{}", scratch.join(name).display());
        return Ok((url("service.db"), url("raw.db")));
    }
    Ok((
        scratch_database(database, "billing_bench").await?,
        scratch_database(database, "billing_bench_raw").await?,
    ))
}

/// Drops and creates database `name` on the PostgreSQL server of `admin`;
/// returns its URL.
async fn scratch_database(admin: &str, name: &str) -> Result<String, Failure> {
    let db = Database::connect(admin).await?;
    db.execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await?;
    db.execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await?;
    db.close().await?;
    let base = admin.rsplit_once('/').map_or(admin, |(base, _)| base);
    Ok(format!("{base}/{name}"))
}

/// A connection configured as the service configures its own.
async fn connect(url: &str) -> Result<DatabaseConnection, Failure> {
    let mut options = ConnectOptions::new(url);
    options
        .max_connections(4)
        .sqlx_logging(false)
        .map_sqlx_sqlite_opts(|opts| {
            opts.create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true)
        });
    Ok(Database::connect(options).await?)
}

/// Logins sent at once by the burst of a run with authentication on.
const LOGIN_BURST: usize = 500;

/// [`LOGIN_BURST`] logins of unknown usernames at once (each checked
/// against the decoy hash, unless refused for load), and the admin's own
/// login sent in the middle of them: how they were answered, how long the
/// burst and the admin's login took.
async fn login_burst(url: &str) -> Result<(), Failure> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())?
        .connect()
        .await?;
    let began = Instant::now();
    let attempts: Vec<_> = (0..LOGIN_BURST)
        .map(|n| {
            let mut accounts = AccountServiceClient::new(channel.clone());
            tokio::spawn(async move {
                let answer = accounts
                    .login(pb::LoginRequest {
                        username: format!("nobody-{n}"),
                        password: "a wrong password".into(),
                    })
                    .await;
                answer.map_or_else(|status| status.code(), |_| tonic::Code::Ok)
            })
        })
        .collect();
    let admin_began = Instant::now();
    let admin_answer = AccountServiceClient::new(channel.clone())
        .login(pb::LoginRequest {
            username: BENCH_ADMIN.into(),
            password: BENCH_PASSWORD.into(),
        })
        .await
        .map_or_else(|status| status.code(), |_| tonic::Code::Ok);
    let admin = admin_began.elapsed();
    let mut codes: BTreeMap<String, usize> = BTreeMap::new();
    for attempt in attempts {
        *codes.entry(format!("{:?}", attempt.await?)).or_default() += 1;
    }
    println!(
        "## Login burst: {LOGIN_BURST} logins of unknown usernames at once, {:.2} s",
        began.elapsed().as_secs_f64()
    );
    println!("answers: {codes:?}");
    println!(
        "the admin's login, sent amid them: {admin_answer:?} in {:.1} ms",
        admin.as_secs_f64() * 1000.0
    );
    Ok(())
}

/// The admin account of a run with authentication on.
const BENCH_ADMIN: &str = "bench";
const BENCH_PASSWORD: &str = "bench password, not a secret";

/// Creates the admin account with `billing create-admin`, as an operator
/// would on a new installation.
fn create_admin(binary: &PathBuf, url: &str) -> Result<(), Failure> {
    let mut child = Command::new(binary)
        .args(["--database-url", url, "create-admin", BENCH_ADMIN])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    child
        .stdin
        .take()
        .ok_or("no stdin")?
        .write_all(format!("{BENCH_PASSWORD}\n").as_bytes())?;
    if !child.wait()?.success() {
        return Err(format!("`billing create-admin` failed on {url}").into());
    }
    Ok(())
}

/// Signs in as the admin, creates the account of operator 1's switch and
/// an API key for it, as a switch is given one: the `authorization` value
/// the load presents. Each call is then checked against the switch's
/// operator links.
async fn api_key(url: &str) -> Result<MetadataValue<Ascii>, Failure> {
    let mut accounts = AccountServiceClient::connect(url.to_owned()).await?;
    let login = accounts
        .login(pb::LoginRequest {
            username: BENCH_ADMIN.into(),
            password: BENCH_PASSWORD.into(),
        })
        .await?
        .into_inner();
    let admin: MetadataValue<Ascii> = format!("Bearer {}", login.access_token).parse()?;
    let mut request = tonic::Request::new(pb::CreateAccountRequest {
        username: "bench-switch".into(),
        password: BENCH_PASSWORD.into(),
        role: pb::Role::Switch.into(),
        operator_id: 1,
        customer_id: 0,
    });
    request
        .metadata_mut()
        .insert("authorization", admin.clone());
    let switch = accounts.create_account(request).await?.into_inner();
    let mut request = tonic::Request::new(pb::CreateApiKeyRequest {
        name: "bench switch".into(),
        account_id: switch.id,
    });
    request.metadata_mut().insert("authorization", admin);
    let key = accounts.create_api_key(request).await?.into_inner();
    Ok(format!("Bearer {}", key.secret).parse()?)
}

fn migrate(binary: &PathBuf, url: &str) -> Result<(), Failure> {
    let status = Command::new(binary)
        .args(["--database-url", url, "migrate"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    if !status.success() {
        return Err(format!("`billing migrate` failed on {url}").into());
    }
    Ok(())
}

/// `?` placeholders as `backend` numbers them.
fn numbered(backend: DatabaseBackend, sql: &str) -> String {
    if backend != DatabaseBackend::Postgres {
        return sql.to_owned();
    }
    let mut next = 0;
    let mut out = String::with_capacity(sql.len() * 2);
    for c in sql.chars() {
        if c == '?' {
            next += 1;
            out.push_str(&format!("${next}"));
        } else {
            out.push(c);
        }
    }
    out
}

/// The plan (id 1) and customers 1..=n, created as the month began.
async fn seed_customers(db: &DatabaseConnection, data: Data) -> Result<(), Failure> {
    let backend = db.get_database_backend();
    let created = micros(data.month_start);
    db.execute_raw(Statement::from_sql_and_values(
        backend,
        numbered(
            backend,
            "INSERT INTO plans (id, name, kind, currency_code, monthly_fee_micros, \
               per_minute_micros, billing_increment_seconds, included_minutes, created_at) \
             VALUES (1, 'bench', ?, 'USD', ?, ?, ?, 0, ?)",
        ),
        [
            data.plan_kind.into(),
            MONTHLY_FEE_MICROS.into(),
            PER_MINUTE_MICROS.into(),
            i32::try_from(INCREMENT_SECONDS).unwrap_or(1).into(),
            created.into(),
        ],
    ))
    .await?;
    let txn = db.begin().await?;
    let ids: Vec<u64> = (1..=data.customers).collect();
    for chunk in ids.chunks(500) {
        let rows = vec!["(?, ?, ?, 1, 0, ?)"; chunk.len()].join(", ");
        let mut values: Vec<sea_orm::Value> = Vec::with_capacity(chunk.len() * 4);
        for id in chunk {
            values.push((*id as i64).into());
            values.push(format!("Customer {id}").into());
            values.push(customer_number(*id as i64).into());
            values.push(created.into());
        }
        txn.execute_raw(Statement::from_sql_and_values(
            backend,
            numbered(
                backend,
                &format!(
                    "INSERT INTO customers (id, name, phone_number, plan_id, balance_micros, \
                       created_at) VALUES {rows}"
                ),
            ),
            values,
        ))
        .await?;
    }
    if data.operator_links {
        txn.execute_raw(Statement::from_sql_and_values(
            backend,
            numbered(
                backend,
                "INSERT INTO operators (id, name, created_at) VALUES (1, 'bench operator', ?)",
            ),
            [created.into()],
        ))
        .await?;
        txn.execute_unprepared(
            "INSERT INTO customer_operators (customer_id, operator_id) \
             SELECT id, 1 FROM customers",
        )
        .await?;
    }
    txn.execute_unprepared(
        "INSERT INTO customer_numbers (customer_id, number, valid_from, valid_until) \
         SELECT id, phone_number, created_at, NULL FROM customers",
    )
    .await?;
    txn.commit().await?;
    if backend == DatabaseBackend::Postgres {
        // Explicit ids leave the sequences behind.
        for table in ["plans", "customers", "operators"] {
            db.execute_unprepared(&format!(
                "SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT MAX(id) FROM {table}))"
            ))
            .await?;
        }
    }
    Ok(())
}

/// Inserts `records` rated as the service rates them, with one prepared
/// multi-row statement, 100,000 rows per transaction; returns the count.
async fn raw_insert(
    db: &DatabaseConnection,
    records: impl Iterator<Item = Record>,
) -> Result<u64, Failure> {
    let backend = db.get_database_backend();
    // SQLite's calls have no rowid (migration 000008): ids are the
    // inserter's, here consecutive from 1 (the table starts empty).
    let sqlite = backend == DatabaseBackend::Sqlite;
    let id = if sqlite { ("id, ", "?, ") } else { ("", "") };
    let columns = format!(
        "INSERT INTO calls ({}call_id, customer_id, started_at, duration_seconds, \
         billed_seconds, per_minute_micros, billing_increment_seconds, cost_micros, \
         caller_number, callee_number, received_at, connect_fee_micros, billing_period, \
         started_period) VALUES ",
        id.0
    );
    let row = format!("({}?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?)", id.1);
    let full = numbered(
        backend,
        &format!(
            "{columns}{}",
            vec![row.as_str(); RAW_ROWS_PER_STATEMENT].join(", ")
        ),
    );
    let received = micros(Utc::now());
    let mut count = 0_u64;
    let mut txn = db.begin().await?;
    let mut values: Vec<sea_orm::Value> = Vec::with_capacity(RAW_ROWS_PER_STATEMENT * 12);
    let mut rows = 0;
    for record in records {
        let billed = record.billed_seconds();
        if sqlite {
            values.push(i64::try_from(count + 1).unwrap_or(i64::MAX).into());
        }
        values.extend([
            record.call_id.into(),
            record.customer_id.into(),
            micros(record.started_at).into(),
            record.duration_seconds.into(),
            billed.into(),
            PER_MINUTE_MICROS.into(),
            i32::try_from(INCREMENT_SECONDS).unwrap_or(1).into(),
            cost_of(billed, PER_MINUTE_MICROS).into(),
            "+14155550100".into(),
            "+12025550123".into(),
            received.into(),
            month_key(record.started_at).into(),
            month_key(record.started_at).into(),
        ]);
        rows += 1;
        count += 1;
        if rows == RAW_ROWS_PER_STATEMENT {
            txn.execute_raw(Statement::from_sql_and_values(
                backend,
                full.clone(),
                std::mem::take(&mut values),
            ))
            .await?;
            rows = 0;
        }
        if count.is_multiple_of(RAW_ROWS_PER_TRANSACTION) {
            txn.commit().await?;
            txn = db.begin().await?;
        }
    }
    if rows > 0 {
        let tail = numbered(
            backend,
            &format!("{columns}{}", vec![row.as_str(); rows].join(", ")),
        );
        txn.execute_raw(Statement::from_sql_and_values(backend, tail, values))
            .await?;
    }
    txn.commit().await?;
    Ok(count)
}

/// A call's billing month as the service stores it (`year * 100 +
/// month`, UTC: the server runs with the default time zone).
fn month_key(at: DateTime<Utc>) -> i32 {
    at.year() * 100 + i32::try_from(at.month()).unwrap_or(1)
}

/// The aggregate reference: the month's invoices by set-based SQL, in one
/// transaction: one `GROUP BY customer_id` over the month's calls feeding
/// the insert of the invoices with their totals, then a fee line and a
/// usage line each.
async fn aggregate_cycle(db: &DatabaseConnection, data: Data) -> Result<(), Failure> {
    let backend = db.get_database_backend();
    let (year, month) = (data.month_start.year(), data.month_start.month() as i32);
    let (start, end) = (micros(data.month_start), micros(data.month_end));
    let run = |sql: &str, values: Vec<sea_orm::Value>| {
        Statement::from_sql_and_values(backend, numbered(backend, sql), values)
    };
    let txn = db.begin().await?;
    txn.execute_raw(run(
        "INSERT INTO invoices (number, customer_id, period_year, period_month, period_start, \
           period_end, issued_at, currency_code, call_count, billed_seconds, usage_micros, \
           monthly_fee_micros, total_micros) \
         SELECT 'raw-' || cu.id, cu.id, ?, ?, ?, ?, ?, 'USD', COALESCE(u.n, 0), \
           COALESCE(u.s, 0), COALESCE(u.c, 0), ?, ? + COALESCE(u.c, 0) \
         FROM customers cu LEFT JOIN ( \
           SELECT customer_id, COUNT(*) AS n, SUM(billed_seconds) AS s, SUM(cost_micros) AS c \
           FROM calls WHERE billing_period = ? GROUP BY customer_id \
         ) u ON u.customer_id = cu.id \
         WHERE cu.created_at < ?",
        vec![
            year.into(),
            month.into(),
            start.into(),
            end.into(),
            micros(Utc::now()).into(),
            MONTHLY_FEE_MICROS.into(),
            MONTHLY_FEE_MICROS.into(),
            month_key(data.month_start).into(),
            end.into(),
        ],
    ))
    .await?;
    for (position, kind, quantity, amount) in [
        (0, InvoiceLineKind::MonthlyFee, "1", "monthly_fee_micros"),
        (1, InvoiceLineKind::Usage, "billed_seconds", "usage_micros"),
    ] {
        txn.execute_raw(run(
            &format!(
                "INSERT INTO invoice_lines (invoice_id, position, kind, description, quantity, \
                   amount_micros) \
                 SELECT id, {position}, ?, ?, {quantity}, {amount} FROM invoices \
                 WHERE period_year = ? AND period_month = ?"
            ),
            vec![
                kind.as_str().into(),
                kind.as_str().into(),
                year.into(),
                month.into(),
            ],
        ))
        .await?;
    }
    txn.commit().await?;
    Ok(())
}

/// What the old engine added to the aggregate reference: one update that
/// rewrites every call row of the month to point it at its invoice (here
/// its billing month, rewritten in place: the same new row version).
async fn claim_every_call(db: &DatabaseConnection, data: Data) -> Result<(), Failure> {
    let backend = db.get_database_backend();
    let (year, month) = (data.month_start.year(), data.month_start.month() as i32);
    db.execute_raw(Statement::from_sql_and_values(
        backend,
        numbered(
            backend,
            "UPDATE calls SET billing_period = i.period_year * 100 + i.period_month \
             FROM invoices i \
             WHERE i.customer_id = calls.customer_id AND i.period_year = ? AND i.period_month = ?",
        ),
        vec![year.into(), month.into()],
    ))
    .await?;
    Ok(())
}

/// On PostgreSQL, how many row updates `calls` has seen
/// (`pg_stat_user_tables.n_tup_upd`); `None` on SQLite. A backend reports
/// its counts when idle, within PostgreSQL's idle flush interval (10 s), so
/// this waits that long first.
async fn call_row_updates(url: &str) -> Result<Option<i64>, Failure> {
    if !url.starts_with("postgres") {
        return Ok(None);
    }
    tokio::time::sleep(Duration::from_secs(11)).await;
    let db = connect(url).await?;
    let row = db
        .query_one_raw(Statement::from_string(
            DatabaseBackend::Postgres,
            "SELECT n_tup_upd FROM pg_stat_user_tables WHERE relname = 'calls'",
        ))
        .await?
        .ok_or("no statistics for calls")?;
    let updates = row.try_get_by_index(0)?;
    db.close().await?;
    Ok(Some(updates))
}

/// How many invoices there are and what they total.
async fn invoice_totals(db: &DatabaseConnection) -> Result<(i64, i64), Failure> {
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT COUNT(*), CAST(COALESCE(SUM(total_micros), 0) AS BIGINT) FROM invoices",
        ))
        .await?
        .ok_or("no row")?;
    Ok((row.try_get_by_index(0)?, row.try_get_by_index(1)?))
}

/// A `billing serve` child process.
struct Server {
    child: Child,
    addr: String,
    peak: u64,
}

impl Server {
    /// Starts `billing serve` on `url`, with authentication off unless
    /// `auth`.
    fn start(
        binary: &PathBuf,
        url: &str,
        log: Option<&str>,
        auth: bool,
        extra: &[String],
    ) -> Result<Server, Failure> {
        let mut args = vec![
            "--database-url",
            url,
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--no-scheduler",
            "--invoice-grace-period",
            "0s",
            "--unary-timeout-seconds",
            "3600",
        ];
        if !auth {
            args.push("--no-auth");
        }
        args.extend(extra.iter().map(String::as_str));
        let mut child = Command::new(binary)
            .args(args)
            .env("RUST_LOG", log.unwrap_or("warn,billing=info"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        // The server logs to stderr; the reader drains it to the end.
        let stdout = child.stderr.take().ok_or("no stderr")?;
        let (tx, rx) = std::sync::mpsc::channel();
        let echo = log.is_some();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if echo {
                    eprintln!("{line}");
                }
                if let Some((_, rest)) = line.split_once("serving addr=")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(rest.trim().to_owned());
                }
            }
        });
        let Ok(addr) = rx.recv_timeout(Duration::from_secs(60)) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err("the server did not log its address".into());
        };
        Ok(Server {
            child,
            addr,
            peak: 0,
        })
    }

    /// The server's peak resident set so far (VmHWM), in KiB.
    fn peak_kib(&mut self) -> u64 {
        self.peak = self.peak.max(peak_kib_of(self.child.id()));
        self.peak
    }

    fn memory(&mut self, when: &str) {
        println!(
            "server peak RSS {when}: {:.0} MB",
            self.peak_kib() as f64 / 1024.0
        );
    }
}

/// The peak resident set (VmHWM) of process `pid` so far, in KiB; 0 once
/// it is gone.
fn peak_kib_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GenerateInvoice (one new invoice each, one after another) and AddCall
/// (2 connections x 8 streams, as operator 1's switch) latency for
/// `duration`: with no invoice watcher; with `watchers` open WatchInvoices
/// streams of an operator none of whose customers is invoiced (idle
/// watchers); and with `watchers` streams of the admin, each told of every
/// invoice. Then how long until every one of those has been told.
async fn watcher_study(
    url: &str,
    data: Data,
    watchers: usize,
    duration: Duration,
    switch: Option<MetadataValue<Ascii>>,
) -> Result<(), Failure> {
    println!("## Invoice watchers ({} s each)", duration.as_secs());
    let admin = login(url, BENCH_ADMIN).await?;
    let idle = idle_operator(url, &admin).await?;
    println!(
        "{:<36} {:>8} {:>9} {:>9} {:>7}",
        "load", "req/s", "p50 ms", "p99 ms", "ratio"
    );
    let period = pb::BillingPeriod {
        year: data.month_start.year(),
        month: i32::try_from(data.month_start.month()).unwrap_or(1),
    };
    let mut next_customer = 2_i64;
    let mut run = 100;
    let mut phase = |next_customer: &mut i64| {
        run += 1;
        let add = load(
            url,
            2,
            8,
            duration,
            Rpc::AddCall {
                customers: data.customers,
                run,
                credentials: switch.clone(),
            },
        );
        let issue = issue_invoices(
            url,
            &admin,
            period,
            *next_customer,
            data.customers,
            duration,
        );
        async move {
            let (issue, add) = tokio::join!(issue, add);
            Ok::<_, Failure>((issue?, add?))
        }
    };
    let ((issue_none, issued), add_none) = phase(&mut next_customer).await?;
    next_customer += i64::try_from(issued).unwrap_or(0);
    let print = |label: &str, issue: &Outcome, add: &Outcome| {
        let ratio = |with: &Outcome, without: &Outcome| {
            (label != "0").then(|| with.percentile(0.5) / without.percentile(0.5).max(1e-9))
        };
        issue.print36(
            &format!("GenerateInvoice, {label} watchers"),
            ratio(issue, &issue_none),
        );
        add.print36(
            &format!("AddCall 2x8, {label} watchers"),
            ratio(add, &add_none),
        );
    };
    print("0", &issue_none, &add_none);
    for (label, token) in [("idle", &idle), ("told-all", &admin)] {
        let (streams, received) = open_watchers(url, token, watchers).await?;
        let ((issue, issued), add) = phase(&mut next_customer).await?;
        next_customer += i64::try_from(issued).unwrap_or(0);
        let issued_at = Instant::now();
        let expected = if label == "idle" {
            0
        } else {
            issued * watchers as u64
        };
        while received.load(std::sync::atomic::Ordering::Relaxed) < expected {
            if issued_at.elapsed() > Duration::from_secs(120) {
                return Err(format!(
                    "watchers were told of {} of {expected} invoices",
                    received.load(std::sync::atomic::Ordering::Relaxed)
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let told = received.load(std::sync::atomic::Ordering::Relaxed);
        print(&format!("{watchers} {label}"), &issue, &add);
        println!(
            "  {told} invoices told to the watchers ({issued} issued), all {:.2} s after the last was issued",
            issued_at.elapsed().as_secs_f64()
        );
        for stream in streams {
            stream.abort();
        }
    }
    println!("(ratio: p50 with the watchers / p50 with none)");
    Ok(())
}

/// The `authorization` value of `username` signed in.
async fn login(url: &str, username: &str) -> Result<MetadataValue<Ascii>, Failure> {
    let login = AccountServiceClient::connect(url.to_owned())
        .await?
        .login(pb::LoginRequest {
            username: username.into(),
            password: BENCH_PASSWORD.into(),
        })
        .await?
        .into_inner();
    Ok(format!("Bearer {}", login.access_token).parse()?)
}

/// Creates an operator with no customers and an account of it; its
/// `authorization` value.
async fn idle_operator(
    url: &str,
    admin: &MetadataValue<Ascii>,
) -> Result<MetadataValue<Ascii>, Failure> {
    let mut request = tonic::Request::new(pb::CreateOperatorRequest {
        name: "Idle watchers".into(),
    });
    request
        .metadata_mut()
        .insert("authorization", admin.clone());
    let operator = CustomerServiceClient::connect(url.to_owned())
        .await?
        .create_operator(request)
        .await?
        .into_inner();
    let mut request = tonic::Request::new(pb::CreateAccountRequest {
        username: "bench-idle".into(),
        password: BENCH_PASSWORD.into(),
        role: pb::Role::Operator.into(),
        operator_id: operator.id,
        customer_id: 0,
    });
    request
        .metadata_mut()
        .insert("authorization", admin.clone());
    AccountServiceClient::connect(url.to_owned())
        .await?
        .create_account(request)
        .await?;
    login(url, "bench-idle").await
}

/// Opens `count` WatchInvoices streams as `token`, 200 per connection,
/// each starting after the newest invoice; their tasks and the number of
/// invoices they have been told of, together.
async fn open_watchers(
    url: &str,
    token: &MetadataValue<Ascii>,
    count: usize,
) -> Result<
    (
        Vec<tokio::task::JoinHandle<()>>,
        std::sync::Arc<std::sync::atomic::AtomicU64>,
    ),
    Failure,
> {
    let channels = count.div_ceil(200).max(1);
    let mut connections = Vec::with_capacity(channels);
    for _ in 0..channels {
        connections.push(Endpoint::from_shared(url.to_owned())?.connect().await?);
    }
    // Newest first would need a filter the API does not have; the ids are
    // read page by page instead.
    let mut after = 0_i64;
    let mut token_page = String::new();
    let mut invoices = InvoiceServiceClient::new(connections[0].clone());
    loop {
        let mut request = tonic::Request::new(pb::ListInvoicesRequest {
            page_size: 1000,
            page_token: token_page,
            ..Default::default()
        });
        request
            .metadata_mut()
            .insert("authorization", token.clone());
        let page = invoices.list_invoices(request).await?.into_inner();
        after = page.invoices.iter().map(|i| i.id).max().unwrap_or(after);
        token_page = page.next_page_token;
        if token_page.is_empty() {
            break;
        }
    }
    let received = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut streams = Vec::with_capacity(count);
    for n in 0..count {
        let mut client = InvoiceServiceClient::new(connections[n % channels].clone());
        let mut request = tonic::Request::new(pb::WatchInvoicesRequest {
            after_invoice_id: after,
        });
        request
            .metadata_mut()
            .insert("authorization", token.clone());
        let mut stream = client.watch_invoices(request).await?.into_inner();
        let received = received.clone();
        streams.push(tokio::spawn(async move {
            while let Some(Ok(_)) = stream.next().await {
                received.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }));
    }
    Ok((streams, received))
}

/// Issues `period`'s invoice of one customer after another from `first`
/// on, as `admin`, for `duration` (or until the customers run out): their
/// latencies, and how many were issued.
async fn issue_invoices(
    url: &str,
    admin: &MetadataValue<Ascii>,
    period: pb::BillingPeriod,
    first: i64,
    customers: u64,
    duration: Duration,
) -> Result<(Outcome, u64), Failure> {
    let mut invoices = InvoiceServiceClient::connect(url.to_owned()).await?;
    let began = Instant::now();
    let mut latencies = Vec::new();
    let mut customer_id = first;
    while began.elapsed() < duration && customer_id <= i64::try_from(customers).unwrap_or(0) {
        let sent = Instant::now();
        let mut request = tonic::Request::new(pb::GenerateInvoiceRequest {
            customer_id,
            period: Some(period),
        });
        request
            .metadata_mut()
            .insert("authorization", admin.clone());
        invoices.generate_invoice(request).await?;
        latencies.push(u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX));
        customer_id += 1;
    }
    let issued = latencies.len() as u64;
    latencies.sort_unstable();
    Ok((
        Outcome {
            latencies,
            elapsed: began.elapsed(),
        },
        issued,
    ))
}

/// What a load sends.
#[derive(Clone)]
enum Rpc {
    Health,
    AddCall {
        customers: u64,
        run: usize,
        /// The `authorization` metadata, when the server checks it.
        credentials: Option<MetadataValue<Ascii>>,
    },
    History {
        data: Data,
    },
}

/// Completed requests and their latencies.
struct Outcome {
    latencies: Vec<u32>,
    elapsed: Duration,
}

impl Outcome {
    fn rate(&self) -> f64 {
        rate(self.latencies.len() as f64, self.elapsed)
    }

    fn percentile(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return 0.0;
        }
        let index = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        f64::from(self.latencies[index]) / 1000.0
    }

    /// As [`Outcome::print`], with a wider label.
    fn print36(&self, label: &str, ratio: Option<f64>) {
        let ratio = ratio.map_or(String::new(), |r| format!("{r:.2}x"));
        println!(
            "{label:<36} {:>8.0} {:>9.2} {:>9.2} {ratio:>7}",
            self.rate(),
            self.percentile(0.5),
            self.percentile(0.99)
        );
    }

    fn print(&self, label: &str, ratio: Option<f64>) {
        let ratio = ratio.map_or(String::new(), |r| format!("{r:.2}x"));
        println!(
            "{label:<28} {:>10.0} {:>9.2} {:>9.2} {ratio:>7}",
            self.rate(),
            self.percentile(0.5),
            self.percentile(0.99)
        );
    }
}

fn rate(count: f64, elapsed: Duration) -> f64 {
    count / elapsed.as_secs_f64().max(1e-9)
}

/// Runs `rpc` from `connections` HTTP/2 connections with `streams`
/// requests in flight on each, for `duration`. Any failed request fails the
/// load.
async fn load(
    url: &str,
    connections: usize,
    streams: usize,
    duration: Duration,
    rpc: Rpc,
) -> Result<Outcome, Failure> {
    load_paced(url, connections, streams, duration, rpc, None).await
}

/// [`load`], each stream sending its next request `pace` after the last
/// was due (a fixed offered rate, not the most the server answers) when
/// given; latencies then count from when each request was due, so a
/// stalled server is not hidden by requests it delayed.
async fn load_paced(
    url: &str,
    connections: usize,
    streams: usize,
    duration: Duration,
    rpc: Rpc,
    pace: Option<Duration>,
) -> Result<Outcome, Failure> {
    let mut channels = Vec::with_capacity(connections);
    for _ in 0..connections {
        channels.push(Endpoint::from_shared(url.to_owned())?.connect().await?);
    }
    let began = Instant::now();
    let deadline = began + duration;
    let mut tasks = Vec::new();
    for (connection, channel) in channels.into_iter().enumerate() {
        for stream in 0..streams {
            let channel: Channel = channel.clone();
            let rpc = rpc.clone();
            let seed = (connection * 1000 + stream) as u64;
            tasks.push(tokio::spawn(async move {
                let mut latencies: Vec<u32> = Vec::new();
                let mut rng = Rng(seed);
                let mut health = HealthClient::new(channel.clone());
                let mut calls = CallServiceClient::new(channel);
                let mut n = 0_u64;
                // Streams start spread over one interval.
                let mut due = Instant::now()
                    + pace.map_or(Duration::ZERO, |pace| {
                        pace.mul_f64(rng.below(1000) as f64 / 1000.0)
                    });
                while Instant::now() < deadline {
                    let sent = match pace {
                        Some(pace) => {
                            tokio::time::sleep_until(due.into()).await;
                            let sent = due;
                            due += pace;
                            sent
                        }
                        None => Instant::now(),
                    };
                    match rpc {
                        Rpc::Health => {
                            health
                                .check(HealthCheckRequest {
                                    service: String::new(),
                                })
                                .await?;
                        }
                        Rpc::AddCall {
                            customers,
                            run,
                            ref credentials,
                        } => {
                            let started = Utc::now() - chrono::TimeDelta::seconds(1);
                            let customer_id = 1 + rng.below(customers) as i64;
                            let mut request = tonic::Request::new(pb::AddCallRequest {
                                customer_id,
                                duration: Some(pb::add_call_request::Duration::DurationSeconds(
                                    1 + rng.below(900) as i64,
                                )),
                                started_at: Some(timestamp(started)),
                                call_id: format!("load-{run}-{connection}-{stream}-{n}"),
                                caller_number: customer_number(customer_id),
                                callee_number: "+12025550123".into(),
                            });
                            if let Some(credentials) = credentials {
                                request
                                    .metadata_mut()
                                    .insert("authorization", credentials.clone());
                            }
                            calls.add_call(request).await?;
                        }
                        Rpc::History { data } => {
                            let span = (data.month_end - data.month_start).num_seconds();
                            let from = data.month_start
                                + chrono::TimeDelta::seconds(
                                    rng.below(u64::try_from(span).unwrap_or(1)) as i64,
                                );
                            calls
                                .get_call_history(pb::GetCallHistoryRequest {
                                    customer_id: 1,
                                    start_time: Some(timestamp(from)),
                                    page_size: 100,
                                    ..Default::default()
                                })
                                .await?;
                        }
                    }
                    latencies.push(u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX));
                    n += 1;
                }
                Ok::<_, tonic::Status>(latencies)
            }));
        }
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = began.elapsed();
    latencies.sort_unstable();
    Ok(Outcome { latencies, elapsed })
}

/// The raw insert rate of `calls` with each index change of issue 9, on
/// scratch databases (the first `min(calls, 500k)` records).
async fn index_study(
    binary: &PathBuf,
    database: &str,
    scratch: &std::path::Path,
    data: Data,
) -> Result<(), Failure> {
    let rows = data.calls.min(500_000);
    println!("## Raw insert rate of {rows} calls by index set");
    let variants: [(&str, &[&str]); 4] = [
        ("as migrated", &[]),
        ("- idx_calls_started", &["DROP INDEX idx_calls_started"]),
        (
            "- idx_calls_customer_started",
            // SQLite's calls are keyed by these columns (migration 000008).
            &["DROP INDEX IF EXISTS idx_calls_customer_started"],
        ),
        ("- idx_calls_late", &["DROP INDEX idx_calls_late"]),
    ];
    println!("{:<52} {:>10}", "schema", "rows/s");
    for (n, (label, changes)) in variants.iter().enumerate() {
        let url = if database == "sqlite" {
            format!(
                "sqlite://{}",
                scratch.join(format!("index-{n}.db")).display()
            )
        } else {
            scratch_database(database, &format!("billing_bench_index_{n}")).await?
        };
        migrate(binary, &url)?;
        let db = connect(&url).await?;
        seed_customers(&db, data).await?;
        for change in *changes {
            db.execute_unprepared(change).await?;
        }
        let began = Instant::now();
        let inserted = raw_insert(
            &db,
            data.records()
                .take(usize::try_from(rows).unwrap_or(usize::MAX)),
        )
        .await?;
        println!(
            "{label:<52} {:>10.0}",
            rate(inserted as f64, began.elapsed())
        );
        db.close().await?;
    }
    Ok(())
}

/// A rendered invoice of `lines` usage lines, as the delivery worker renders
/// it, for [`render_rates`].
fn render_source_parts(
    lines: usize,
) -> (
    billing::domain::invoice::Invoice,
    billing::domain::model::Customer,
    billing::domain::model::Operator,
) {
    use billing::domain::invoice::{Invoice, InvoiceLine, UsageTotals};
    use billing::domain::model::{Customer, Issuer, Language, Operator};
    use billing::domain::period::BillingPeriod;
    let tz = chrono_tz::UTC;
    let period = BillingPeriod::new("period", 2026, 11).unwrap_or_else(|_| unreachable!());
    let mut invoice_lines = vec![InvoiceLine {
        kind: InvoiceLineKind::MonthlyFee,
        description: "Monthly fee".into(),
        quantity: 1,
        amount_micros: MONTHLY_FEE_MICROS,
        call_count: 0,
        subject: "bench".into(),
    }];
    invoice_lines.extend((1..lines).map(|n| InvoiceLine {
        kind: InvoiceLineKind::Usage,
        description: format!("Usage, tariff zone {n}"),
        quantity: 60 * n as i64,
        amount_micros: 1_234_567 * n as i64,
        call_count: n as i64,
        subject: format!("zone {n}"),
    }));
    let invoice = Invoice {
        id: 42,
        number: "INV-2026-11-000042".into(),
        customer_id: 7,
        period,
        period_start: period.start(tz),
        period_end: period.end(tz),
        issued_at: period.end(tz),
        currency_code: "USD".into(),
        total_micros: invoice_lines.iter().map(|l| l.amount_micros).sum(),
        usage: UsageTotals::default(),
        monthly_fee_micros: MONTHLY_FEE_MICROS,
        lines: invoice_lines,
    };
    let customer = Customer {
        id: 7,
        name: "Customer 7".into(),
        phone_number: "+15550000007".into(),
        plan_id: 1,
        operator_ids: vec![1],
        balance_micros: 0,
        created_at: period.start(tz),
        email: Some("customer7@example.com".into()),
        language: Language::En,
        low_balance_threshold_micros: None,
        numbers: Vec::new(),
    };
    let operator = Operator {
        id: 1,
        name: "bench".into(),
        issuer: Issuer {
            legal_name: "Bench Telecom Inc.".into(),
            address: "1 Main Street\nSpringfield".into(),
            tax_id: "US123456789".into(),
            support_email: "billing@bench.example".into(),
        },
    };
    (invoice, customer, operator)
}

/// PDF documents rendered per second on this thread (one core) for an
/// invoice of 10 and of 500 lines, each for about two seconds: once as a
/// month's invoices come (customers "Customer n", whose glyphs the font
/// subset cache already holds after the first), once with every name
/// holding a letter the last 256 documents did not (every subset made
/// anew).
fn render_rates() {
    use billing::document::{DocumentFormat, DocumentSource, render};
    println!("## PDF rendering, one core");
    println!(
        "{:<28} {:>10} {:>10} {:>10}",
        "invoice", "docs/s", "ms/doc", "bytes"
    );
    // 300 letters DejaVu Sans has (Latin Extended-A and -B): cycling
    // through them, each name's glyph set is one of 300, more than the
    // cache keeps.
    let letters: Vec<char> = ('\u{100}'..='\u{22b}').take(300).collect();
    for (lines, fresh) in [(10, false), (10, true), (500, false), (500, true)] {
        let (invoice, mut customer, operator) = render_source_parts(lines);
        let began = Instant::now();
        let mut rendered = 0_u32;
        let mut bytes = 0;
        while began.elapsed() < Duration::from_secs(2) {
            customer.name = if fresh {
                format!("Customer {}", letters[rendered as usize % letters.len()])
            } else {
                format!("Customer {rendered}")
            };
            let source = DocumentSource {
                invoice: &invoice,
                customer: &customer,
                plan_kind: billing::domain::plan::PlanKind::Postpaid,
                issuer: Some(&operator),
                tz: chrono_tz::UTC,
            };
            bytes = render(source, DocumentFormat::Pdf).content.len();
            rendered += 1;
        }
        let elapsed = began.elapsed();
        println!(
            "{:<28} {:>10.0} {:>10.2} {:>10}",
            format!("{lines} lines{}", if fresh { ", new glyphs" } else { "" }),
            rate(f64::from(rendered), elapsed),
            elapsed.as_secs_f64() * 1000.0 / f64::from(rendered),
            bytes
        );
    }
    println!();
}

/// A local SMTP server that accepts and discards every message:
/// `python3 -m aiosmtpd` with its `Sink` handler.
struct SmtpSink {
    child: Child,
    port: u16,
}

impl SmtpSink {
    fn start() -> Result<SmtpSink, Failure> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        // At nice 10: it stands in for a mail relay on another host, so
        // its CPU should not count against the server's latency.
        let child = Command::new("nice")
            .args(["-n", "10", "python3", "-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["-c", "aiosmtpd.handlers.Sink"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|err| format!("python3 -m aiosmtpd (pip install aiosmtpd): {err}"))?;
        let began = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if began.elapsed() > Duration::from_secs(20) {
                return Err("aiosmtpd did not listen within 20 s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(SmtpSink { child, port })
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Webhook requests received: each delivery id with how often it came.
type Received = std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, u32>>>;

/// A webhook receiver answering 200 to everything, counting delivery ids.
async fn webhook_receiver() -> Result<(std::net::SocketAddr, Received), Failure> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let received: Received = Received::default();
    let counts = received.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counts = counts.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| {
                        let counts = counts.clone();
                        async move {
                            let id = request
                                .headers()
                                .get("billing-delivery-id")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_owned();
                            // Read the whole body, as a receiver verifying
                            // its signature would.
                            http_body_util::BodyExt::collect(request.into_body()).await?;
                            if let Ok(mut counts) = counts.lock() {
                                *counts.entry(id).or_default() += 1;
                            }
                            Ok::<_, hyper::Error>(hyper::Response::new(http_body_util::Full::new(
                                bytes::Bytes::from_static(b"ok"),
                            )))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok((addr, received))
}

/// `--delivery`: render rates; then, on a fresh database whose customers
/// all have an email address and belong to operator 1 (with one webhook),
/// the month's calls ingested, AddCall (2×8) and history (1×4) latency
/// measured together, `RunBillingCycle`, and the same loads again while
/// the invoices are delivered and once they all are; and how long from the
/// cycle's end until the last delivery was recorded.
async fn delivery_bench(
    args: &Args,
    binary: &PathBuf,
    scratch: &std::path::Path,
    data: Data,
) -> Result<(), Failure> {
    render_rates();
    let (service_url, _) = databases(&args.database, scratch).await?;
    migrate(binary, &service_url)?;
    let db = connect(&service_url).await?;
    seed_customers(&db, data).await?;
    db.execute_unprepared(
        "UPDATE customers SET email = 'customer' || CAST(id AS TEXT) || '@example.com'",
    )
    .await?;
    let smtp = SmtpSink::start()?;
    let (receiver_addr, received) = webhook_receiver().await?;
    let smtp_url = format!("smtp://127.0.0.1:{}?tls=opportunistic", smtp.port);
    let mut server = Server::start(
        binary,
        &service_url,
        args.server_log.as_deref(),
        false,
        &[
            "--smtp-url".into(),
            smtp_url,
            "--smtp-from".into(),
            "Bench Billing <billing@bench.example>".into(),
            "--allow-insecure-webhooks".into(),
        ],
    )?;
    let url = format!("http://{}", server.addr);
    pb::notification_service_client::NotificationServiceClient::connect(url.clone())
        .await?
        .create_webhook(pb::CreateWebhookRequest {
            operator_id: 1,
            url: format!("http://{receiver_addr}/billing"),
            events: vec!["invoice.issued".into()],
        })
        .await?;
    println!(
        "## Delivery: {} customers with email and operator 1's webhook, {} calls, {} backend",
        data.customers,
        data.calls,
        if args.database == "sqlite" {
            "SQLite"
        } else {
            "PostgreSQL"
        }
    );
    let mut calls = CallServiceClient::connect(url.clone())
        .await?
        .max_encoding_message_size(64 * 1024 * 1024);
    let mut records = data.records().peekable();
    while records.peek().is_some() {
        let chunk: Vec<pb::AddCallRequest> = records
            .by_ref()
            .take(usize::try_from(RECORDS_PER_STREAM).unwrap_or(usize::MAX))
            .map(|record| record.request())
            .collect();
        calls.ingest_calls(tokio_stream::iter(chunk)).await?;
    }
    let seconds = Duration::from_secs(args.load_seconds);
    let before = delivery_loads(&url, data, seconds, 1).await?;
    let period = pb::BillingPeriod {
        year: data.month_start.year(),
        month: i32::try_from(data.month_start.month()).unwrap_or(1),
    };
    let began = Instant::now();
    let cycle = InvoiceServiceClient::connect(url.clone())
        .await?
        .run_billing_cycle(pb::RunBillingCycleRequest {
            period: Some(period),
        })
        .await?
        .into_inner();
    let cycle_end = Instant::now();
    let cycle_seconds = (cycle_end - began).as_secs_f64();
    let expected = 2 * cycle.issued;
    let watcher_url = service_url.clone();
    let delivered = tokio::spawn(async move { all_delivered(&watcher_url, expected).await });
    let during = delivery_loads(&url, data, seconds, 3).await?;
    let (last, failed) = delivered.await??;
    // The same loads once every delivery is done: the database as the
    // cycle left it (its new rows, their vacuum), without the worker.
    let after = delivery_loads(&url, data, seconds, 5).await?;
    let delivery_seconds = (last - cycle_end).as_secs_f64();
    let (ids, repeats) = received
        .lock()
        .map(|counts| {
            (
                counts.len(),
                counts
                    .values()
                    .map(|&n| u64::from(n.saturating_sub(1)))
                    .sum::<u64>(),
            )
        })
        .unwrap_or_default();
    println!(
        "RunBillingCycle: {} invoices in {cycle_seconds:.2} s, each with an email and a webhook delivery",
        cycle.issued
    );
    println!(
        "all {expected} deliveries recorded {delivery_seconds:.1} s after the cycle's end \
         ({failed} failed; the receiver saw {ids} delivery ids, {repeats} repeats): {:.0} deliveries/s",
        expected as f64 / delivery_seconds.max(1e-9)
    );
    println!(
        "{:<36} {:>8} {:>9} {:>9} {:>7}",
        "load (p99 ratio to without)", "req/s", "p50 ms", "p99 ms", "ratio"
    );
    let labels = [
        "AddCall 2x8",
        "GetCallHistory 1x4",
        "AddCall 1,000/s",
        "GetCallHistory 400/s",
    ];
    for (((label, before), during), after) in labels.iter().zip(&before).zip(&during).zip(&after) {
        before.print36(&format!("{label}, before"), None);
        during.print36(
            &format!("{label}, delivering"),
            Some(during.percentile(0.99) / before.percentile(0.99).max(1e-9)),
        );
        after.print36(
            &format!("{label}, after"),
            Some(after.percentile(0.99) / before.percentile(0.99).max(1e-9)),
        );
    }
    server.memory("after delivery");
    drop(smtp);
    Ok(())
}

/// The loads of `--delivery`, each pair at once: AddCall (2×8) with
/// history (1×4) as fast as answered, then AddCall at 1,000/s with history
/// at 400/s. `run` and `run + 1` keep the AddCall call ids apart.
async fn delivery_loads(
    url: &str,
    data: Data,
    seconds: Duration,
    run: usize,
) -> Result<[Outcome; 4], Failure> {
    let unary = |run| Rpc::AddCall {
        customers: data.customers,
        run,
        credentials: None,
    };
    let (add, history) = tokio::join!(
        load(url, 2, 8, seconds, unary(run)),
        load(url, 1, 4, seconds, Rpc::History { data })
    );
    let (add_paced, history_paced) = tokio::join!(
        load_paced(url, 2, 8, seconds, unary(run + 1), Some(ADD_CALL_PACE)),
        load_paced(
            url,
            1,
            4,
            seconds,
            Rpc::History { data },
            Some(HISTORY_PACE)
        )
    );
    Ok([add?, history?, add_paced?, history_paced?])
}

/// Polls the outbox every 100 ms until `expected` deliveries exist and
/// none is pending; returns when that was seen and how many failed.
async fn all_delivered(url: &str, expected: i64) -> Result<(Instant, i64), Failure> {
    let db = connect(url).await?;
    let backend = db.get_database_backend();
    loop {
        let rows = db
            .query_all_raw(Statement::from_string(
                backend,
                "SELECT status, COUNT(*) FROM deliveries GROUP BY status",
            ))
            .await?;
        let mut counts = std::collections::HashMap::new();
        for row in rows {
            let status: String = row.try_get_by_index(0)?;
            let count: i64 = row.try_get_by_index(1)?;
            counts.insert(status, count);
        }
        let total: i64 = counts.values().sum();
        if total >= expected && counts.get("pending").copied().unwrap_or(0) == 0 {
            db.close().await?;
            return Ok((Instant::now(), counts.get("failed").copied().unwrap_or(0)));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends every call of `data` to the server at `url` through IngestCalls,
/// one stream per [`RECORDS_PER_STREAM`]; the calls accepted, or an error
/// if any record was rejected.
async fn ingest_all(url: String, data: Data) -> Result<i64, Failure> {
    let mut calls = CallServiceClient::connect(url)
        .await?
        .max_encoding_message_size(64 * 1024 * 1024);
    let mut accepted = 0;
    let mut records = data.records().peekable();
    while records.peek().is_some() {
        let chunk: Vec<pb::AddCallRequest> = records
            .by_ref()
            .take(usize::try_from(RECORDS_PER_STREAM).unwrap_or(usize::MAX))
            .map(|record| record.request())
            .collect();
        let report = calls
            .ingest_calls(tokio_stream::iter(chunk))
            .await?
            .into_inner();
        if report.rejected > 0 {
            return Err(format!("IngestCalls rejected {} records", report.rejected).into());
        }
        accepted += report.accepted;
    }
    Ok(accepted)
}

/// `--switch`: `billing import-cdr` of an Asterisk file against IngestCalls
/// of the same calls, each into a fresh database with the same customers,
/// one after the other; then NATS ingestion.
async fn switch_bench(
    args: &Args,
    binary: &PathBuf,
    scratch: &std::path::Path,
    data: Data,
) -> Result<(), Failure> {
    let (streamed_url, imported_url) = databases(&args.database, scratch).await?;
    for url in [&streamed_url, &imported_url] {
        migrate(binary, url)?;
        let db = connect(url).await?;
        seed_customers(&db, data).await?;
        db.close().await?;
    }
    println!(
        "billing-bench --switch: {} customers, {} calls, {} backend",
        data.customers,
        data.calls,
        if args.database == "sqlite" {
            "SQLite"
        } else {
            "PostgreSQL"
        }
    );
    // The Asterisk file: every call answered, numbers as the customers hold
    // them, the record's call id as uniqueid.
    let file = scratch.join("Master.csv");
    {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&file)?);
        for record in data.records() {
            let answer = record.started_at.format("%Y-%m-%d %H:%M:%S");
            writeln!(
                out,
                "\"\",\"{}\",\"+12025550123\",\"from-internal\",\"\"\"Caller\"\" <{0}>\",\
                 \"SIP/100-00000001\",\"SIP/trunk-00000002\",\"Dial\",\"SIP/trunk/+12025550123,60\",\
                 \"{answer}\",\"{answer}\",\"{answer}\",{},{},\"ANSWERED\",\"DOCUMENTATION\",\"{}\",\"\"",
                customer_number(record.customer_id),
                record.duration_seconds + 3,
                record.duration_seconds,
                record.call_id
            )?;
        }
    }
    let file_mb = std::fs::metadata(&file)?.len() as f64 / 1e6;

    let server = Server::start(
        binary,
        &streamed_url,
        args.server_log.as_deref(),
        false,
        &[],
    )?;
    let began = Instant::now();
    let accepted = ingest_all(format!("http://{}", server.addr), data).await?;
    let streamed = began.elapsed();
    drop(server);

    let mut server = Server::start(
        binary,
        &imported_url,
        args.server_log.as_deref(),
        false,
        &[],
    )?;
    let began = Instant::now();
    let mut importer = Command::new(binary)
        .args(["import-cdr", "--format", "asterisk", "--server"])
        .arg(format!("http://{}", server.addr))
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    // The importer's peak resident set, read while it runs.
    let mut importer_kib = 0;
    let status = loop {
        importer_kib = importer_kib.max(peak_kib_of(importer.id()));
        if let Some(status) = importer.try_wait()? {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let imported = began.elapsed();
    let mut summary = String::new();
    if let Some(mut out) = importer.stdout.take() {
        std::io::Read::read_to_string(&mut out, &mut summary)?;
    }
    let summary = summary.trim().to_owned();
    if !status.success() {
        return Err(format!("import-cdr failed: {summary}").into());
    }
    let importer_peak = server.peak_kib();
    let db = connect(&imported_url).await?;
    let stored = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT COUNT(*) AS n FROM calls",
        ))
        .await?
        .map(|row| row.try_get::<i64>("", "n"))
        .transpose()?
        .unwrap_or(0);
    db.close().await?;
    if stored != accepted {
        return Err(format!("IngestCalls stored {accepted}, import-cdr {stored}").into());
    }
    let stream_rate = rate(accepted as f64, streamed);
    let import_rate = rate(stored as f64, imported);
    println!(
        "{:<48} {:>10} {:>10} {:>8}",
        "", "seconds", "calls/s", "ratio"
    );
    println!(
        "{:<48} {:>10.1} {:>10.0}",
        "IngestCalls (one stream per 1M records)",
        streamed.as_secs_f64(),
        stream_rate
    );
    println!(
        "{:<48} {:>10.1} {:>10.0} {:>7.2}x",
        format!("import-cdr, Asterisk Master.csv ({file_mb:.0} MB)"),
        imported.as_secs_f64(),
        import_rate,
        import_rate / stream_rate
    );
    println!("import-cdr: {summary}");
    println!(
        "peak RSS: server {:.0} MB, import-cdr {:.0} MB",
        importer_peak as f64 / 1024.0,
        importer_kib as f64 / 1024.0
    );
    drop(server);

    nats_bench(args, binary, scratch, data).await
}

/// NATS: --nats-messages JSON records published to a fresh stream, then
/// read by a server started on a fresh database; the time from its start
/// until the consumer has acknowledged every message.
async fn nats_bench(
    args: &Args,
    binary: &PathBuf,
    scratch: &std::path::Path,
    data: Data,
) -> Result<(), Failure> {
    let Ok(client) = async_nats::connect(args.nats.as_str()).await else {
        println!("NATS: skipped, nothing answers at {}", args.nats);
        return Ok(());
    };
    let url = if args.database == "sqlite" {
        format!("sqlite://{}", scratch.join("nats.db").display())
    } else {
        scratch_database(&args.database, "billing_bench_nats").await?
    };
    migrate(binary, &url)?;
    let db = connect(&url).await?;
    seed_customers(&db, data).await?;
    db.close().await?;
    let context = async_nats::jetstream::new(client);
    let stream_name = format!("BENCH_{}", std::process::id());
    let subject = format!("bench.{}.calls", std::process::id());
    context
        .create_stream(async_nats::jetstream::stream::Config {
            name: stream_name.clone(),
            subjects: vec![subject.clone()],
            ..Default::default()
        })
        .await?;
    let messages = args.nats_messages;
    let mut pending = Vec::with_capacity(4096);
    for record in data
        .records()
        .take(usize::try_from(messages).unwrap_or(usize::MAX))
    {
        let json = format!(
            "{{\"callerNumber\":\"{}\",\"calleeNumber\":\"+12025550123\",\"durationSeconds\":\"{}\",\
             \"startedAt\":\"{}\",\"callId\":\"{}\"}}",
            customer_number(record.customer_id),
            record.duration_seconds,
            record.started_at.to_rfc3339(),
            record.call_id
        );
        pending.push(context.publish(subject.clone(), json.into()).await?);
        if pending.len() == 4096 {
            for ack in pending.drain(..) {
                ack.await?;
            }
        }
    }
    for ack in pending.drain(..) {
        ack.await?;
    }
    let began = Instant::now();
    let server = Server::start(
        binary,
        &url,
        args.server_log.as_deref(),
        false,
        &[
            "--ingest-nats".into(),
            args.nats.clone(),
            "--ingest-nats-stream".into(),
            stream_name.clone(),
            "--ingest-nats-subject".into(),
            subject.clone(),
        ],
    )?;
    let deadline = Instant::now() + Duration::from_secs(3600);
    loop {
        let acknowledged = match context.get_stream(&stream_name).await {
            Ok(stream) => match stream
                .get_consumer::<async_nats::jetstream::consumer::pull::Config>("billing")
                .await
            {
                Ok(mut consumer) => consumer
                    .info()
                    .await
                    .map(|info| info.ack_floor.stream_sequence)
                    .unwrap_or(0),
                Err(_) => 0,
            },
            Err(_) => 0,
        };
        if acknowledged >= messages {
            break;
        }
        if Instant::now() > deadline {
            return Err("NATS ingestion did not finish within an hour".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = began.elapsed();
    drop(server);
    let _ = context.delete_stream(&stream_name).await;
    println!(
        "{:<48} {:>10.1} {:>10.0}",
        format!("NATS JetStream ({messages} JSON messages)"),
        elapsed.as_secs_f64(),
        rate(messages as f64, elapsed)
    );
    Ok(())
}
