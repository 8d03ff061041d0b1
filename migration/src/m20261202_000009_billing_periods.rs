//! A call's billing month is fixed when it is stored, and billing writes
//! invoices, not calls.
//!
//! - `calls.billing_period` and `top_ups.billing_period`: the month (as
//!   `year * 100 + month`) whose invoice bills the row. Rows already on an
//!   invoice get that invoice's month here; the others are left at 0 and
//!   get their month from `Store::place_rows_in_billing_months` at
//!   startup, which knows the billing time zone that a month's bounds
//!   depend on (a migration does not).
//! - `calls.started_period`: the month the call started in, so the calls a
//!   month bills that started in an earlier month (late usage, rare) are
//!   found through a small partial index, `idx_calls_late`, while the
//!   month's own calls are a range of the `(customer_id, started_at)` order
//!   every call is written in anyway: no index entry more per call. Filled
//!   at startup like the rest (0 until then).
//! - `customers.invoiced_through`: the customer's last invoiced month
//!   (NULL: none yet), from its latest invoice. Storing a call reads it to
//!   decide the call's month, and issuing advances it, each under a lock of
//!   the customer's row.
//! - `data_conversions`: conversions of data that need what only the
//!   service knows (here the time zone), one row each until the service
//!   has done it; this migration leaves `billing_months`.
//! - `calls.invoice_id` and `top_ups.invoice_id` go: a row's invoice is the
//!   invoice of its customer and billing month, once issued. With them goes
//!   `idx_calls_uninvoiced` (PostgreSQL).
//! - `idx_invoices_period` goes: nothing looks invoices up by month alone
//!   any more (a cycle finds the customers to invoice by
//!   `invoiced_through`), and PostgreSQL's planner, with statistics taken
//!   before a cycle, chose it over the unique `(customer, period)` key to
//!   find one customer's invoice, scanning the month's every invoice.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DatabaseBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    /// One transaction: a failed conversion leaves the database as it was.
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        for sql in [
            "ALTER TABLE calls ADD COLUMN billing_period integer NOT NULL DEFAULT 0",
            "ALTER TABLE calls ADD COLUMN started_period integer NOT NULL DEFAULT 0",
            "ALTER TABLE top_ups ADD COLUMN billing_period integer NOT NULL DEFAULT 0",
            "ALTER TABLE customers ADD COLUMN invoiced_through integer NULL",
            "UPDATE customers SET invoiced_through = \
               (SELECT MAX(i.period_year * 100 + i.period_month) FROM invoices i \
                WHERE i.customer_id = customers.id)",
            "UPDATE calls SET billing_period = \
               (SELECT i.period_year * 100 + i.period_month FROM invoices i \
                WHERE i.id = calls.invoice_id) \
             WHERE invoice_id IS NOT NULL",
            "UPDATE top_ups SET billing_period = \
               (SELECT i.period_year * 100 + i.period_month FROM invoices i \
                WHERE i.id = top_ups.invoice_id) \
             WHERE invoice_id IS NOT NULL",
            "DROP INDEX IF EXISTS idx_calls_uninvoiced",
            "DROP INDEX IF EXISTS idx_calls_invoice",
            "DROP INDEX IF EXISTS idx_top_ups_invoice",
            "DROP INDEX IF EXISTS idx_invoices_period",
            "ALTER TABLE calls DROP COLUMN invoice_id",
            "ALTER TABLE top_ups DROP COLUMN invoice_id",
            "CREATE INDEX idx_calls_late ON calls (customer_id, billing_period) \
             WHERE billing_period <> started_period",
            "CREATE INDEX idx_top_ups_billing ON top_ups (customer_id, billing_period)",
            "CREATE TABLE data_conversions (name varchar NOT NULL PRIMARY KEY)",
            "INSERT INTO data_conversions (name) VALUES ('billing_months')",
        ] {
            db.execute_unprepared(sql).await?;
        }
        Ok(())
    }

    /// Rows on an issued invoice point at it again; the others are
    /// uninvoiced, as before.
    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let mut statements = vec![
            "ALTER TABLE calls ADD COLUMN invoice_id bigint NULL",
            "ALTER TABLE top_ups ADD COLUMN invoice_id bigint NULL",
            "UPDATE calls SET invoice_id = (SELECT i.id FROM invoices i \
               WHERE i.customer_id = calls.customer_id \
                 AND i.period_year * 100 + i.period_month = calls.billing_period)",
            "UPDATE top_ups SET invoice_id = (SELECT i.id FROM invoices i \
               WHERE i.customer_id = top_ups.customer_id \
                 AND i.period_year * 100 + i.period_month = top_ups.billing_period)",
            "DROP INDEX idx_calls_late",
            "DROP INDEX idx_top_ups_billing",
            "ALTER TABLE calls DROP COLUMN billing_period",
            "ALTER TABLE calls DROP COLUMN started_period",
            "ALTER TABLE top_ups DROP COLUMN billing_period",
            "ALTER TABLE customers DROP COLUMN invoiced_through",
            "DROP TABLE data_conversions",
            "CREATE INDEX idx_invoices_period ON invoices (period_year, period_month)",
        ];
        // SQLite's `calls` (migration 000008) is ordered by these columns
        // and had dropped this index.
        if manager.get_database_backend() != DatabaseBackend::Sqlite {
            statements.push(
                "CREATE INDEX idx_calls_uninvoiced ON calls (customer_id, started_at) \
                 WHERE invoice_id IS NULL",
            );
        }
        for sql in statements {
            db.execute_unprepared(sql).await?;
        }
        Ok(())
    }
}
