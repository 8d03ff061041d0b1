//! Rated calls: idempotent batch storage with prepaid debits, and keyset
//! listings ordered by `(started_at, id)`.

use std::collections::{BTreeMap, HashMap};

use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseBackend, DbErr, EntityTrait,
    QueryFilter, QueryOrder, QueryResult,
};

use super::deliveries::{BALANCE_STATE_COLUMNS, BalanceState, write_balance_alerts_on};
use super::entities::call_segment;
use super::numbers::read_version;
use super::{
    CustomerLock, Store, id_list, instant, lock_customers, lock_invoiced_through, micros,
    placeholders, statement, value_rows,
};
use crate::domain::delivery::BalanceChange;
use crate::domain::invoice::billing_period_of;
use crate::domain::model::{Call, NewCall, StoredCall, TimeRange};
use crate::domain::period::BillingPeriod;
use crate::domain::tariff::Segment;
use crate::domain::validation::shown;
use crate::error::{AppError, AppResult};

/// Whose calls a listing returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallFilter {
    /// Every call.
    All,
    /// One customer's calls.
    Customer(i64),
    /// The calls of every customer linked to one operator.
    Operator(i64),
}

impl Store {
    /// Stores a batch of rated calls in one transaction and debits prepaid
    /// balances in that same transaction.
    ///
    /// Each call is billed in the month it started in, or, when its
    /// customer's invoices already cover that month, in the customer's first
    /// month not invoiced yet (`invoice::billing_period_of`), decided in the
    /// statement or transaction that stores it, under a lock of the
    /// customer's row that issuing waits for (see [`Months`]).
    ///
    /// Each call's outcome is reported in order: newly inserted, a duplicate
    /// of the call stored under its `call_id` (earlier, or earlier in this
    /// batch), or `ALREADY_EXISTS` when that `call_id` holds a different
    /// call. Uniqueness of `call_id` is a database constraint, so concurrent
    /// duplicates store exactly one row and debit once. The batch is one
    /// multi-row `INSERT … ON CONFLICT (call_id) DO NOTHING RETURNING id,
    /// call_id` (calls without `call_id` are inserted by another; see
    /// `insert_calls` for the ids on SQLite) plus one lookup of the
    /// conflicting keys. Rows
    /// are inserted in `call_id` order and customers locked and debited in
    /// id order, so batches that overlap (on two replicas, or two writers)
    /// take their locks in one order and cannot deadlock.
    ///
    /// A prepaid debit that would take a balance below the smallest 64-bit
    /// amount fails the batch with `FAILED_PRECONDITION`. An `Err` means
    /// nothing of the batch was stored.
    pub async fn store_calls(&self, batch: &[NewCall]) -> AppResult<Vec<AppResult<StoredCall>>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        // The first record of each key is the one that may be inserted;
        // repeats within the batch are judged against whatever is stored.
        let mut first_of_key: HashMap<CallKey, usize> = HashMap::new();
        let mut candidates: Vec<&NewCall> = Vec::with_capacity(batch.len());
        for (index, new) in batch.iter().enumerate() {
            let first = match call_key(new) {
                Some(key) => *first_of_key.entry(key).or_insert(index) == index,
                None => true,
            };
            if first {
                candidates.push(new);
            }
        }
        // Unkeyed calls sort first; keyed ones in the order of their unique
        // index, `(call_id, customer_id)`.
        candidates.sort_by(|a, b| {
            let order = |new: &NewCall| {
                (
                    new.record.call_id.is_some(),
                    new.record.call_id.clone(),
                    new.customer_id,
                )
            };
            order(a).cmp(&order(b))
        });
        // A batch that only inserts calls, all keyed or all unkeyed, is
        // first tried as one autocommitted statement guarded by its months
        // (see `Months::Uncovered`): BEGIN, a read and COMMIT are each a
        // round trip to the database (on SQLite, to its connection's
        // thread) that every batch behind it waits for.
        let unkeyed = candidates.partition_point(|new| new.record.call_id.is_none());
        // Calls charged through the cache of numbers are stored only if no
        // number changed since (see `service::numbers`): in a transaction
        // that reads the version first.
        let checks_numbers = batch.iter().any(|new| new.number_version.is_some());
        let one_statement = !checks_numbers
            && candidates.len() <= CALL_ROWS_PER_INSERT
            && (unkeyed == 0 || unkeyed == candidates.len())
            && batch
                .iter()
                .all(|new| new.balance_debit_micros() == 0 && new.rating.segments.is_empty());
        if one_statement
            && let Some(earliest) = candidates.iter().map(|new| new.started_in).min()
            && let Some((outcomes, _no_debits)) = write_calls(
                &self.writer,
                batch,
                &first_of_key,
                &candidates,
                Months::Uncovered(earliest),
            )
            .await?
        {
            return Ok(outcomes);
        }
        // Otherwise a transaction: each call's billing month is decided from
        // its customer's last invoiced month, read (and on PostgreSQL
        // locked) before the insert, and an issuer must not advance it in
        // between.
        let txn = self.begin_write().await?;
        if checks_numbers {
            let version = read_version(&txn, true).await?;
            if batch
                .iter()
                .any(|new| new.number_version.is_some_and(|read| read != version))
            {
                return Err(AppError::Aborted(
                    "a number changed hands while its calls were being charged".into(),
                ));
            }
        }
        let (outcomes, balances) =
            write_calls(&txn, batch, &first_of_key, &candidates, Months::Locked)
                .await?
                .ok_or_else(|| AppError::internal("a locked call batch was refused"))?;
        let alerted = write_balance_alerts_on(&txn, &balances, &self.outbox).await?;
        txn.commit().await?;
        if alerted {
            self.outbox.wake.notify_one();
        }
        Ok(outcomes)
    }

    /// Stores `batch` like [`Store::store_calls`], but a batch refused for a
    /// reason tied to its records (a balance that cannot take a debit, say)
    /// is stored again call by call, so only the calls at fault get an
    /// error. Only an unavailable database fails the whole call; batches
    /// written before stay written.
    pub async fn store_calls_each(
        &self,
        batch: &[NewCall],
    ) -> AppResult<Vec<AppResult<StoredCall>>> {
        match self.store_calls(batch).await {
            Ok(outcomes) => Ok(outcomes),
            Err(err @ AppError::Unavailable(_)) => Err(err),
            Err(err) if batch.len() <= 1 => Ok(vec![Err(err)]),
            Err(err) => {
                tracing::debug!(error = %err.detail(), calls = batch.len(), "call batch refused; storing it call by call");
                let mut outcomes = Vec::with_capacity(batch.len());
                for call in batch {
                    let outcome = match self.store_calls(std::slice::from_ref(call)).await {
                        Ok(mut one) => one.pop().unwrap_or_else(|| {
                            Err(AppError::internal("store_calls returned no outcome"))
                        }),
                        Err(err @ AppError::Unavailable(_)) => return Err(err),
                        Err(err) => Err(err),
                    };
                    outcomes.push(outcome);
                }
                Ok(outcomes)
            }
        }
    }

    /// Up to `limit` calls matching `filter` that started within `range`,
    /// after the `(started_at, id)` position `after`, in that order; their
    /// stored segments are read only when `segments` says some may exist
    /// (a plan without tariffs stores none).
    pub async fn list_calls(
        &self,
        filter: CallFilter,
        range: TimeRange,
        after: Option<(i64, i64)>,
        limit: u64,
        segments: bool,
    ) -> AppResult<Vec<Call>> {
        // Written by hand and read back by column position: a page is on
        // every history request's path, and decoding each of its values by
        // column name was a measured share of the server's time
        // (BENCHMARKS.md, "History rows read by position").
        let mut sql = format!("SELECT {CALL_COLUMNS} FROM calls c WHERE true");
        let mut values: Vec<sea_orm::Value> = Vec::with_capacity(6);
        match filter {
            CallFilter::All => {}
            CallFilter::Customer(customer_id) => {
                sql.push_str(" AND c.customer_id = ?");
                values.push(customer_id.into());
            }
            CallFilter::Operator(operator_id) => {
                sql.push_str(
                    " AND c.customer_id IN \
                     (SELECT customer_id FROM customer_operators WHERE operator_id = ?)",
                );
                values.push(operator_id.into());
            }
        }
        if let Some(start) = range.start {
            sql.push_str(" AND c.started_at >= ?");
            values.push(micros(start).into());
        }
        if let Some(end) = range.end {
            sql.push_str(" AND c.started_at < ?");
            values.push(micros(end).into());
        }
        if let Some((started_at, id)) = after {
            // The plain lower bound lets the index range start at the
            // position (PostgreSQL's planner does not derive it from the
            // OR, and would scan the customer's calls from the first).
            sql.push_str(" AND c.started_at >= ? AND (c.started_at > ? OR c.id > ?)");
            values.extend([started_at.into(), started_at.into(), id.into()]);
        }
        sql.push_str(" ORDER BY c.started_at, c.id LIMIT ?");
        values.push(i64::try_from(limit).unwrap_or(i64::MAX).into());
        let backend = self.db.get_database_backend();
        let mut calls: Vec<Call> = self
            .db
            .query_all_raw(statement(backend, &sql, values))
            .await?
            .iter()
            .map(call_from_row)
            .collect::<Result<_, _>>()?;
        if segments {
            attach_segments(&self.db, &mut calls).await?;
        }
        attach_invoices(&self.db, &mut calls).await?;
        Ok(calls)
    }
}

