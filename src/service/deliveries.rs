//! Deliveries: the webhook and delivery use cases (who may manage and see
//! what), and the worker every replica runs, which claims due deliveries
//! from the outbox, sends them and records each attempt.
//!
//! At least once: a delivery is marked delivered only after its receiver
//! accepted it, so a worker that dies between the two leaves it to be sent
//! again once its lease lapses, with the same `Billing-Delivery-Id`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::TimeDelta;
use chrono_tz::Tz;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::Notify;

use super::Access;
use crate::clock::Clock;
use crate::delivery::background::Background;
use crate::delivery::email::{Email, Mailer};
use crate::delivery::events;
use crate::delivery::webhook::{WebhookClient, WebhookPost};
use crate::document::{self, DocumentFormat, DocumentSource};
use crate::domain::access::{self, Action, CustomerScope, Principal};
use crate::domain::credentials::random_bytes;
use crate::domain::delivery::{
    BalanceAlert, Channel, DEFAULT_RETRY_SCHEDULE, DeliveryStatus, Event, RetrySchedule, Webhook,
    check_webhook_url, signature,
};
use crate::domain::invoice::Invoice;
use crate::domain::model::{Customer, Operator};
use crate::domain::plan::PlanKind;
use crate::error::{AppError, AppResult};
use crate::service::invoicing::DocumentParties;
use crate::shutdown::{Stopping, until_stopping};
use crate::storage::{AttemptOutcome, Delivery, DeliveryFilter, Store};

/// How deliveries are sent: `serve --smtp-url`/`--smtp-from`,
/// `--delivery-retry-schedule`, `--allow-insecure-webhooks`.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    pub mailer: Option<Mailer>,
    pub retry_schedule: RetrySchedule,
    pub allow_insecure_webhooks: bool,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            mailer: None,
            retry_schedule: RetrySchedule::parse(DEFAULT_RETRY_SCHEDULE)
                .unwrap_or_else(|_| unreachable!("the default schedule parses")),
            allow_insecure_webhooks: false,
        }
    }
}

/// Deliveries a worker claims at once.
pub const DELIVERY_BATCH: u64 = 64;
/// Deliveries a worker sends at once. Sending is mostly waiting for the
/// receiver, so more at once deliver faster, but a month's close then takes
/// the cores from the requests being served (`billing-bench --delivery`,
/// BENCHMARKS.md): 16 at once doubled their p99 latency, 4 took over two
/// minutes for 10,000 invoices.
pub const DELIVERY_CONCURRENCY: usize = 8;
/// Deliveries a worker sends at once while its replica is busy serving
/// requests ([`BUSY_RPCS`]): requests come first, and deliveries, which
/// nobody waits on, take what is left without stopping.
pub const DELIVERY_CONCURRENCY_BUSY: usize = 2;
/// RPCs being handled at once (`billing_rpcs_in_progress`) from which a
/// replica counts as busy: a few at a time is light traffic, whose
/// requests the deliveries do not slow.
pub const BUSY_RPCS: usize = 4;
/// How long a claim lasts: longer than any attempt (webhooks time out after
/// 10 s, emails after 30 s), so a live worker's delivery is never taken by
/// another; a dead worker's is taken once it lapses.
pub const DELIVERY_LEASE: Duration = Duration::from_secs(60);
/// How often a worker looks for due deliveries when nothing wakes it: other
/// replicas' new deliveries are found within this.
pub const DELIVERY_POLL: Duration = Duration::from_secs(1);

/// The delivery use cases and worker. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Deliveries {
    store: Store,
    access: Access,
    clock: Clock,
    tz: Tz,
    config: Arc<DeliveryConfig>,
    webhooks: WebhookClient,
    wake: Arc<Notify>,
    /// Where documents are rendered and emails encoded; without one, on
    /// the blocking pool.
    background: Option<Background>,
}

/// An attempt that did not deliver.
struct Failure {
    error: String,
    /// Retrying cannot help (the webhook or the address is gone).
    permanent: bool,
}

