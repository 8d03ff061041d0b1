//! The rows of customers' billing months: every call and top-up whose
//! billing month it is, read set-based, the one read behind invoices,
//! previews and consolidated months.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sea_orm::ConnectionTrait;

use super::super::{Store, id_values, instant, micros, placeholders, statement, value_rows};
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

/// Months read per statement (5 bound values each).
const MONTHS_PER_STATEMENT: usize = 1000;
/// Calls whose segments one statement reads.
const CALLS_PER_SEGMENT_READ: usize = 5000;

/// The rows of each of `months` on `conn`, in order: every call and top-up
/// of the customer whose billing month it is, as its `detail` asks (see
/// [`UsageDetail`]). A fixed number of set-based statements per
/// [`MONTHS_PER_STATEMENT`] months, each joining a `VALUES` table of the
/// months to the calls: a month's own calls (started within it) are a
/// range of the `(customer_id, started_at)` order every call is stored in,
/// and the calls it bills that started earlier (late usage) come through
/// the partial index `idx_calls_late`, so the reads need no index entry
/// per call. Summed months get the sums of their own calls and the late
/// ones one by one; the others every call, with segments when asked;
/// every month its top-ups.
pub(super) async fn month_rows(
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
            let mut values: Vec<sea_orm::Value> = Vec::with_capacity(selected.len() * 5);
            for (index, month) in &selected {
                values.extend([
                    i64::try_from(*index).unwrap_or(i64::MAX).into(),
                    month.customer_id.into(),
                    month.period.key().into(),
                    micros(month.start).into(),
                    micros(month.end).into(),
                ]);
            }
            let cte = format!(
                "WITH m(idx, customer_id, period, start_at, end_at) AS (VALUES {})",
                value_rows(selected.len(), 5)
            );
            (!selected.is_empty()).then_some((cte, values))
        };
        // The month's own calls: started within it and billed in it.
        let own_calls = "m JOIN calls c ON c.customer_id = m.customer_id \
             AND c.started_at >= m.start_at AND c.started_at < m.end_at \
             WHERE c.billing_period = m.period";
        // Its late calls: billed in it, started in an earlier month (the
        // condition of `idx_calls_late`, as written there).
        let late_calls = "m JOIN calls c ON c.customer_id = m.customer_id \
             AND c.billing_period = m.period \
             WHERE c.billing_period <> c.started_period";
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
                 FROM {own_calls} GROUP BY m.idx"
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
        }
        let each = |month: &MonthQuery| month.detail != UsageDetail::Summed;
        if let Some((cte, values)) = table(&each) {
            let sql = format!("{cte} SELECT {call_columns} FROM {own_calls}");
            read_calls(conn, &sql, values, &mut rows).await?;
        }
        if let Some((cte, values)) = table(&|_| true) {
            let sql = format!("{cte} SELECT {call_columns} FROM {late_calls}");
            read_calls(conn, &sql, values.clone(), &mut rows).await?;
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
        let with_segments: Vec<usize> = chunk
            .iter()
            .filter(|(_, month)| month.detail == UsageDetail::EachCall { segments: true })
            .map(|(index, _)| *index)
            .collect();
        attach_segments(conn, &mut rows, &with_segments).await?;
    }
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
        let sql = format!(
            "SELECT call_id, tariff_name, billed_seconds, cost_micros FROM call_segments \
             WHERE call_id IN ({}) ORDER BY call_id, position",
            placeholders(chunk.len())
        );
        for row in conn
            .query_all_raw(statement(backend, &sql, id_values(chunk)))
            .await?
        {
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
