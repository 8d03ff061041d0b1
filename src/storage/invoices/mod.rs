//! Invoices: the rows of a customer's billing month, read the same way for
//! invoices, previews and consolidated months (`read.rs`); issuing, one
//! function per write, each on the transaction [`Store::begin_issue`] hands
//! out (`issue.rs`); and invoice reads (here). No billing rule lives here:
//! `domain::invoice` composes invoices from what these functions return.

mod issue;
mod read;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, Func, Query};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseBackend, EntityTrait, ExprTrait, QueryFilter, QueryOrder,
    QuerySelect, Statement,
};

pub use issue::{IssueTransaction, NewInvoice};
pub use read::MonthQuery;

use super::entities::{customer, customer_operator, invoice, invoice_line};
use super::{Store, instant, micros};
use crate::domain::invoice::{
    ConsolidatedMonth, Invoice, InvoiceLine, InvoiceLineKind, UsageTotals,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InvoiceFilter {
    /// Every invoice.
    All,
    /// One customer's invoices.
    Customer(i64),
    /// The invoices of every customer linked to one operator.
    Operator(i64),
}

impl InvoiceFilter {
    /// Every filter that passes an invoice of `customer_id` whose customer
    /// is linked to `operators`: the rule of [`invoice_page`], for routing
    /// one feed page read for all watchers to those it is for.
    pub fn passing(customer_id: i64, operators: &[i64]) -> Vec<InvoiceFilter> {
        let mut filters = vec![InvoiceFilter::All, InvoiceFilter::Customer(customer_id)];
        filters.extend(operators.iter().map(|id| InvoiceFilter::Operator(*id)));
        filters
    }
}

impl Store {
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

    /// The feed's position: the highest invoice id, read as
    /// [`Store::feed_page`] reads (no smaller id can appear later).
    pub async fn feed_position(&self) -> AppResult<i64> {
        let txn = sea_orm::TransactionTrait::begin(&self.db).await?;
        if self.db.get_database_backend() == DatabaseBackend::Postgres {
            txn.execute_raw(Statement::from_sql_and_values(
                DatabaseBackend::Postgres,
                "SELECT pg_advisory_xact_lock($1)",
                [ISSUE_LOCK_KEY.into()],
            ))
            .await?;
        }
        let newest: Option<i64> = invoice::Entity::find()
            .select_only()
            .column_as(invoice::Column::Id.max(), "newest")
            .into_tuple()
            .one(&txn)
            .await?
            .flatten();
        txn.commit().await?;
        Ok(newest.unwrap_or(0))
    }

    /// The operators each of `customer_ids` is linked to, for filtering a
    /// feed page read for all watchers at once.
    pub async fn operators_of(&self, customer_ids: &[i64]) -> AppResult<BTreeMap<i64, Vec<i64>>> {
        let mut operators: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
        if customer_ids.is_empty() {
            return Ok(operators);
        }
        let links: Vec<(i64, i64)> = customer_operator::Entity::find()
            .select_only()
            .column(customer_operator::Column::CustomerId)
            .column(customer_operator::Column::OperatorId)
            .filter(customer_operator::Column::CustomerId.is_in(customer_ids.iter().copied()))
            .into_tuple()
            .all(&self.db)
            .await?;
        for (customer_id, operator_id) in links {
            operators.entry(customer_id).or_default().push(operator_id);
        }
        Ok(operators)
    }

    /// The invoice `invoice_id`, if issued.
    pub async fn invoice(&self, invoice_id: i64) -> AppResult<Option<Invoice>> {
        match invoice::Entity::find_by_id(invoice_id)
            .one(&self.db)
            .await?
        {
            None => Ok(None),
            Some(model) => Ok(self.with_lines(vec![model]).await?.pop()),
        }
    }

    /// The invoices of `ids` that exist, in two queries.
    pub async fn invoices_by_id(&self, ids: &[i64]) -> AppResult<Vec<Invoice>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let models = invoice::Entity::find()
            .filter(invoice::Column::Id.is_in(ids.to_vec()))
            .all(&self.db)
            .await?;
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
                call_count: row.call_count,
                subject: row.subject,
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
