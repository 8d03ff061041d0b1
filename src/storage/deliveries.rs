//! Webhooks and the delivery outbox (migration 000014): deliveries are
//! inserted on the transaction that causes them, claimed by workers under a
//! lease (`claimed_until`; on PostgreSQL `FOR UPDATE SKIP LOCKED`, so
//! replicas claiming at once take different rows), and finished with their
//! outcome. Which deliveries exist and when they are retried is decided in
//! `domain::delivery`.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DatabaseBackend, DbErr, FromQueryResult, QueryResult};
use tokio::sync::Notify;

use super::{Store, id_list, instant, micros, statement, value_rows};
use crate::clock::Clock;
use crate::domain::delivery::{
    BalanceAlert, BalanceChange, Channel, DeliveryPlan, DeliveryStatus, Event, Recipients, Webhook,
    deliveries_of, new_delivery_id,
};
use crate::error::{AppError, AppResult};

/// What writing a balance alert needs beyond its transaction: whether
/// email is configured, the service's clock (the alert's instant, and when
/// its deliveries are due) and this process's delivery worker, woken once
/// the alert is committed.
#[derive(Debug, Clone)]
pub struct Outbox {
    pub email_on: bool,
    pub clock: Clock,
    pub wake: Arc<Notify>,
}

impl Default for Outbox {
    /// No email, the system clock, and a worker nobody waits on.
    fn default() -> Self {
        Outbox {
            email_on: false,
            clock: Clock::system(),
            wake: Arc::new(Notify::new()),
        }
    }
}

/// A prepaid balance as a write left it, and whether its customer's low
/// alert is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BalanceState {
    pub customer_id: i64,
    pub balance_micros: i64,
    pub threshold_micros: Option<i64>,
    pub alerted_low: bool,
}

/// The columns of `customers` a [`BalanceState`] is read from, in order.
pub(crate) const BALANCE_STATE_COLUMNS: &str = "customers.id, customers.balance_micros, \
     customers.low_balance_threshold_micros, customers.low_balance_alerted";

impl BalanceState {
    pub(crate) fn from_row(row: &QueryResult) -> Result<BalanceState, DbErr> {
        Ok(BalanceState {
            customer_id: row.try_get_by_index(0)?,
            balance_micros: row.try_get_by_index(1)?,
            threshold_micros: row.try_get_by_index(2)?,
            alerted_low: row.try_get_by_index(3)?,
        })
    }

    /// The change from `before_micros` that left this balance.
    pub(crate) fn since(&self, before_micros: i64) -> (i64, BalanceChange) {
        (
            self.customer_id,
            BalanceChange {
                before_micros,
                after_micros: self.balance_micros,
                threshold_micros: self.threshold_micros,
                alerted_low: self.alerted_low,
            },
        )
    }
}

