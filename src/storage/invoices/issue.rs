//! Issuing: the transaction that locks customers and reads their last
//! invoiced months, and one function per write on it (invoices and lines,
//! the last invoiced months); placing rows from before billing months.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use sea_orm::{ConnectionTrait, DatabaseBackend, DatabaseTransaction, DbErr, Statement};

use super::super::deliveries::{NewDelivery, insert_deliveries_on, recipients_on};
use super::super::{
    CustomerLock, Store, instant, lock_invoiced_through, micros, statement, value_rows,
};
use super::ISSUE_LOCK_KEY;
use super::read::{MonthQuery, month_rows};
use crate::domain::delivery::Recipients;
use crate::domain::invoice::{
    Invoice, InvoiceDraft, InvoiceLine, MonthRows, billing_period_of, invoice_number,
};
use crate::domain::period::BillingPeriod;
use crate::error::{AppError, AppResult};

/// An invoice composed and ready to be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewInvoice {
    pub customer_id: i64,
    pub period: BillingPeriod,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    pub issued_at: DateTime<Utc>,
    pub currency_code: String,
    pub draft: InvoiceDraft,
}

/// An issuing transaction: its customers' rows are locked, so no call or
/// top-up of theirs is stored (and no other issuer of theirs runs) until
/// it ends. Dropped without [`IssueTransaction::commit`], it rolls back.
#[derive(Debug)]
pub struct IssueTransaction {
    txn: DatabaseTransaction,
}

impl Store {
    /// Begins issuing for `customer_ids` (distinct): locks their rows (on
    /// PostgreSQL `FOR UPDATE`, in id order, which waits for transactions
    /// storing their calls and makes those wait; SQLite's one writer runs
    /// write transactions in turn) and returns each one's last invoiced
    /// month, current while the transaction lasts.
    pub async fn begin_issue(
        &self,
        customer_ids: &[i64],
    ) -> AppResult<(IssueTransaction, HashMap<i64, Option<BillingPeriod>>)> {
        let mut ids = customer_ids.to_vec();
        ids.sort_unstable();
        if ids.windows(2).any(|pair| pair[0] == pair[1]) {
            return Err(AppError::internal("an issue names one customer twice"));
        }
        let txn = self.begin_write().await?;
        let backend = txn.get_database_backend();
        if backend == DatabaseBackend::Postgres {
            // Shared: issuers never wait for each other, only for a feed
            // read in progress (see `feed_page`).
            txn.execute_raw(Statement::from_sql_and_values(
                DatabaseBackend::Postgres,
                "SELECT pg_advisory_xact_lock_shared($1)",
                [ISSUE_LOCK_KEY.into()],
            ))
            .await?;
        }
        let through = lock_invoiced_through(&txn, &ids, CustomerLock::Issue).await?;
        Ok((IssueTransaction { txn }, through))
    }

    /// Places every call and top-up that has no billing month yet (0: rows
    /// from before migration 000009 that no invoice billed) in the month it
    /// is due, as if it were stored now: its own month (billing time zone
    /// `tz`) when that month is neither invoiced nor before the customer's
    /// first month, else the customer's first month not invoiced yet
    /// (`invoice::billing_period_of`). Run at startup after the migrations,
    /// in one transaction; migration 000009 leaves a row in
    /// `data_conversions` for it, and once it has run that row is gone, so
    /// later startups cost one lookup of that small table.
    pub async fn place_rows_in_billing_months(&self, tz: Tz) -> Result<(), DbErr> {
        let txn = self
            .begin_write()
            .await
            .map_err(|err| DbErr::Custom(err.to_string()))?;
        let backend = txn.get_database_backend();
        let pending = txn
            .execute_raw(statement(
                backend,
                "DELETE FROM data_conversions WHERE name = ?",
                vec![BILLING_MONTHS_CONVERSION.into()],
            ))
            .await?
            .rows_affected();
        if pending > 0 {
            fill_started_periods(&txn, tz).await?;
            for (table, instant_column) in [("calls", "started_at"), ("top_ups", "created_at")] {
                place_rows(&txn, tz, table, instant_column).await?;
            }
        }
        txn.commit().await
    }
}

