//! Invoices: issuing (claiming calls and top-ups in one transaction),
//! reading, and the usage figures of months not invoiced yet.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use futures_util::StreamExt;
use sea_orm::sea_query::{Alias, Expr, Func, Query};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseBackend, DatabaseTransaction, EntityTrait, ExprTrait,
    QueryFilter, QueryOrder, QuerySelect, Statement,
};

use super::entities::{call, customer, customer_operator, invoice, invoice_line, top_up};
use super::{
    Store, id_values, instant, lock_customers, micros, placeholders, statement, value_rows,
};
use crate::domain::invoice::{
    ClaimedCall, ClaimedSegment, ClaimedUsage, ConsolidatedMonth, IncludedBasis, IncludedUsage,
    Invoice, InvoiceDraft, InvoiceLine, InvoiceLineKind, OwnCallSums, StraddlingCall, TopUpEntry,
    UsageTotals, claimed_usage, invoice_number, summed_claimed_usage,
};
use crate::domain::period::BillingPeriod;
use crate::error::{AppError, AppResult};

/// Makes invoice ids visible in id order on PostgreSQL, which the invoice
/// feed relies on: issuers hold it shared (they never wait for each other),
/// a feed read holds it exclusively for the length of one page query, so
/// it sees no invoice while a smaller id may still commit. SQLite's single
/// writer does the same there.
const ISSUE_LOCK_KEY: i64 = 0x0062_696c_6c69_6e67;

/// What to issue: one customer's invoice for one month.
#[derive(Debug, Clone)]
pub struct InvoiceRequest {
    pub customer_id: i64,
    pub period: BillingPeriod,
    /// The customer's first month: no earlier month is ever invoiced.
    pub first_period: BillingPeriod,
    pub tz: Tz,
    pub issued_at: DateTime<Utc>,
    pub currency_code: String,
    /// Billed seconds of each month's own calls that the plan includes
    /// (0: none).
    pub included_seconds: i64,
    /// What the included minutes count.
    pub included_basis: IncludedBasis,
}

/// A customer a billing cycle has yet to invoice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CustomerToInvoice {
    pub customer_id: i64,
    pub plan_id: i64,
    pub created_at: DateTime<Utc>,
}

/// What issuing did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IssueOutcome {
    /// Newly issued by this call.
    Issued(Invoice),
    /// The period's invoice existed already; it is returned unchanged.
    AlreadyIssued(Invoice),
}

/// What issuing one request did: its month's outcome, and the invoices of
/// the customer's earlier months that were missing and were issued first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssueReport {
    pub outcome: IssueOutcome,
    /// Oldest first.
    pub earlier: Vec<Invoice>,
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

impl Store {
    /// Issues the invoice of `request.period`, or returns the one issued
    /// before; see [`Store::issue_invoices`].
    pub async fn issue_invoice(
        &self,
        request: InvoiceRequest,
        compose: impl Fn(BillingPeriod, &ClaimedUsage) -> AppResult<InvoiceDraft>,
    ) -> AppResult<IssueReport> {
        self.issue_invoices(vec![request], |_, period, usage| compose(period, usage))
            .await?
            .pop()
            .ok_or_else(|| AppError::internal("issue_invoices returned no outcome"))
    }

