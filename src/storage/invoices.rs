//! Invoices: the rows of a customer's billing month (read the same way
//! for invoices, previews and consolidated months), issuing (one function
//! per write, each on the transaction [`Store::begin_issue`] hands out),
//! and invoice reads. No billing rule lives here: `domain::invoice`
//! composes invoices from what these functions return.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use sea_orm::sea_query::{Expr, Func, Query};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseBackend, DatabaseTransaction, DbErr, EntityTrait,
    ExprTrait, QueryFilter, QueryOrder, QuerySelect, Statement,
};

use super::entities::{customer, customer_operator, invoice, invoice_line};
use super::{Store, id_values, instant, micros, placeholders, statement, value_rows};
use crate::domain::invoice::{
    BilledCall, BilledSegment, ConsolidatedMonth, Invoice, InvoiceDraft, InvoiceLine,
    InvoiceLineKind, MonthRows, OwnCallSums, TopUpEntry, UsageDetail, UsageTotals,
    billing_period_of, invoice_number,
};
use crate::domain::period::BillingPeriod;
use crate::error::{AppError, AppResult};

/// Makes invoice ids visible in id order on PostgreSQL, which the invoice
/// feed relies on: issuers hold it shared (they never wait for each other),
/// a feed read holds it exclusively for the length of one page query, so
/// it sees no invoice while a smaller id may still commit. SQLite's single
/// writer does the same there.
const ISSUE_LOCK_KEY: i64 = 0x0062_696c_6c69_6e67;

/// A customer a billing cycle has yet to invoice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CustomerToInvoice {
    pub customer_id: i64,
    pub plan_id: i64,
    pub created_at: DateTime<Utc>,
}

/// Whose invoices a listing returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvoiceFilter {
    /// Every invoice.
    All,
    /// One customer's invoices.
    Customer(i64),
    /// The invoices of every customer linked to one operator.
    Operator(i64),
}

