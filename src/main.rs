//! The `billing` command: `serve`, `migrate`, `demo-data` and `create-admin`.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use billing::app::{Application, Config, DEFAULT_TOKEN_TTL, Limits, TlsFiles};
use billing::clock::Clock;
use billing::delivery::email::Mailer;
use billing::document::DocumentFormat;
use billing::domain::access::Principal;
use billing::domain::delivery::RetrySchedule;
use billing::domain::validation::parse_duration;
use billing::service::{Accounts, DeliveryConfig, Invoicing};
use billing::storage::GroupCommit;
use billing::storage::{DatabaseConfig, Store};
use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// The server's allocator: mimalloc, for Rust and, through the crate's
/// `override` feature, for C's `malloc` too, so SQLite's own allocations
/// (sqlx copies every column value of every row it reads with
/// `sqlite3_value_dup`) no longer go to glibc. Rows read from SQLite are
/// allocated on its connections' threads and freed on the runtime's, and
/// glibc's malloc spent a fifth of the server's time under the history load
/// on that (see BENCHMARKS.md). Transparent huge pages are turned off for the
/// process ([`disable_transparent_huge_pages`]): with them, mimalloc's
/// regions made the peak RSS a third larger.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Turns transparent huge pages off for this process (on Linux; a no-op
/// elsewhere), so memory is resident in 4 KiB pages, not 2 MiB ones, on
/// kernels set to `always`. Failure changes nothing but the RSS.
fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes only integer arguments and sets a
    // flag of this process; no memory of the program is read or written.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// Phone billing gRPC service.
#[derive(Debug, Parser)]
#[command(name = "billing", version, about)]
struct Cli {
    /// Database URL: `sqlite://FILE` (created on first start) or
    /// `postgres://USER:PASSWORD@HOST/DB`. Its value is never printed.
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        default_value = "sqlite://billing.db",
        global = true
    )]
    database_url: String,
    #[command(subcommand)]
    command: Command,
}

