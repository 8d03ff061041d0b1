//! `spawn_app()`: the real application on port 0 with a fresh database, and
//! typed clients for it.
//!
//! The database is a new SQLite file per test, or, when
//! `TEST_DATABASE_URL` names a PostgreSQL server, a new database created on
//! it per test. Logs stay silent unless `TEST_LOG` is set.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use billing::app::{Application, Config, Limits};
use billing::clock::Clock;
use billing::grpc::pb;
use billing::grpc::pb::call_service_client::CallServiceClient;
use billing::grpc::pb::customer_service_client::CustomerServiceClient;
use billing::grpc::pb::invoice_service_client::InvoiceServiceClient;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use sea_orm::ConnectionTrait;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::{Code, Status};

static TRACING: LazyLock<()> = LazyLock::new(|| {
    if std::env::var_os("TEST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
            .with_test_writer()
            .init();
    }
});

/// A running application and clients connected to it.
pub struct TestApp {
    pub customers: CustomerServiceClient<Channel>,
    pub calls: CallServiceClient<Channel>,
    pub invoices: InvoiceServiceClient<Channel>,
    pub channel: Channel,
    /// Where the server listens.
    pub addr: SocketAddr,
    /// Where `/metrics` is served, when asked for.
    pub metrics_addr: Option<SocketAddr>,
    /// The application's clock; tests may move it.
    pub clock: Clock,
    /// The application's database, to start another application on it.
    pub database: Database,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
}

/// A test database and what keeps it alive.
#[derive(Clone)]
pub struct Database {
    pub url: String,
    _keep: Arc<DatabaseGuard>,
}

/// Removes a test database when its last user is gone: the SQLite file's
/// directory, or the PostgreSQL database (dropped with FORCE, so a pool still
/// open does not keep it alive).
enum DatabaseGuard {
    Sqlite(#[allow(dead_code)] tempfile::TempDir),
    Postgres { admin_url: String, name: String },
}

impl Drop for DatabaseGuard {
    fn drop(&mut self) {
        let DatabaseGuard::Postgres { admin_url, name } = self else {
            return;
        };
        let (admin_url, name) = (admin_url.clone(), name.clone());
        // Drop runs inside the test's runtime: use a thread with its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let admin = sea_orm::Database::connect(&admin_url).await?;
                admin
                    .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await?;
                admin.close().await
            })?;
            Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test database: {dropped:?}");
        }
    }
}

/// How to start a test application.
pub struct AppOptions {
    pub clock: Clock,
    pub tz: Tz,
    pub scheduler: bool,
    /// An existing database; `None` creates a fresh one.
    pub database: Option<Database>,
    pub limits: Limits,
    /// Whether RPCs need credentials; off unless a test is about access.
    pub auth: bool,
    pub token_ttl: chrono::TimeDelta,
    /// `--credential-cache-seconds`.
    pub credential_cache: Duration,
    /// Serve over TLS with these files (clients are then the test's own).
    pub tls: Option<billing::app::TlsFiles>,
    /// `--database-read-url`.
    pub read_url: Option<String>,
    /// `--invoice-feed-catch-up-seconds`.
    pub feed_catch_up: Duration,
    /// `--invoice-grace-period`: none unless a test is about it, so a month
    /// closes at its end.
    pub invoice_grace_period: chrono::TimeDelta,
    /// Email, webhooks and retries.
    pub delivery: billing::service::DeliveryConfig,
    /// Serve `/metrics` on a port of its own ([`TestApp::metrics_addr`]).
    pub metrics: bool,
    /// Read call records from NATS.
    pub nats: Option<billing::nats::NatsIngest>,
}

impl Default for AppOptions {
    fn default() -> Self {
        AppOptions {
            clock: Clock::system(),
            tz: Tz::UTC,
            scheduler: false,
            database: None,
            limits: Limits::default(),
            auth: false,
            token_ttl: billing::app::DEFAULT_TOKEN_TTL,
            credential_cache: billing::app::DEFAULT_CREDENTIAL_CACHE,
            tls: None,
            read_url: None,
            feed_catch_up: billing::app::DEFAULT_FEED_CATCH_UP,
            invoice_grace_period: chrono::TimeDelta::zero(),
            delivery: billing::service::DeliveryConfig::default(),
            metrics: false,
            nats: None,
        }
    }
}

