//! Storage: the only layer that knows SeaORM, tables and SQL. It persists the
//! domain's types and enforces, with constraints and transactions, every
//! guarantee that must hold across replicas sharing one database.

mod calls;
mod customers;
pub mod entities;
mod invoices;

use std::time::Duration;

use chrono::{DateTime, Utc};
use migration::{Migrator, MigratorTrait};
use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ConnectOptions, Database, DatabaseConnection, DatabaseTransaction, DbErr, SqlErr,
    SqliteTransactionMode, TransactionOptions, TransactionTrait,
};

use crate::error::AppError;

pub use calls::CallFilter;
pub use invoices::{CustomerToInvoice, InvoiceRequest, IssueOutcome, IssueReport};

/// How long a writer waits for SQLite's write lock before giving up.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The service's database: a connection pool and the queries over it.
#[derive(Debug, Clone)]
pub struct Store {
    db: DatabaseConnection,
}

impl Store {
    /// Connects to `database_url` (`sqlite://…` or `postgres://…`). A SQLite
    /// file is created on first use and configured for a service: WAL, a busy
    /// timeout, foreign keys on, and full sync so an acknowledged write is on
    /// disk.
    pub async fn connect(database_url: &str) -> Result<Self, DbErr> {
        let mut options = ConnectOptions::new(database_url);
        options
            .max_connections(if database_url.starts_with("sqlite") {
                8
            } else {
                16
            })
            .min_connections(1)
            .connect_timeout(Duration::from_secs(10))
            .acquire_timeout(Duration::from_secs(10))
            .sqlx_logging(false)
            .map_sqlx_sqlite_opts(|opts| {
                opts.create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Full)
                    .busy_timeout(SQLITE_BUSY_TIMEOUT)
                    .foreign_keys(true)
            });
        let db = Database::connect(options).await?;
        Ok(Store { db })
    }

    /// Applies every pending migration.
    pub async fn migrate(&self) -> Result<(), DbErr> {
        Migrator::up(&self.db, None).await
    }

    /// Closes the pool, waiting for connections in use to be returned.
    pub async fn close(self) -> Result<(), DbErr> {
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
        Ok(self.db.begin_with_options(options).await?)
    }
}

impl From<DbErr> for AppError {
    fn from(err: DbErr) -> Self {
        let busy = matches!(err, DbErr::ConnectionAcquire(_))
            || err.to_string().contains("database is locked");
        if busy {
            AppError::Unavailable(Box::new(err))
        } else {
            AppError::internal(err)
        }
    }
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