/// Writes, on `conn` (the transaction that changed the balances), the
/// alerts each customer's balance change calls for (`domain::delivery`
/// rule 6): whether its low alert is open, and the alert's deliveries.
/// Returns whether any delivery was written, for the caller to wake the
/// worker once it commits.
pub(crate) async fn write_balance_alerts_on(
    conn: &impl ConnectionTrait,
    changes: &[(i64, BalanceChange)],
    outbox: &Outbox,
) -> AppResult<bool> {
    let crossings: Vec<(i64, &BalanceChange, Event)> = changes
        .iter()
        .filter_map(|(id, change)| change.alert().map(|event| (*id, change, event)))
        .collect();
    if crossings.is_empty() {
        return Ok(false);
    }
    let backend = conn.get_database_backend();
    for (event, alerted_low) in [(Event::BalanceLow, true), (Event::BalanceRecovered, false)] {
        let ids: Vec<i64> = crossings
            .iter()
            .filter(|(_, _, e)| *e == event)
            .map(|(id, _, _)| *id)
            .collect();
        for chunk in ids.chunks(1024) {
            let (list, mut values) = id_list(chunk);
            values.insert(0, alerted_low.into());
            let sql = format!("UPDATE customers SET low_balance_alerted = ? WHERE id IN ({list})");
            conn.execute_raw(statement(backend, &sql, values)).await?;
        }
    }
    let ids: Vec<i64> = crossings.iter().map(|(id, _, _)| *id).collect();
    let mut currencies: HashMap<i64, String> = HashMap::new();
    for chunk in ids.chunks(1024) {
        let (list, values) = id_list(chunk);
        for row in conn
            .query_all_raw(statement(
                backend,
                &format!(
                    "SELECT c.id, p.currency_code FROM customers c \
                     JOIN plans p ON p.id = c.plan_id WHERE c.id IN ({list})"
                ),
                values,
            ))
            .await?
        {
            currencies.insert(row.try_get_by_index(0)?, row.try_get_by_index(1)?);
        }
    }
    let recipients = recipients_on(conn, &ids, outbox.email_on).await?;
    let now = outbox.clock.now();
    let mut deliveries = Vec::new();
    for (customer_id, change, event) in crossings {
        let Some(recipients) = recipients.get(&customer_id) else {
            continue;
        };
        let alert = BalanceAlert {
            customer_id,
            balance_micros: change.after_micros,
            threshold_micros: change.threshold_micros.unwrap_or_default(),
            currency_code: currencies.get(&customer_id).cloned().unwrap_or_default(),
            at: now,
        };
        let payload = alert.data().to_string();
        for plan in deliveries_of(event, customer_id, None, recipients) {
            deliveries.push(NewDelivery {
                public_id: new_delivery_id()?,
                plan,
                payload: payload.clone(),
            });
        }
    }
    insert_deliveries_on(conn, &deliveries, now).await?;
    Ok(!deliveries.is_empty())
}

/// A delivery to insert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDelivery {
    /// The stable id receivers see on every attempt.
    pub public_id: String,
    pub plan: DeliveryPlan,
    /// The event's JSON body, when fixed at the event (balance alerts);
    /// empty when it is read from the invoice at delivery.
    pub payload: String,
}

/// A delivery as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub id: i64,
    pub public_id: String,
    pub event: Event,
    pub channel: Channel,
    pub webhook_id: Option<i64>,
    pub customer_id: i64,
    pub invoice_id: Option<i64>,
    pub status: DeliveryStatus,
    pub attempts: i32,
    pub last_error: String,
    /// When the next attempt is due; `None` unless pending.
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub payload: String,
}

/// Which deliveries a listing returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryFilter {
    /// Only deliveries to customers linked to this operator.
    pub operator_id: Option<i64>,
    pub customer_id: Option<i64>,
    pub invoice_id: Option<i64>,
    pub status: Option<DeliveryStatus>,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptOutcome {
    Delivered,
    /// Failed; tried again at the instant, or never (`None`: `FAILED`).
    Failed {
        error: String,
        retry_at: Option<DateTime<Utc>>,
    },
}

#[derive(Debug, FromQueryResult)]
struct DeliveryRow {
    id: i64,
    public_id: String,
    event: String,
    channel: String,
    webhook_id: Option<i64>,
    customer_id: i64,
    invoice_id: Option<i64>,
    payload: String,
    status: String,
    attempts: i32,
    last_error: String,
    next_attempt_at: i64,
    created_at: i64,
    delivered_at: Option<i64>,
}

const DELIVERY_COLUMNS: &str = "id, public_id, event, channel, webhook_id, customer_id, \
     invoice_id, payload, status, attempts, last_error, next_attempt_at, created_at, delivered_at";

impl TryFrom<DeliveryRow> for Delivery {
    type Error = AppError;

