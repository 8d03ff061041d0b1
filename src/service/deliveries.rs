//! Deliveries: the webhook and delivery use cases (who may manage and see
//! what), and the worker every replica runs, which claims due deliveries
//! from the outbox, sends them and records each attempt.
//!
//! At least once: a delivery is marked delivered only after its receiver
//! accepted it, so a worker that dies between the two leaves it to be sent
//! again once its lease lapses, with the same `Billing-Delivery-Id`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::TimeDelta;
use chrono_tz::Tz;
use futures_util::StreamExt;
use tokio::sync::Notify;

use super::Access;
use super::invoicing::document_parties;
use crate::clock::Clock;
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
use crate::error::{AppError, AppResult};
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
/// Deliveries a worker sends at once.
pub const DELIVERY_CONCURRENCY: usize = 16;
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
    /// The use cases and worker; `wake` wakes the worker when this process
    /// writes deliveries.
    pub fn new(
        store: Store,
        clock: Clock,
        tz: Tz,
        config: DeliveryConfig,
        wake: Arc<Notify>,
    ) -> Self {
        Deliveries {
            access: Access::new(store.clone()),
            webhooks: WebhookClient::new(config.allow_insecure_webhooks),
            store,
            clock,
            tz,
            config: Arc::new(config),
            wake,
        }
    }

    /// What wakes this process's worker: notified after deliveries are
    /// written here, so they go out at once rather than at the next poll.
    pub fn wake(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Whether invoices and alerts are emailed (`--smtp-url` is set).
    pub fn email_on(&self) -> bool {
        self.config.mailer.is_some()
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
                    futures_util::stream::iter(claimed)
                        .for_each_concurrent(DELIVERY_CONCURRENCY, |d| self.deliver(d))
                        .await;
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

    /// One attempt at `delivery`, recorded.
    async fn deliver(&self, delivery: Delivery) {
        let outcome = match self.attempt(&delivery).await {
            Ok(()) => AttemptOutcome::Delivered,
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
                AttemptOutcome::Failed {
                    error: failure.error,
                    retry_at,
                }
            }
        };
        if let Err(err) = self
            .store
            .finish_delivery(delivery.id, &outcome, self.clock.now())
            .await
        {
            // The lease lapses and the delivery is attempted again.
            tracing::warn!(delivery = delivery.public_id, error = %err.detail(), "deliveries: cannot record an attempt");
        }
    }

    async fn attempt(&self, delivery: &Delivery) -> Result<(), Failure> {
        match delivery.channel {
            Channel::Webhook => self.post(delivery).await,
            Channel::Email => self.email(delivery).await,
        }
    }

    async fn post(&self, delivery: &Delivery) -> Result<(), Failure> {
        let webhook_id = delivery
            .webhook_id
            .ok_or_else(|| Failure::permanent("the delivery names no webhook"))?;
        let (webhook, secret) = self
            .store
            .webhook(webhook_id)
            .await?
            .ok_or_else(|| Failure::permanent("the webhook was deleted"))?;
        let body = Bytes::from(self.event_body(delivery).await?);
        let sent_at = self.clock.now().timestamp();
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
    async fn event_body(&self, delivery: &Delivery) -> Result<Vec<u8>, Failure> {
        let data = match (delivery.event, delivery.invoice_id) {
            (Event::InvoiceIssued, Some(invoice_id)) => {
                let invoice = self
                    .store
                    .invoice(invoice_id)
                    .await?
                    .ok_or_else(|| Failure::permanent("the invoice does not exist"))?;
                events::invoice_issued_data(&invoice)
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

    async fn email(&self, delivery: &Delivery) -> Result<(), Failure> {
        let mailer = self.config.mailer.as_ref().ok_or_else(|| {
            Failure::retry("email is not configured on this replica (serve --smtp-url)")
        })?;
        let (customer, plan_kind, issuer) =
            document_parties(&self.store, delivery.customer_id).await?;
        let to = customer
            .email
            .clone()
            .ok_or_else(|| Failure::permanent("the customer has no email address"))?;
        let email = match (delivery.event, delivery.invoice_id) {
            (Event::InvoiceIssued, Some(invoice_id)) => {
                let invoice = self
                    .store
                    .invoice(invoice_id)
                    .await?
                    .ok_or_else(|| Failure::permanent("the invoice does not exist"))?;
                let tz = self.tz;
                let (text, pdf) = tokio::task::spawn_blocking(move || {
                    let source = DocumentSource {
                        invoice: &invoice,
                        customer: &customer,
                        plan_kind,
                        issuer: issuer.as_ref(),
                        tz,
                    };
                    (
                        events::invoice_email(source),
                        document::render(source, DocumentFormat::Pdf),
                    )
                })
                .await
                .map_err(|err| Failure::retry(err.to_string()))?;
                Email {
                    to,
                    subject: text.subject,
                    text: text.text,
                    html: text.html,
                    attachment: Some((pdf.file_name, pdf.content_type.to_owned(), pdf.content)),
                }
            }
            (event, _) => {
                let alert = BalanceAlert::from_data(&delivery.payload)
                    .ok_or_else(|| Failure::permanent("the stored alert is not readable"))?;
                let text = events::balance_email(event, &customer, &alert);
                Email {
                    to,
                    subject: text.subject,
                    text: text.text,
                    html: text.html,
                    attachment: None,
                }
            }
        };
        mailer.send(email).await.map_err(Failure::retry)
    }
}

fn random_hex<const N: usize>() -> AppResult<String> {
    random_bytes::<N>().map(hex::encode)
}