/// One customer's billing month to read, and what of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MonthQuery {
    pub customer_id: i64,
    pub period: BillingPeriod,
    /// The month's first instant: calls that started before it are late
    /// usage.
    pub start: DateTime<Utc>,
    pub detail: UsageDetail,
}

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
        let lock = if backend == DatabaseBackend::Postgres {
            " FOR UPDATE"
        } else {
            ""
        };
        let mut through = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(IDS_PER_STATEMENT) {
            let sql = format!(
                "SELECT id, invoiced_through FROM customers WHERE id IN ({}) ORDER BY id{lock}",
                placeholders(chunk.len())
            );
            for row in txn
                .query_all_raw(statement(backend, &sql, id_values(chunk)))
                .await?
            {
                let month: Option<i32> = row.try_get_by_index(1)?;
                through.insert(
                    row.try_get_by_index::<i64>(0)?,
                    month.map(BillingPeriod::from_key).transpose()?,
                );
            }
        }
        Ok((IssueTransaction { txn }, through))
    }

    /// The rows of each of `months`, in order; see [`month_rows`].
    pub async fn month_rows(&self, months: &[MonthQuery]) -> AppResult<Vec<MonthRows>> {
        month_rows(&self.db, months).await
    }

    /// Places every call and top-up that has no billing month yet (0: rows
    /// from before migration 000009 that no invoice billed) in the month it
    /// is due, as if it were stored now: its own month (billing time zone
    /// `tz`) when that month is neither invoiced nor before the customer's
    /// first month, else the customer's first month not invoiced yet
    /// (`invoice::billing_period_of`). Run at startup after the migrations;
    /// does nothing once every row has its month. One transaction.
    pub async fn place_rows_in_billing_months(&self, tz: Tz) -> Result<(), DbErr> {
        let txn = self
            .begin_write()
            .await
            .map_err(|err| DbErr::Custom(err.to_string()))?;
        for (table, instant_column) in [("calls", "started_at"), ("top_ups", "created_at")] {
            place_rows(&txn, tz, table, instant_column).await?;
        }
        txn.commit().await
    }

    /// The feed's next page: like [`Store::list_invoices`], but on
    /// PostgreSQL read while no issuer is in flight, so that no invoice
    /// with a smaller id than those returned can appear later.
    pub async fn feed_page(
        &self,
        filter: InvoiceFilter,
        after_id: i64,
        limit: u64,
    ) -> AppResult<Vec<Invoice>> {
        if self.db.get_database_backend() != DatabaseBackend::Postgres {
            return self.list_invoices(filter, after_id, limit).await;
        }
        let txn = sea_orm::TransactionTrait::begin(&self.db).await?;
        txn.execute_raw(Statement::from_sql_and_values(
            DatabaseBackend::Postgres,
            "SELECT pg_advisory_xact_lock($1)",
            [ISSUE_LOCK_KEY.into()],
        ))
        .await?;
        let models = invoice_page(filter, after_id, limit).all(&txn).await?;
        txn.commit().await?;
        // The lines were committed with their invoices.
        self.with_lines(models).await
    }

    /// The invoice of one customer and month, if issued.
    pub async fn invoice_for(
        &self,
        customer_id: i64,
        period: BillingPeriod,
    ) -> AppResult<Option<Invoice>> {
        let model = invoice::Entity::find()
            .filter(invoice::Column::CustomerId.eq(customer_id))
            .filter(invoice::Column::PeriodYear.eq(period.year()))
            .filter(invoice::Column::PeriodMonth.eq(period.month()))
            .one(&self.db)
            .await?;
        match model {
            None => Ok(None),
            Some(model) => Ok(self.with_lines(vec![model]).await?.pop()),
        }
    }

    /// Up to `limit` invoices with an id above `after_id`, in id order, of
    /// one customer or of all.
    pub async fn list_invoices(
        &self,
        filter: InvoiceFilter,
        after_id: i64,
        limit: u64,
    ) -> AppResult<Vec<Invoice>> {
        let models = invoice_page(filter, after_id, limit).all(&self.db).await?;
        self.with_lines(models).await
    }
    /// The issued invoices of a customer for the months `from..=to`, as
    /// consolidated months (figures only, no lines), oldest first.
    pub async fn invoiced_months(
        &self,
        customer_id: i64,
        from: BillingPeriod,
        to: BillingPeriod,
    ) -> AppResult<Vec<ConsolidatedMonth>> {
        let key =
            |period: BillingPeriod| i64::from(period.year()) * 100 + i64::from(period.month());
        let models = invoice::Entity::find()
            .filter(invoice::Column::CustomerId.eq(customer_id))
            .filter(period_key().between(key(from), key(to)))
            .order_by_asc(invoice::Column::PeriodYear)
            .order_by_asc(invoice::Column::PeriodMonth)
            .all(&self.db)
            .await?;
        models
            .into_iter()
            .map(|m| {
                let usage = usage_of(&m);
                Ok(ConsolidatedMonth {
                    period: BillingPeriod::new("period", m.period_year, m.period_month)?,
                    usage,
                    monthly_fee_micros: m.monthly_fee_micros,
                    total_micros: m.total_micros,
                    currency_code: m.currency_code,
                    invoice_number: Some(m.number),
                })
            })
            .collect()
    }
    /// Up to `limit` customers with an id above `after_id` that existed
    /// before `end` and whose invoices do not reach `period` yet, in id
    /// order.
    pub async fn customers_to_invoice(
        &self,
        period: BillingPeriod,
        end: DateTime<Utc>,
        after_id: i64,
        limit: u64,
    ) -> AppResult<Vec<CustomerToInvoice>> {
        let rows: Vec<(i64, i64, i64)> = customer::Entity::find()
            .select_only()
            .column(customer::Column::Id)
            .column(customer::Column::PlanId)
            .column(customer::Column::CreatedAt)
            .filter(customer::Column::Id.gt(after_id))
            .filter(customer::Column::CreatedAt.lt(micros(end)))
            .filter(
                customer::Column::InvoicedThrough
                    .is_null()
                    .or(customer::Column::InvoicedThrough.lt(period.key())),
            )
            .order_by_asc(customer::Column::Id)
            .limit(limit)
            .into_tuple()
            .all(&self.db)
            .await?;
        Ok(rows
            .into_iter()
            .map(|(customer_id, plan_id, created_at)| CustomerToInvoice {
                customer_id,
                plan_id,
                created_at: instant(created_at),
            })
            .collect())
    }

    /// How many customers existed before `end`.
    pub async fn customers_existing_before(&self, end: DateTime<Utc>) -> AppResult<i64> {
        let count: Option<i64> = customer::Entity::find()
            .select_only()
            .expr(Func::count(Expr::col(customer::Column::Id)))
            .filter(customer::Column::CreatedAt.lt(micros(end)))
            .into_tuple()
            .one(&self.db)
            .await?;
        Ok(count.unwrap_or(0))
    }

    /// When the first customer was created, if any.
    pub async fn first_customer_created_at(&self) -> AppResult<Option<DateTime<Utc>>> {
        let first: Option<i64> = customer::Entity::find()
            .select_only()
            .column(customer::Column::CreatedAt)
            .order_by_asc(customer::Column::CreatedAt)
            .limit(1)
            .into_tuple()
            .one(&self.db)
            .await?;
        Ok(first.map(instant))
    }

    /// Attaches their lines to invoice rows, in one query.
    async fn with_lines(&self, models: Vec<invoice::Model>) -> AppResult<Vec<Invoice>> {
        if models.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<i64> = models.iter().map(|m| m.id).collect();
        let mut lines: BTreeMap<i64, Vec<InvoiceLine>> = BTreeMap::new();
        for row in invoice_line::Entity::find()
            .filter(invoice_line::Column::InvoiceId.is_in(ids))
            .order_by_asc(invoice_line::Column::InvoiceId)
            .order_by_asc(invoice_line::Column::Position)
            .all(&self.db)
            .await?
        {
            let kind = InvoiceLineKind::parse(&row.kind).ok_or_else(|| {
                AppError::internal(format!(
                    "invoice line {} has unknown kind {:?}",
                    row.id, row.kind
                ))
            })?;
            lines.entry(row.invoice_id).or_default().push(InvoiceLine {
                kind,
                description: row.description,
                quantity: row.quantity,
                amount_micros: row.amount_micros,
            });
        }
        models
            .into_iter()
            .map(|m| {
                let period = BillingPeriod::new("period", m.period_year, m.period_month)?;
                let usage = usage_of(&m);
                Ok(Invoice {
                    id: m.id,
                    number: m.number,
                    customer_id: m.customer_id,
                    period,
                    period_start: instant(m.period_start),
                    period_end: instant(m.period_end),
                    issued_at: instant(m.issued_at),
                    currency_code: m.currency_code,
                    lines: lines.remove(&m.id).unwrap_or_default(),
                    usage,
                    monthly_fee_micros: m.monthly_fee_micros,
                    total_micros: m.total_micros,
                })
            })
            .collect()
    }
}