/// How a batch learns its customers' last invoiced months, which decide its
/// calls' billing months.
#[derive(Debug, Clone, Copy)]
enum Months {
    /// Read, and on PostgreSQL locked `FOR KEY SHARE`, before the insert,
    /// in the transaction the batch is written in.
    Locked,
    /// Not read: the batch is one statement, written only if no customer
    /// of it has an invoice covering this month or a later one (the
    /// earliest month its calls started in). Then each call's billing month
    /// is the month it started in, whatever `billing_period_of` is handed
    /// for the customer's last invoiced month, so it is handed none. On
    /// PostgreSQL the statement locks the customers `FOR KEY SHARE` before
    /// it checks them, as the read of `Locked` does.
    Uncovered(BillingPeriod),
}

/// The statements of [`Store::store_calls`] on `conn` (a transaction, or
/// the writer's pool for a batch of one insert): the insert, the lookup of
/// conflicting keys, segment rows and debits, and each call's outcome
/// (the rest of `batch` judged against `candidates`). `None` when
/// `Months::Uncovered` did not hold and nothing was written.
async fn write_calls<C: ConnectionTrait>(
    conn: &C,
    batch: &[NewCall],
    first_of_key: &HashMap<CallKey, usize>,
    candidates: &[&NewCall],
    months: Months,
) -> AppResult<Option<(Vec<AppResult<StoredCall>>, Vec<(i64, BalanceChange)>)>> {
    let mut customer_ids: Vec<i64> = candidates.iter().map(|new| new.customer_id).collect();
    customer_ids.sort_unstable();
    customer_ids.dedup();
    let (invoiced_through, guard) = match months {
        Months::Locked => (
            lock_invoiced_through(conn, &customer_ids, CustomerLock::Store).await?,
            None,
        ),
        Months::Uncovered(earliest) => (
            HashMap::new(),
            Some(Uncovered {
                customer_ids: &customer_ids,
                earliest,
            }),
        ),
    };
    let billing_period = |new: &NewCall| {
        let through = invoiced_through.get(&new.customer_id).copied().flatten();
        billing_period_of(new.started_in, through)
    };
    // Unkeyed calls sort first. Keyed rows return only their id and key:
    // the stored call is the record as rated, so nothing else is read back.
    let split = candidates.partition_point(|new| new.record.call_id.is_none());
    let (unkeyed_rows, keyed_rows) = candidates.split_at(split);
    let mut inserted_by_key: HashMap<CallKey, i64> = HashMap::with_capacity(keyed_rows.len());
    for rows in keyed_rows.chunks(CALL_ROWS_PER_INSERT) {
        let inserted = insert_calls(conn, rows, &billing_period, guard.as_ref()).await?;
        // Nothing inserted is either a batch of repeats or a guard that did
        // not hold; a last invoiced month only advances, so one that covers
        // the batch now covered it then, and the batch goes the locked way.
        if inserted.is_empty()
            && let Some(guard) = &guard
            && guard.is_covered(conn).await?
        {
            return Ok(None);
        }
        for (id, customer_id, key) in inserted {
            if let Some(key) = key {
                inserted_by_key.insert((customer_id, key), id);
            }
        }
    }
    // Unkeyed rows are all inserted (NULL never conflicts). On SQLite their
    // ids follow their order (see insert_calls); PostgreSQL's come back
    // whole and are matched to their records by content (rows alike in all
    // of it are interchangeable).
    let mut inserted_unkeyed: HashMap<UnkeyedCall, Vec<Call>> = HashMap::new();
    for rows in unkeyed_rows.chunks(CALL_ROWS_PER_INSERT) {
        if conn.get_database_backend() == DatabaseBackend::Sqlite {
            let mut ids: Vec<i64> = insert_calls(conn, rows, &billing_period, guard.as_ref())
                .await?
                .into_iter()
                .map(|(id, _, _)| id)
                .collect();
            // NULL never conflicts: only the guard inserts none.
            if ids.is_empty() && guard.is_some() {
                return Ok(None);
            }
            if ids.len() != rows.len() {
                return Err(AppError::internal(format!(
                    "{} of {} calls without call_id were inserted",
                    ids.len(),
                    rows.len()
                )));
            }
            ids.sort_unstable();
            for (new, id) in rows.iter().zip(ids) {
                inserted_unkeyed
                    .entry(UnkeyedCall::of_new(new))
                    .or_default()
                    .push(stored_call(new, id, billing_period(new)));
            }
        } else {
            // NULL never conflicts, so every row comes back (none when the
            // guard does not hold).
            let backend = conn.get_database_backend();
            let (sql, values) = guarded_insert(
                CALL_INSERT_COLUMNS,
                rows.len(),
                CALL_INSERT_WIDTH,
                call_values(rows, &billing_period),
                guard.as_ref().map(|guard| (guard, backend)),
                &format!("RETURNING {STORED_CALL_COLUMNS}"),
            );
            let returned = conn.query_all_raw(statement(backend, &sql, values)).await?;
            if returned.is_empty() && guard.is_some() {
                return Ok(None);
            }
            for row in returned {
                let call = call_from_row(&row)?;
                inserted_unkeyed
                    .entry(UnkeyedCall::of_call(&call))
                    .or_default()
                    .push(call);
            }
        }
    }
    let conflicting: Vec<&CallKey> = first_of_key
        .keys()
        .filter(|key| !inserted_by_key.contains_key(*key))
        .collect();
    let mut stored_by_key: HashMap<CallKey, Call> = HashMap::new();
    for chunk in conflicting.chunks(CALL_ROWS_PER_INSERT) {
        // The batch's customers' calls with any of the keys, of which only
        // each customer's own keys are kept: a key is its customer's.
        let mut customer_ids: Vec<i64> =
            chunk.iter().map(|(customer_id, _)| *customer_id).collect();
        customer_ids.sort_unstable();
        customer_ids.dedup();
        let (marks, mut values) = id_list(&customer_ids);
        values.extend(
            chunk
                .iter()
                .map(|(_, key)| sea_orm::Value::from(key.as_str())),
        );
        let sql = format!(
            "SELECT {CALL_COLUMNS} FROM calls c \
             WHERE c.customer_id IN ({marks}) AND c.call_id IN ({})",
            placeholders(chunk.len())
        );
        let backend = conn.get_database_backend();
        let mut stored: Vec<Call> = conn
            .query_all_raw(statement(backend, &sql, values))
            .await?
            .iter()
            .map(call_from_row)
            .collect::<Result<_, _>>()?;
        stored.retain(|call| {
            call.call_id
                .as_ref()
                .is_some_and(|key| first_of_key.contains_key(&(call.customer_id, key.clone())))
        });
        attach_segments(conn, &mut stored).await?;
        attach_invoices(conn, &mut stored).await?;
        for call in stored {
            if let Some(key) = call.call_id.clone() {
                stored_by_key.insert((call.customer_id, key), call);
            }
        }
    }
    let mut segment_rows: Vec<call_segment::ActiveModel> = Vec::new();

    let mut debits: BTreeMap<i64, i64> = BTreeMap::new();
    let repeated_keys = candidates.len() < batch.len();
    let mut outcomes = Vec::with_capacity(batch.len());
    for (index, new) in batch.iter().enumerate() {
        let key = call_key(new);
        let newly_stored = match &key {
            Some(key) if first_of_key.get(key) == Some(&index) => inserted_by_key
                .remove(key)
                .map(|id| stored_call(new, id, billing_period(new))),
            Some(_) => None,
            None => inserted_unkeyed
                .get_mut(&UnkeyedCall::of_new(new))
                .and_then(Vec::pop),
        };
        let outcome = match (newly_stored, key) {
            (Some(mut call), key) => {
                let amount = new.balance_debit_micros();
                if amount != 0 {
                    let customer_id = new.customer_id;
                    let debit = debits.entry(customer_id).or_default();
                    *debit = debit
                        .checked_add(amount)
                        .ok_or_else(|| balance_overflow(customer_id))?;
                }
                call.stored_segments = new.rating.segments.clone();
                segment_rows.extend(segment_models(&call));
                // Later records of this key in the batch are judged
                // against it.
                if let Some(key) = key
                    && repeated_keys
                {
                    stored_by_key.insert(key, call.clone());
                }
                Ok(StoredCall::Inserted(call))
            }
            (None, Some(key)) => {
                let stored = stored_by_key.get(&key).ok_or_else(|| {
                    AppError::internal(format!(
                        "call_id {} neither inserted nor stored",
                        shown(&key.1)
                    ))
                })?;
                if new.record.describes(stored) {
                    Ok(StoredCall::Duplicate(stored.clone()))
                } else {
                    Err(AppError::AlreadyExists(format!(
                        "call_id {} is already stored for customer {} with different content \
                         (call {})",
                        shown(&key.1),
                        stored.customer_id,
                        stored.id
                    )))
                }
            }
            (None, None) => {
                return Err(AppError::internal(
                    "a call without call_id was not inserted",
                ));
            }
        };
        outcomes.push(outcome);
    }
    for rows in segment_rows.chunks(SEGMENT_ROWS_PER_INSERT) {
        call_segment::Entity::insert_many(rows.to_vec())
            .exec_without_returning(conn)
            .await?;
    }
    let balances = debit_balances(conn, &debits).await?;
    Ok(Some((outcomes, balances)))
}