impl Failure {
    fn retry(error: impl Into<String>) -> Self {
        Failure {
            error: error.into(),
            permanent: false,
        }
    }

    fn permanent(error: impl Into<String>) -> Self {
        Failure {
            error: error.into(),
            permanent: true,
        }
    }
}

impl From<AppError> for Failure {
    fn from(err: AppError) -> Self {
        Failure::retry(err.to_string())
    }
}

impl Deliveries {
    /// The use cases and worker, woken by `store`'s outbox.
    pub fn new(store: Store, clock: Clock, tz: Tz, config: DeliveryConfig) -> Self {
        Deliveries {
            wake: store.outbox().wake.clone(),
            access: Access::new(store.clone()),
            webhooks: WebhookClient::new(config.allow_insecure_webhooks),
            store,
            clock,
            tz,
            config: Arc::new(config),
            background: None,
        }
    }

    /// This worker, rendering and encoding on `background`.
    pub fn with_background(mut self, background: Background) -> Self {
        self.background = Some(background);
        self
    }

    /// Runs CPU-heavy `work` on the background thread, or the blocking pool.
    async fn off_runtime<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Failure> {
        match &self.background {
            Some(background) => background.run(work).await.map_err(Failure::retry),
            None => tokio::task::spawn_blocking(work)
                .await
                .map_err(|err| Failure::retry(err.to_string())),
        }
    }

    /// Creates a webhook of `operator_id` receiving `events` at `url`;
    /// returns it with its signing secret, which is shown only here.
    pub async fn create_webhook(
        &self,
        principal: &Principal,
        operator_id: i64,
        url: &str,
        events: Vec<Event>,
    ) -> AppResult<(Webhook, String)> {
        access::may_manage_webhooks_of(principal, operator_id)?;
        check_webhook_url(url, self.config.allow_insecure_webhooks)?;
        self.store.operator(operator_id).await?;
        let secret = format!("whsec_{}", random_hex::<24>()?);
        let webhook = self
            .store
            .create_webhook(operator_id, url, &events, &secret, self.clock.now())
            .await?;
        Ok((webhook, secret))
    }

    /// A page of webhooks: an operator's own, an admin's of all operators
    /// or of `operator_id`.
    pub async fn list_webhooks(
        &self,
        principal: &Principal,
        operator_id: Option<i64>,
        after_id: i64,
        limit: u64,
    ) -> AppResult<Vec<Webhook>> {
        access::permits(principal, Action::ManageWebhooks)?;
        let operator = match access::operator_listing(principal, operator_id)? {
            CustomerScope::All => None,
            CustomerScope::Operator(id) => Some(id),
            CustomerScope::Customer(_) => {
                return Err(AppError::PermissionDenied(
                    "a customer may not manage webhooks".to_owned(),
                ));
            }
        };
        self.store.webhooks(operator, after_id, limit).await
    }

    /// Deletes webhook `webhook_id`; its pending deliveries then fail.
    /// Another operator's webhook is `NOT_FOUND`, as a missing one.
    pub async fn delete_webhook(&self, principal: &Principal, webhook_id: i64) -> AppResult<()> {
        access::permits(principal, Action::ManageWebhooks)?;
        let not_found = || AppError::not_found("webhook", webhook_id);
        let (webhook, _) = self
            .store
            .webhook(webhook_id)
            .await?
            .ok_or_else(not_found)?;
        if access::may_manage_webhooks_of(principal, webhook.operator_id).is_err() {
            return Err(not_found());
        }
        if self.store.delete_webhook(webhook_id).await? {
            Ok(())
        } else {
            Err(not_found())
        }
    }

    /// A page of the deliveries `principal` may see passing `filter`: an
    /// operator's customers', an admin's all.
    pub async fn list_deliveries(
        &self,
        principal: &Principal,
        mut filter: DeliveryFilter,
        after_id: i64,
        limit: u64,
    ) -> AppResult<Vec<Delivery>> {
        access::permits(principal, Action::ReadDeliveries)?;
        match access::customer_scope(principal) {
            CustomerScope::All => {}
            CustomerScope::Operator(id) => filter.operator_id = Some(id),
            CustomerScope::Customer(id) => filter.customer_id = Some(id),
        }
        self.store.deliveries(filter, after_id, limit).await
    }

