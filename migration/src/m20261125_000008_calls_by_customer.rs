//! SQLite: `calls` stored in customer order, so a customer's calls by
//! start sit together on a few pages. The table becomes `WITHOUT ROWID`
//! with the primary key `(customer_id, started_at, id)`: a history page is
//! one range of the table instead of a range of an index plus one table
//! lookup per row (each on a page of its own once a customer's calls are a
//! small share of the table), and the cycle's claim rewrites each page of a
//! customer's calls once. The indexes that served those reads,
//! `idx_calls_customer_started` and the partial `idx_calls_uninvoiced`, go:
//! the table itself is ordered by their columns, and SQLite's planner reads
//! a customer's calls by start through the key, so the partial index was
//! only a random-position write per call (see BENCHMARKS.md). Ids stay unique
//! (`idx_calls_id`, which `call_segments` references), but are assigned by
//! the insert (`MAX(id)` plus the row's position) as a table without rowid
//! has no `AUTOINCREMENT`; SQLite has one writer at a time, and ids were
//! never reused because calls are never deleted.
//!
//! PostgreSQL has no clustered tables (its heap keeps arrival order), so
//! this migration changes nothing there. See BENCHMARKS.md for the
//! measured effect.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DatabaseBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The columns of `calls`, in the order of the first migrations.
const COLUMNS: &str = "id, call_id, customer_id, started_at, duration_seconds, billed_seconds, \
     per_minute_micros, billing_increment_seconds, cost_micros, caller_number, callee_number, \
     received_at, invoice_id, connect_fee_micros";

/// Their definitions, without the key (which `calls` defines either way).
const COLUMN_DEFINITIONS: &str = "call_id varchar NULL UNIQUE, \
     customer_id integer NOT NULL, started_at integer NOT NULL, \
     duration_seconds integer NOT NULL, billed_seconds integer NOT NULL, \
     per_minute_micros integer NOT NULL, billing_increment_seconds integer NOT NULL, \
     cost_micros integer NOT NULL, caller_number varchar NOT NULL, \
     callee_number varchar NOT NULL, received_at integer NOT NULL, invoice_id integer NULL, \
     connect_fee_micros integer NOT NULL DEFAULT 0, \
     FOREIGN KEY (customer_id) REFERENCES customers (id)";

/// The rule of `m20261124_000003_money_checks` on a new call.
const RATING_TRIGGER: &str = "CREATE TRIGGER chk_calls_rating BEFORE INSERT ON calls \
     WHEN NOT (NEW.duration_seconds BETWEEN 1 AND 86400 \
       AND NEW.billed_seconds >= NEW.duration_seconds AND NEW.cost_micros >= 0) \
     BEGIN SELECT RAISE(ABORT, 'CHECK constraint failed: chk_calls_rating'); END";

/// Serves `ListCalls` in time order, in both forms of the table.
const STARTED_INDEX: &str = "CREATE INDEX idx_calls_started ON calls (started_at, id)";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    /// One transaction: a failed rebuild leaves the old table as it was.
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DatabaseBackend::Sqlite {
            return Ok(());
        }
        rebuild(
            manager,
            &format!(
                "CREATE TABLE calls (id integer NOT NULL, {COLUMN_DEFINITIONS}, \
                 PRIMARY KEY (customer_id, started_at, id)) WITHOUT ROWID"
            ),
            &[
                "CREATE UNIQUE INDEX idx_calls_id ON calls (id)",
                STARTED_INDEX,
            ],
        )
        .await
    }

    /// The rowid table again; AUTOINCREMENT continues after the largest id
    /// the copy inserted.
    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DatabaseBackend::Sqlite {
            return Ok(());
        }
        rebuild(
            manager,
            &format!(
                "CREATE TABLE calls (id integer NOT NULL PRIMARY KEY AUTOINCREMENT, \
                 {COLUMN_DEFINITIONS})"
            ),
            &[
                "CREATE INDEX idx_calls_customer_started ON calls (customer_id, started_at, id)",
                STARTED_INDEX,
                "CREATE INDEX idx_calls_uninvoiced ON calls (customer_id, started_at) \
                 WHERE invoice_id IS NULL",
            ],
        )
        .await
    }
}

/// Replaces `calls` by the table `create` defines, with `indexes`, keeping
/// every row, within the migration's transaction. The rows wait in a copy
/// while `calls` is dropped and created again; `call_segments` keeps
/// referencing `calls` by name, and its foreign key is checked at commit
/// (deferred), once every call is back.
async fn rebuild(manager: &SchemaManager<'_>, create: &str, indexes: &[&str]) -> Result<(), DbErr> {
    let db = manager.get_connection();
    db.execute_unprepared("PRAGMA defer_foreign_keys = ON")
        .await?;
    db.execute_unprepared("CREATE TABLE calls_rebuilt AS SELECT * FROM calls")
        .await?;
    db.execute_unprepared("DROP TABLE calls").await?;
    db.execute_unprepared(create).await?;
    // The indexes first: an insert into `calls` looks up the segments of
    // the call by `id`, which needs its unique index.
    for index in indexes {
        db.execute_unprepared(index).await?;
    }
    db.execute_unprepared(&format!(
        "INSERT INTO calls ({COLUMNS}) SELECT {COLUMNS} FROM calls_rebuilt \
         ORDER BY customer_id, started_at, id"
    ))
    .await?;
    db.execute_unprepared("DROP TABLE calls_rebuilt").await?;
    db.execute_unprepared(RATING_TRIGGER).await?;
    Ok(())
}