// Parsed once at startup: the size of `Serve` costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gRPC server (migrations run at startup).
    Serve {
        /// Address to listen on.
        #[arg(long, env = "BILLING_LISTEN", default_value = "127.0.0.1:50051")]
        listen: SocketAddr,
        /// Start the service clock at this RFC 3339 instant and let it run on
        /// in real time (for rehearsing a month end and for tests).
        #[arg(long, env = "BILLING_CLOCK_START")]
        clock_start: Option<DateTime<Utc>>,
        /// IANA time zone of billing periods (month boundaries follow it,
        /// daylight saving included), e.g. `Europe/Berlin`.
        #[arg(long, env = "BILLING_TIMEZONE", default_value = "UTC")]
        billing_timezone: Tz,
        /// How long after its end (local midnight of the 1st) a month
        /// closes: until then calls that started in it still belong to it,
        /// and its invoice cannot be issued; the scheduler issues it at the
        /// close. A number with a unit `s`, `m` or `h`, `0s` to `24h`.
        #[arg(long, env = "BILLING_INVOICE_GRACE_PERIOD", default_value = "4h",
              value_parser = parse_grace)]
        invoice_grace_period: TimeDelta,
        /// Do not run the billing scheduler (invoices are then issued only
        /// through GenerateInvoice and RunBillingCycle).
        #[arg(long, env = "BILLING_NO_SCHEDULER")]
        no_scheduler: bool,
        /// Seconds between two catch-ups of every WatchInvoices stream: each
        /// looks for invoices it was not notified of (issued by another
        /// replica while this one's listening connection was down).
        #[arg(long, env = "BILLING_INVOICE_FEED_CATCH_UP_SECONDS",
              default_value_t = billing::app::DEFAULT_FEED_CATCH_UP.as_secs(),
              value_parser = clap::value_parser!(u64).range(1..=86_400))]
        invoice_feed_catch_up_seconds: u64,
        /// Seconds in-flight RPCs may run on after SIGINT/SIGTERM before the
        /// server closes them.
        #[arg(long, env = "BILLING_SHUTDOWN_GRACE_SECONDS", default_value_t = 10)]
        shutdown_grace_seconds: u64,
        /// Serve without authentication: every caller has full access. For
        /// local development only; a warning is logged at startup.
        #[arg(long, env = "BILLING_NO_AUTH")]
        no_auth: bool,
        /// How long an access token from Login is accepted: a number with a
        /// unit `s`, `m`, `h` or `d` (e.g. `12h`, `90m`), 1 minute to 30 days.
        #[arg(long, env = "BILLING_TOKEN_TTL", default_value = "12h", value_parser = parse_ttl)]
        token_ttl: TimeDelta,
        /// Seconds a verified access token or API key is trusted without
        /// reading it again (0: read on every RPC). A key revoked through
        /// another replica may be accepted here for that long; through this
        /// one, it is refused at once.
        #[arg(long, env = "BILLING_CREDENTIAL_CACHE_SECONDS",
              default_value_t = billing::app::DEFAULT_CREDENTIAL_CACHE.as_secs(),
              value_parser = clap::value_parser!(u64).range(0..=300))]
        credential_cache_seconds: u64,
        /// Serve gRPC over TLS with this PEM certificate chain (needs
        /// --tls-key).
        #[arg(long, env = "BILLING_TLS_CERT", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The PEM private key of --tls-cert.
        #[arg(long, env = "BILLING_TLS_KEY", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        #[command(flatten)]
        nats: NatsFlags,
        /// Serve Prometheus metrics at http://ADDR/metrics (a port of its
        /// own, never the gRPC one). Unset: no metrics.
        #[arg(long, env = "BILLING_METRICS_LISTEN")]
        metrics_listen: Option<SocketAddr>,
        /// Require client certificates signed by this PEM CA (e.g. for
        /// switches); needs --tls-cert.
        #[arg(long, env = "BILLING_TLS_CLIENT_CA", requires = "tls_cert")]
        tls_client_ca: Option<PathBuf>,
        #[command(flatten)]
        database: DatabaseFlags,
        #[command(flatten)]
        limits: LimitFlags,
        #[command(flatten)]
        delivery: DeliveryFlags,
    },
    /// Apply pending database migrations and exit.
    Migrate {
        /// The billing time zone the service runs with: a conversion that
        /// places existing calls in billing months needs it.
        #[arg(long, env = "BILLING_TIMEZONE", default_value = "UTC")]
        billing_timezone: Tz,
    },
    /// Fill an empty database with demo plans, operators, customers, calls
    /// and one account of each role (their passwords are printed).
    DemoData {
        /// The billing time zone the service will run with.
        #[arg(long, env = "BILLING_TIMEZONE", default_value = "UTC")]
        billing_timezone: Tz,
    },
    /// Create an admin account, or reset the password of the admin account
    /// of that name (enabling it again if it was disabled). At a terminal
    /// the password is asked for twice and not shown; otherwise it is the
    /// first line of standard input. At least 12 characters; migrations
    /// run first.
    CreateAdmin {
        /// The admin's username.
        username: String,
    },
    /// Render an issued invoice as a PDF or HTML document, read from the
    /// database directly (as `GetInvoiceDocument` renders it).
    InvoiceDocument {
        /// The invoice's id.
        invoice_id: i64,
        /// `pdf` or `html`.
        #[arg(long, default_value = "pdf")]
        format: DocumentFormatArg,
        /// The file to write; `-` writes to standard output.
        #[arg(long)]
        output: PathBuf,
        /// The billing time zone the service runs with (dates are shown in it).
        #[arg(long, env = "BILLING_TIMEZONE", default_value = "UTC")]
        billing_timezone: Tz,
    },
    /// Upload CDR files to a running server (through StreamCalls). Exits
    /// with 1 when a row was rejected (see --rejects) or the server failed;
    /// safe to run again: records already stored are duplicates.
    ImportCdr {
        /// The CDR files, read in order.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// `billing-csv`, `asterisk` (cdr_csv's Master.csv) or `freeswitch`
        /// (mod_cdr_csv's default template).
        #[arg(long, default_value = "billing-csv")]
        format: billing::import::cdr::CdrFormat,
        /// The server: `http://HOST:PORT`, or `https://HOST:PORT` (TLS).
        #[arg(long, env = "BILLING_SERVER", default_value = "http://127.0.0.1:50051")]
        server: String,
        /// PEM CA certificate to verify an `https://` server with (default:
        /// the public web roots).
        #[arg(long)]
        ca_cert: Option<PathBuf>,
        /// PEM client certificate, for a server that asks for one.
        #[arg(long, requires = "client_key")]
        client_cert: Option<PathBuf>,
        /// The PEM private key of --client-cert.
        #[arg(long, requires = "client_cert")]
        client_key: Option<PathBuf>,
        /// API key (of a switch or operator account). Never printed.
        #[arg(long, env = "BILLING_API_KEY", hide_env_values = true)]
        api_key: Option<String>,
        /// Write rejected rows here (CSV: file, line, reason, row).
        #[arg(long)]
        rejects: Option<PathBuf>,
        /// The time zone of Asterisk's and FreeSWITCH's local times.
        #[arg(long, default_value = "UTC")]
        timezone: Tz,
    },
}