impl IssueTransaction {
    /// The rows of each of `months`, in order, as this transaction sees
    /// them; see [`month_rows`].
    pub async fn month_rows(&self, months: &[MonthQuery]) -> AppResult<Vec<MonthRows>> {
        month_rows(&self.txn, months).await
    }

    /// Stores `invoices` with their lines and returns them as issued, in
    /// order: their ids first ([`IssueTransaction::next_invoice_ids`]), then
    /// one multi-row insert of the invoices with their numbers (the unique
    /// `(customer, period)` key refuses a second invoice of a month) and one
    /// of the lines.
    pub async fn insert_invoices(&self, invoices: Vec<NewInvoice>) -> AppResult<Vec<Invoice>> {
        let backend = self.txn.get_database_backend();
        let ids = self.next_invoice_ids(invoices.len()).await?;
        let issued: Vec<Invoice> = invoices
            .into_iter()
            .zip(ids)
            .map(|(new, id)| Invoice {
                id,
                number: invoice_number(new.period, id),
                customer_id: new.customer_id,
                period: new.period,
                period_start: new.period_start,
                period_end: new.period_end,
                issued_at: new.issued_at,
                currency_code: new.currency_code,
                lines: new.draft.lines,
                usage: new.draft.usage,
                monthly_fee_micros: new.draft.monthly_fee_micros,
                total_micros: new.draft.total_micros,
            })
            .collect();
        for chunk in issued.chunks(INVOICES_PER_STATEMENT) {
            let mut values: Vec<sea_orm::Value> = Vec::with_capacity(chunk.len() * 14);
            for invoice in chunk {
                values.extend([
                    invoice.id.into(),
                    invoice.number.clone().into(),
                    invoice.customer_id.into(),
                    invoice.period.year().into(),
                    invoice.period.month().cast_signed().into(),
                    micros(invoice.period_start).into(),
                    micros(invoice.period_end).into(),
                    micros(invoice.issued_at).into(),
                    invoice.currency_code.clone().into(),
                    invoice.usage.call_count.into(),
                    invoice.usage.billed_seconds.into(),
                    invoice.usage.usage_micros.into(),
                    invoice.monthly_fee_micros.into(),
                    invoice.total_micros.into(),
                ]);
            }
            let sql = format!(
                "INSERT INTO invoices (id, number, customer_id, period_year, period_month, \
                   period_start, period_end, issued_at, currency_code, call_count, \
                   billed_seconds, usage_micros, monthly_fee_micros, total_micros) \
                 VALUES {}",
                value_rows(chunk.len(), 14)
            );
            self.txn
                .execute_raw(statement(backend, &sql, values))
                .await?;
        }
        let lines: Vec<(i64, usize, &InvoiceLine)> = issued
            .iter()
            .flat_map(|invoice| {
                invoice
                    .lines
                    .iter()
                    .enumerate()
                    .map(|(position, line)| (invoice.id, position, line))
            })
            .collect();
        for chunk in lines.chunks(LINES_PER_INSERT) {
            let mut values: Vec<sea_orm::Value> = Vec::with_capacity(chunk.len() * 8);
            for (invoice_id, position, line) in chunk {
                values.extend([
                    (*invoice_id).into(),
                    i32::try_from(*position).unwrap_or(i32::MAX).into(),
                    line.kind.as_str().into(),
                    line.description.clone().into(),
                    line.quantity.into(),
                    line.amount_micros.into(),
                    line.call_count.into(),
                    line.subject.clone().into(),
                ]);
            }
            let sql = format!(
                "INSERT INTO invoice_lines (invoice_id, position, kind, description, quantity, \
                   amount_micros, call_count, subject) VALUES {}",
                value_rows(chunk.len(), 8)
            );
            self.txn
                .execute_raw(statement(backend, &sql, values))
                .await?;
        }
        Ok(issued)
    }

