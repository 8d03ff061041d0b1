//! Storage: the only layer that knows SeaORM, tables and SQL. It persists the
//! domain's types and enforces, with constraints and transactions, every
//! guarantee that must hold across replicas sharing one database.

mod accounts;
mod calls;
mod customers;
mod deliveries;
pub mod entities;
mod feed;
mod group_commit;
mod invoices;
mod numbers;
mod secrets;

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use migration::{Migrator, MigratorTrait};
use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseBackend, DatabaseConnection,
    DatabaseTransaction, DbErr, SqlErr, SqliteTransactionMode, Statement, TransactionOptions,
    TransactionTrait,
};

use crate::domain::period::BillingPeriod;
use crate::error::AppError;

pub use accounts::{AccountRow, ApiKeyState, StoredCredential};
pub use calls::CallFilter;
pub use deliveries::{AttemptOutcome, Delivery, DeliveryFilter, NewDelivery, Outbox};
pub use feed::{FeedEvent, InvoiceListener};
pub use group_commit::{CallWriter, GroupCommit};
pub use invoices::{CustomerToInvoice, InvoiceFilter, IssueTransaction, MonthQuery, NewInvoice};
pub use numbers::Release;
pub use secrets::redact;

/// How long a writer waits for SQLite's write lock before giving up.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Rows a SQLite connection's worker thread hands over before it waits for
/// the request to take them: sqlx's default of 50 made a batch's
/// `RETURNING` rows and every page of 100 calls wait on the async side
/// several times, each time behind every other request for a worker.
const SQLITE_ROW_BUFFER: usize = 1024;

/// The page cache of the SQLite connection that writes, in KiB: a bulk
/// write that touches more pages than its cache holds spills them to the
/// WAL before it commits and reads them back. With 32 MiB an ingestion
/// batch of 10,000 calls no longer spills at 300,000 calls, and 64 MiB was
/// no faster at 1M (see BENCHMARKS.md); the reading connections keep
/// SQLite's default of 2 MiB each.
const SQLITE_WRITER_CACHE_KIB: u32 = 32 * 1024;

/// How often a background task checkpoints a SQLite WAL into the database
/// file unless `--sqlite-checkpoint-interval-ms` says otherwise. Left to
/// SQLite, the connection whose commit takes the WAL past 1,000 pages runs
/// the checkpoint inside that commit, on the one writing connection, so
/// every writer waits behind it; the background task copies the pages on a
/// connection of its own while the writer goes on.
pub const DEFAULT_SQLITE_CHECKPOINT_INTERVAL: Duration = Duration::from_millis(100);

/// With background checkpoints, the WAL size (in pages) at which a commit
/// still checkpoints by itself: a backstop for a checkpointer that falls
/// behind, so the WAL stays bounded (64 MiB of 4 KiB pages).
const SQLITE_CHECKPOINT_BACKSTOP_PAGES: u32 = 16 * 1024;

/// Connections per pool unless `--database-max-connections` says otherwise:
/// on PostgreSQL the one pool of reads and writes (and the read replica's);
/// on SQLite the reading pool, since writes there have one connection.
pub const DEFAULT_POSTGRES_CONNECTIONS: u32 = 16;
/// Reading connections per core on SQLite unless configured (see
/// [`default_sqlite_read_connections`]).
pub const SQLITE_READ_CONNECTIONS_PER_CORE: u32 = 2;
/// The fewest and the most reading connections that default gives.
pub const SQLITE_READ_CONNECTIONS_DEFAULT_RANGE: (u32, u32) = (4, 16);

/// The reading pool's size on SQLite unless `--database-max-connections`
/// says otherwise: [`SQLITE_READ_CONNECTIONS_PER_CORE`] per core, within
/// [`SQLITE_READ_CONNECTIONS_DEFAULT_RANGE`] (4 on 2 cores). Each
/// connection is a thread of its own that runs its queries on the CPU
/// (the database's pages are in the OS cache), so more threads than that
/// only take turns at the cores: on 2 cores, 8 connections served the
/// same history pages per second as 4 with a longer tail (BENCHMARKS.md,
/// "Reading connections and the plan cache").
pub fn default_sqlite_read_connections() -> u32 {
    let cores = std::thread::available_parallelism()
        .map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX));
    let (fewest, most) = SQLITE_READ_CONNECTIONS_DEFAULT_RANGE;
    cores
        .saturating_mul(SQLITE_READ_CONNECTIONS_PER_CORE)
        .clamp(fewest, most)
}

