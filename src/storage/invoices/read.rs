//! The rows of customers' billing months: every call and top-up whose
//! billing month it is, read set-based, the one read behind invoices,
//! previews and consolidated months.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DatabaseBackend};

use super::super::{Store, id_list, instant, micros, statement};
use crate::domain::invoice::{
    BilledCall, BilledSegment, MonthRows, OwnCallSums, TopUpEntry, UsageDetail, UsageTotals,
};
use crate::domain::period::BillingPeriod;
use crate::error::{AppError, AppResult};

/// One customer's billing month to read, and what of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MonthQuery {
    pub customer_id: i64,
    pub period: BillingPeriod,
    /// The month's first instant: calls that started before it are late
    /// usage.
    pub start: DateTime<Utc>,
    /// The instant it ends (exclusive).
    pub end: DateTime<Utc>,
    pub detail: UsageDetail,
}

impl Store {
    /// The rows of each of `months`, in order; see [`month_rows`].
    pub async fn month_rows(&self, months: &[MonthQuery]) -> AppResult<Vec<MonthRows>> {
        month_rows(&self.db, months).await
    }
}

/// Customers whose rows of one month one statement reads.
const CUSTOMERS_PER_STATEMENT: usize = 5000;
/// Calls whose segments one statement reads.
const CALLS_PER_SEGMENT_READ: usize = 5000;

/// The rows of each of `months` on `conn`, in order: every call and top-up
/// of the customer whose billing month it is, as its `detail` asks (see
/// [`UsageDetail`]). The months are read a month at a time, for up to
/// [`CUSTOMERS_PER_STATEMENT`] customers per statement (a billing cycle's
/// round is one month for all its customers): a month's own calls (started
/// within it) are a range of each customer's calls in the `(customer_id,
/// started_at)` order every call is stored in, summed by customer in that
/// order, and the calls it bills that started earlier (late usage) come
/// through the partial index `idx_calls_late`, so the reads need no index
/// entry per call. Summed months get the sums of their own calls and the
/// late ones one by one; the others every call, with segments when asked;
/// every month its top-ups. A month named twice is an error of the caller.
pub(super) async fn month_rows(
    conn: &impl ConnectionTrait,
    months: &[MonthQuery],
) -> AppResult<Vec<MonthRows>> {
    let backend = conn.get_database_backend();
    let mut rows: Vec<MonthRows> = vec![MonthRows::default(); months.len()];
    let mut index_of: HashMap<(i64, BillingPeriod), usize> = HashMap::with_capacity(months.len());
    // Months alike in all but the customer, read together.
    let mut groups: BTreeMap<(BillingPeriod, i64, i64, bool), Vec<i64>> = BTreeMap::new();
    for (index, month) in months.iter().enumerate() {
        if index_of
            .insert((month.customer_id, month.period), index)
            .is_some()
        {
            return Err(AppError::internal(format!(
                "customer {}'s month {} was asked for twice",
                month.customer_id, month.period
            )));
        }
        let summed = month.detail == UsageDetail::Summed;
        groups
            .entry((month.period, micros(month.start), micros(month.end), summed))
            .or_default()
            .push(month.customer_id);
    }
    // SQLite's planner would read each customer's calls by its key rather
    // than the small partial index it has no statistics about.
    let late_index = if backend == DatabaseBackend::Sqlite {
        " INDEXED BY idx_calls_late"
    } else {
        ""
    };
    let call_columns = "c.customer_id, c.id, c.started_at, c.billed_seconds, c.cost_micros, \
         c.per_minute_micros, c.connect_fee_micros";
    for ((period, start, end, summed), customers) in groups {
        // The month a row belongs to, by its customer's id in column 0.
        let slot = |row: &sea_orm::QueryResult| -> AppResult<usize> {
            let customer_id: i64 = row.try_get_by_index(0)?;
            index_of
                .get(&(customer_id, period))
                .copied()
                .ok_or_else(|| {
                    AppError::internal(format!("rows of customer {customer_id} not asked for"))
                })
        };
        for chunk in customers.chunks(CUSTOMERS_PER_STATEMENT) {
            let (marks, ids) = id_list(chunk);
            let with = |extra: &[sea_orm::Value]| {
                let mut values = ids.clone();
                values.extend_from_slice(extra);
                values
            };
            let own = [start.into(), end.into(), period.key().into()];
            let own_calls = format!(
                "FROM calls c WHERE c.customer_id IN ({marks}) \
                   AND c.started_at >= ? AND c.started_at < ? AND c.billing_period = ?"
            );
            if summed {
                // Sums cast to BIGINT: PostgreSQL sums BIGINT as NUMERIC. An
                // overflowing sum is an error of the database, which maps to
                // FAILED_PRECONDITION.
                let sql = format!(
                    "SELECT c.customer_id, COUNT(*), CAST(SUM(c.billed_seconds) AS BIGINT), \
                       CAST(SUM(c.cost_micros) AS BIGINT), \
                       CAST(SUM(CASE WHEN c.connect_fee_micros > 0 THEN 1 ELSE 0 END) AS BIGINT), \
                       CAST(SUM(c.connect_fee_micros) AS BIGINT) \
                     {own_calls} GROUP BY c.customer_id"
                );
                for row in conn
                    .query_all_raw(statement(backend, &sql, with(&own)))
                    .await?
                {
                    let index = slot(&row)?;
                    rows[index].own_sums = OwnCallSums {
                        totals: UsageTotals {
                            call_count: row.try_get_by_index(1)?,
                            billed_seconds: row.try_get_by_index(2)?,
                            usage_micros: row.try_get_by_index(3)?,
                        },
                        connect_fee_calls: row.try_get_by_index(4)?,
                        connect_fees_micros: row.try_get_by_index(5)?,
                    };
                }
            } else {
                let sql = format!("SELECT {call_columns} {own_calls}");
                for row in conn
                    .query_all_raw(statement(backend, &sql, with(&own)))
                    .await?
                {
                    let index = slot(&row)?;
                    rows[index].calls.push(billed_call(&row)?);
                }
            }
            let sql = format!(
                "SELECT {call_columns} FROM calls c{late_index} \
                 WHERE c.customer_id IN ({marks}) AND c.billing_period = ? \
                   AND c.billing_period <> c.started_period"
            );
            for row in conn
                .query_all_raw(statement(backend, &sql, with(&[period.key().into()])))
                .await?
            {
                let index = slot(&row)?;
                rows[index].calls.push(billed_call(&row)?);
            }
            let sql = format!(
                "SELECT t.customer_id, t.id, t.created_at, t.amount_micros FROM top_ups t \
                 WHERE t.customer_id IN ({marks}) AND t.billing_period = ?"
            );
            for row in conn
                .query_all_raw(statement(backend, &sql, with(&[period.key().into()])))
                .await?
            {
                let index = slot(&row)?;
                rows[index].top_ups.push((
                    row.try_get_by_index(1)?,
                    TopUpEntry {
                        created_at: instant(row.try_get_by_index(2)?),
                        amount_micros: row.try_get_by_index(3)?,
                    },
                ));
            }
        }
    }
    let with_segments: Vec<usize> = months
        .iter()
        .enumerate()
        .filter(|(_, month)| month.detail == UsageDetail::EachCall { segments: true })
        .map(|(index, _)| index)
        .collect();
    attach_segments(conn, &mut rows, &with_segments).await?;
    Ok(rows)
}

