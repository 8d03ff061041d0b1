//! Numbers held by customers over time (`customer_numbers`) and the
//! version that every change of them increments (`number_versions`), which
//! cached lookups are checked against.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DatabaseBackend, DbErr, QueryResult};

use super::{Store, id_list, instant, is_number_overlap, micros, statement};
use crate::domain::numbers::NumberAssignment;
use crate::error::{AppError, AppResult};

/// What a release found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Release {
    /// The holding ended at the instant asked for.
    Ended,
    /// The holder has calls from the number at or after that instant.
    CallsAfter,
    /// The open holding is no longer the one the caller read (another
    /// change came first).
    Changed,
}

impl Store {
    /// The version of the numbers now (see the migration's
    /// `number_versions`).
    pub async fn number_version(&self) -> AppResult<i64> {
        Ok(read_version(&self.db, false).await?)
    }

    /// Every assignment of `number`, oldest first, and the version they
    /// were read at, in one statement.
    pub async fn number_history(&self, number: &str) -> AppResult<(i64, Vec<NumberAssignment>)> {
        let backend = self.db.get_database_backend();
        let sql = "SELECT v.version, n.customer_id, n.number, n.valid_from, n.valid_until \
                   FROM number_versions v LEFT JOIN customer_numbers n ON n.number = ? \
                   WHERE v.id = 1 ORDER BY n.valid_from";
        let rows = self
            .db
            .query_all_raw(statement(backend, sql, vec![number.into()]))
            .await?;
        let version = match rows.first() {
            Some(row) => row.try_get::<i64>("", "version")?,
            None => return Err(AppError::internal("number_versions has no row")),
        };
        let mut history = Vec::with_capacity(rows.len());
        for row in &rows {
            if row.try_get::<Option<i64>>("", "customer_id")?.is_some() {
                history.push(assignment_from(row)?);
            }
        }
        Ok((version, history))
    }

    /// The open holding of `number`, if any.
    pub async fn current_holding(&self, number: &str) -> AppResult<Option<NumberAssignment>> {
        let backend = self.db.get_database_backend();
        let sql = "SELECT customer_id, number, valid_from, valid_until FROM customer_numbers \
                   WHERE number = ? AND valid_until IS NULL";
        let row = self
            .db
            .query_one_raw(statement(backend, sql, vec![number.into()]))
            .await?;
        Ok(row.as_ref().map(assignment_from).transpose()?)
    }

    /// Gives `customer_id` `number` from `valid_from` on, and increments
    /// the version, in one transaction. A number held by another customer
    /// at any time from `valid_from` on (the database's constraint) is
    /// `ALREADY_EXISTS`.
    pub async fn assign_number(
        &self,
        customer_id: i64,
        number: &str,
        valid_from: DateTime<Utc>,
    ) -> AppResult<()> {
        let txn = self.begin_write().await?;
        bump_version(&txn).await?;
        insert_assignment(&txn, customer_id, number, valid_from).await?;
        txn.commit().await?;
        Ok(())
    }

    /// Ends `holding` (the open holding read before) at `valid_until`, and
    /// increments the version, in one transaction, unless the holding
    /// changed meanwhile or its holder has calls from the number at or
    /// after `valid_until`.
    pub async fn release_number(
        &self,
        holding: &NumberAssignment,
        valid_until: DateTime<Utc>,
    ) -> AppResult<Release> {
        let txn = self.begin_write().await?;
        // First: the version's row lock orders this change after every
        // call batch that read the version before it, so the check for
        // calls below sees what they stored.
        bump_version(&txn).await?;
        let backend = txn.get_database_backend();
        let calls_after = "SELECT 1 FROM calls WHERE customer_id = ? AND started_at >= ? \
                           AND caller_number = ? LIMIT 1";
        let values = vec![
            holding.customer_id.into(),
            micros(valid_until).into(),
            holding.number.clone().into(),
        ];
        if txn
            .query_one_raw(statement(backend, calls_after, values))
            .await?
            .is_some()
        {
            return Ok(Release::CallsAfter);
        }
        let end = "UPDATE customer_numbers SET valid_until = ? \
                   WHERE number = ? AND customer_id = ? AND valid_from = ? AND valid_until IS NULL";
        let values = vec![
            micros(valid_until).into(),
            holding.number.clone().into(),
            holding.customer_id.into(),
            micros(holding.valid_from).into(),
        ];
        let ended = txn.execute_raw(statement(backend, end, values)).await?;
        if ended.rows_affected() != 1 {
            return Ok(Release::Changed);
        }
        txn.commit().await?;
        Ok(Release::Ended)
    }