/// Call records from NATS JetStream.
#[derive(Debug, clap::Args)]
struct NatsFlags {
    /// Read call records from this NATS server's JetStream, e.g.
    /// `nats://127.0.0.1:4222`. Never printed. Unset: no NATS.
    #[arg(long, env = "BILLING_INGEST_NATS", hide_env_values = true)]
    ingest_nats: Option<String>,
    /// The JetStream stream (created over --ingest-nats-subject if
    /// missing).
    #[arg(long, env = "BILLING_INGEST_NATS_STREAM", default_value = "CALLS")]
    ingest_nats_stream: String,
    /// The subject call records are published on.
    #[arg(
        long,
        env = "BILLING_INGEST_NATS_SUBJECT",
        default_value = "billing.calls"
    )]
    ingest_nats_subject: String,
    /// Where records that can never be stored are published, with the
    /// reason in the `Billing-Reason` header.
    #[arg(
        long,
        env = "BILLING_INGEST_NATS_DEAD_LETTER",
        default_value = "billing.calls.dead"
    )]
    ingest_nats_dead_letter: String,
    /// The durable consumer every replica shares.
    #[arg(long, env = "BILLING_INGEST_NATS_CONSUMER", default_value = "billing")]
    ingest_nats_consumer: String,
}

impl NatsFlags {
    fn config(self) -> Option<billing::nats::NatsIngest> {
        self.ingest_nats.map(|url| billing::nats::NatsIngest {
            url,
            stream: self.ingest_nats_stream,
            subject: self.ingest_nats_subject,
            dead_letter: self.ingest_nats_dead_letter,
            consumer: self.ingest_nats_consumer,
        })
    }
}