/// A call's idempotency key: its customer and its `call_id`, unique
/// together (`idx_calls_call_id_customer`).
type CallKey = (i64, String);

/// The key of `new`, if it has a `call_id`.
fn call_key(new: &NewCall) -> Option<CallKey> {
    new.record.call_id.clone().map(|key| (new.customer_id, key))
}

/// The condition of [`Months::Uncovered`] for one statement: no customer
/// of `customer_ids` has an invoice covering `earliest` or a later month.
struct Uncovered<'a> {
    customer_ids: &'a [i64],
    earliest: BillingPeriod,
}

impl Uncovered<'_> {
    /// Whether some customer's invoices cover `earliest` now.
    async fn is_covered(&self, conn: &impl ConnectionTrait) -> AppResult<bool> {
        let (marks, mut values) = id_list(self.customer_ids);
        values.push(self.earliest.key().into());
        let sql = format!(
            "SELECT 1 FROM customers WHERE id IN ({marks}) AND invoiced_through >= ? LIMIT 1"
        );
        let backend = conn.get_database_backend();
        Ok(conn
            .query_one_raw(statement(backend, &sql, values))
            .await?
            .is_some())
    }

    /// The guard as SQL: what leads the statement (a `WITH` on
    /// PostgreSQL) and the condition for its `WHERE`, each with its values.
    /// PostgreSQL locks the customers `FOR KEY SHARE` before it reads their
    /// months, and reads a row an issuer updated meanwhile as committed
    /// (READ COMMITTED re-reads the rows it locks); SQLite's one writer
    /// needs no lock.
    fn sql(&self, backend: DatabaseBackend) -> GuardSql {
        let (marks, ids) = id_list(self.customer_ids);
        let earliest = sea_orm::Value::from(self.earliest.key());
        if backend == DatabaseBackend::Postgres {
            GuardSql {
                lead: format!(
                    "WITH locked AS (SELECT invoiced_through FROM customers \
                     WHERE id IN ({marks}) ORDER BY id FOR KEY SHARE) "
                ),
                lead_values: ids,
                condition: String::from(
                    "NOT EXISTS (SELECT 1 FROM locked WHERE invoiced_through >= ?)",
                ),
                condition_values: vec![earliest],
            }
        } else {
            let mut condition_values = ids;
            condition_values.push(earliest);
            GuardSql {
                lead: String::new(),
                lead_values: Vec::new(),
                condition: format!(
                    "NOT EXISTS (SELECT 1 FROM customers \
                     WHERE id IN ({marks}) AND invoiced_through >= ?)"
                ),
                condition_values,
            }
        }
    }
}

