//! Idempotency keys belong to the customer: `calls.call_id` is unique per
//! customer (`idx_calls_call_id_customer` on `(call_id, customer_id)`), and
//! so is `top_ups.request_id` (`idx_top_ups_request_customer`), instead of
//! across the whole service, so one tenant's keys can neither block nor
//! reveal another's. Keys unique across the service are unique per
//! customer, so every stored row stays valid. The key leads each index, as
//! it led the one it replaces: a switch's keys usually grow, and its inserts
//! then append to the index instead of writing a page per customer.
//!
//! PostgreSQL drops the old unique constraints. SQLite cannot drop a
//! column's `UNIQUE`: the table is rebuilt from its own definition without
//! it, keeping every row, index and trigger.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DatabaseBackend;

use crate::sqlite::rebuild;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// A table whose key becomes unique per customer.
struct Keyed {
    table: &'static str,
    /// The key's column definition with `UNIQUE`, as the table's SQLite
    /// definition holds it, and without.
    unique_column: &'static str,
    plain_column: &'static str,
    /// PostgreSQL's name for the column's unique constraint.
    constraint: &'static str,
    /// The index that replaces it.
    index: &'static str,
    /// Its columns.
    columns: &'static str,
    /// The order the rows are copied back in on SQLite (its key's).
    order: &'static str,
}

const KEYED: [Keyed; 2] = [
    Keyed {
        table: "calls",
        unique_column: "call_id varchar NULL UNIQUE",
        plain_column: "call_id varchar NULL",
        constraint: "calls_call_id_key",
        index: "idx_calls_call_id_customer",
        columns: "call_id, customer_id",
        order: "customer_id, started_at, id",
    },
    Keyed {
        table: "top_ups",
        unique_column: "\"request_id\" varchar NOT NULL UNIQUE",
        plain_column: "\"request_id\" varchar NOT NULL",
        constraint: "top_ups_request_id_key",
        index: "idx_top_ups_request_customer",
        columns: "request_id, customer_id",
        order: "id",
    },
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    /// One transaction: a failed rebuild leaves the tables as they were.
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        for keyed in &KEYED {
            let index = format!(
                "CREATE UNIQUE INDEX {} ON {} ({})",
                keyed.index, keyed.table, keyed.columns
            );
            if manager.get_database_backend() == DatabaseBackend::Sqlite {
                rebuild(
                    manager,
                    keyed.table,
                    (keyed.unique_column, keyed.plain_column),
                    keyed.order,
                )
                .await?;
            } else {
                db.execute_unprepared(&format!(
                    "ALTER TABLE {} DROP CONSTRAINT {}",
                    keyed.table, keyed.constraint
                ))
                .await?;
            }
            db.execute_unprepared(&index).await?;
        }
        Ok(())
    }

    /// Keys unique across the service again: fails if two customers use
    /// the same key by then.
    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        for keyed in &KEYED {
            db.execute_unprepared(&format!("DROP INDEX {}", keyed.index))
                .await?;
            if manager.get_database_backend() == DatabaseBackend::Sqlite {
                rebuild(
                    manager,
                    keyed.table,
                    (keyed.plain_column, keyed.unique_column),
                    keyed.order,
                )
                .await?;
            } else {
                db.execute_unprepared(&format!(
                    "ALTER TABLE {} ADD CONSTRAINT {} UNIQUE ({})",
                    keyed.table,
                    keyed.constraint,
                    keyed.columns.trim_end_matches(", customer_id")
                ))
                .await?;
            }
        }
        Ok(())
    }
}