    /// Issues a batch of invoices in one transaction (one commit for many
    /// invoices), returning each request's report in order.
    ///
    /// Months are billed in order: a request first issues every month of
    /// its customer after the latest invoiced one (or from the customer's
    /// first month) that precedes the requested month, oldest first. Per
    /// month: the invoice row is inserted (the unique `(customer, period)`
    /// key makes concurrent issuers agree on one; a conflict means it exists
    /// and is returned unchanged), every not-yet-invoiced call of the
    /// customer that started before the month's end and every such top-up is
    /// claimed for it, `compose` turns what was claimed into lines, and the
    /// invoice is completed. So a call of an earlier month is claimed as
    /// late usage only when it arrived after that month's invoice.
    ///
    /// Any error rolls the whole batch back.
    pub async fn issue_invoices(
        &self,
        requests: Vec<InvoiceRequest>,
        compose: impl Fn(&InvoiceRequest, BillingPeriod, &ClaimedUsage) -> AppResult<InvoiceDraft>,
    ) -> AppResult<Vec<IssueReport>> {
        let mut customers: Vec<i64> = requests.iter().map(|r| r.customer_id).collect();
        customers.sort_unstable();
        if customers.windows(2).any(|pair| pair[0] == pair[1]) {
            return Err(AppError::internal(
                "a batch of invoice requests names one customer twice",
            ));
        }
        let txn = self.begin_write().await?;
        if txn.get_database_backend() == DatabaseBackend::Postgres {
            // Shared: issuers never wait for each other, only for a feed
            // read in progress (see `feed_page`).
            txn.execute_raw(Statement::from_sql_and_values(
                DatabaseBackend::Postgres,
                "SELECT pg_advisory_xact_lock_shared($1)",
                [ISSUE_LOCK_KEY.into()],
            ))
            .await?;
            // Issuers of one customer take turns, so the latest invoiced
            // month read next is current (no lock on SQLite's single
            // writer).
            lock_customers(&txn, &customers).await?;
        }
        let latest = latest_invoiced_months(&txn, &requests).await?;
        let months: Vec<Vec<BillingPeriod>> = requests
            .iter()
            .map(|request| {
                crate::domain::invoice::months_to_issue(
                    request.first_period,
                    request.period,
                    latest.get(&request.customer_id).copied(),
                )
            })
            .collect();
        // Round k issues the k-th month due of every request, all in a few
        // set-based statements; one customer's months stay in order.
        let rounds = months.iter().map(Vec::len).max().unwrap_or(0);
        let mut issued: Vec<(Option<Invoice>, Vec<Invoice>)> =
            requests.iter().map(|_| (None, Vec::new())).collect();
        for round in 0..rounds {
            let due: Vec<(usize, BillingPeriod)> = months
                .iter()
                .enumerate()
                .filter_map(|(index, months)| months.get(round).map(|month| (index, *month)))
                .collect();
            let items: Vec<(&InvoiceRequest, BillingPeriod)> = due
                .iter()
                .map(|&(index, month)| (&requests[index], month))
                .collect();
            let invoices = issue_months(&txn, &items, &compose).await?;
            for ((index, month), invoice) in due.into_iter().zip(invoices) {
                let Some(invoice) = invoice else { continue };
                if month == requests[index].period {
                    issued[index].0 = Some(invoice);
                } else {
                    issued[index].1.push(invoice);
                }
            }
        }
        let newest = issued
            .iter()
            .flat_map(|(target, earlier)| target.iter().chain(earlier))
            .map(|invoice| invoice.id)
            .max();
        if let Some(newest) = newest {
            super::feed::announce(&txn, newest).await?;
        }
        txn.commit().await?;
        let mut reports = Vec::with_capacity(requests.len());
        for (request, (target, earlier)) in requests.into_iter().zip(issued) {
            let outcome = match target {
                Some(invoice) => IssueOutcome::Issued(invoice),
                None => IssueOutcome::AlreadyIssued(
                    self.invoice_for(request.customer_id, request.period)
                        .await?
                        .ok_or_else(|| AppError::internal("conflicting invoice vanished"))?,
                ),
            };
            reports.push(IssueReport { outcome, earlier });
        }
        Ok(reports)
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

    /// Calls of a customer that started in `[start, end)` and are not
    /// invoiced yet, summed up.
    pub async fn uninvoiced_usage(
        &self,
        customer_id: i64,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> AppResult<UsageTotals> {
        usage_totals(
            &self.db,
            call::Column::CustomerId
                .eq(customer_id)
                .and(call::Column::InvoiceId.is_null()),
            call::Column::StartedAt
                .gte(micros(start))
                .and(call::Column::StartedAt.lt(micros(end))),
        )
        .await
    }

    /// How a customer's not-yet-invoiced calls that started in `[start,
    /// end)` (totals `current`) fall against an allowance of `allowance`
    /// billed seconds; see [`IncludedUsage`].
    pub async fn uninvoiced_included(
        &self,
        customer_id: i64,
        (start, end): (DateTime<Utc>, DateTime<Utc>),
        current: UsageTotals,
        allowance: i64,
        basis: &IncludedBasis,
    ) -> AppResult<IncludedUsage> {
        included_usage(
            &self.db,
            current,
            allowance,
            "c.customer_id = ? AND c.invoice_id IS NULL AND c.started_at >= ? AND c.started_at < ?",
            vec![customer_id.into(), micros(start).into(), micros(end).into()],
            basis,
        )
        .await
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

    /// A customer's not-yet-invoiced calls in each of `months` (`[start,
    /// end)` instants), summed, and how each month's calls fall against an
    /// allowance of `allowance` billed seconds; in the order of `months`.
    /// One grouped query for all the months.
    pub async fn uninvoiced_usage_by_month(
        &self,
        customer_id: i64,
        months: &[(DateTime<Utc>, DateTime<Utc>)],
        allowance: i64,
        basis: &IncludedBasis,
    ) -> AppResult<Vec<(UsageTotals, IncludedUsage)>> {
        let mut figures = vec![(UsageTotals::default(), IncludedUsage::default()); months.len()];
        if months.is_empty() {
            return Ok(figures);
        }
        let allowance = Ord::max(allowance, 0);
        // On segments, the totals come from the calls and the included
        // usage from a second query over their segments.
        let (calls_allowance, segments) = match basis {
            IncludedBasis::Calls => (allowance, None),
            IncludedBasis::Segments { rates, only } => (0, Some((rates, only))),
        };
        let (rows, mut values) = months_table(months);
        values.push(customer_id.into());
        let sql = format!(
            "WITH months(idx, lo, hi) AS (VALUES {rows}), \
             ordered AS ( \
               SELECT m.idx AS idx, c.billed_seconds AS billed_seconds, \
                      c.cost_micros AS cost_micros, c.per_minute_micros AS per_minute_micros, \
                      SUM(c.billed_seconds) OVER (PARTITION BY m.idx ORDER BY c.started_at, c.id \
                        ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS running \
               FROM months m JOIN calls c ON c.started_at >= m.lo AND c.started_at < m.hi \
               WHERE c.customer_id = ? AND c.invoice_id IS NULL) \
             SELECT idx, COUNT(*), \
                    CAST(SUM(billed_seconds) AS BIGINT), CAST(SUM(cost_micros) AS BIGINT), {} \
             FROM ordered GROUP BY idx",
            included_split_columns(calls_allowance)
        );
        let backend = self.db.get_database_backend();
        for row in self
            .db
            .query_all_raw(statement(backend, &sql, values))
            .await?
        {
            let index: i32 = row.try_get_by_index(0)?;
            let current = totals_at(&row, 1)?;
            let whole = totals_at(&row, 4)?;
            let included = if calls_allowance == 0 {
                IncludedUsage::default()
            } else {
                IncludedUsage {
                    whole,
                    straddling: straddling_call(&row, 7)?,
                }
            };
            if let Some(slot) = usize::try_from(index).ok().and_then(|i| figures.get_mut(i)) {
                *slot = (current, included);
            }
        }
        if let (Some((rates, only)), true) = (segments, allowance > 0) {
            for (index, included) in self
                .included_segments_by_month(customer_id, months, allowance, rates, only)
                .await?
            {
                if let Some(slot) = figures.get_mut(index) {
                    slot.1 = included;
                }
            }
        }
        Ok(figures)
    }

    /// For each month of `months` (by index) with uninvoiced calls, how
    /// their segments (of the tariffs in `only`; none: all) fall against
    /// `allowance`, in one query.
    async fn included_segments_by_month(
        &self,
        customer_id: i64,
        months: &[(DateTime<Utc>, DateTime<Utc>)],
        allowance: i64,
        rates: &[(String, i64)],
        only: &[String],
    ) -> AppResult<Vec<(usize, IncludedUsage)>> {
        let (rows, mut values) = months_table(months);
        let (rate, rate_values) = segment_rate_case(rates);
        values.extend(rate_values);
        values.push(customer_id.into());
        let (only_sql, only_values) = only_tariffs(only);
        values.extend(only_values);
        let sql = format!(
            "WITH months(idx, lo, hi) AS (VALUES {rows}), \
             ordered AS ( \
               SELECT m.idx AS idx, s.billed_seconds AS billed_seconds, \
                      s.cost_micros AS cost_micros, {rate} AS per_minute_micros, \
                      SUM(s.billed_seconds) OVER (PARTITION BY m.idx \
                        ORDER BY c.started_at, c.id, s.position \
                        ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS running \
               FROM months m JOIN calls c ON c.started_at >= m.lo AND c.started_at < m.hi \
               JOIN call_segments s ON s.call_id = c.id \
               WHERE c.customer_id = ? AND c.invoice_id IS NULL{only_sql}) \
             SELECT idx, {} FROM ordered GROUP BY idx",
            included_split_columns(allowance)
        );
        let backend = self.db.get_database_backend();
        let mut included = Vec::new();
        for row in self
            .db
            .query_all_raw(statement(backend, &sql, values))
            .await?
        {
            let index: i32 = row.try_get_by_index(0)?;
            let whole = totals_at(&row, 1)?;
            if let Ok(index) = usize::try_from(index) {
                included.push((
                    index,
                    IncludedUsage {
                        whole,
                        straddling: straddling_call(&row, 4)?,
                    },
                ));
            }
        }
        Ok(included)
    }

    /// Top-ups of a customer made in `[start, end)` and not invoiced yet.
    pub async fn uninvoiced_top_ups(
        &self,
        customer_id: i64,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> AppResult<Vec<TopUpEntry>> {
        Ok(top_up::Entity::find()
            .filter(top_up::Column::CustomerId.eq(customer_id))
            .filter(top_up::Column::InvoiceId.is_null())
            .filter(top_up::Column::CreatedAt.gte(micros(start)))
            .filter(top_up::Column::CreatedAt.lt(micros(end)))
            .order_by_asc(top_up::Column::CreatedAt)
            .order_by_asc(top_up::Column::Id)
            .all(&self.db)
            .await?
            .into_iter()
            .map(top_up_entry)
            .collect())
    }

    /// Up to `limit` customers with an id above `after_id` that existed
    /// before `end` and have no invoice for `period`, in id order.
    pub async fn customers_to_invoice(
        &self,
        period: BillingPeriod,
        end: DateTime<Utc>,
        after_id: i64,
        limit: u64,
    ) -> AppResult<Vec<CustomerToInvoice>> {
        let invoiced = Query::select()
            .column(invoice::Column::CustomerId)
            .from(invoice::Entity)
            .and_where(invoice::Column::PeriodYear.eq(period.year()))
            .and_where(invoice::Column::PeriodMonth.eq(period.month()))
            .to_owned();
        let rows: Vec<(i64, i64, i64)> = customer::Entity::find()
            .select_only()
            .column(customer::Column::Id)
            .column(customer::Column::PlanId)
            .column(customer::Column::CreatedAt)
            .filter(customer::Column::Id.gt(after_id))
            .filter(customer::Column::CreatedAt.lt(micros(end)))
            .filter(customer::Column::Id.not_in_subquery(invoiced))
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

/// Count, billed seconds and cost of the calls matching both conditions, in
/// one aggregate query (sums cast to BIGINT: PostgreSQL sums BIGINT as
/// NUMERIC).
async fn usage_totals(
    db: &impl ConnectionTrait,
    which: sea_orm::sea_query::SimpleExpr,
    when: sea_orm::sea_query::SimpleExpr,
) -> AppResult<UsageTotals> {
    let sum = |column: call::Column| {
        Func::cast_as(
            Func::coalesce([Expr::from(Func::sum(Expr::col(column))), Expr::val(0)]),
            Alias::new("BIGINT"),
        )
    };
    let totals: Option<(i64, i64, i64)> = call::Entity::find()
        .select_only()
        .expr(Func::count(Expr::col(call::Column::Id)))
        .expr(sum(call::Column::BilledSeconds))
        .expr(sum(call::Column::CostMicros))
        .filter(which)
        .filter(when)
        .into_tuple()
        .one(db)
        .await?;
    let (call_count, billed_seconds, usage_micros) = totals.unwrap_or_default();
    Ok(UsageTotals {
        call_count,
        billed_seconds,
        usage_micros,
    })
}

/// How the calls matching `filter` (one month's own calls, `?` for each
/// of `values`), taken in start order, fall against an allowance of
/// `allowance` billed seconds: the calls wholly inside it, summed, and the
/// one call crossing its end. One window query; none when the allowance is
/// 0 or every call fits (`current` is the filter's totals).
async fn included_usage(
    db: &impl ConnectionTrait,
    current: UsageTotals,
    allowance: i64,
    filter: &str,
    values: Vec<sea_orm::Value>,
    basis: &IncludedBasis,
) -> AppResult<IncludedUsage> {
    if allowance <= 0 {
        return Ok(IncludedUsage::default());
    }
    let (ordered, values) = match basis {
        IncludedBasis::Calls => {
            if current.billed_seconds <= allowance {
                return Ok(IncludedUsage::all(current));
            }
            (
                format!(
                    "SELECT c.billed_seconds, c.cost_micros, c.per_minute_micros, \
                            SUM(c.billed_seconds) OVER (ORDER BY c.started_at, c.id \
                              ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS running \
                     FROM calls c WHERE {filter}"
                ),
                values,
            )
        }
        IncludedBasis::Segments { rates, only } => {
            let (rate, mut all_values) = segment_rate_case(rates);
            let (only_sql, only_values) = only_tariffs(only);
            all_values.extend(values);
            all_values.extend(only_values);
            (
                format!(
                    "SELECT s.billed_seconds AS billed_seconds, s.cost_micros AS cost_micros, \
                            {rate} AS per_minute_micros, \
                            SUM(s.billed_seconds) OVER (ORDER BY c.started_at, c.id, s.position \
                              ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS running \
                     FROM call_segments s JOIN calls c ON c.id = s.call_id \
                     WHERE {filter}{only_sql}"
                ),
                all_values,
            )
        }
    };
    let sql = format!(
        "WITH ordered AS ({ordered}) SELECT {} FROM ordered",
        included_split_columns(allowance)
    );
    let backend = db.get_database_backend();
    let row = db
        .query_one_raw(statement(backend, &sql, values))
        .await?
        .ok_or_else(|| AppError::internal("an aggregate returned no row"))?;
    let whole = totals_at(&row, 0)?;
    let straddling = straddling_call(&row, 3)?;
    Ok(IncludedUsage { whole, straddling })
}

/// A SQL expression for the per-minute rate of segment `s` by its tariff
/// name, and the names to bind (rates are the plan's own integers, inlined).
fn segment_rate_case(rates: &[(String, i64)]) -> (String, Vec<sea_orm::Value>) {
    let mut sql = String::from("CAST(CASE s.tariff_name");
    let mut values = Vec::with_capacity(rates.len());
    for (name, rate) in rates {
        sql.push_str(&format!(" WHEN ? THEN {rate}"));
        values.push(name.clone().into());
    }
    sql.push_str(" ELSE 0 END AS BIGINT)");
    (sql, values)
}

/// A filter keeping segments of the tariffs in `only` (none: all), and the
/// names to bind.
fn only_tariffs(only: &[String]) -> (String, Vec<sea_orm::Value>) {
    if only.is_empty() {
        return (String::new(), Vec::new());
    }
    let marks = placeholders(only.len());
    (
        format!(" AND s.tariff_name IN ({marks})"),
        only.iter().map(|name| name.clone().into()).collect(),
    )
}

/// The crossing call's billed seconds, cost and rate, read from three
/// columns of `row` starting at `first` (all NULL when there is none).
fn straddling_call(row: &sea_orm::QueryResult, first: usize) -> AppResult<Option<StraddlingCall>> {
    Ok(
        match (
            row.try_get_by_index::<Option<i64>>(first)?,
            row.try_get_by_index::<Option<i64>>(first + 1)?,
            row.try_get_by_index::<Option<i64>>(first + 2)?,
        ) {
            (Some(billed_seconds), Some(cost_micros), Some(per_minute_micros)) => {
                Some(StraddlingCall {
                    billed_seconds,
                    cost_micros,
                    per_minute_micros,
                })
            }
            _ => None,
        },
    )
}

/// The six aggregate columns of an [`IncludedUsage`] over `ordered` rows
/// carrying a `running` sum of billed seconds: count, seconds and cost of the
/// calls wholly inside `allowance`, then the crossing call's billed seconds,
/// cost and rate (NULL when none crosses).
fn included_split_columns(allowance: i64) -> String {
    let within = format!("running <= {allowance}");
    let crossing = format!("running > {allowance} AND running - billed_seconds < {allowance}");
    format!(
        "COUNT(CASE WHEN {within} THEN 1 END), \
         CAST(COALESCE(SUM(CASE WHEN {within} THEN billed_seconds END), 0) AS BIGINT), \
         CAST(COALESCE(SUM(CASE WHEN {within} THEN cost_micros END), 0) AS BIGINT), \
         MAX(CASE WHEN {crossing} THEN billed_seconds END), \
         MAX(CASE WHEN {crossing} THEN cost_micros END), \
         MAX(CASE WHEN {crossing} THEN per_minute_micros END)"
    )
}

/// `months` as the rows of a `months(idx, lo, hi)` VALUES table, and the
/// instants to bind: `(0, ?, ?), (1, ?, ?), …`.
fn months_table(months: &[(DateTime<Utc>, DateTime<Utc>)]) -> (String, Vec<sea_orm::Value>) {
    let mut values: Vec<sea_orm::Value> = Vec::with_capacity(2 * months.len() + 1);
    let mut rows = Vec::with_capacity(months.len());
    for (index, (start, end)) in months.iter().enumerate() {
        rows.push(format!("({index}, ?, ?)"));
        values.push(micros(*start).into());
        values.push(micros(*end).into());
    }
    (rows.join(", "), values)
}

/// Count, billed seconds and cost read from three columns of `row`
/// starting at `first`.
fn totals_at(row: &sea_orm::QueryResult, first: usize) -> AppResult<UsageTotals> {
    Ok(UsageTotals {
        call_count: row.try_get_by_index(first)?,
        billed_seconds: row.try_get_by_index(first + 1)?,
        usage_micros: row.try_get_by_index(first + 2)?,
    })
}

/// The call figures stored on an invoice row.
fn usage_of(model: &invoice::Model) -> UsageTotals {
    UsageTotals {
        call_count: model.call_count,
        billed_seconds: model.billed_seconds,
        usage_micros: model.usage_micros,
    }
}

fn top_up_entry(model: top_up::Model) -> TopUpEntry {
    TopUpEntry {
        created_at: instant(model.created_at),
        amount_micros: model.amount_micros,
    }
}

/// The latest invoiced month of each requested customer that has one: one
/// grouped query for the whole batch, read inside its transaction.
async fn latest_invoiced_months(
    txn: &DatabaseTransaction,
    requests: &[InvoiceRequest],
) -> AppResult<HashMap<i64, BillingPeriod>> {
    let customer_ids: Vec<i64> = requests.iter().map(|r| r.customer_id).collect();
    let rows: Vec<(i64, i32)> = invoice::Entity::find()
        .select_only()
        .column(invoice::Column::CustomerId)
        .expr(Func::max(period_key()))
        .filter(invoice::Column::CustomerId.is_in(customer_ids))
        .group_by(invoice::Column::CustomerId)
        .into_tuple()
        .all(txn)
        .await?;
    rows.into_iter()
        .map(|(customer_id, key)| {
            Ok((
                customer_id,
                BillingPeriod::new("period", key / 100, key % 100)?,
            ))
        })
        .collect()
}

/// An invoice's month as one sortable number, `year * 100 + month`.
fn period_key() -> sea_orm::sea_query::SimpleExpr {
    Expr::col(invoice::Column::PeriodYear)
        .mul(100)
        .add(Expr::col(invoice::Column::PeriodMonth))
}

/// Invoice rows inserted or updated per statement (at most 8 bound values
/// each).
const INVOICES_PER_STATEMENT: usize = 1000;
/// Ids bound per `IN (…)` list.
const IDS_PER_STATEMENT: usize = 5000;
/// Invoice lines inserted per statement (6 bound values each).
const LINES_PER_INSERT: usize = 2000;

/// The update that claims, for each of `count` invoices (`i`, bound to
/// `?`s), its customer's uninvoiced calls that meet `when` (a condition on
/// `calls` and `i`), followed by `returning`.
fn claim_calls_sql(count: usize, when: &str, returning: &str) -> String {
    format!(
        "UPDATE calls SET invoice_id = i.id FROM invoices i \
         WHERE i.id IN ({}) AND calls.customer_id = i.customer_id \
           AND calls.invoice_id IS NULL AND {when}{returning}",
        placeholders(count)
    )
}

/// Claims, for each invoice of `invoice_ids`, its customer's uninvoiced
/// calls that meet `when` (see [`claim_calls_sql`]), and adds each claimed
/// call to its invoice's list in `claimed`.
async fn claim_calls_returning(
    txn: &DatabaseTransaction,
    invoice_ids: &[i64],
    when: &str,
    claimed: &mut HashMap<i64, Vec<ClaimedCall>>,
) -> AppResult<()> {
    let sql = claim_calls_sql(
        invoice_ids.len(),
        when,
        " RETURNING calls.invoice_id, calls.id, calls.started_at, calls.billed_seconds, \
           calls.cost_micros, calls.per_minute_micros, calls.connect_fee_micros",
    );
    let statement = statement(txn.get_database_backend(), &sql, id_values(invoice_ids));
    // Streamed: a chunk may claim many calls, and only their figures are
    // kept.
    let mut rows = sea_orm::StreamTrait::stream_raw(txn, statement).await?;
    while let Some(row) = rows.next().await {
        let row = row?;
        claimed
            .entry(row.try_get_by_index(0)?)
            .or_default()
            .push(ClaimedCall {
                id: row.try_get_by_index(1)?,
                started_at: instant(row.try_get_by_index(2)?),
                billed_seconds: row.try_get_by_index(3)?,
                cost_micros: row.try_get_by_index(4)?,
                per_minute_micros: row.try_get_by_index(5)?,
                connect_fee_micros: row.try_get_by_index(6)?,
                segments: Vec::new(),
            });
    }
    Ok(())
}

/// Issues the month of each item inside `txn` (one item per customer), in
/// a fixed number of set-based statements whatever the number of items:
/// the invoice rows are inserted (an existing one conflicts and its item
/// yields `None`), the calls and top-ups due are claimed by updates that
/// return what they claimed (for a plan with neither included minutes nor
/// tariffs, the month's own calls are claimed without returning them and
/// summed by one query), the claimed calls' segments are read (tariffed
/// plans only), every invoice is composed in memory, and the totals and
/// lines are written back.
async fn issue_months(
    txn: &DatabaseTransaction,
    items: &[(&InvoiceRequest, BillingPeriod)],
    compose: &impl Fn(&InvoiceRequest, BillingPeriod, &ClaimedUsage) -> AppResult<InvoiceDraft>,
) -> AppResult<Vec<Option<Invoice>>> {
    let backend = txn.get_database_backend();
    let run = |sql: String, values: Vec<sea_orm::Value>| statement(backend, &sql, values);

    // Customer → its new invoice's id.
    let mut invoice_of: HashMap<i64, i64> = HashMap::with_capacity(items.len());
    for chunk in items.chunks(INVOICES_PER_STATEMENT) {
        let mut values: Vec<sea_orm::Value> = Vec::with_capacity(chunk.len() * 8);
        for (request, period) in chunk {
            values.push(format!("pending-{}-{period}", request.customer_id).into());
            values.push(request.customer_id.into());
            values.push(period.year().into());
            values.push(i32::try_from(period.month()).unwrap_or(1).into());
            values.push(micros(period.start(request.tz)).into());
            values.push(micros(period.end(request.tz)).into());
            values.push(micros(request.issued_at).into());
            values.push(request.currency_code.clone().into());
        }
        let sql = format!(
            "INSERT INTO invoices (number, customer_id, period_year, period_month, \
               period_start, period_end, issued_at, currency_code, call_count, \
               billed_seconds, usage_micros, monthly_fee_micros, total_micros) \
             VALUES {} \
             ON CONFLICT (customer_id, period_year, period_month) DO NOTHING \
             RETURNING id, customer_id",
            vec!["(?, ?, ?, ?, ?, ?, ?, ?, 0, 0, 0, 0, 0)"; chunk.len()].join(", ")
        );
        for row in txn.query_all_raw(run(sql, values)).await? {
            invoice_of.insert(row.try_get_by_index(1)?, row.try_get_by_index(0)?);
        }
    }
    if invoice_of.is_empty() {
        return Ok(vec![None; items.len()]);
    }
    let mut ids: Vec<i64> = invoice_of.values().copied().collect();
    ids.sort_unstable();

    // Every uninvoiced call of the customer that started before the
    // month's end, and every such top-up, is claimed. A plan with neither
    // included minutes nor tariffs needs only the sums of the month's own
    // calls: the database claims and sums those without returning them, and
    // returns only the earlier months' calls. Every other invoice gets each
    // claimed call back.
    let summed: HashSet<i64> = items
        .iter()
        .filter(|(request, _)| {
            request.included_seconds <= 0 && matches!(request.included_basis, IncludedBasis::Calls)
        })
        .filter_map(|(request, _)| invoice_of.get(&request.customer_id).copied())
        .collect();
    let (summed_ids, each_ids): (Vec<i64>, Vec<i64>) =
        ids.iter().partition(|id| summed.contains(id));
    let mut calls: HashMap<i64, Vec<ClaimedCall>> = HashMap::with_capacity(ids.len());
    let mut own_sums: HashMap<i64, OwnCallSums> = HashMap::with_capacity(summed_ids.len());
    for chunk in each_ids.chunks(IDS_PER_STATEMENT) {
        claim_calls_returning(txn, chunk, "calls.started_at < i.period_end", &mut calls).await?;
    }
    for chunk in summed_ids.chunks(IDS_PER_STATEMENT) {
        claim_calls_returning(txn, chunk, "calls.started_at < i.period_start", &mut calls).await?;
        let sql = claim_calls_sql(
            chunk.len(),
            "calls.started_at >= i.period_start AND calls.started_at < i.period_end",
            "",
        );
        txn.execute_raw(run(sql, id_values(chunk))).await?;
        // Sums cast to BIGINT: PostgreSQL sums BIGINT as NUMERIC. An
        // overflowing sum is an error of the database, which maps to
        // FAILED_PRECONDITION.
        let sql = format!(
            "SELECT i.id, COUNT(*), CAST(SUM(c.billed_seconds) AS BIGINT), \
               CAST(SUM(c.cost_micros) AS BIGINT), \
               CAST(SUM(CASE WHEN c.connect_fee_micros > 0 THEN 1 ELSE 0 END) AS BIGINT), \
               CAST(SUM(c.connect_fee_micros) AS BIGINT) \
             FROM invoices i JOIN calls c ON c.customer_id = i.customer_id \
               AND c.started_at >= i.period_start AND c.started_at < i.period_end \
               AND c.invoice_id = i.id \
             WHERE i.id IN ({}) GROUP BY i.id",
            placeholders(chunk.len())
        );
        for row in txn.query_all_raw(run(sql, id_values(chunk))).await? {
            own_sums.insert(
                row.try_get_by_index(0)?,
                OwnCallSums {
                    totals: totals_at(&row, 1)?,
                    connect_fee_calls: row.try_get_by_index(4)?,
                    connect_fees_micros: row.try_get_by_index(5)?,
                },
            );
        }
    }
    let mut top_ups: HashMap<i64, Vec<(i64, TopUpEntry)>> = HashMap::new();
    for chunk in ids.chunks(IDS_PER_STATEMENT) {
        let sql = format!(
            "UPDATE top_ups SET invoice_id = i.id FROM invoices i \
             WHERE i.id IN ({}) AND top_ups.customer_id = i.customer_id \
               AND top_ups.invoice_id IS NULL AND top_ups.created_at < i.period_end \
             RETURNING top_ups.invoice_id, top_ups.id, top_ups.created_at, top_ups.amount_micros",
            placeholders(chunk.len())
        );
        for row in txn.query_all_raw(run(sql, id_values(chunk))).await? {
            top_ups.entry(row.try_get_by_index(0)?).or_default().push((
                row.try_get_by_index(1)?,
                TopUpEntry {
                    created_at: instant(row.try_get_by_index(2)?),
                    amount_micros: row.try_get_by_index(3)?,
                },
            ));
        }
    }

    // Segments exist only for calls rated against tariffs, and a
    // customer's plan never changes: only tariffed plans' calls are read.
    let tariffed: Vec<i64> = items
        .iter()
        .filter(|(request, _)| matches!(request.included_basis, IncludedBasis::Segments { .. }))
        .filter_map(|(request, _)| invoice_of.get(&request.customer_id))
        .flat_map(|invoice_id| calls.get(invoice_id).into_iter().flatten())
        .map(|call| call.id)
        .collect();
    let mut segments: HashMap<i64, Vec<ClaimedSegment>> = HashMap::new();
    for chunk in tariffed.chunks(IDS_PER_STATEMENT) {
        let sql = format!(
            "SELECT call_id, tariff_name, billed_seconds, cost_micros FROM call_segments \
             WHERE call_id IN ({}) ORDER BY call_id, position",
            placeholders(chunk.len())
        );
        for row in txn.query_all_raw(run(sql, id_values(chunk))).await? {
            segments
                .entry(row.try_get_by_index(0)?)
                .or_default()
                .push(ClaimedSegment {
                    tariff_name: row.try_get_by_index(1)?,
                    billed_seconds: row.try_get_by_index(2)?,
                    cost_micros: row.try_get_by_index(3)?,
                });
        }
    }

    let mut issued = Vec::with_capacity(items.len());
    for (request, period) in items {
        let Some(&invoice_id) = invoice_of.get(&request.customer_id) else {
            issued.push(None);
            continue;
        };
        let tz = request.tz;
        let (start, end) = (period.start(tz), period.end(tz));
        let mut claimed = calls.remove(&invoice_id).unwrap_or_default();
        let claimed_top_ups = top_ups.remove(&invoice_id).unwrap_or_default();
        let month_of = |at| BillingPeriod::containing(at, tz);
        let usage = if summed.contains(&invoice_id) {
            summed_claimed_usage(
                *period,
                month_of,
                own_sums.remove(&invoice_id).unwrap_or_default(),
                claimed,
                claimed_top_ups,
            )?
        } else {
            for call in &mut claimed {
                call.segments = segments.remove(&call.id).unwrap_or_default();
            }
            claimed_usage(
                *period,
                start,
                month_of,
                claimed,
                claimed_top_ups,
                request.included_seconds,
                &request.included_basis,
            )?
        };
        let draft = compose(request, *period, &usage)?;
        issued.push(Some(Invoice {
            id: invoice_id,
            number: invoice_number(*period, invoice_id),
            customer_id: request.customer_id,
            period: *period,
            period_start: start,
            period_end: end,
            issued_at: request.issued_at,
            currency_code: request.currency_code.clone(),
            lines: draft.lines,
            usage: draft.usage,
            monthly_fee_micros: draft.monthly_fee_micros,
            total_micros: draft.total_micros,
        }));
    }

    let composed: Vec<&Invoice> = issued.iter().flatten().collect();
    for chunk in composed.chunks(INVOICES_PER_STATEMENT) {
        let mut values: Vec<sea_orm::Value> = Vec::with_capacity(chunk.len() * 7);
        for invoice in chunk {
            values.push(invoice.id.into());
            values.push(invoice.number.clone().into());
            values.push(invoice.usage.call_count.into());
            values.push(invoice.usage.billed_seconds.into());
            values.push(invoice.usage.usage_micros.into());
            values.push(invoice.monthly_fee_micros.into());
            values.push(invoice.total_micros.into());
        }
        let sql = format!(
            "WITH v(id, number, call_count, billed_seconds, usage_micros, \
               monthly_fee_micros, total_micros) AS (VALUES {}) \
             UPDATE invoices SET number = v.number, call_count = v.call_count, \
               billed_seconds = v.billed_seconds, usage_micros = v.usage_micros, \
               monthly_fee_micros = v.monthly_fee_micros, total_micros = v.total_micros \
             FROM v WHERE invoices.id = v.id",
            value_rows(chunk.len(), 7)
        );
        txn.execute_raw(run(sql, values)).await?;
    }
    let lines: Vec<(i64, usize, &InvoiceLine)> = composed
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
            values.push((*invoice_id).into());
            values.push(i32::try_from(*position).unwrap_or(i32::MAX).into());
            values.push(line.kind.as_str().into());
            values.push(line.description.clone().into());
            values.push(line.quantity.into());
            values.push(line.amount_micros.into());
        }
        let sql = format!(
            "INSERT INTO invoice_lines (invoice_id, position, kind, description, quantity, \
               amount_micros) VALUES {}",
            value_rows(chunk.len(), 6)
        );
        txn.execute_raw(run(sql, values)).await?;
    }
    Ok(issued)
}