/// An [`Uncovered`] guard as parts of a statement.
struct GuardSql {
    lead: String,
    lead_values: Vec<sea_orm::Value>,
    condition: String,
    condition_values: Vec<sea_orm::Value>,
}

impl GuardSql {
    /// No guard: nothing leads, and the condition always holds.
    fn none() -> Self {
        Self {
            lead: String::new(),
            lead_values: Vec::new(),
            condition: String::from("true"),
            condition_values: Vec::new(),
        }
    }

    /// The values of a statement whose placeholders are the lead's, then
    /// `middle`, then the condition's.
    fn values_around(self, middle: Vec<sea_orm::Value>) -> Vec<sea_orm::Value> {
        let mut values = self.lead_values;
        values.extend(middle);
        values.extend(self.condition_values);
        values
    }
}

/// `INSERT INTO calls (columns)` of `rows` (one row per `width` of
/// `row_values`) followed by `tail`; under `guard`, a statement that
/// inserts nothing unless the guard holds.
fn guarded_insert(
    columns: &str,
    rows: usize,
    width: usize,
    row_values: Vec<sea_orm::Value>,
    guard: Option<(&Uncovered<'_>, DatabaseBackend)>,
    tail: &str,
) -> (String, Vec<sea_orm::Value>) {
    let list = value_rows(rows, width);
    let Some((guard, backend)) = guard else {
        return (
            format!("INSERT INTO calls ({columns}) VALUES {list} {tail}"),
            row_values,
        );
    };
    let sql = guard.sql(backend);
    let text = format!(
        "{}INSERT INTO calls ({columns}) SELECT * FROM (VALUES {list}) AS v WHERE {} {tail}",
        sql.lead, sql.condition
    );
    (text, sql.values_around(row_values))
}

/// Takes each customer's debit from its prepaid balance: per
/// [`DEBITS_PER_STATEMENT`] customers one `UPDATE … FROM (VALUES …)`
/// (and on PostgreSQL, before it, one statement locking those customers in
/// id order, so batches on two replicas cannot deadlock). Checked in the
/// statement itself: a balance that cannot take its debit is left alone
/// (SQLite would otherwise store a REAL), and its customer fails the batch.
/// Returns each customer's balance change, for its alerts.
async fn debit_balances<C: ConnectionTrait>(
    conn: &C,
    debits: &BTreeMap<i64, i64>,
) -> AppResult<Vec<(i64, BalanceChange)>> {
    let mut balances = Vec::with_capacity(debits.len());
    let backend = conn.get_database_backend();
    let debits: Vec<(i64, i64)> = debits.iter().map(|(id, debit)| (*id, *debit)).collect();
    for chunk in debits.chunks(DEBITS_PER_STATEMENT) {
        let ids: Vec<i64> = chunk.iter().map(|(id, _)| *id).collect();
        lock_customers(conn, &ids).await?;
        let mut values: Vec<sea_orm::Value> = Vec::with_capacity(3 * chunk.len());
        for &(customer_id, debit_micros) in chunk {
            // The smallest balance that can take the debit.
            let floor = i64::MIN
                .checked_add(debit_micros)
                .ok_or_else(|| balance_overflow(customer_id))?;
            values.extend([customer_id.into(), debit_micros.into(), floor.into()]);
        }
        let sql = format!(
            "UPDATE customers SET balance_micros = customers.balance_micros - d.column2 \
             FROM (VALUES {}) AS d \
             WHERE customers.id = d.column1 AND customers.balance_micros >= d.column3 \
             RETURNING {BALANCE_STATE_COLUMNS}",
            value_rows(chunk.len(), 3)
        );
        let debited: HashMap<i64, BalanceState> = conn
            .query_all_raw(statement(backend, &sql, values))
            .await?
            .iter()
            .map(|row| BalanceState::from_row(row).map(|state| (state.customer_id, state)))
            .collect::<Result<_, _>>()?;
        for &(customer_id, debit_micros) in chunk {
            let state = debited
                .get(&customer_id)
                .ok_or_else(|| balance_overflow(customer_id))?;
            // The statement took exactly this debit, so adding it back
            // cannot overflow.
            balances.push(state.since(state.balance_micros.saturating_add(debit_micros)));
        }
    }
    Ok(balances)
}

/// Customers whose balances one statement debits (3 values each).
const DEBITS_PER_STATEMENT: usize = 1000;

/// Segment rows written per statement (6 values each, far below SQLite's
/// limit on bound values).
const SEGMENT_ROWS_PER_INSERT: usize = 1000;

/// Calls per multi-row insert: 15 bound values each stay far below the
/// 32,766 a SQLite statement takes (and PostgreSQL's 65,535), whatever the
/// batch size.
const CALL_ROWS_PER_INSERT: usize = 1000;

/// The segment rows of a newly stored call (none for a call of a plan
/// without tariffs).
fn segment_models(call: &Call) -> impl Iterator<Item = call_segment::ActiveModel> + '_ {
    call.stored_segments
        .iter()
        .enumerate()
        .map(|(position, segment)| call_segment::ActiveModel {
            call_id: Set(call.id),
            position: Set(i32::try_from(position).unwrap_or(i32::MAX)),
            tariff_name: Set(segment.tariff_name.clone()),
            started_at: Set(micros(segment.start)),
            billed_seconds: Set(segment.billed_seconds),
            cost_micros: Set(segment.cost_micros),
        })
}