    /// The ids of `count` new invoices, ascending, so each is stored with
    /// its number (which names its id) by one insert. PostgreSQL: from the
    /// invoices' sequence. SQLite: after the largest id, read inside this
    /// write transaction, which no other writer runs beside (invoices are
    /// never deleted, so no id is reused).
    async fn next_invoice_ids(&self, count: usize) -> AppResult<Vec<i64>> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let backend = self.txn.get_database_backend();
        let total = i64::try_from(count).map_err(AppError::internal)?;
        if backend == DatabaseBackend::Postgres {
            let mut ids = Vec::with_capacity(count);
            for row in self
                .txn
                .query_all_raw(statement(
                    backend,
                    "SELECT nextval(pg_get_serial_sequence('invoices', 'id')) \
                     FROM generate_series(1, ?)",
                    vec![total.into()],
                ))
                .await?
            {
                ids.push(row.try_get_by_index::<i64>(0)?);
            }
            ids.sort_unstable();
            return Ok(ids);
        }
        let largest: i64 = self
            .txn
            .query_one_raw(statement(
                backend,
                "SELECT IFNULL(MAX(id), 0) FROM invoices",
                Vec::new(),
            ))
            .await?
            .ok_or_else(|| AppError::internal("an aggregate returned no row"))?
            .try_get_by_index(0)?;
        Ok((1..=total).map(|k| largest + k).collect())
    }

    /// Records each customer's last invoiced month: from now on its calls
    /// of that month or earlier are billed in the month after.
    pub async fn advance_invoiced_through(
        &self,
        through: &[(i64, BillingPeriod)],
    ) -> AppResult<()> {
        let backend = self.txn.get_database_backend();
        for chunk in through.chunks(INVOICES_PER_STATEMENT) {
            let mut values: Vec<sea_orm::Value> = Vec::with_capacity(chunk.len() * 2);
            for (customer_id, month) in chunk {
                values.extend([(*customer_id).into(), month.key().into()]);
            }
            let sql = format!(
                "WITH v(id, month) AS (VALUES {}) \
                 UPDATE customers SET invoiced_through = v.month FROM v \
                 WHERE customers.id = v.id",
                value_rows(chunk.len(), 2)
            );
            self.txn
                .execute_raw(statement(backend, &sql, values))
                .await?;
        }
        Ok(())
    }

    /// Who hears of each of `customer_ids`' events, as this transaction
    /// sees it.
    pub async fn recipients(
        &self,
        customer_ids: &[i64],
        email_on: bool,
    ) -> AppResult<HashMap<i64, Recipients>> {
        recipients_on(&self.txn, customer_ids, email_on).await
    }

    /// Inserts the deliveries the invoices issued on this transaction cause.
    pub async fn insert_deliveries(
        &self,
        deliveries: &[NewDelivery],
        now: DateTime<Utc>,
    ) -> AppResult<()> {
        insert_deliveries_on(&self.txn, deliveries, now).await
    }

    /// Commits, first telling invoice watchers on other replicas (on
    /// commit) that invoices up to `newest` exist.
    pub async fn commit(self, newest: Option<i64>) -> AppResult<()> {
        if let Some(newest) = newest {
            super::super::feed::announce(&self.txn, newest).await?;
        }
        self.txn.commit().await?;
        Ok(())
    }
}

/// The row of `data_conversions` migration 000009 leaves for
/// [`Store::place_rows_in_billing_months`].
const BILLING_MONTHS_CONVERSION: &str = "billing_months";