/// How invoices and alerts are delivered.
#[derive(Debug, clap::Args)]
struct DeliveryFlags {
    /// Email issued invoices (PDF attached) and balance alerts to customers
    /// with an address through this SMTP server: `smtps://HOST:465`
    /// (TLS), or `smtp://HOST:587` (STARTTLS required; add
    /// `?tls=opportunistic` for a local relay without TLS), optionally with
    /// `USER:PASSWORD@` before the host. Never printed. Unset: no email.
    #[arg(
        long,
        env = "BILLING_SMTP_URL",
        hide_env_values = true,
        requires = "smtp_from"
    )]
    smtp_url: Option<String>,
    /// The sender of those emails, e.g. `Billing <billing@example.com>`.
    #[arg(long, env = "BILLING_SMTP_FROM")]
    smtp_from: Option<String>,
    /// Delays between attempts of a delivery that failed (not a 2xx answer,
    /// a 10 s time-out, a refused connection, an SMTP error), comma
    /// separated; after the last, the delivery is FAILED.
    #[arg(
        long,
        env = "BILLING_DELIVERY_RETRY_SCHEDULE",
        default_value = billing::domain::delivery::DEFAULT_RETRY_SCHEDULE,
        value_parser = RetrySchedule::parse
    )]
    delivery_retry_schedule: RetrySchedule,
    /// Allow `http://` webhooks and webhooks to loopback, private and
    /// link-local addresses: for development and tests only.
    #[arg(long, env = "BILLING_ALLOW_INSECURE_WEBHOOKS")]
    allow_insecure_webhooks: bool,
}

impl DeliveryFlags {
    fn config(self) -> Result<DeliveryConfig, String> {
        let mailer = match (self.smtp_url, self.smtp_from) {
            (Some(url), Some(from)) => Some(Mailer::new(&url, &from)?),
            _ => None,
        };
        Ok(DeliveryConfig {
            mailer,
            retry_schedule: self.delivery_retry_schedule,
            allow_insecure_webhooks: self.allow_insecure_webhooks,
        })
    }
}

/// `invoice-document --format`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum DocumentFormatArg {
    Pdf,
    Html,
}

/// Parses a token lifetime such as `12h`, `90m`, `3600s` or `1d`.
fn parse_ttl(text: &str) -> Result<TimeDelta, String> {
    flag_delta(text, 60, 30 * 86_400, "1 minute and 30 days")
}

/// Parses `--invoice-grace-period`: like `--token-ttl`, `0s` to `24h`.
fn parse_grace(text: &str) -> Result<TimeDelta, String> {
    flag_delta(text, 0, 86_400, "0s and 24h")
}

/// Parses `--ingest-flush-interval`: a duration as `--token-ttl` takes it
/// (`ms` too), between 10ms and 1h.
fn parse_interval(text: &str) -> Result<Duration, String> {
    parse_duration(
        text,
        Duration::from_millis(10),
        Duration::from_secs(3600),
        "10ms and 1h",
    )
}

/// [`parse_duration`] between `min` and `max` seconds, as a `TimeDelta`.
fn flag_delta(text: &str, min: u64, max: u64, range: &str) -> Result<TimeDelta, String> {
    let duration = parse_duration(
        text,
        Duration::from_secs(min),
        Duration::from_secs(max),
        range,
    )?;
    TimeDelta::from_std(duration).map_err(|_| format!("`{text}` is too long"))
}

/// The read replica and the connection pools.
#[derive(Debug, clap::Args)]
struct DatabaseFlags {
    /// A read replica of the database (`postgres://…`; a `sqlite://` file
    /// also works). History, lists, consolidated months and invoice reads go
    /// there and may lag the primary by the replica's delay; everything that
    /// writes, or must read its own writes, stays on --database-url. Its
    /// value is never printed.
    #[arg(long, env = "DATABASE_READ_URL", hide_env_values = true)]
    database_read_url: Option<String>,
    /// Connections per pool (default: 16 on PostgreSQL, for the primary and
    /// again for the read replica; on SQLite, which always writes through
    /// one, two reading connections per core, at least 4 and at most 16).
    /// Each replica of the service holds this many, plus one for readiness
    /// probes and one listening for invoices.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS",
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    database_max_connections: Option<u32>,
    /// Milliseconds a request waits for a database connection (opening one
    /// included) before it fails with RESOURCE_EXHAUSTED: waiting under load
    /// is backpressure, as long as a unary RPC may take by default.
    #[arg(long, env = "DATABASE_ACQUIRE_TIMEOUT_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(10..=600_000))]
    database_acquire_timeout_ms: u64,
    /// SQLite: milliseconds between background checkpoints, which copy the
    /// write-ahead log into the database file on a connection of their own
    /// instead of inside a commit on the one writing connection; 0 leaves
    /// them to SQLite (inside the commit that takes the log past 1,000
    /// pages).
    #[arg(long, env = "DATABASE_SQLITE_CHECKPOINT_INTERVAL_MS", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(0..=60_000))]
    sqlite_checkpoint_interval_ms: u64,
}