/// Fills in the stored segments of `calls`, in one query.
async fn attach_segments(db: &impl ConnectionTrait, calls: &mut [Call]) -> AppResult<()> {
    if calls.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = calls.iter().map(|call| call.id).collect();
    let mut by_call: HashMap<i64, Vec<Segment>> = HashMap::new();
    for row in call_segment::Entity::find()
        .filter(call_segment::Column::CallId.is_in(ids))
        .order_by_asc(call_segment::Column::CallId)
        .order_by_asc(call_segment::Column::Position)
        .all(db)
        .await?
    {
        by_call.entry(row.call_id).or_default().push(Segment {
            tariff_name: row.tariff_name,
            start: instant(row.started_at),
            billed_seconds: row.billed_seconds,
            cost_micros: row.cost_micros,
        });
    }
    for call in calls {
        if let Some(segments) = by_call.remove(&call.id) {
            call.stored_segments = segments;
        }
    }
    Ok(())
}

/// Fills in each call's invoice: the invoice of its customer and billing
/// month, once issued (a call's invoice is never written on the call). One
/// query for the distinct months of `calls` (a page of a customer's history
/// spans one or two).
async fn attach_invoices(db: &impl ConnectionTrait, calls: &mut [Call]) -> AppResult<()> {
    let mut months: Vec<(i64, BillingPeriod)> = calls
        .iter()
        .map(|call| (call.customer_id, call.billing_period))
        .collect();
    months.sort_unstable();
    months.dedup();
    if months.is_empty() {
        return Ok(());
    }
    let mut values: Vec<sea_orm::Value> = Vec::with_capacity(3 * months.len());
    for (customer_id, month) in &months {
        values.extend([
            (*customer_id).into(),
            month.year().into(),
            month.month().cast_signed().into(),
        ]);
    }
    let sql = format!(
        "WITH m(customer_id, period_year, period_month) AS (VALUES {}) \
         SELECT i.customer_id, i.period_year, i.period_month, i.id FROM m \
         JOIN invoices i ON i.customer_id = m.customer_id \
           AND i.period_year = m.period_year AND i.period_month = m.period_month",
        value_rows(months.len(), 3)
    );
    let backend = db.get_database_backend();
    let mut invoice_of: HashMap<(i64, BillingPeriod), i64> = HashMap::new();
    for row in db.query_all_raw(statement(backend, &sql, values)).await? {
        let month =
            BillingPeriod::new("period", row.try_get_by_index(1)?, row.try_get_by_index(2)?)?;
        invoice_of.insert((row.try_get_by_index(0)?, month), row.try_get_by_index(3)?);
    }
    for call in calls {
        call.invoice_id = invoice_of
            .get(&(call.customer_id, call.billing_period))
            .copied();
    }
    Ok(())
}