    fn try_from(row: DeliveryRow) -> AppResult<Delivery> {
        let corrupt = |what: &str, value: &str| {
            AppError::internal(format!("delivery {} has unknown {what} {value:?}", row.id))
        };
        let status =
            DeliveryStatus::parse(&row.status).ok_or_else(|| corrupt("status", &row.status))?;
        Ok(Delivery {
            id: row.id,
            public_id: row.public_id.clone(),
            event: Event::parse(&row.event).ok_or_else(|| corrupt("event", &row.event))?,
            channel: Channel::parse(&row.channel)
                .ok_or_else(|| corrupt("channel", &row.channel))?,
            webhook_id: row.webhook_id,
            customer_id: row.customer_id,
            invoice_id: row.invoice_id,
            status,
            attempts: row.attempts,
            last_error: row.last_error,
            next_attempt_at: (status == DeliveryStatus::Pending)
                .then(|| instant(row.next_attempt_at)),
            created_at: instant(row.created_at),
            delivered_at: row.delivered_at.map(instant),
            payload: row.payload,
        })
    }
}

#[derive(Debug, FromQueryResult)]
struct WebhookRow {
    id: i64,
    operator_id: i64,
    url: String,
    events: String,
    created_at: i64,
}

impl From<WebhookRow> for Webhook {
    fn from(row: WebhookRow) -> Webhook {
        Webhook {
            id: row.id,
            operator_id: row.operator_id,
            url: row.url,
            // Unknown names (none are written) are skipped, not fatal.
            events: row.events.split(',').filter_map(Event::parse).collect(),
            created_at: instant(row.created_at),
        }
    }
}