/// Bounds on what one request or connection may cost.
#[derive(Debug, clap::Args)]
struct LimitFlags {
    /// Reject calls that started more than this many days ago.
    #[arg(long, env = "BILLING_MAX_CALL_AGE_DAYS", default_value_t = 365,
          value_parser = clap::value_parser!(u32).range(1..=36_500))]
    max_call_age_days: u32,
    /// Largest request message accepted, in bytes (RESOURCE_EXHAUSTED above).
    #[arg(long, env = "BILLING_MAX_MESSAGE_BYTES", default_value_t = 1024 * 1024,
          value_parser = clap::value_parser!(u64).range(1024..=64 * 1024 * 1024))]
    max_message_bytes: u64,
    /// HTTP/2 streams one connection may have open at once (the stream
    /// flow-control window shrinks above 327 so that clients sending many
    /// small frames are never cut off).
    #[arg(long, env = "BILLING_MAX_CONCURRENT_STREAMS", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    max_concurrent_streams: u32,
    /// Requests of one connection served at once; more wait their turn.
    #[arg(long, env = "BILLING_MAX_REQUESTS_PER_CONNECTION", default_value_t = 128,
          value_parser = clap::value_parser!(u64).range(1..=65_536))]
    max_requests_per_connection: u64,
    /// Seconds a unary RPC may take before DEADLINE_EXCEEDED (streams that
    /// the client sends are exempt).
    #[arg(long, env = "BILLING_UNARY_TIMEOUT_SECONDS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    unary_timeout_seconds: u64,
    /// WatchInvoices streams this server keeps open at once
    /// (RESOURCE_EXHAUSTED beyond).
    #[arg(long, env = "BILLING_MAX_INVOICE_WATCHERS", default_value_t = 1024,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    max_invoice_watchers: u64,
    /// WatchInvoices streams one account keeps open on this server at once
    /// (RESOURCE_EXHAUSTED beyond), so one tenant cannot take every slot.
    #[arg(long, env = "BILLING_MAX_INVOICE_WATCHERS_PER_ACCOUNT", default_value_t = 16,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    max_invoice_watchers_per_account: u64,
    /// IngestCalls streams this server serves at once (RESOURCE_EXHAUSTED
    /// beyond).
    #[arg(long, env = "BILLING_MAX_INGEST_STREAMS", default_value_t = 64,
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    max_ingest_streams: u64,
    /// IngestCalls streams one account has open on this server at once
    /// (RESOURCE_EXHAUSTED beyond), so one switch cannot take every slot.
    #[arg(long, env = "BILLING_MAX_INGEST_STREAMS_PER_ACCOUNT", default_value_t = 8,
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    max_ingest_streams_per_account: u64,
    /// Longest time a streamed call waits to be written: an IngestCalls
    /// stream commits what it holds at least this often, however slowly
    /// its records arrive ("250ms", "1s", "2m"; a bare number is seconds).
    #[arg(long, env = "BILLING_INGEST_FLUSH_INTERVAL", default_value = "1s",
          value_parser = parse_interval)]
    ingest_flush_interval: Duration,
    /// Concurrent AddCall writes stored in one transaction, at most (group
    /// commit).
    #[arg(long, env = "BILLING_GROUP_COMMIT_MAX_BATCH", default_value_t = 256,
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    group_commit_max_batch: u64,
    /// AddCall writes waiting for the group commit, at most; more requests
    /// wait to be queued (backpressure).
    #[arg(long, env = "BILLING_GROUP_COMMIT_QUEUE", default_value_t = 4096,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    group_commit_queue: u64,
    /// Microseconds the AddCall writer waits for a batch to fill before
    /// writing it; 0 (the default) writes whatever is queued at once, and
    /// batches still grow with the load while the previous one commits.
    #[arg(long, env = "BILLING_GROUP_COMMIT_LINGER_MICROS", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    group_commit_linger_micros: u64,
    /// AddCall writer tasks, each writing one batch at a time on its own
    /// connection (default: 2 on PostgreSQL, 1 on SQLite, which writes
    /// through one connection).
    #[arg(long, env = "BILLING_GROUP_COMMIT_WRITERS",
          value_parser = clap::value_parser!(u64).range(1..=64))]
    group_commit_writers: Option<u64>,
    /// Passwords hashed or verified at once (logins, new accounts; default:
    /// the number of cores). Up to 8 per slot more wait their turn; beyond
    /// that, RESOURCE_EXHAUSTED.
    #[arg(long, env = "BILLING_PASSWORD_HASH_CONCURRENCY",
          value_parser = clap::value_parser!(u64).range(1..=1024))]
    password_hash_concurrency: Option<u64>,
}