/// The error of a prepaid balance that cannot take a debit.
fn balance_overflow(customer_id: i64) -> AppError {
    AppError::FailedPrecondition(format!(
        "customer {customer_id}'s prepaid balance cannot take this debit: it would fall below the smallest amount the service can hold"
    ))
}

/// The call `new` became when stored under `id`: exactly what
/// [`call_from_row`] reads back from its row.
fn stored_call(new: &NewCall, id: i64, billing_period: BillingPeriod) -> Call {
    Call {
        id,
        call_id: new.record.call_id.clone(),
        customer_id: new.customer_id,
        started_at: instant(micros(new.started_at)),
        duration_seconds: new.record.duration_seconds,
        billed_seconds: new.rating.billed_seconds,
        cost_micros: new.rating.cost_micros,
        per_minute_micros: new.rating.per_minute_micros,
        billing_increment_seconds: new.rating.billing_increment_seconds,
        caller_number: new.record.caller_number.clone(),
        callee_number: new.record.callee_number.clone(),
        received_at: instant(micros(new.received_at)),
        billing_period,
        // A call is never stored into a month already invoiced.
        invoice_id: None,
        connect_fee_micros: new.rating.connect_fee_micros,
        stored_segments: Vec::new(),
    }
}

/// The columns a call insert binds, in the order [`insert_calls`] binds
/// them (the id is the database's).
const CALL_INSERT_COLUMNS: &str = "call_id, customer_id, started_at, duration_seconds, \
     billed_seconds, per_minute_micros, billing_increment_seconds, cost_micros, \
     caller_number, callee_number, received_at, connect_fee_micros, billing_period, \
     started_period";