fn events_text(events: &[Event]) -> String {
    events
        .iter()
        .map(|e| e.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// Who hears of each of `customer_ids`' events: whether it has an email
/// address (`email_on`: email is configured), and its operators' webhooks.
pub(crate) async fn recipients_on(
    conn: &impl ConnectionTrait,
    customer_ids: &[i64],
    email_on: bool,
) -> AppResult<HashMap<i64, Recipients>> {
    let mut recipients: HashMap<i64, Recipients> = HashMap::new();
    if customer_ids.is_empty() {
        return Ok(recipients);
    }
    let backend = conn.get_database_backend();
    for chunk in customer_ids.chunks(1024) {
        let (list, values) = id_list(chunk);
        let rows = conn
            .query_all_raw(statement(
                backend,
                &format!(
                    "SELECT id, email FROM customers WHERE id IN ({list}) AND email IS NOT NULL"
                ),
                values,
            ))
            .await?;
        for row in rows {
            let id: i64 = row.try_get_by_index(0)?;
            recipients.entry(id).or_default().email = email_on;
        }
        let (list, values) = id_list(chunk);
        let rows = conn
            .query_all_raw(statement(
                backend,
                &format!(
                    "SELECT l.customer_id, w.id, w.operator_id, w.url, w.events, w.created_at \
                     FROM customer_operators l JOIN webhooks w ON w.operator_id = l.operator_id \
                     WHERE l.customer_id IN ({list}) ORDER BY l.customer_id, w.id"
                ),
                values,
            ))
            .await?;
        for row in rows {
            let customer_id: i64 = row.try_get_by_index(0)?;
            let webhook = WebhookRow {
                id: row.try_get_by_index(1)?,
                operator_id: row.try_get_by_index(2)?,
                url: row.try_get_by_index(3)?,
                events: row.try_get_by_index(4)?,
                created_at: row.try_get_by_index(5)?,
            };
            recipients
                .entry(customer_id)
                .or_default()
                .webhooks
                .push(webhook.into());
        }
    }
    Ok(recipients)
}

/// Deliveries inserted per statement (12 bound values each).
const DELIVERIES_PER_INSERT: usize = 2000;

/// Inserts `deliveries`, due at `now`, on `conn` (the transaction that
/// causes them).
pub(crate) async fn insert_deliveries_on(
    conn: &impl ConnectionTrait,
    deliveries: &[NewDelivery],
    now: DateTime<Utc>,
) -> AppResult<()> {
    let backend = conn.get_database_backend();
    for chunk in deliveries.chunks(DELIVERIES_PER_INSERT) {
        let mut values: Vec<sea_orm::Value> = Vec::with_capacity(chunk.len() * 12);
        for delivery in chunk {
            let plan = &delivery.plan;
            values.extend([
                delivery.public_id.clone().into(),
                plan.event.as_str().into(),
                plan.channel.as_str().into(),
                plan.webhook_id.into(),
                plan.customer_id.into(),
                plan.invoice_id.into(),
                delivery.payload.clone().into(),
                DeliveryStatus::Pending.as_str().into(),
                String::new().into(),
                micros(now).into(),
                micros(now).into(),
                0_i32.into(),
            ]);
        }
        let sql = format!(
            "INSERT INTO deliveries (public_id, event, channel, webhook_id, customer_id, \
               invoice_id, payload, status, last_error, next_attempt_at, created_at, attempts) \
             VALUES {}",
            value_rows(chunk.len(), 12)
        );
        conn.execute_raw(statement(backend, &sql, values)).await?;
    }
    Ok(())
}

impl Store {
    /// Stores a webhook of `operator_id` with its signing `secret`.
    pub async fn create_webhook(
        &self,
        operator_id: i64,
        url: &str,
        events: &[Event],
        secret: &str,
        now: DateTime<Utc>,
    ) -> AppResult<Webhook> {
        let backend = self.writer.get_database_backend();
        let row = self
            .writer
            .query_one_raw(statement(
                backend,
                "INSERT INTO webhooks (operator_id, url, events, secret, created_at) \
                 VALUES (?, ?, ?, ?, ?) RETURNING id",
                vec![
                    operator_id.into(),
                    url.into(),
                    events_text(events).into(),
                    secret.into(),
                    micros(now).into(),
                ],
            ))
            .await?
            .ok_or_else(|| AppError::internal("INSERT … RETURNING returned no row"))?;
        Ok(Webhook {
            id: row.try_get_by_index(0)?,
            operator_id,
            url: url.to_owned(),
            events: events.to_vec(),
            created_at: instant(micros(now)),
        })
    }

    /// Up to `limit` webhooks with an id above `after_id`, of one operator
    /// or of all, in id order.
    pub async fn webhooks(
        &self,
        operator_id: Option<i64>,
        after_id: i64,
        limit: u64,
    ) -> AppResult<Vec<Webhook>> {
        let backend = self.db.get_database_backend();
        let mut sql = String::from(
            "SELECT id, operator_id, url, events, created_at FROM webhooks WHERE id > ?",
        );
        let mut values: Vec<sea_orm::Value> = vec![after_id.into()];
        if let Some(operator_id) = operator_id {
            sql.push_str(" AND operator_id = ?");
            values.push(operator_id.into());
        }
        sql.push_str(" ORDER BY id LIMIT ?");
        values.push(i64::try_from(limit).unwrap_or(i64::MAX).into());
        let rows = self
            .db
            .query_all_raw(statement(backend, &sql, values))
            .await?;
        rows.iter()
            .map(|row| Ok(WebhookRow::from_query_result(row, "")?.into()))
            .collect()
    }

    /// Webhook `id` with its secret, if it exists.
    pub async fn webhook(&self, id: i64) -> AppResult<Option<(Webhook, String)>> {
        let backend = self.db.get_database_backend();
        let row = self
            .db
            .query_one_raw(statement(
                backend,
                "SELECT id, operator_id, url, events, created_at, secret FROM webhooks WHERE id = ?",
                vec![id.into()],
            ))
            .await?;
        match row {
            None => Ok(None),
            Some(row) => {
                let secret: String = row.try_get("", "secret")?;
                Ok(Some((
                    WebhookRow::from_query_result(&row, "")?.into(),
                    secret,
                )))
            }
        }
    }

    /// Deletes webhook `id`; whether it existed.
    pub async fn delete_webhook(&self, id: i64) -> AppResult<bool> {
        let backend = self.writer.get_database_backend();
        let result = self
            .writer
            .execute_raw(statement(
                backend,
                "DELETE FROM webhooks WHERE id = ?",
                vec![id.into()],
            ))
            .await?;
        Ok(result.rows_affected() > 0)
    }

    /// When the earliest pending delivery can be claimed (due, and any
    /// lease on it lapsed), if any is pending. Read on the read pool, so an
    /// idle worker's look does not take SQLite's one writing connection.
    pub async fn next_delivery_due(&self) -> AppResult<Option<DateTime<Utc>>> {
        let backend = self.db.get_database_backend();
        let row = self
            .db
            .query_one_raw(statement(
                backend,
                "SELECT MIN(CASE WHEN claimed_until IS NOT NULL AND claimed_until > next_attempt_at \
                 THEN claimed_until ELSE next_attempt_at END) FROM deliveries WHERE status = ?",
                vec![DeliveryStatus::Pending.as_str().into()],
            ))
            .await?;
        let due: Option<i64> = match row {
            Some(row) => row.try_get_by_index(0)?,
            None => None,
        };
        Ok(due.map(instant))
    }

    /// Claims up to `limit` pending deliveries due at `now` and not claimed
    /// by a live lease, leasing them until `lease_until` and counting the
    /// attempt. Concurrent claimers never take the same row.
    pub async fn claim_deliveries(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u64,
    ) -> AppResult<Vec<Delivery>> {
        let backend = self.writer.get_database_backend();
        let skip_locked = if backend == DatabaseBackend::Postgres {
            " FOR UPDATE SKIP LOCKED"
        } else {
            ""
        };
        let sql = format!(
            "UPDATE deliveries SET claimed_until = ?, attempts = attempts + 1 \
             WHERE id IN (SELECT id FROM deliveries WHERE status = ? AND next_attempt_at <= ? \
               AND (claimed_until IS NULL OR claimed_until <= ?) \
               ORDER BY next_attempt_at, id LIMIT ?{skip_locked}) \
             RETURNING {DELIVERY_COLUMNS}"
        );
        let rows = self
            .writer
            .query_all_raw(statement(
                backend,
                &sql,
                vec![
                    micros(lease_until).into(),
                    DeliveryStatus::Pending.as_str().into(),
                    micros(now).into(),
                    micros(now).into(),
                    i64::try_from(limit).unwrap_or(i64::MAX).into(),
                ],
            ))
            .await?;
        let mut claimed = rows
            .iter()
            .map(|row| Delivery::try_from(DeliveryRow::from_query_result(row, "")?))
            .collect::<AppResult<Vec<_>>>()?;
        claimed.sort_by_key(|d| d.id);
        Ok(claimed)
    }

    /// Records how each attempt of `attempts` (delivery id, outcome) ended,
    /// releasing its lease, in one transaction: a worker records what it
    /// finished together, so its writes take the writer (SQLite's one
    /// connection, a commit's flush) once per group, not once per message,
    /// and the delivered ones, nearly all, are one statement.
    ///
    /// On PostgreSQL the commit does not wait for its WAL flush: a record
    /// lost in a crash leaves its delivery pending, to be sent again with
    /// the same id once the lease lapses, which at-least-once allows; the
    /// requests being served do not queue behind the worker's flushes.
    pub async fn finish_deliveries(
        &self,
        attempts: &[(i64, AttemptOutcome)],
        now: DateTime<Utc>,
    ) -> AppResult<()> {
        if attempts.is_empty() {
            return Ok(());
        }
        let backend = self.writer.get_database_backend();
        let txn = self.begin_write().await?;
        if backend == DatabaseBackend::Postgres {
            txn.execute_unprepared("SET LOCAL synchronous_commit TO OFF")
                .await?;
        }
        let delivered: Vec<i64> = attempts
            .iter()
            .filter(|(_, outcome)| matches!(outcome, AttemptOutcome::Delivered))
            .map(|(id, _)| *id)
            .collect();
        if !delivered.is_empty() {
            let (list, ids) = id_list(&delivered);
            let sql = format!(
                "UPDATE deliveries SET status = ?, delivered_at = ?, claimed_until = NULL, \
                 last_error = '' WHERE id IN ({list})"
            );
            let mut values: Vec<sea_orm::Value> = vec![
                DeliveryStatus::Delivered.as_str().into(),
                micros(now).into(),
            ];
            values.extend(ids);
            txn.execute_raw(statement(backend, &sql, values)).await?;
        }
        for (id, outcome) in attempts {
            let AttemptOutcome::Failed { error, retry_at } = outcome else {
                continue;
            };
            let status = match retry_at {
                Some(_) => DeliveryStatus::Pending,
                None => DeliveryStatus::Failed,
            };
            txn.execute_raw(statement(
                backend,
                "UPDATE deliveries SET status = ?, next_attempt_at = ?, claimed_until = NULL, \
                 last_error = ? WHERE id = ?",
                vec![
                    status.as_str().into(),
                    micros(retry_at.unwrap_or(now)).into(),
                    error.clone().into(),
                    (*id).into(),
                ],
            ))
            .await?;
        }
        txn.commit().await?;
        Ok(())
    }

    /// Up to `limit` deliveries with an id above `after_id` passing
    /// `filter`, in id order.
    pub async fn deliveries(
        &self,
        filter: DeliveryFilter,
        after_id: i64,
        limit: u64,
    ) -> AppResult<Vec<Delivery>> {
        let backend = self.db.get_database_backend();
        let mut sql = format!("SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE id > ?");
        let mut values: Vec<sea_orm::Value> = vec![after_id.into()];
        if let Some(operator_id) = filter.operator_id {
            sql.push_str(
                " AND customer_id IN \
                 (SELECT customer_id FROM customer_operators WHERE operator_id = ?)",
            );
            values.push(operator_id.into());
        }
        if let Some(customer_id) = filter.customer_id {
            sql.push_str(" AND customer_id = ?");
            values.push(customer_id.into());
        }
        if let Some(invoice_id) = filter.invoice_id {
            sql.push_str(" AND invoice_id = ?");
            values.push(invoice_id.into());
        }
        if let Some(status) = filter.status {
            sql.push_str(" AND status = ?");
            values.push(status.as_str().into());
        }
        sql.push_str(" ORDER BY id LIMIT ?");
        values.push(i64::try_from(limit).unwrap_or(i64::MAX).into());
        let rows = self
            .db
            .query_all_raw(statement(backend, &sql, values))
            .await?;
        rows.iter()
            .map(|row| Delivery::try_from(DeliveryRow::from_query_result(row, "")?))
            .collect()
    }

    /// The delivery whose public id is `public_id`, if it exists.
    pub async fn delivery(&self, public_id: &str) -> AppResult<Option<Delivery>> {
        let backend = self.writer.get_database_backend();
        let row = self
            .writer
            .query_one_raw(statement(
                backend,
                &format!("SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE public_id = ?"),
                vec![public_id.into()],
            ))
            .await?;
        row.map(|row| Delivery::try_from(DeliveryRow::from_query_result(&row, "")?))
            .transpose()
    }

    /// Makes failed delivery `id` pending again, due at `now`, with its
    /// attempts counted afresh; whether it was failed.
    pub async fn rearm_delivery(&self, id: i64, now: DateTime<Utc>) -> AppResult<bool> {
        let backend = self.writer.get_database_backend();
        let result = self
            .writer
            .execute_raw(statement(
                backend,
                "UPDATE deliveries SET status = ?, attempts = 0, next_attempt_at = ?, \
                 claimed_until = NULL WHERE id = ? AND status = ?",
                vec![
                    DeliveryStatus::Pending.as_str().into(),
                    micros(now).into(),
                    id.into(),
                    DeliveryStatus::Failed.as_str().into(),
                ],
            ))
            .await?;
        Ok(result.rows_affected() > 0)
    }
}