impl LimitFlags {
    fn limits(&self) -> Limits {
        let size = |value: u64| usize::try_from(value).unwrap_or(usize::MAX);
        Limits {
            max_call_age_days: self.max_call_age_days,
            max_message_bytes: size(self.max_message_bytes),
            max_concurrent_streams: self.max_concurrent_streams,
            max_requests_per_connection: size(self.max_requests_per_connection),
            unary_timeout: Duration::from_secs(self.unary_timeout_seconds),
            max_invoice_watchers: size(self.max_invoice_watchers),
            max_invoice_watchers_per_account: size(self.max_invoice_watchers_per_account),
            max_ingest_streams: size(self.max_ingest_streams),
            max_ingest_streams_per_account: size(self.max_ingest_streams_per_account),
            ingest_flush_interval: self.ingest_flush_interval,
            password_hash_concurrency: self
                .password_hash_concurrency
                .map_or_else(billing::service::default_password_hash_concurrency, size),
            group_commit: GroupCommit {
                max_batch: size(self.group_commit_max_batch),
                queue: size(self.group_commit_queue),
                linger: Duration::from_micros(self.group_commit_linger_micros),
                writers: self.group_commit_writers.map(size),
            },
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    disable_transparent_huge_pages();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    // Whatever fails, nothing printed shows a database password.
    let mut urls = vec![cli.database_url.clone()];
    if let Command::Serve {
        database,
        delivery,
        nats,
        ..
    } = &cli.command
    {
        urls.extend(database.database_read_url.clone());
        urls.extend(delivery.smtp_url.clone());
        urls.extend(nats.ingest_nats.clone());
    }
    let result = match cli.command {
        Command::Serve {
            listen,
            clock_start,
            billing_timezone,
            invoice_grace_period,
            no_scheduler,
            invoice_feed_catch_up_seconds,
            shutdown_grace_seconds,
            no_auth,
            token_ttl,
            credential_cache_seconds,
            tls_cert,
            tls_key,
            metrics_listen,
            nats,
            tls_client_ca,
            database,
            limits,
            delivery,
        } => {
            let clock = clock_start.map_or_else(Clock::system, Clock::starting_at);
            let delivery = match delivery.config() {
                Ok(delivery) => delivery,
                Err(err) => {
                    eprintln!("billing: {err}");
                    return ExitCode::FAILURE;
                }
            };
            let config = Config {
                listen,
                database: DatabaseConfig {
                    url: cli.database_url,
                    read_url: database.database_read_url,
                    max_connections: database.database_max_connections,
                    acquire_timeout: Duration::from_millis(database.database_acquire_timeout_ms),
                    sqlite_checkpoint_interval: Duration::from_millis(
                        database.sqlite_checkpoint_interval_ms,
                    ),
                },
                clock,
                billing_tz: billing_timezone,
                invoice_grace_period,
                scheduler: !no_scheduler,
                invoice_feed_catch_up: Duration::from_secs(invoice_feed_catch_up_seconds),
                shutdown_grace: Duration::from_secs(shutdown_grace_seconds),
                limits: limits.limits(),
                auth: !no_auth,
                token_ttl,
                credential_cache: Duration::from_secs(credential_cache_seconds),
                tls: tls_cert.zip(tls_key).map(|(cert, key)| TlsFiles {
                    cert,
                    key,
                    client_ca: tls_client_ca,
                }),
                delivery,
                metrics_listen,
                nats: nats.config(),
            };
            serve(config).await
        }
        Command::Migrate { billing_timezone } => migrate(&cli.database_url, billing_timezone).await,
        Command::DemoData { billing_timezone } => {
            demo_data(&cli.database_url, billing_timezone).await
        }
        Command::CreateAdmin { username } => create_admin(&cli.database_url, username).await,
        Command::ImportCdr {
            files,
            format,
            server,
            ca_cert,
            client_cert,
            client_key,
            api_key,
            rejects,
            timezone,
        } => {
            import_cdr(billing::import::ImportOptions {
                files,
                format,
                tz: timezone,
                server,
                ca_cert,
                client_cert,
                client_key,
                api_key,
                rejects,
            })
            .await
        }
        Command::InvoiceDocument {
            invoice_id,
            format,
            output,
            billing_timezone,
        } => {
            invoice_document(
                &cli.database_url,
                invoice_id,
                format,
                &output,
                billing_timezone,
            )
            .await
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if err.is::<RowsRejected>() => {
            eprintln!("billing: {err}");
            ExitCode::FAILURE
        }
        Err(err) => {
            let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
            let err = billing::storage::redact(&err.to_string(), &urls);
            tracing::error!("{err}");
            eprintln!("billing: {err}");
            ExitCode::FAILURE
        }
    }
}

type CliResult = Result<(), Box<dyn std::error::Error>>;

/// An import that stored what it could but rejected some rows.
#[derive(Debug)]
struct RowsRejected(u64);

impl std::fmt::Display for RowsRejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} rows rejected", self.0)
    }
}