impl IssueTransaction {
    /// The rows of each of `months`, in order, as this transaction sees
    /// them; see [`month_rows`].
    pub async fn month_rows(&self, months: &[MonthQuery]) -> AppResult<Vec<MonthRows>> {
        month_rows(&self.txn, months).await
    }

    /// Stores `invoices` with their lines and returns them as issued, in
    /// order: one multi-row insert of the invoices (the unique `(customer,
    /// period)` key refuses a second invoice of a month), one update giving
    /// each its number (which names its id), one multi-row insert of the
    /// lines.
    pub async fn insert_invoices(&self, invoices: Vec<NewInvoice>) -> AppResult<Vec<Invoice>> {
        let backend = self.txn.get_database_backend();
        let mut ids: HashMap<(i64, BillingPeriod), i64> = HashMap::with_capacity(invoices.len());
        for chunk in invoices.chunks(INVOICES_PER_STATEMENT) {
            let mut values: Vec<sea_orm::Value> = Vec::with_capacity(chunk.len() * 13);
            for new in chunk {
                values.extend([
                    format!("pending-{}-{}", new.customer_id, new.period).into(),
                    new.customer_id.into(),
                    new.period.year().into(),
                    new.period.month().cast_signed().into(),
                    micros(new.period_start).into(),
                    micros(new.period_end).into(),
                    micros(new.issued_at).into(),
                    new.currency_code.clone().into(),
                    new.draft.usage.call_count.into(),
                    new.draft.usage.billed_seconds.into(),
                    new.draft.usage.usage_micros.into(),
                    new.draft.monthly_fee_micros.into(),
                    new.draft.total_micros.into(),
                ]);
            }
            let sql = format!(
                "INSERT INTO invoices (number, customer_id, period_year, period_month, \
                   period_start, period_end, issued_at, currency_code, call_count, \
                   billed_seconds, usage_micros, monthly_fee_micros, total_micros) \
                 VALUES {} RETURNING id, customer_id, period_year, period_month",
                value_rows(chunk.len(), 13)
            );
            for row in self
                .txn
                .query_all_raw(statement(backend, &sql, values))
                .await?
            {
                let period = BillingPeriod::new(
                    "period",
                    row.try_get_by_index(2)?,
                    row.try_get_by_index(3)?,
                )?;
                ids.insert((row.try_get_by_index(1)?, period), row.try_get_by_index(0)?);
            }
        }
        let mut issued = Vec::with_capacity(invoices.len());
        for new in invoices {
            let id = ids
                .get(&(new.customer_id, new.period))
                .copied()
                .ok_or_else(|| AppError::internal("an inserted invoice returned no id"))?;
            issued.push(Invoice {
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
            });
        }
        for chunk in issued.chunks(INVOICES_PER_STATEMENT) {
            let mut values: Vec<sea_orm::Value> = Vec::with_capacity(chunk.len() * 2);
            for invoice in chunk {
                values.extend([invoice.id.into(), invoice.number.clone().into()]);
            }
            let sql = format!(
                "WITH v(id, number) AS (VALUES {}) \
                 UPDATE invoices SET number = v.number FROM v WHERE invoices.id = v.id",
                value_rows(chunk.len(), 2)
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
            let mut values: Vec<sea_orm::Value> = Vec::with_capacity(chunk.len() * 6);
            for (invoice_id, position, line) in chunk {
                values.extend([
                    (*invoice_id).into(),
                    i32::try_from(*position).unwrap_or(i32::MAX).into(),
                    line.kind.as_str().into(),
                    line.description.clone().into(),
                    line.quantity.into(),
                    line.amount_micros.into(),
                ]);
            }
            let sql = format!(
                "INSERT INTO invoice_lines (invoice_id, position, kind, description, quantity, \
                   amount_micros) VALUES {}",
                value_rows(chunk.len(), 6)
            );
            self.txn
                .execute_raw(statement(backend, &sql, values))
                .await?;
        }
        Ok(issued)
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

    /// Commits, first telling invoice watchers on other replicas (on
    /// commit) that invoices up to `newest` exist.
    pub async fn commit(self, newest: Option<i64>) -> AppResult<()> {
        if let Some(newest) = newest {
            super::feed::announce(&self.txn, newest).await?;
        }
        self.txn.commit().await?;
        Ok(())
    }
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
    let sql = format!(
        "SELECT MIN({instant_column}), MAX({instant_column}) FROM {table} WHERE billing_period = 0"
    );
    let Some(row) = txn
        .query_one_raw(statement(backend, &sql, Vec::new()))
        .await?
    else {
        return Ok(());
    };
    let (Some(first), Some(last)) = (
        row.try_get_by_index::<Option<i64>>(0)?,
        row.try_get_by_index::<Option<i64>>(1)?,
    ) else {
        return Ok(());
    };
    // Month by month, the rows whose own month the customer has neither
    // invoiced nor begun after.
    let last = BillingPeriod::containing(instant(last), tz);
    let mut month = BillingPeriod::containing(instant(first), tz);
    loop {
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
        if month >= last {
            break;
        }
        month = month.next();
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

/// Months read per statement (4 bound values each).
const MONTHS_PER_STATEMENT: usize = 1000;
/// Invoice rows inserted per statement (13 bound values each).
const INVOICES_PER_STATEMENT: usize = 1000;
/// Ids bound per `IN (…)` list.
const IDS_PER_STATEMENT: usize = 5000;
/// Invoice lines inserted per statement (6 bound values each).
const LINES_PER_INSERT: usize = 2000;

/// The rows of each of `months` on `conn`, in order: every call and top-up
/// of the customer whose billing month it is, as its `detail` asks (see
/// [`UsageDetail`]). A fixed number of set-based statements per
/// [`MONTHS_PER_STATEMENT`] months, each joining a `VALUES` table of the
/// months to the `(customer_id, billing_period, …)` indexes: for summed
/// months the sums of the calls started within the month and the calls
/// started before it one by one; for the others every call, and their
/// segments when asked; top-ups for all.
async fn month_rows(
    conn: &impl ConnectionTrait,
    months: &[MonthQuery],
) -> AppResult<Vec<MonthRows>> {
    let backend = conn.get_database_backend();
    let mut rows: Vec<MonthRows> = vec![MonthRows::default(); months.len()];
    let indexed: Vec<(usize, &MonthQuery)> = months.iter().enumerate().collect();
    for chunk in indexed.chunks(MONTHS_PER_STATEMENT) {
        let table = |which: &dyn Fn(&MonthQuery) -> bool| {
            let selected: Vec<&(usize, &MonthQuery)> =
                chunk.iter().filter(|(_, month)| which(month)).collect();
            let mut values: Vec<sea_orm::Value> = Vec::with_capacity(selected.len() * 4);
            for (index, month) in &selected {
                values.extend([
                    i64::try_from(*index).unwrap_or(i64::MAX).into(),
                    month.customer_id.into(),
                    month.period.key().into(),
                    micros(month.start).into(),
                ]);
            }
            let cte = format!(
                "WITH m(idx, customer_id, period, start) AS (VALUES {})",
                value_rows(selected.len(), 4)
            );
            (!selected.is_empty()).then_some((cte, values))
        };
        let month_calls = "m JOIN calls c ON c.customer_id = m.customer_id \
             AND c.billing_period = m.period";
        let call_columns = "m.idx, c.id, c.started_at, c.billed_seconds, c.cost_micros, \
             c.per_minute_micros, c.connect_fee_micros";
        let summed = |month: &MonthQuery| month.detail == UsageDetail::Summed;
        if let Some((cte, values)) = table(&summed) {
            // Sums cast to BIGINT: PostgreSQL sums BIGINT as NUMERIC. An
            // overflowing sum is an error of the database, which maps to
            // FAILED_PRECONDITION.
            let sql = format!(
                "{cte} SELECT m.idx, COUNT(*), CAST(SUM(c.billed_seconds) AS BIGINT), \
                   CAST(SUM(c.cost_micros) AS BIGINT), \
                   CAST(SUM(CASE WHEN c.connect_fee_micros > 0 THEN 1 ELSE 0 END) AS BIGINT), \
                   CAST(SUM(c.connect_fee_micros) AS BIGINT) \
                 FROM {month_calls} AND c.started_at >= m.start GROUP BY m.idx"
            );
            for row in conn
                .query_all_raw(statement(backend, &sql, values.clone()))
                .await?
            {
                let slot = slot(&mut rows, &row)?;
                slot.own_sums = OwnCallSums {
                    totals: UsageTotals {
                        call_count: row.try_get_by_index(1)?,
                        billed_seconds: row.try_get_by_index(2)?,
                        usage_micros: row.try_get_by_index(3)?,
                    },
                    connect_fee_calls: row.try_get_by_index(4)?,
                    connect_fees_micros: row.try_get_by_index(5)?,
                };
            }
            let sql = format!(
                "{cte} SELECT {call_columns} FROM {month_calls} AND c.started_at < m.start"
            );
            read_calls(conn, &sql, values, &mut rows).await?;
        }
        let each = |month: &MonthQuery| month.detail != UsageDetail::Summed;
        if let Some((cte, values)) = table(&each) {
            let sql = format!("{cte} SELECT {call_columns} FROM {month_calls}");
            read_calls(conn, &sql, values, &mut rows).await?;
        }
        let with_segments =
            |month: &MonthQuery| month.detail == UsageDetail::EachCall { segments: true };
        if let Some((cte, values)) = table(&with_segments) {
            let sql = format!(
                "{cte} SELECT m.idx, s.call_id, s.tariff_name, s.billed_seconds, s.cost_micros \
                 FROM {month_calls} JOIN call_segments s ON s.call_id = c.id \
                 ORDER BY s.call_id, s.position"
            );
            let mut segments: HashMap<i64, Vec<BilledSegment>> = HashMap::new();
            for row in conn.query_all_raw(statement(backend, &sql, values)).await? {
                segments
                    .entry(row.try_get_by_index(1)?)
                    .or_default()
                    .push(BilledSegment {
                        tariff_name: row.try_get_by_index(2)?,
                        billed_seconds: row.try_get_by_index(3)?,
                        cost_micros: row.try_get_by_index(4)?,
                    });
            }
            for (index, _) in chunk.iter().filter(|(_, month)| with_segments(month)) {
                for call in &mut rows[*index].calls {
                    call.segments = segments.remove(&call.id).unwrap_or_default();
                }
            }
        }
        if let Some((cte, values)) = table(&|_| true) {
            let sql = format!(
                "{cte} SELECT m.idx, t.id, t.created_at, t.amount_micros \
                 FROM m JOIN top_ups t ON t.customer_id = m.customer_id \
                   AND t.billing_period = m.period"
            );
            for row in conn.query_all_raw(statement(backend, &sql, values)).await? {
                let entry = (
                    row.try_get_by_index(1)?,
                    TopUpEntry {
                        created_at: instant(row.try_get_by_index(2)?),
                        amount_micros: row.try_get_by_index(3)?,
                    },
                );
                slot(&mut rows, &row)?.top_ups.push(entry);
            }
        }
    }
    Ok(rows)
}

/// The month a row of [`month_rows`]'s statements belongs to, by the index
/// in its first column.
fn slot<'a>(rows: &'a mut [MonthRows], row: &sea_orm::QueryResult) -> AppResult<&'a mut MonthRows> {
    let index: i64 = row.try_get_by_index(0)?;
    usize::try_from(index)
        .ok()
        .and_then(|index| rows.get_mut(index))
        .ok_or_else(|| AppError::internal(format!("a month's rows came back for month {index}")))
}

/// Reads the calls `sql` selects (the month's index, then the figures of a
/// [`BilledCall`]) into their months' rows.
async fn read_calls(
    conn: &impl ConnectionTrait,
    sql: &str,
    values: Vec<sea_orm::Value>,
    rows: &mut [MonthRows],
) -> AppResult<()> {
    let backend = conn.get_database_backend();
    for row in conn.query_all_raw(statement(backend, sql, values)).await? {
        let call = BilledCall {
            id: row.try_get_by_index(1)?,
            started_at: instant(row.try_get_by_index(2)?),
            billed_seconds: row.try_get_by_index(3)?,
            cost_micros: row.try_get_by_index(4)?,
            per_minute_micros: row.try_get_by_index(5)?,
            connect_fee_micros: row.try_get_by_index(6)?,
            segments: Vec::new(),
        };
        slot(rows, &row)?.calls.push(call);
    }
    Ok(())
}

/// The query for up to `limit` invoices with an id above `after_id`, in
/// id order, that `filter` selects.
fn invoice_page(
    filter: InvoiceFilter,
    after_id: i64,
    limit: u64,
) -> sea_orm::Select<invoice::Entity> {
    let mut query = invoice::Entity::find()
        .filter(invoice::Column::Id.gt(after_id))
        .order_by_asc(invoice::Column::Id)
        .limit(limit);
    query = match filter {
        InvoiceFilter::All => query,
        InvoiceFilter::Customer(customer_id) => {
            query.filter(invoice::Column::CustomerId.eq(customer_id))
        }
        InvoiceFilter::Operator(operator_id) => query.filter(
            invoice::Column::CustomerId.in_subquery(
                Query::select()
                    .column(customer_operator::Column::CustomerId)
                    .from(customer_operator::Entity)
                    .and_where(customer_operator::Column::OperatorId.eq(operator_id))
                    .to_owned(),
            ),
        ),
    };
    query
}

/// An invoice's month as one sortable number, `year * 100 + month` (see
/// `BillingPeriod::key`).
fn period_key() -> sea_orm::sea_query::SimpleExpr {
    Expr::col(invoice::Column::PeriodYear)
        .mul(100)
        .add(Expr::col(invoice::Column::PeriodMonth))
}

/// The call figures stored on an invoice row.
fn usage_of(model: &invoice::Model) -> UsageTotals {
    UsageTotals {
        call_count: model.call_count,
        billed_seconds: model.billed_seconds,
        usage_micros: model.usage_micros,
    }
}