    /// Makes failed delivery `delivery_id` (its public id) pending again,
    /// due now, with a fresh schedule.
    pub async fn retry_delivery(
        &self,
        principal: &Principal,
        delivery_id: &str,
    ) -> AppResult<Delivery> {
        access::permits(principal, Action::ReadDeliveries)?;
        let not_found = || AppError::NotFound(format!("delivery {delivery_id} not found"));
        let delivery = match self.store.delivery(delivery_id).await? {
            Some(d) if self.access.sees(principal, d.customer_id).await? => d,
            _ => return Err(not_found()),
        };
        if delivery.status != DeliveryStatus::Failed {
            return Err(AppError::FailedPrecondition(format!(
                "delivery {delivery_id} is {}; only a FAILED delivery is retried",
                delivery.status.as_str()
            )));
        }
        self.store
            .rearm_delivery(delivery.id, self.clock.now())
            .await?;
        self.wake.notify_one();
        self.store
            .delivery(delivery_id)
            .await?
            .ok_or_else(not_found)
    }

    /// The worker: until `stopping`, claims due deliveries and sends them,
    /// [`DELIVERY_CONCURRENCY`] at once.
    pub async fn run(self, mut stopping: Stopping) {
        loop {
            if *stopping.borrow() {
                return;
            }
            let now = self.clock.now();
            let lease = TimeDelta::from_std(DELIVERY_LEASE).unwrap_or(TimeDelta::MAX);
            match self
                .store
                .claim_deliveries(now, now + lease, DELIVERY_BATCH)
                .await
            {
                Ok(claimed) if !claimed.is_empty() => {
                    self.send(claimed).await;
                    continue;
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(error = %err.detail(), "deliveries: cannot claim");
                }
            }
            let wait = match self.store.next_delivery_due().await {
                Ok(Some(due)) => (due - self.clock.now())
                    .to_std()
                    .unwrap_or(Duration::ZERO)
                    .clamp(Duration::from_millis(10), DELIVERY_POLL),
                _ => DELIVERY_POLL,
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.wake.notified() => {}
                () = until_stopping(&mut stopping) => return,
            }
        }
    }

    /// Sends `claimed`, [`DELIVERY_CONCURRENCY`] at once, or
    /// [`DELIVERY_CONCURRENCY_BUSY`] while the replica is busy, recording
    /// the outcomes as they come, those finished together in one write.
    async fn send(&self, claimed: Vec<Delivery>) {
        let reads = &self.batch_reads(&claimed).await;
        let mut waiting = claimed.into_iter();
        let mut sending = FuturesUnordered::new();
        loop {
            let limit = if self.store.metrics().rpcs_in_progress() >= BUSY_RPCS {
                DELIVERY_CONCURRENCY_BUSY
            } else {
                DELIVERY_CONCURRENCY
            };
            while sending.len() < limit {
                let Some(delivery) = waiting.next() else {
                    break;
                };
                sending.push(async move {
                    let outcome = self.outcome(&delivery, reads).await;
                    (delivery.id, outcome)
                });
            }
            let Some(first) = sending.next().await else {
                return;
            };
            let mut finished = vec![first];
            while let Some(Some(more)) = sending.next().now_or_never() {
                finished.push(more);
            }
            if let Err(err) = self
                .store
                .finish_deliveries(&finished, self.clock.now())
                .await
            {
                // The leases lapse and the deliveries are attempted again.
                tracing::warn!(deliveries = finished.len(), error = %err.detail(), "deliveries: cannot record attempts");
            }
        }
    }