/// How long a request waits for a pooled connection (including opening
/// one) before it fails with `RESOURCE_EXHAUSTED`, unless
/// `--database-acquire-timeout-ms` says otherwise: as long as a unary RPC
/// may take by default, so that waiting for a connection under load is
/// backpressure rather than an error.
pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one readiness probe ([`Store::probe`]) may take before the
/// database counts as unreachable.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Where the database is and how the pools to it are sized. Its `Debug`
/// hides the URLs' passwords.
#[derive(Clone)]
pub struct DatabaseConfig {
    /// The primary: `sqlite://FILE` or `postgres://…`. Everything that
    /// writes, or must read what it just wrote, goes here.
    pub url: String,
    /// A read replica (or any copy that may lag) for the reads that may be
    /// a little stale: history, lists, consolidated months and invoice
    /// reads ([`Store::replica`]). `None`: the primary serves them.
    pub read_url: Option<String>,
    /// Connections per pool; `None`: [`DEFAULT_POSTGRES_CONNECTIONS`] or
    /// [`default_sqlite_read_connections`].
    pub max_connections: Option<u32>,
    /// How long a request waits for a connection before `UNAVAILABLE`.
    pub acquire_timeout: Duration,
    /// SQLite only: how often [`Store::checkpoint_wal`] should run in the
    /// background; `ZERO` leaves checkpoints to SQLite, inside commits.
    pub sqlite_checkpoint_interval: Duration,
}

impl std::fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls = self.urls();
        f.debug_struct("DatabaseConfig")
            .field("url", &redact(&self.url, &urls))
            .field(
                "read_url",
                &self.read_url.as_deref().map(|url| redact(url, &urls)),
            )
            .field("max_connections", &self.max_connections)
            .field("acquire_timeout", &self.acquire_timeout)
            .field(
                "sqlite_checkpoint_interval",
                &self.sqlite_checkpoint_interval,
            )
            .finish()
    }
}

impl DatabaseConfig {
    /// The URLs it holds, whose passwords nothing may print.
    pub fn urls(&self) -> Vec<&str> {
        std::iter::once(self.url.as_str())
            .chain(self.read_url.as_deref())
            .collect()
    }

    /// The primary at `url`, no read replica, default pool sizes.
    pub fn new(url: impl Into<String>) -> Self {
        DatabaseConfig {
            url: url.into(),
            read_url: None,
            max_connections: None,
            acquire_timeout: DEFAULT_ACQUIRE_TIMEOUT,
            sqlite_checkpoint_interval: DEFAULT_SQLITE_CHECKPOINT_INTERVAL,
        }
    }
}

/// The service's database: its connection pools and the queries over them.
#[derive(Debug, Clone)]
pub struct Store {
    /// Reads, and writes of one statement.
    db: DatabaseConnection,
    /// Write transactions ([`Store::begin_write`]).
    writer: DatabaseConnection,
    /// Reads that may be stale: the read replica's pool, or `db`.
    reads: DatabaseConnection,
    /// One connection to the primary for readiness probes, apart from the
    /// pools so a busy pool never reads as a lost database.
    probe: DatabaseConnection,
    /// The same for the read replica, when there is one.
    read_probe: Option<DatabaseConnection>,
    /// The primary's URL on PostgreSQL, for the invoice listener's own
    /// connection ([`Store::invoice_listener`]); `None` on SQLite.
    listen_url: Option<Arc<str>>,
    /// SQLite with background checkpoints: their connection and interval.
    checkpointer: Option<(DatabaseConnection, Duration)>,
    /// What writing a balance alert needs ([`Store::with_outbox`]).
    outbox: Outbox,
    /// The application's metrics: one set per connected store, shared by
    /// its clones, so two servers in one process count apart.
    metrics: Arc<crate::metrics::Metrics>,
}

impl Store {
    /// Connects to `database_url` with default pools and no read replica;
    /// see [`Store::connect_with`].
    pub async fn connect(database_url: &str) -> Result<Self, DbErr> {
        Store::connect_with(&DatabaseConfig::new(database_url)).await
    }