/// The months in `tz` from that of the earliest to that of the latest
/// `instant_column` among the rows of `table` whose `zero_column` is 0
/// (names this module gives); none when no row is.
async fn months_of_rows_without(
    txn: &DatabaseTransaction,
    tz: Tz,
    table: &str,
    instant_column: &str,
    zero_column: &str,
) -> Result<Vec<BillingPeriod>, DbErr> {
    let backend = txn.get_database_backend();
    let sql = format!(
        "SELECT MIN({instant_column}), MAX({instant_column}) FROM {table} \
         WHERE {zero_column} = 0"
    );
    let Some(row) = txn
        .query_one_raw(statement(backend, &sql, Vec::new()))
        .await?
    else {
        return Ok(Vec::new());
    };
    let (Some(first), Some(last)) = (
        row.try_get_by_index::<Option<i64>>(0)?,
        row.try_get_by_index::<Option<i64>>(1)?,
    ) else {
        return Ok(Vec::new());
    };
    let last = BillingPeriod::containing(instant(last), tz);
    let mut months = vec![BillingPeriod::containing(instant(first), tz)];
    while let Some(&month) = months.last()
        && month < last
    {
        months.push(month.next());
    }
    Ok(months)
}

/// Records the month each call without one (0) started in, month by month
/// in `tz`.
async fn fill_started_periods(txn: &DatabaseTransaction, tz: Tz) -> Result<(), DbErr> {
    let backend = txn.get_database_backend();
    for month in months_of_rows_without(txn, tz, "calls", "started_at", "started_period").await? {
        let values = vec![
            month.key().into(),
            micros(month.start(tz)).into(),
            micros(month.end(tz)).into(),
        ];
        txn.execute_raw(statement(
            backend,
            "UPDATE calls SET started_period = ? \
             WHERE started_period = 0 AND started_at >= ? AND started_at < ?",
            values,
        ))
        .await?;
    }
    Ok(())
}

/// Places the rows of `table` (one of the two this module names) without a
/// billing month; see [`Store::place_rows_in_billing_months`].
async fn place_rows(
    txn: &DatabaseTransaction,
    tz: Tz,
    table: &str,
    instant_column: &str,
) -> Result<(), DbErr> {
    let backend = txn.get_database_backend();
    let bad_month = |key: i32| DbErr::Custom(format!("stored billing month {key} is not a month"));
    // Month by month, the rows whose own month the customer has neither
    // invoiced nor begun after.
    for month in months_of_rows_without(txn, tz, table, instant_column, "billing_period").await? {
        let sql = format!(
            "UPDATE {table} SET billing_period = ? WHERE billing_period = 0 \
               AND {instant_column} >= ? AND {instant_column} < ? \
               AND customer_id IN (SELECT id FROM customers \
                 WHERE (invoiced_through IS NULL OR invoiced_through < ?) AND created_at < ?)"
        );
        let end = micros(month.end(tz));
        let values = vec![
            month.key().into(),
            micros(month.start(tz)).into(),
            end.into(),
            month.key().into(),
            end.into(),
        ];
        txn.execute_raw(statement(backend, &sql, values)).await?;
    }
    // The rest are late, or from before the customer's first month: due in
    // its first month not invoiced yet.
    let sql = format!(
        "SELECT id, created_at, invoiced_through FROM customers \
         WHERE id IN (SELECT customer_id FROM {table} WHERE billing_period = 0)"
    );
    for row in txn
        .query_all_raw(statement(backend, &sql, Vec::new()))
        .await?
    {
        let customer_id: i64 = row.try_get_by_index(0)?;
        let first_month = BillingPeriod::containing(instant(row.try_get_by_index(1)?), tz);
        let through = match row.try_get_by_index::<Option<i32>>(2)? {
            Some(key) => Some(BillingPeriod::from_key(key).map_err(|_| bad_month(key))?),
            None => None,
        };
        let due = billing_period_of(first_month, through);
        let sql = format!(
            "UPDATE {table} SET billing_period = ? WHERE customer_id = ? AND billing_period = 0"
        );
        txn.execute_raw(statement(
            backend,
            &sql,
            vec![due.key().into(), customer_id.into()],
        ))
        .await?;
    }
    Ok(())
}

/// Invoice rows inserted per statement (14 bound values each).
const INVOICES_PER_STATEMENT: usize = 1000;
/// Invoice lines inserted per statement (8 bound values each).
const LINES_PER_INSERT: usize = 2000;