    /// What the deliveries of `claimed` read, read once for all: their
    /// invoices, webhooks and emails' customers. A failed read leaves each delivery to read its
    /// own.
    async fn batch_reads(&self, claimed: &[Delivery]) -> BatchReads {
        let mut reads = BatchReads::default();
        let mut invoice_ids: Vec<i64> = claimed.iter().filter_map(|d| d.invoice_id).collect();
        invoice_ids.sort_unstable();
        invoice_ids.dedup();
        match self.store.invoices_by_id(&invoice_ids).await {
            Ok(invoices) => {
                reads.invoices = invoices.into_iter().map(|i| (i.id, i)).collect();
            }
            Err(err) => tracing::warn!(error = %err.detail(), "deliveries: cannot read invoices"),
        }
        let mut customer_ids: Vec<i64> = claimed
            .iter()
            .filter(|d| d.channel == Channel::Email)
            .map(|d| d.customer_id)
            .collect();
        customer_ids.sort_unstable();
        customer_ids.dedup();
        match self.store.customers_by_id(&customer_ids).await {
            Ok(customers) => {
                reads.customers = customers.into_iter().map(|c| (c.id, c)).collect();
            }
            Err(err) => tracing::warn!(error = %err.detail(), "deliveries: cannot read customers"),
        }
        let mut webhook_ids: Vec<i64> = claimed.iter().filter_map(|d| d.webhook_id).collect();
        webhook_ids.sort_unstable();
        webhook_ids.dedup();
        for id in webhook_ids {
            if let Ok(webhook) = self.store.webhook(id).await {
                reads.webhooks.insert(id, webhook);
            }
        }
        reads
    }

    /// Invoice `invoice_id`, from `reads` or the database.
    async fn invoice(&self, invoice_id: i64, reads: &BatchReads) -> Result<Invoice, Failure> {
        if let Some(invoice) = reads.invoices.get(&invoice_id) {
            return Ok(invoice.clone());
        }
        self.store
            .invoice(invoice_id)
            .await?
            .ok_or_else(|| Failure::permanent("the invoice does not exist"))
    }

    /// Who an email's document names (each plan and operator read once
    /// per batch).
    async fn parties(
        &self,
        customer_id: i64,
        reads: &BatchReads,
    ) -> Result<(Customer, PlanKind, Option<Operator>), Failure> {
        let customer = match reads.customers.get(&customer_id) {
            Some(customer) => customer.clone(),
            None => self.store.customer(customer_id).await?,
        };
        reads
            .parties
            .of(&self.store, customer)
            .await
            .map_err(Failure::from)
    }

    /// One attempt at `delivery`, and how it ended.
    async fn outcome(&self, delivery: &Delivery, reads: &BatchReads) -> AttemptOutcome {
        let channel = match delivery.channel {
            Channel::Webhook => "webhook",
            Channel::Email => "email",
        };
        match self.attempt(delivery, reads).await {
            Ok(()) => {
                self.store.metrics().delivery(channel, "delivered");
                AttemptOutcome::Delivered
            }
            Err(failure) => {
                let attempts = u32::try_from(delivery.attempts).unwrap_or(u32::MAX);
                let retry_at = (!failure.permanent)
                    .then(|| self.config.retry_schedule.after_failures(attempts))
                    .flatten()
                    .map(|delay| {
                        self.clock.now() + TimeDelta::from_std(delay).unwrap_or(TimeDelta::MAX)
                    });
                tracing::info!(
                    delivery = delivery.public_id,
                    attempts,
                    error = failure.error,
                    retry_at = ?retry_at,
                    "delivery attempt failed"
                );
                let status = if retry_at.is_some() {
                    "pending"
                } else {
                    "failed"
                };
                self.store.metrics().delivery(channel, status);
                AttemptOutcome::Failed {
                    error: failure.error,
                    retry_at,
                }
            }
        }
    }

    async fn attempt(&self, delivery: &Delivery, reads: &BatchReads) -> Result<(), Failure> {
        match delivery.channel {
            Channel::Webhook => self.post(delivery, reads).await,
            Channel::Email => self.email(delivery, reads).await,
        }
    }