    /// Connects to the database of `config` (`sqlite://…` or
    /// `postgres://…`). A SQLite file is created on first use and configured
    /// for a service: WAL, a busy timeout, foreign keys on, and full sync so
    /// an acknowledged write is on disk.
    ///
    /// On SQLite, write transactions get a pool of their own with one
    /// connection: SQLite takes one writer at a time anyway, so writers queue
    /// for that connection in order instead of polling the file lock, and
    /// only that connection keeps a page cache large enough for a bulk
    /// write ([`SQLITE_WRITER_CACHE_KIB`]). On PostgreSQL both are one pool.
    pub async fn connect_with(config: &DatabaseConfig) -> Result<Self, DbErr> {
        Store::open(config).await.map_err(|err| {
            // The drivers quote the URL they could not use.
            let urls = config.urls();
            let redacted = |text: String| redact(&text, &urls);
            match err {
                DbErr::Conn(inner) => {
                    DbErr::Conn(sea_orm::RuntimeErr::Internal(redacted(inner.to_string())))
                }
                other => DbErr::Custom(redacted(other.to_string())),
            }
        })
    }

    async fn open(config: &DatabaseConfig) -> Result<Self, DbErr> {
        let url = config.url.as_str();
        let sqlite = is_sqlite(url);
        let connections = config.max_connections.unwrap_or_else(|| {
            if sqlite {
                default_sqlite_read_connections()
            } else {
                DEFAULT_POSTGRES_CONNECTIONS
            }
        });
        let background_checkpoints = sqlite && !config.sqlite_checkpoint_interval.is_zero();
        let pool = |url: &str, connections, cache_kib, writes| {
            Database::connect(pool_options(
                url,
                PoolSize {
                    connections,
                    acquire_timeout: config.acquire_timeout,
                },
                SqliteTuning {
                    cache_kib,
                    writes,
                    background_checkpoints,
                },
            ))
        };
        let (db, writer) = if sqlite {
            // The writer connects first: it creates the file and turns on WAL.
            let writer = pool(url, 1, Some(SQLITE_WRITER_CACHE_KIB), true).await?;
            (pool(url, connections, None, true).await?, writer)
        } else {
            let db = pool(url, connections, None, true).await?;
            (db.clone(), db)
        };
        let probe = Database::connect(probe_options(url)).await?;
        let (reads, read_probe) = match &config.read_url {
            None => (db.clone(), None),
            Some(read_url) => (
                pool(read_url, connections, None, false).await?,
                Some(Database::connect(probe_options(read_url)).await?),
            ),
        };
        let checkpointer = if background_checkpoints {
            let connection = pool(url, 1, None, true).await?;
            Some((connection, config.sqlite_checkpoint_interval))
        } else {
            None
        };
        Ok(Store {
            db,
            writer,
            reads,
            probe,
            read_probe,
            listen_url: (!sqlite).then(|| Arc::from(url)),
            checkpointer,
            outbox: Outbox::default(),
            metrics: Arc::new(crate::metrics::Metrics::new()),
        })
    }

    /// This store with every query sent to the read replica (the primary
    /// when none is configured). For use cases whose reads may lag the
    /// primary by the replica's delay; never for writes, which would fail
    /// on a replica.
    pub fn replica(&self) -> Store {
        Store {
            db: self.reads.clone(),
            writer: self.reads.clone(),
            reads: self.reads.clone(),
            probe: self
                .read_probe
                .clone()
                .unwrap_or_else(|| self.probe.clone()),
            read_probe: None,
            listen_url: None,
            checkpointer: None,
            outbox: self.outbox.clone(),
            metrics: Arc::clone(&self.metrics),
        }
    }

    /// This store, writing deliveries with `outbox`'s email setting and
    /// clock and waking its worker.
    pub fn with_outbox(mut self, outbox: Outbox) -> Store {
        self.outbox = outbox;
        self
    }