/// Reads the stored segments of the calls of the months at `indexes` into
/// them, in position order.
async fn attach_segments(
    conn: &impl ConnectionTrait,
    rows: &mut [MonthRows],
    indexes: &[usize],
) -> AppResult<()> {
    let backend = conn.get_database_backend();
    let ids: Vec<i64> = indexes
        .iter()
        .filter_map(|index| rows.get(*index))
        .flat_map(|month| month.calls.iter().map(|call| call.id))
        .collect();
    let mut segments: HashMap<i64, Vec<BilledSegment>> = HashMap::new();
    for chunk in ids.chunks(CALLS_PER_SEGMENT_READ) {
        let (marks, values) = id_list(chunk);
        let sql = format!(
            "SELECT call_id, tariff_name, billed_seconds, cost_micros FROM call_segments \
             WHERE call_id IN ({marks}) ORDER BY call_id, position"
        );
        for row in conn.query_all_raw(statement(backend, &sql, values)).await? {
            segments
                .entry(row.try_get_by_index(0)?)
                .or_default()
                .push(BilledSegment {
                    tariff_name: row.try_get_by_index(1)?,
                    billed_seconds: row.try_get_by_index(2)?,
                    cost_micros: row.try_get_by_index(3)?,
                });
        }
    }
    for index in indexes {
        if let Some(month) = rows.get_mut(*index) {
            for call in &mut month.calls {
                call.segments = segments.remove(&call.id).unwrap_or_default();
            }
        }
    }
    Ok(())
}

/// A call's figures from a row of [`month_rows`]'s statements, after its
/// customer's id.
fn billed_call(row: &sea_orm::QueryResult) -> AppResult<BilledCall> {
    Ok(BilledCall {
        id: row.try_get_by_index(1)?,
        started_at: instant(row.try_get_by_index(2)?),
        billed_seconds: row.try_get_by_index(3)?,
        cost_micros: row.try_get_by_index(4)?,
        per_minute_micros: row.try_get_by_index(5)?,
        connect_fee_micros: row.try_get_by_index(6)?,
        segments: Vec::new(),
    })
}