/// The application with its clock started at [`TEST_NOW`], UTC periods, no
/// scheduler. A fixed start keeps the dates tests use within the accepted
/// call age whatever day the suite runs.
pub async fn spawn_app() -> TestApp {
    spawn_app_at(at(TEST_NOW)).await
}

/// Where `spawn_app()` starts its clock.
pub const TEST_NOW: &str = "2026-07-01T00:00:00Z";

/// The application with its clock started at `start`.
pub async fn spawn_app_at(start: DateTime<Utc>) -> TestApp {
    spawn_app_with(AppOptions {
        clock: Clock::starting_at(start),
        ..AppOptions::default()
    })
    .await
}

/// An RFC 3339 instant.
pub fn at(rfc3339: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(rfc3339)
        .expect("RFC 3339")
        .to_utc()
}

pub async fn spawn_app_with(options: AppOptions) -> TestApp {
    LazyLock::force(&TRACING);
    let database = match options.database {
        Some(database) => database,
        None => fresh_database().await,
    };
    let clock = options.clock;
    let tls = options.tls.is_some();
    let app = Application::build(Config {
        listen: "127.0.0.1:0".parse().expect("address"),
        database: billing::storage::DatabaseConfig {
            read_url: options.read_url,
            ..billing::storage::DatabaseConfig::new(database.url.clone())
        },
        clock: clock.clone(),
        billing_tz: options.tz,
        invoice_grace_period: options.invoice_grace_period,
        scheduler: options.scheduler,
        invoice_feed_catch_up: options.feed_catch_up,
        shutdown_grace: Duration::from_secs(2),
        limits: options.limits,
        auth: options.auth,
        token_ttl: options.token_ttl,
        credential_cache: options.credential_cache,
        tls: options.tls,
        delivery: options.delivery,
        metrics_listen: options
            .metrics
            .then(|| "127.0.0.1:0".parse().expect("address")),
        nats: options.nats,
    })
    .await
    .expect("application starts");
    let addr = app.local_addr();
    let metrics_addr = app.metrics_addr();
    let (shutdown, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        app.run_until_stopped(async {
            let _ = stopped.await;
        })
        .await
        .expect("server runs");
    });
    let endpoint = Channel::from_shared(format!("http://{addr}")).expect("uri");
    // Over TLS the test brings its own clients; these plaintext ones stay
    // unconnected.
    let channel = if tls {
        endpoint.connect_lazy()
    } else {
        endpoint.connect().await.expect("client connects")
    };
    TestApp {
        customers: CustomerServiceClient::new(channel.clone()),
        calls: CallServiceClient::new(channel.clone()),
        invoices: InvoiceServiceClient::new(channel.clone()),
        channel,
        addr,
        metrics_addr,
        clock,
        database,
        shutdown: Some(shutdown),
        server: Some(server),
    }
}