    /// Whether deliveries include email, and what wakes this process's
    /// delivery worker once deliveries are committed.
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// The application's metrics.
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.metrics
    }

    /// How often [`Store::checkpoint_wal`] should run: `Some` on SQLite with
    /// background checkpoints, `None` when there is nothing to run.
    pub fn checkpoint_interval(&self) -> Option<Duration> {
        self.checkpointer.as_ref().map(|(_, interval)| *interval)
    }

    /// Copies what the SQLite WAL holds into the database file, without
    /// waiting for readers or the writer (`PASSIVE`); a no-op without
    /// background checkpoints. Durability does not depend on it: a commit
    /// is on disk once it is in the WAL.
    pub async fn checkpoint_wal(&self) -> Result<(), DbErr> {
        if let Some((connection, _)) = &self.checkpointer {
            connection
                .execute_unprepared("PRAGMA wal_checkpoint(PASSIVE)")
                .await?;
        }
        Ok(())
    }

    /// Whether the primary, and the read replica if any, answer a trivial
    /// query within [`PROBE_TIMEOUT`]; the error says which did not.
    pub async fn probe(&self) -> Result<(), String> {
        probe_one(&self.probe, "primary").await?;
        match &self.read_probe {
            Some(read_probe) => probe_one(read_probe, "read replica").await,
            None => Ok(()),
        }
    }

    /// Applies every pending migration. On PostgreSQL, replicas starting
    /// together take turns behind an advisory lock held by the migrating
    /// transaction, so the second finds the schema complete.
    pub async fn migrate(&self) -> Result<(), DbErr> {
        if self.db.get_database_backend() != DatabaseBackend::Postgres {
            return Migrator::up(&self.db, None).await;
        }
        let txn = self.db.begin().await?;
        txn.execute_raw(Statement::from_sql_and_values(
            DatabaseBackend::Postgres,
            "SELECT pg_advisory_xact_lock($1)",
            [MIGRATION_LOCK_KEY.into()],
        ))
        .await?;
        Migrator::up(&txn, None).await?;
        txn.commit().await
    }

    /// Whether the database is SQLite (one writing connection).
    fn is_sqlite(&self) -> bool {
        self.db.get_database_backend() == DatabaseBackend::Sqlite
    }

    /// The connections of each pool: `(pool, in use, idle, most allowed)`;
    /// `pool` is `primary`, `writer` (SQLite's one write connection) or
    /// `replica`.
    pub fn pool_usage(&self) -> Vec<(&'static str, u32, u32, u32)> {
        let mut pools = vec![("primary", &self.db)];
        if self.is_sqlite() {
            pools.push(("writer", &self.writer));
        }
        if self.read_probe.is_some() {
            pools.push(("replica", &self.reads));
        }
        pools
            .into_iter()
            .map(|(name, pool)| {
                let (size, idle, max) = match pool.get_database_backend() {
                    DatabaseBackend::Postgres => {
                        let pool = pool.get_postgres_connection_pool();
                        (
                            pool.size(),
                            pool.num_idle() as u32,
                            pool.options().get_max_connections(),
                        )
                    }
                    _ => {
                        let pool = pool.get_sqlite_connection_pool();
                        (
                            pool.size(),
                            pool.num_idle() as u32,
                            pool.options().get_max_connections(),
                        )
                    }
                };
                (name, size.saturating_sub(idle), idle, max)
            })
            .collect()
    }

    /// Closes the pools, waiting for connections in use to be returned.
    pub async fn close(self) -> Result<(), DbErr> {
        if self.is_sqlite() {
            self.writer.close().await?;
        }
        if let Some(read_probe) = self.read_probe {
            self.reads.close().await?;
            read_probe.close().await?;
        }
        if let Some((checkpointer, _)) = self.checkpointer {
            checkpointer.close().await?;
        }
        self.probe.close().await?;
        self.db.close().await
    }

    /// Begins a write transaction. On SQLite it takes the write lock up front
    /// (`BEGIN IMMEDIATE`), so concurrent writers queue on the busy timeout
    /// instead of failing when a read lock cannot be upgraded.
    async fn begin_write(&self) -> Result<DatabaseTransaction, AppError> {
        let options = TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..Default::default()
        };
        Ok(self.writer.begin_with_options(options).await?)
    }
}

/// The advisory lock key that serialises migrations on PostgreSQL
/// (`"billmigr"` in ASCII).
const MIGRATION_LOCK_KEY: i64 = 0x6269_6c6c_6d69_6772;

/// Whether `url` names a SQLite database.
fn is_sqlite(url: &str) -> bool {
    url.starts_with("sqlite")
}

/// Runs `SELECT 1` on `pool` within [`PROBE_TIMEOUT`].
async fn probe_one(pool: &DatabaseConnection, which: &str) -> Result<(), String> {
    match tokio::time::timeout(PROBE_TIMEOUT, pool.execute_unprepared("SELECT 1")).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(err)) => Err(format!("the {which} database does not answer: {err}")),
        Err(_) => Err(format!(
            "the {which} database did not answer within {} s",
            PROBE_TIMEOUT.as_secs_f64()
        )),
    }
}