    async fn post(&self, delivery: &Delivery, reads: &BatchReads) -> Result<(), Failure> {
        let webhook_id = delivery
            .webhook_id
            .ok_or_else(|| Failure::permanent("the delivery names no webhook"))?;
        let webhook = match reads.webhooks.get(&webhook_id) {
            Some(webhook) => webhook.clone(),
            None => self.store.webhook(webhook_id).await?,
        };
        let (webhook, secret) =
            webhook.ok_or_else(|| Failure::permanent("the webhook was deleted"))?;
        let body = Bytes::from(self.event_body(delivery, reads).await?);
        // The wall clock's time, not the service's: a receiver checks it
        // against its own clock to refuse replays, also from a server
        // rehearsing a month end with `--clock-start`.
        let sent_at = chrono::Utc::now().timestamp();
        let signature = signature(&secret, sent_at, &body);
        self.webhooks
            .post(WebhookPost {
                url: &webhook.url,
                delivery_id: &delivery.public_id,
                event: delivery.event.as_str(),
                signature: &signature,
                body,
            })
            .await
            .map_err(Failure::retry)
    }

    /// The event's JSON: an invoice's is read from the invoice (issued
    /// invoices never change, so every attempt sends the same body); an
    /// alert's was stored when it happened.
    async fn event_body(
        &self,
        delivery: &Delivery,
        reads: &BatchReads,
    ) -> Result<Vec<u8>, Failure> {
        let data = match (delivery.event, delivery.invoice_id) {
            (Event::InvoiceIssued, Some(invoice_id)) => {
                events::invoice_issued_data(&self.invoice(invoice_id, reads).await?)
            }
            _ => serde_json::from_str(&delivery.payload)
                .map_err(|_| Failure::permanent("the stored event is not JSON"))?,
        };
        Ok(events::event_body(
            &delivery.public_id,
            delivery.event,
            delivery.created_at,
            data,
        ))
    }

    async fn email(&self, delivery: &Delivery, reads: &BatchReads) -> Result<(), Failure> {
        let mailer = self.config.mailer.as_ref().ok_or_else(|| {
            Failure::retry("email is not configured on this replica (serve --smtp-url)")
        })?;
        let (customer, plan_kind, issuer) = self.parties(delivery.customer_id, reads).await?;
        let to = customer
            .email
            .clone()
            .ok_or_else(|| Failure::permanent("the customer has no email address"))?;
        let email = match (delivery.event, delivery.invoice_id) {
            (Event::InvoiceIssued, Some(invoice_id)) => {
                let invoice = self.invoice(invoice_id, reads).await?;
                let tz = self.tz;
                let mailer = mailer.clone();
                self.off_runtime(move || {
                    let source = DocumentSource {
                        invoice: &invoice,
                        customer: &customer,
                        plan_kind,
                        issuer: issuer.as_ref(),
                        tz,
                    };
                    let text = events::invoice_email(source);
                    let pdf = document::render(source, DocumentFormat::Pdf);
                    mailer.compose(Email {
                        to,
                        subject: text.subject,
                        text: text.text,
                        html: text.html,
                        attachment: Some((pdf.file_name, pdf.content_type.to_owned(), pdf.content)),
                    })
                })
                .await?
            }
            (event, _) => {
                let alert = BalanceAlert::from_data(&delivery.payload)
                    .ok_or_else(|| Failure::permanent("the stored alert is not readable"))?;
                let text = events::balance_email(event, &customer, &alert);
                mailer.compose(Email {
                    to,
                    subject: text.subject,
                    text: text.text,
                    html: text.html,
                    attachment: None,
                })
            }
        }
        .map_err(Failure::permanent)?;
        mailer.send(&email).await.map_err(Failure::retry)
    }
}

/// What one claimed batch's deliveries read ([`Deliveries::batch_reads`]).
#[derive(Default)]
struct BatchReads {
    invoices: HashMap<i64, Invoice>,
    /// The customers of the batch's emails.
    customers: HashMap<i64, Customer>,
    /// Each webhook as read (`None`: deleted).
    webhooks: HashMap<i64, Option<(Webhook, String)>>,
    /// Filled as the batch's emails first need them.
    parties: DocumentParties,
}

fn random_hex<const N: usize>() -> AppResult<String> {
    random_bytes::<N>().map(hex::encode)
}