pub async fn fresh_database() -> Database {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    match std::env::var("TEST_DATABASE_URL") {
        Ok(admin_url) if admin_url.starts_with("postgres") => {
            let name = format!(
                "billing_test_{}_{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            );
            let admin = sea_orm::Database::connect(&admin_url)
                .await
                .expect("admin connection");
            admin
                .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await
                .expect("drop test database");
            admin
                .execute_unprepared(&format!("CREATE DATABASE {name}"))
                .await
                .expect("create test database");
            admin.close().await.expect("close admin connection");
            let base = admin_url
                .rsplit_once('/')
                .map_or(admin_url.as_str(), |(base, _)| base);
            Database {
                url: format!("{base}/{name}"),
                _keep: Arc::new(DatabaseGuard::Postgres {
                    admin_url: admin_url.clone(),
                    name,
                }),
            }
        }
        _ => {
            let dir = tempfile::tempdir().expect("temporary directory");
            Database {
                url: format!("sqlite://{}", dir.path().join("billing.db").display()),
                _keep: Arc::new(DatabaseGuard::Sqlite(dir)),
            }
        }
    }
}

impl TestApp {
    /// Triggers a graceful shutdown (if not begun) and waits for the server
    /// to stop; panics if it stopped with an error.
    pub async fn stop(mut self) {
        self.begin_shutdown();
        if let Some(server) = self.server.take() {
            server.await.expect("server task");
        }
    }

    /// Triggers a graceful shutdown without waiting for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }

    /// A plan of `kind` charging `per_minute_micros` in `increment` blocks.
    pub async fn plan(
        &self,
        kind: pb::PlanKind,
        per_minute_micros: i64,
        increment: i32,
    ) -> pb::Plan {
        self.customers
            .clone()
            .create_plan(pb::CreatePlanRequest {
                name: format!("{kind:?} {per_minute_micros}/{increment}s"),
                kind: kind.into(),
                currency_code: "USD".into(),
                monthly_fee_micros: 5_000_000,
                per_minute_micros,
                billing_increment_seconds: increment,
                included_minutes: 0,
                tariffs: Vec::new(),
                included_minutes_tariffs: Vec::new(),
            })
            .await
            .expect("plan created")
            .into_inner()
    }

    /// A customer on `plan_id` with a unique phone number derived from `n`.
    pub async fn customer(&self, plan_id: i64, n: u32, operator_ids: Vec<i64>) -> pb::Customer {
        self.customers
            .clone()
            .create_customer(pb::CreateCustomerRequest {
                name: format!("Customer {n}"),
                phone_number: format!("+1415555{n:04}"),
                plan_id,
                operator_ids,
                ..Default::default()
            })
            .await
            .expect("customer created")
            .into_inner()
    }

    /// A customer like [`TestApp::customer`], created on 2025-01-01 (the
    /// clock is set back for the creation, then forward again), so that
    /// calls dated in 2025 and 2026 fall within its life.
    pub async fn long_standing_customer(
        &self,
        plan_id: i64,
        n: u32,
        operator_ids: Vec<i64>,
    ) -> pb::Customer {
        let now = self.clock.now();
        self.clock.set(at("2025-01-01T00:00:00Z"));
        let customer = self.customer(plan_id, n, operator_ids).await;
        self.clock.set(now);
        customer
    }

    /// An operator named `name`.
    pub async fn operator(&self, name: &str) -> pb::Operator {
        self.customers
            .clone()
            .create_operator(pb::CreateOperatorRequest { name: name.into() })
            .await
            .expect("operator created")
            .into_inner()
    }

    /// Every call of a customer, following page tokens.
    pub async fn history(&self, customer_id: i64) -> Vec<pb::Call> {
        history_of(self.calls.clone(), customer_id).await
    }

    /// Streams `records` through IngestCalls and returns the report.
    pub async fn ingest(&self, records: Vec<pb::AddCallRequest>) -> pb::IngestCallsResponse {
        self.calls
            .clone()
            .ingest_calls(tokio_stream::iter(records))
            .await
            .expect("ingest")
            .into_inner()
    }

    /// Runs SQL on the application's database from outside the service:
    /// for tests that need a state no RPC can make (a damaged row).
    pub async fn execute_sql(&self, sql: &str) {
        let db = sea_orm::Database::connect(&self.database.url)
            .await
            .expect("test connection");
        db.execute_unprepared(sql).await.expect("test SQL");
        db.close().await.expect("close test connection");
    }

    /// Holds, from another client of the database, what a call of
    /// `customer_id` must write: SQLite's write lock, or PostgreSQL's lock on
    /// the customer's row (inserting a call needs a key-share lock on it).
    pub async fn hold_lock(&self, customer_id: i64) -> LockHolder {
        use sea_orm::{SqliteTransactionMode, TransactionOptions, TransactionTrait};
        let db = sea_orm::Database::connect(&self.database.url)
            .await
            .expect("test connection");
        let txn = db
            .begin_with_options(TransactionOptions {
                sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                ..Default::default()
            })
            .await
            .expect("lock taken");
        if self.database.url.starts_with("postgres") {
            txn.execute_unprepared(&format!(
                "SELECT id FROM customers WHERE id = {customer_id} FOR UPDATE"
            ))
            .await
            .expect("row locked");
        }
        LockHolder { db, txn }
    }

    /// Sets a customer's stored balance directly (a state that would take
    /// millions of calls to reach through the API).
    pub async fn set_balance(&self, customer_id: i64, balance_micros: i64) {
        self.execute_sql(&format!(
            "UPDATE customers SET balance_micros = {balance_micros} WHERE id = {customer_id}"
        ))
        .await;
    }

    /// The customer's current state.
    pub async fn get_customer(&self, customer_id: i64) -> pb::Customer {
        self.customers
            .clone()
            .get_customer(pb::GetCustomerRequest { customer_id })
            .await
            .expect("customer")
            .into_inner()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

/// A call record of `seconds` for `customer_id`.
pub fn call(customer_id: i64, seconds: i64) -> pb::AddCallRequest {
    pb::AddCallRequest {
        customer_id,
        duration: Some(pb::add_call_request::Duration::DurationSeconds(seconds)),
        ..Default::default()
    }
}

/// A protobuf timestamp from RFC 3339 text.
pub fn ts(rfc3339: &str) -> prost_types::Timestamp {
    let at = DateTime::parse_from_rfc3339(rfc3339).expect("RFC 3339");
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).expect("nanos"),
    }
}

/// Asserts that `result` failed with `code` and a message mentioning `needle`
/// (the field name, for invalid arguments).
#[track_caller]
pub fn assert_status<T: std::fmt::Debug>(result: Result<T, Status>, code: Code, needle: &str) {
    match result {
        Ok(value) => panic!("expected {code:?} mentioning {needle:?}, got Ok({value:?})"),
        Err(status) => {
            assert_eq!(status.code(), code, "status: {status:?}");
            assert!(
                status.message().contains(needle),
                "message {:?} should mention {needle:?}",
                status.message()
            );
        }
    }
}

/// A small deterministic generator (SplitMix64), so random tests reproduce
/// from their seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..bound`, as `i64`.
    pub fn below(&mut self, bound: u64) -> i64 {
        i64::try_from(self.below_u64(bound)).expect("below i64::MAX")
    }

    /// A number in `0..bound`.
    pub fn below_u64(&mut self, bound: u64) -> u64 {
        self.next() % bound.max(1)
    }

    /// True `percent` times in a hundred.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below_u64(100) < percent
    }
}