/// The size and wait of one pool.
#[derive(Debug, Clone, Copy)]
struct PoolSize {
    connections: u32,
    acquire_timeout: Duration,
}

/// How a pool's SQLite connections are set up.
#[derive(Debug, Clone, Copy)]
struct SqliteTuning {
    /// Each connection's page cache (SQLite's default, 2 MiB, when `None`).
    cache_kib: Option<u32>,
    /// Whether the pool may create the file and set it up (a read
    /// replica's pool only opens it).
    writes: bool,
    /// Whether a background task checkpoints the WAL, so commits only do it
    /// past [`SQLITE_CHECKPOINT_BACKSTOP_PAGES`].
    background_checkpoints: bool,
}

/// The options of a pool to `database_url`; `sqlite` applies on SQLite.
fn pool_options(database_url: &str, size: PoolSize, sqlite: SqliteTuning) -> ConnectOptions {
    let mut options = ConnectOptions::new(database_url);
    options
        .max_connections(size.connections)
        .min_connections(1)
        .connect_timeout(size.acquire_timeout)
        .acquire_timeout(size.acquire_timeout)
        // A SQLite connection is a file handle that cannot drop, so the
        // ping before each use is only a round trip to its worker thread.
        .test_before_acquire(!is_sqlite(database_url))
        .sqlx_logging(false)
        .map_sqlx_sqlite_opts(move |opts| {
            let opts = opts
                .busy_timeout(SQLITE_BUSY_TIMEOUT)
                .foreign_keys(true)
                .row_buffer_size(SQLITE_ROW_BUFFER);
            let opts = if sqlite.writes {
                opts.create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Full)
            } else {
                opts
            };
            let opts = if sqlite.background_checkpoints {
                opts.pragma(
                    "wal_autocheckpoint",
                    SQLITE_CHECKPOINT_BACKSTOP_PAGES.to_string(),
                )
            } else {
                opts
            };
            match sqlite.cache_kib {
                // A negative cache_size is in KiB.
                Some(kib) => opts.pragma("cache_size", format!("-{kib}")),
                None => opts,
            }
        });
    options
}

/// The options of a one-connection pool for readiness probes.
fn probe_options(database_url: &str) -> ConnectOptions {
    let mut options = ConnectOptions::new(database_url);
    options
        .max_connections(1)
        .min_connections(0)
        .connect_timeout(PROBE_TIMEOUT)
        .acquire_timeout(PROBE_TIMEOUT)
        // A connection the database dropped is noticed and replaced.
        .test_before_acquire(!is_sqlite(database_url))
        .sqlx_logging(false)
        .map_sqlx_sqlite_opts(|opts| opts.busy_timeout(SQLITE_BUSY_TIMEOUT));
    options
}

/// What a database error means for the request that met it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DbErrorKind {
    /// Busy, locked, deadlocked, a serialization failure, or the connection
    /// is gone: nothing was done, and a retry may succeed.
    Retryable,
    /// No pooled connection became free within the acquire timeout: the
    /// server has more work than connections (overload, not an outage).
    Saturated,
    /// A number left the range its column or expression holds (an
    /// overflowing sum of money).
    OutOfRange,
    /// A `CHECK` constraint refused a row.
    CheckViolation,
    /// A number's holding overlapped another of the same number: the
    /// exclusion constraint (PostgreSQL) or its trigger (SQLite) of
    /// `customer_numbers`.
    NumberOverlap,
    /// Anything else: a fault of the service.
    Other,
}