impl std::error::Error for RowsRejected {}

async fn import_cdr(options: billing::import::ImportOptions) -> CliResult {
    let rejects = options.rejects.clone();
    let report = billing::import::import(options)
        .await
        .map_err(|err| -> Box<dyn std::error::Error> { err })?;
    println!(
        "imported {} lines: {} records sent, {} accepted, {} duplicates, {} rejected, {} skipped",
        report.lines,
        report.records,
        report.accepted,
        report.duplicates,
        report.rejected,
        report.skipped
    );
    if report.rejected > 0 {
        if let Some(rejects) = rejects {
            eprintln!("billing: rejected rows are in {}", rejects.display());
        }
        return Err(Box::new(RowsRejected(report.rejected)));
    }
    Ok(())
}

async fn serve(config: Config) -> CliResult {
    let app = Application::build(config).await?;
    app.run_until_stopped(shutdown_signal()).await?;
    Ok(())
}

async fn migrate(database_url: &str, tz: Tz) -> CliResult {
    let store = Store::connect(database_url).await?;
    store.migrate().await?;
    store.place_rows_in_billing_months(tz).await?;
    store.close().await?;
    tracing::info!("migrations applied");
    Ok(())
}

async fn demo_data(database_url: &str, tz: Tz) -> CliResult {
    let store = Store::connect(database_url).await?;
    store.migrate().await?;
    let summary = billing::demo::fill(&store, Clock::system(), tz).await?;
    store.close().await?;
    println!(
        "demo data: {} plans, {} operators, {} customers, {} calls",
        summary.plans, summary.operators, summary.customers, summary.calls
    );
    println!("accounts (sign in with AccountService/Login):");
    for (role, username, password) in &summary.accounts {
        println!("  {role:<8}  username {username:<16}  password {password}");
    }
    Ok(())
}