/// A lock on the database held by a test; see [`TestApp::hold_lock`].
pub struct LockHolder {
    db: sea_orm::DatabaseConnection,
    txn: sea_orm::DatabaseTransaction,
}

impl LockHolder {
    /// Releases the lock (rolling back) and closes the connection.
    pub async fn release(self) {
        self.txn.rollback().await.expect("rollback");
        self.db.close().await.expect("close");
    }
}

/// Adds `authorization: Bearer <token>` to every request of a client (or
/// nothing, for a caller without credentials).
#[derive(Clone)]
pub struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl Bearer {
    pub fn new(token: &str) -> Self {
        Bearer(Some(
            format!("Bearer {token}").parse().expect("a token is ASCII"),
        ))
    }

    /// No `authorization` metadata at all.
    pub fn none() -> Self {
        Bearer(None)
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// Whether this run's databases are PostgreSQL (`TEST_DATABASE_URL`).
pub fn on_postgres() -> bool {
    std::env::var("TEST_DATABASE_URL").is_ok_and(|url| url.starts_with("postgres"))
}

/// Every call of a customer through `calls`, following page tokens.
pub async fn history_of(mut calls: CallServiceClient<Channel>, customer_id: i64) -> Vec<pb::Call> {
    let mut stored = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = calls
            .get_call_history(pb::GetCallHistoryRequest {
                customer_id,
                page_size: 1000,
                page_token,
                ..Default::default()
            })
            .await
            .expect("history")
            .into_inner();
        stored.extend(page.calls);
        if page.next_page_token.is_empty() {
            return stored;
        }
        page_token = page.next_page_token;
    }
}