/// Classifies `err` by its codes: PostgreSQL SQLSTATEs, SQLite result
/// codes, and the driver's connection errors. The one exception is SQLite's
/// integer overflow in `SUM`, which has no code of its own (plain
/// `SQLITE_ERROR`) and is recognised by its fixed message.
fn kind_of(err: &DbErr) -> DbErrorKind {
    use sea_orm::sqlx::Error as SqlxError;
    use sea_orm::{RuntimeErr, sqlx};
    let sqlx_err = match err {
        DbErr::ConnectionAcquire(sea_orm::error::ConnAcquireErr::Timeout) => {
            return DbErrorKind::Saturated;
        }
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => return DbErrorKind::Retryable,
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => e,
        _ => return DbErrorKind::Other,
    };
    let database = match sqlx_err.as_ref() {
        SqlxError::Database(database) => database,
        SqlxError::PoolTimedOut => return DbErrorKind::Saturated,
        SqlxError::Io(_)
        | SqlxError::Tls(_)
        | SqlxError::Protocol(_)
        | SqlxError::PoolClosed
        | SqlxError::WorkerCrashed => return DbErrorKind::Retryable,
        _ => return DbErrorKind::Other,
    };
    if let Some(pg) = database.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
        let code = pg.code();
        return match code {
            // serialization_failure, deadlock_detected, lock_not_available,
            // too_many_connections, admin/crash shutdown, cannot_connect_now.
            "40001" | "40P01" | "55P03" | "53300" | "57P01" | "57P02" | "57P03" => {
                DbErrorKind::Retryable
            }
            // connection_exception and its subclasses.
            _ if code.starts_with("08") => DbErrorKind::Retryable,
            // numeric_value_out_of_range.
            "22003" => DbErrorKind::OutOfRange,
            // check_violation.
            "23514" => DbErrorKind::CheckViolation,
            // exclusion_violation (the only exclusion constraint).
            "23P01" => DbErrorKind::NumberOverlap,
            _ => DbErrorKind::Other,
        };
    }
    if database
        .try_downcast_ref::<sqlx::sqlite::SqliteError>()
        .is_some()
    {
        let extended: i32 = database
            .code()
            .and_then(|code| code.parse().ok())
            .unwrap_or(0);
        // SQLITE_CONSTRAINT_TRIGGER raised by the overlap trigger.
        if extended == 1811 && database.message() == "customer_numbers_overlap" {
            return DbErrorKind::NumberOverlap;
        }
        return match extended & 0xff {
            // SQLITE_BUSY, SQLITE_LOCKED (and their extended codes).
            5 | 6 => DbErrorKind::Retryable,
            // SQLITE_CONSTRAINT_CHECK, and _TRIGGER (the migrations' checks
            // are triggers on SQLite).
            19 if extended == 275 || extended == 1811 => DbErrorKind::CheckViolation,
            // SQLITE_ERROR from sum() of integers that overflow.
            1 if database.message() == "integer overflow" => DbErrorKind::OutOfRange,
            _ => DbErrorKind::Other,
        };
    }
    DbErrorKind::Other
}

impl From<DbErr> for AppError {
    fn from(err: DbErr) -> Self {
        match kind_of(&err) {
            DbErrorKind::Retryable => AppError::Unavailable(Box::new(err)),
            DbErrorKind::Saturated => AppError::ResourceExhausted(
                "the server is busy: no database connection became free within \
                 --database-acquire-timeout-ms; retry with backoff"
                    .to_owned(),
            ),
            DbErrorKind::OutOfRange => AppError::FailedPrecondition(
                "the amounts involved exceed the largest sum the service can hold".to_owned(),
            ),
            DbErrorKind::CheckViolation => AppError::FailedPrecondition(
                "the change would break a rule the database enforces".to_owned(),
            ),
            DbErrorKind::NumberOverlap => AppError::AlreadyExists(
                "the number is held by another customer at that time".to_owned(),
            ),
            DbErrorKind::Other => AppError::internal(err),
        }
    }
}

/// `ids` as bound values, for the placeholders of an `IN (…)` list.
fn id_values(ids: &[i64]) -> Vec<sea_orm::Value> {
    ids.iter().map(|id| sea_orm::Value::from(*id)).collect()
}

/// `count` `?` placeholders separated by commas, for an `IN (…)` list.
fn placeholders(count: usize) -> String {
    vec!["?"; count].join(", ")
}

/// `ids` for an `IN (…)` list whose length is the next power of two (the
/// last id repeated, which `IN` ignores): the placeholders and the values.
/// Every connection keeps each statement text it prepares, so lists of
/// every length between 1 and thousands made as many large prepared
/// statements per connection; rounded, a few sizes serve all.
fn id_list(ids: &[i64]) -> (String, Vec<sea_orm::Value>) {
    let Some(&last) = ids.last() else {
        return (String::from("NULL"), Vec::new());
    };
    let size = ids.len().next_power_of_two();
    let values = ids
        .iter()
        .chain(std::iter::repeat_n(&last, size - ids.len()))
        .map(|id| sea_orm::Value::from(*id))
        .collect();
    (placeholders(size), values)
}