async fn invoice_document(
    database_url: &str,
    invoice_id: i64,
    format: DocumentFormatArg,
    output: &Path,
    tz: Tz,
) -> CliResult {
    let store = Store::connect(database_url).await?;
    let invoicing = Invoicing::new(store.clone(), Clock::system(), tz, TimeDelta::zero());
    let format = match format {
        DocumentFormatArg::Pdf => DocumentFormat::Pdf,
        DocumentFormatArg::Html => DocumentFormat::Html,
    };
    let principal = Principal::System("invoice-document is run by the operator of the service");
    let document = invoicing
        .invoice_document(&principal, invoice_id, format)
        .await;
    store.close().await?;
    let document = document?;
    if output == Path::new("-") {
        std::io::stdout().write_all(&document.content)?;
    } else {
        std::fs::write(output, &document.content)?;
        eprintln!(
            "{}: {} bytes ({})",
            output.display(),
            document.content.len(),
            document.file_name
        );
    }
    Ok(())
}

async fn create_admin(database_url: &str, username: String) -> CliResult {
    let password = read_password(&username)?;
    let store = Store::connect(database_url).await?;
    store.migrate().await?;
    let accounts = Accounts::new(store.clone(), Clock::system(), DEFAULT_TOKEN_TTL);
    let (account, created) = accounts.create_admin(username, password).await?;
    store.close().await?;
    if created {
        println!(
            "admin account {} created (id {})",
            account.username, account.id
        );
    } else {
        println!(
            "password of admin account {} (id {}) reset",
            account.username, account.id
        );
    }
    Ok(())
}

/// The new admin's password: at a terminal asked for twice, without echo;
/// otherwise the first line of standard input.
fn read_password(username: &str) -> std::io::Result<String> {
    use std::io::{IsTerminal, Write};
    let read_line = || -> std::io::Result<String> {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        Ok(line.trim_end_matches(['\n', '\r']).to_owned())
    };
    if !std::io::stdin().is_terminal() {
        return read_line();
    }
    let ask = |prompt: &str| -> std::io::Result<String> {
        let mut stderr = std::io::stderr();
        write!(stderr, "{prompt}")?;
        stderr.flush()?;
        let password = {
            let _quiet = EchoOff::on_stdin();
            read_line()?
        };
        writeln!(stderr)?;
        Ok(password)
    };
    let password = ask(&format!(
        "Password for admin {username} (at least 12 characters, not shown): "
    ))?;
    if ask("Repeat it: ")? != password {
        return Err(std::io::Error::other(
            "the two passwords differ; nothing was changed",
        ));
    }
    Ok(password)
}

/// Turns the terminal's echo off on standard input until dropped.
struct EchoOff {
    #[cfg(target_os = "linux")]
    saved: Option<libc::termios>,
}

impl EchoOff {
    #[cfg(target_os = "linux")]
    fn on_stdin() -> Self {
        // SAFETY: tcgetattr and tcsetattr only read and write the termios
        // value given, for file descriptor 0.
        unsafe {
            let mut saved: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut saved) != 0 {
                return EchoOff { saved: None };
            }
            let mut quiet = saved;
            quiet.c_lflag &= !libc::ECHO;
            if libc::tcsetattr(0, libc::TCSANOW, &quiet) != 0 {
                return EchoOff { saved: None };
            }
            EchoOff { saved: Some(saved) }
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn on_stdin() -> Self {
        EchoOff {}
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        if let Some(saved) = self.saved {
            // SAFETY: restores the termios read by `on_stdin`.
            unsafe {
                libc::tcsetattr(0, libc::TCSANOW, &saved);
            }
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot listen for SIGTERM");
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