    /// The numbers of `customer_ids`, each customer's oldest first.
    pub(super) async fn numbers_of(
        &self,
        customer_ids: &[i64],
    ) -> AppResult<BTreeMap<i64, Vec<NumberAssignment>>> {
        let mut numbers: BTreeMap<i64, Vec<NumberAssignment>> = BTreeMap::new();
        if customer_ids.is_empty() {
            return Ok(numbers);
        }
        let backend = self.db.get_database_backend();
        let (marks, values) = id_list(customer_ids);
        let sql = format!(
            "SELECT customer_id, number, valid_from, valid_until FROM customer_numbers \
             WHERE customer_id IN ({marks}) ORDER BY customer_id, valid_from, id"
        );
        for row in self
            .db
            .query_all_raw(statement(backend, &sql, values))
            .await?
        {
            let assignment = assignment_from(&row)?;
            numbers
                .entry(assignment.customer_id)
                .or_default()
                .push(assignment);
        }
        Ok(numbers)
    }
}

/// Records that `customer_id` holds `number` from `valid_from` on, within
/// the caller's transaction (which increments the version).
pub(super) async fn insert_assignment(
    conn: &impl ConnectionTrait,
    customer_id: i64,
    number: &str,
    valid_from: DateTime<Utc>,
) -> AppResult<()> {
    let backend = conn.get_database_backend();
    let sql = "INSERT INTO customer_numbers (customer_id, number, valid_from, valid_until) \
               VALUES (?, ?, ?, NULL)";
    let values = vec![customer_id.into(), number.into(), micros(valid_from).into()];
    match conn.execute_raw(statement(backend, sql, values)).await {
        Ok(_) => Ok(()),
        Err(err) if is_number_overlap(&err) => Err(AppError::AlreadyExists(format!(
            "number {number} is held by another customer at some time from {} on",
            valid_from.to_rfc3339()
        ))),
        Err(err) => Err(err.into()),
    }
}

/// Increments the version within the caller's transaction; on PostgreSQL
/// its row stays locked until the transaction ends, so number changes
/// take turns and wait for call batches holding it `FOR SHARE`.
pub(super) async fn bump_version(conn: &impl ConnectionTrait) -> Result<(), DbErr> {
    conn.execute_unprepared("UPDATE number_versions SET version = version + 1 WHERE id = 1")
        .await?;
    Ok(())
}

/// The version, within the caller's connection or transaction; `hold`
/// keeps it from changing until the transaction ends (PostgreSQL `FOR
/// SHARE`; SQLite's write transaction already excludes every change).
pub(super) async fn read_version(conn: &impl ConnectionTrait, hold: bool) -> Result<i64, DbErr> {
    let backend = conn.get_database_backend();
    let sql = if hold && backend == DatabaseBackend::Postgres {
        "SELECT version FROM number_versions WHERE id = 1 FOR SHARE"
    } else {
        "SELECT version FROM number_versions WHERE id = 1"
    };
    let row = conn
        .query_one_raw(statement(backend, sql, Vec::new()))
        .await?
        .ok_or_else(|| DbErr::RecordNotFound("number_versions has no row".into()))?;
    row.try_get("", "version")
}

fn assignment_from(row: &QueryResult) -> Result<NumberAssignment, DbErr> {
    Ok(NumberAssignment {
        customer_id: row.try_get("", "customer_id")?,
        number: row.try_get("", "number")?,
        valid_from: instant(row.try_get("", "valid_from")?),
        valid_until: row.try_get::<Option<i64>>("", "valid_until")?.map(instant),
    })
}