/// `rows` parenthesised groups of `width` `?` placeholders, separated by
/// commas, for a multi-row `VALUES` list.
fn value_rows(rows: usize, width: usize) -> String {
    let row = format!("({})", placeholders(width));
    vec![row.as_str(); rows].join(", ")
}

/// On PostgreSQL, locks the rows of `customer_ids` `FOR NO KEY UPDATE`, in
/// id order, so transactions that lock overlapping sets cannot deadlock
/// (`NO KEY UPDATE` leaves calls free to be inserted meanwhile). Nothing on
/// SQLite, whose one writer already runs write transactions in turn.
async fn lock_customers(conn: &impl ConnectionTrait, customer_ids: &[i64]) -> Result<(), DbErr> {
    let backend = conn.get_database_backend();
    if backend != DatabaseBackend::Postgres || customer_ids.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "SELECT id FROM customers WHERE id IN ({}) ORDER BY id FOR NO KEY UPDATE",
        placeholders(customer_ids.len())
    );
    conn.execute_raw(statement(backend, &sql, id_values(customer_ids)))
        .await?;
    Ok(())
}

/// How a transaction holds the customer rows whose last invoiced month it
/// reads (PostgreSQL; SQLite's one writer runs write transactions in turn).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CustomerLock {
    /// Storing calls or top-ups: `FOR KEY SHARE`, so storers never wait
    /// for each other.
    Store,
    /// Issuing: `FOR UPDATE`, which waits for storers and holds new ones
    /// back until the month is advanced.
    Issue,
}

/// The last invoiced month of each of `customer_ids` that exists, read
/// under `lock` in id order, so that it cannot change before this
/// transaction ends and overlapping transactions cannot deadlock.
async fn lock_invoiced_through(
    conn: &impl ConnectionTrait,
    customer_ids: &[i64],
    lock: CustomerLock,
) -> Result<std::collections::HashMap<i64, Option<BillingPeriod>>, AppError> {
    let backend = conn.get_database_backend();
    let lock = match (backend, lock) {
        (DatabaseBackend::Postgres, CustomerLock::Store) => " FOR KEY SHARE",
        (DatabaseBackend::Postgres, CustomerLock::Issue) => " FOR UPDATE",
        _ => "",
    };
    let mut through = std::collections::HashMap::with_capacity(customer_ids.len());
    for chunk in customer_ids.chunks(IDS_PER_STATEMENT) {
        let (marks, ids) = id_list(chunk);
        let sql = format!(
            "SELECT id, invoiced_through FROM customers WHERE id IN ({marks}) ORDER BY id{lock}"
        );
        for row in conn.query_all_raw(statement(backend, &sql, ids)).await? {
            let month: Option<i32> = row.try_get_by_index(1)?;
            through.insert(
                row.try_get_by_index(0)?,
                month.map(BillingPeriod::from_key).transpose()?,
            );
        }
    }
    Ok(through)
}

/// Ids bound per `IN (…)` list.
const IDS_PER_STATEMENT: usize = 5000;

/// A statement of `sql` (with `?` placeholders) and its `values`.
fn statement(backend: DatabaseBackend, sql: &str, values: Vec<sea_orm::Value>) -> Statement {
    Statement::from_sql_and_values(backend, numbered_placeholders(backend, sql), values)
}

/// `sql` with its `?` placeholders as the backend numbers them (`$1`, `$2`
/// … on PostgreSQL).
fn numbered_placeholders(backend: DatabaseBackend, sql: &str) -> String {
    if backend != DatabaseBackend::Postgres {
        return sql.to_owned();
    }
    let mut numbered = String::with_capacity(sql.len() + 8);
    let mut next = 0;
    for c in sql.chars() {
        if c == '?' {
            next += 1;
            // Writing to a String cannot fail.
            let _ = write!(numbered, "${next}");
        } else {
            numbered.push(c);
        }
    }
    numbered
}

/// Whether `err` is a holding of a number that overlaps another of it.
fn is_number_overlap(err: &DbErr) -> bool {
    matches!(kind_of(err), DbErrorKind::NumberOverlap)
}

/// Whether `err` is a unique-constraint violation.
fn is_unique_violation(err: &DbErr) -> bool {
    matches!(err.sql_err(), Some(SqlErr::UniqueConstraintViolation(_)))
}

/// A stored timestamp (UTC microseconds) as an instant.
fn instant(micros: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros).unwrap_or_default()
}

/// An instant as a stored timestamp.
fn micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}