/// How many columns that is.
const CALL_INSERT_WIDTH: usize = 14;

/// The values of [`CALL_INSERT_COLUMNS`] for each of `rows`, in order;
/// `billing_period` is each call's billing month.
fn call_values(
    rows: &[&NewCall],
    billing_period: &impl Fn(&NewCall) -> BillingPeriod,
) -> Vec<sea_orm::Value> {
    let mut values: Vec<sea_orm::Value> = Vec::with_capacity(rows.len() * CALL_INSERT_WIDTH);
    for new in rows {
        values.extend([
            new.record.call_id.clone().into(),
            new.customer_id.into(),
            micros(new.started_at).into(),
            new.record.duration_seconds.into(),
            new.rating.billed_seconds.into(),
            new.rating.per_minute_micros.into(),
            new.rating.billing_increment_seconds.into(),
            new.rating.cost_micros.into(),
            new.record.caller_number.clone().into(),
            new.record.callee_number.clone().into(),
            micros(new.received_at).into(),
            new.rating.connect_fee_micros.into(),
            billing_period(new).key().into(),
            new.started_in.key().into(),
        ]);
    }
    values
}

/// Inserts `rows` (at most [`CALL_ROWS_PER_INSERT`]) in one statement,
/// skipping keys already stored; returns the id and `call_id` of each row
/// inserted.
///
/// On SQLite, whose `calls` has no rowid (migration 000008), the statement
/// numbers its rows itself: row `k` (from 1) gets the largest id stored
/// plus `k`, that largest id being read once, before anything is inserted.
/// SQLite runs one writing statement at a time, so ids stay unique (and
/// `idx_calls_id` would refuse a repeat); a row skipped as a duplicate
/// leaves its id unused. PostgreSQL takes ids from its sequence.
async fn insert_calls<C: ConnectionTrait>(
    conn: &C,
    rows: &[&NewCall],
    billing_period: &impl Fn(&NewCall) -> BillingPeriod,
    guard: Option<&Uncovered<'_>>,
) -> AppResult<Vec<(i64, i64, Option<String>)>> {
    let backend = conn.get_database_backend();
    let (sql, values) = if backend == DatabaseBackend::Sqlite {
        // Each row's position comes first, bound like every other value.
        let positioned = call_values(rows, billing_period)
            .chunks(CALL_INSERT_WIDTH)
            .zip(1_i64..)
            .flat_map(|(row, position)| std::iter::once(position.into()).chain(row.iter().cloned()))
            .collect();
        // SQLite names a VALUES list's columns column1, column2, …; the
        // first is the position. The WHERE (`true` without a guard) keeps
        // ON CONFLICT from being read as a join's ON.
        let bound: Vec<String> = (2..=CALL_INSERT_WIDTH + 1)
            .map(|n| format!("column{n}"))
            .collect();
        let guard = guard.map_or_else(GuardSql::none, |guard| guard.sql(backend));
        let sql = format!(
            "{}INSERT INTO calls (id, {CALL_INSERT_COLUMNS}) \
             SELECT (SELECT IFNULL(MAX(id), 0) FROM calls) + column1, {} \
             FROM (VALUES {}) WHERE {} \
             ON CONFLICT (customer_id, call_id) DO NOTHING \
             RETURNING id, customer_id, call_id",
            guard.lead,
            bound.join(", "),
            value_rows(rows.len(), CALL_INSERT_WIDTH + 1),
            guard.condition,
        );
        (sql, guard.values_around(positioned))
    } else {
        guarded_insert(
            CALL_INSERT_COLUMNS,
            rows.len(),
            CALL_INSERT_WIDTH,
            call_values(rows, billing_period),
            guard.map(|guard| (guard, backend)),
            "ON CONFLICT (customer_id, call_id) DO NOTHING RETURNING id, customer_id, call_id",
        )
    };
    let mut inserted = Vec::with_capacity(rows.len());
    for row in conn.query_all_raw(statement(backend, &sql, values)).await? {
        inserted.push((
            row.try_get_by_index(0)?,
            row.try_get_by_index(1)?,
            row.try_get_by_index(2)?,
        ));
    }
    Ok(inserted)
}

/// Everything stored of a call without `call_id` but its id: matches the
/// rows a multi-row insert returned to the records that produced them (rows
/// alike in all of this are interchangeable).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct UnkeyedCall {
    customer_id: i64,
    started_at: i64,
    duration_seconds: i64,
    cost_micros: i64,
    received_at: i64,
    caller_number: String,
    callee_number: String,
}

impl UnkeyedCall {
    fn of_call(call: &Call) -> Self {
        UnkeyedCall {
            customer_id: call.customer_id,
            started_at: micros(call.started_at),
            duration_seconds: call.duration_seconds,
            cost_micros: call.cost_micros,
            received_at: micros(call.received_at),
            caller_number: call.caller_number.clone(),
            callee_number: call.callee_number.clone(),
        }
    }

    fn of_new(new: &NewCall) -> Self {
        UnkeyedCall {
            customer_id: new.customer_id,
            started_at: micros(new.started_at),
            duration_seconds: new.record.duration_seconds,
            cost_micros: new.rating.cost_micros,
            received_at: micros(new.received_at),
            caller_number: new.record.caller_number.clone(),
            callee_number: new.record.callee_number.clone(),
        }
    }
}

/// Every column of `calls` a call is read from, in the order
/// [`call_from_row`] reads them.
const STORED_CALL_COLUMNS: &str = "id, call_id, customer_id, started_at, duration_seconds, \
     billed_seconds, cost_micros, per_minute_micros, billing_increment_seconds, \
     caller_number, callee_number, received_at, billing_period, connect_fee_micros";

/// [`STORED_CALL_COLUMNS`] of `calls c`.
const CALL_COLUMNS: &str = "c.id, c.call_id, c.customer_id, c.started_at, c.duration_seconds, \
     c.billed_seconds, c.cost_micros, c.per_minute_micros, c.billing_increment_seconds, \
     c.caller_number, c.callee_number, c.received_at, c.billing_period, c.connect_fee_micros";

/// The call in a row of `SELECT {CALL_COLUMNS}` (or `RETURNING` them), read
/// by position; its invoice is found apart ([`attach_invoices`]).
fn call_from_row(row: &QueryResult) -> Result<Call, DbErr> {
    let billing_period: i32 = row.try_get_by_index(12)?;
    Ok(Call {
        id: row.try_get_by_index(0)?,
        call_id: row.try_get_by_index(1)?,
        customer_id: row.try_get_by_index(2)?,
        started_at: instant(row.try_get_by_index(3)?),
        duration_seconds: row.try_get_by_index(4)?,
        billed_seconds: row.try_get_by_index(5)?,
        cost_micros: row.try_get_by_index(6)?,
        per_minute_micros: row.try_get_by_index(7)?,
        billing_increment_seconds: row.try_get_by_index(8)?,
        caller_number: row.try_get_by_index(9)?,
        callee_number: row.try_get_by_index(10)?,
        received_at: instant(row.try_get_by_index(11)?),
        billing_period: BillingPeriod::from_key(billing_period)
            .map_err(|err| DbErr::Type(err.to_string()))?,
        connect_fee_micros: row.try_get_by_index(13)?,
        invoice_id: None,
        stored_segments: Vec::new(),
    })
}
