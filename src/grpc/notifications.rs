//! NotificationService: webhooks and the delivery outbox.

use tonic::{Request, Response, Status};

use super::IdPage;
use super::auth::caller_may;
use super::convert::timestamp;
use super::pb::{self, notification_service_server::NotificationService};
use crate::domain::access::Action;
use crate::domain::delivery::{Channel, DeliveryStatus, Event, Webhook};
use crate::domain::validation as valid;
use crate::error::AppError;
use crate::service::Deliveries;
use crate::storage::{Delivery, DeliveryFilter};

/// The NotificationService handlers.
#[derive(Debug, Clone)]
pub struct NotificationApi {
    deliveries: Deliveries,
}

impl NotificationApi {
    pub fn new(deliveries: Deliveries) -> Self {
        NotificationApi { deliveries }
    }
}

fn webhook_pb(webhook: Webhook, secret: String) -> pb::Webhook {
    let Webhook {
        id,
        operator_id,
        url,
        events,
        created_at,
    } = webhook;
    pb::Webhook {
        id,
        operator_id,
        url,
        events: events.iter().map(|e| e.as_str().to_owned()).collect(),
        secret,
        create_time: Some(timestamp(created_at)),
    }
}

fn delivery_pb(delivery: Delivery) -> pb::Delivery {
    let Delivery {
        id: _,
        public_id,
        event,
        channel,
        webhook_id,
        customer_id,
        invoice_id,
        status,
        attempts,
        last_error,
        next_attempt_at,
        created_at,
        delivered_at,
        payload: _,
    } = delivery;
    pb::Delivery {
        id: public_id,
        event: event.as_str().to_owned(),
        channel: match channel {
            Channel::Email => pb::DeliveryChannel::Email,
            Channel::Webhook => pb::DeliveryChannel::Webhook,
        }
        .into(),
        webhook_id: webhook_id.unwrap_or(0),
        customer_id,
        invoice_id: invoice_id.unwrap_or(0),
        status: match status {
            DeliveryStatus::Pending => pb::DeliveryStatus::Pending,
            DeliveryStatus::Delivered => pb::DeliveryStatus::Delivered,
            DeliveryStatus::Failed => pb::DeliveryStatus::Failed,
        }
        .into(),
        attempts,
        last_error,
        next_attempt_time: next_attempt_at.map(timestamp),
        create_time: Some(timestamp(created_at)),
        deliver_time: delivered_at.map(timestamp),
    }
}

/// The events named, all of them when none is; unknown names are
/// `INVALID_ARGUMENT`, repeats are dropped.
fn events_of(names: &[String]) -> Result<Vec<Event>, AppError> {
    if names.is_empty() {
        return Ok(Event::ALL.to_vec());
    }
    let mut events = Vec::with_capacity(names.len());
    for name in names {
        let event = Event::parse(name).ok_or_else(|| {
            AppError::invalid(
                "events",
                format!(
                    "{name:?} is not an event (invoice.issued, balance.low, balance.recovered)"
                ),
            )
        })?;
        if !events.contains(&event) {
            events.push(event);
        }
    }
    events.sort();
    Ok(events)
}

#[tonic::async_trait]
impl NotificationService for NotificationApi {
    async fn create_webhook(
        &self,
        request: Request<pb::CreateWebhookRequest>,
    ) -> Result<Response<pb::Webhook>, Status> {
        let principal = caller_may(&request, Action::ManageWebhooks)?;
        let pb::CreateWebhookRequest {
            operator_id,
            url,
            events,
        } = request.into_inner();
        let operator_id = valid::id("operator_id", operator_id)?;
        if url.trim().is_empty() {
            return Err(AppError::invalid("url", "is required").into());
        }
        let events = events_of(&events)?;
        let (webhook, secret) = self
            .deliveries
            .create_webhook(&principal, operator_id, url.trim(), events)
            .await?;
        Ok(Response::new(webhook_pb(webhook, secret)))
    }

    async fn list_webhooks(
        &self,
        request: Request<pb::ListWebhooksRequest>,
    ) -> Result<Response<pb::ListWebhooksResponse>, Status> {
        let principal = caller_may(&request, Action::ManageWebhooks)?;
        let pb::ListWebhooksRequest {
            operator_id,
            page_size,
            page_token,
        } = request.into_inner();
        let operator_id = valid::optional_id("operator_id", operator_id)?;
        let page = IdPage::of(
            "webhooks",
            vec![operator_id.unwrap_or(0)],
            page_size,
            &page_token,
        )?;
        let webhooks = self
            .deliveries
            .list_webhooks(&principal, operator_id, page.after_id, page.fetch())
            .await?;
        let (webhooks, next_page_token) = page.finish(webhooks, |w| w.id);
        Ok(Response::new(pb::ListWebhooksResponse {
            webhooks: webhooks
                .into_iter()
                .map(|w| webhook_pb(w, String::new()))
                .collect(),
            next_page_token,
        }))
    }

    async fn delete_webhook(
        &self,
        request: Request<pb::DeleteWebhookRequest>,
    ) -> Result<Response<pb::DeleteWebhookResponse>, Status> {
        let principal = caller_may(&request, Action::ManageWebhooks)?;
        let pb::DeleteWebhookRequest { webhook_id } = request.into_inner();
        let webhook_id = valid::id("webhook_id", webhook_id)?;
        self.deliveries
            .delete_webhook(&principal, webhook_id)
            .await?;
        Ok(Response::new(pb::DeleteWebhookResponse {}))
    }

    async fn list_deliveries(
        &self,
        request: Request<pb::ListDeliveriesRequest>,
    ) -> Result<Response<pb::ListDeliveriesResponse>, Status> {
        let principal = caller_may(&request, Action::ReadDeliveries)?;
        let pb::ListDeliveriesRequest {
            invoice_id,
            customer_id,
            status,
            page_size,
            page_token,
        } = request.into_inner();
        let invoice_id = valid::optional_id("invoice_id", invoice_id)?;
        let customer_id = valid::optional_id("customer_id", customer_id)?;
        let status_code = status;
        let status = match pb::DeliveryStatus::try_from(status) {
            Ok(pb::DeliveryStatus::Unspecified) => None,
            Ok(pb::DeliveryStatus::Pending) => Some(DeliveryStatus::Pending),
            Ok(pb::DeliveryStatus::Delivered) => Some(DeliveryStatus::Delivered),
            Ok(pb::DeliveryStatus::Failed) => Some(DeliveryStatus::Failed),
            Err(_) => {
                return Err(AppError::invalid("status", "is not a DeliveryStatus").into());
            }
        };
        let page = IdPage::of(
            "deliveries",
            vec![
                invoice_id.unwrap_or(0),
                customer_id.unwrap_or(0),
                i64::from(status_code),
            ],
            page_size,
            &page_token,
        )?;
        let filter = DeliveryFilter {
            operator_id: None,
            customer_id,
            invoice_id,
            status,
        };
        let deliveries = self
            .deliveries
            .list_deliveries(&principal, filter, page.after_id, page.fetch())
            .await?;
        let (deliveries, next_page_token) = page.finish(deliveries, |d| d.id);
        Ok(Response::new(pb::ListDeliveriesResponse {
            deliveries: deliveries.into_iter().map(delivery_pb).collect(),
            next_page_token,
        }))
    }

    async fn retry_delivery(
        &self,
        request: Request<pb::RetryDeliveryRequest>,
    ) -> Result<Response<pb::Delivery>, Status> {
        let principal = caller_may(&request, Action::ReadDeliveries)?;
        let pb::RetryDeliveryRequest { delivery_id } = request.into_inner();
        let delivery_id = delivery_id.trim();
        // Ids are `dlv_` and hex digits; anything else (a NUL byte, which
        // PostgreSQL text refuses, included) cannot name a delivery.
        if delivery_id.is_empty()
            || delivery_id.len() > 64
            || !delivery_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(AppError::invalid(
                "delivery_id",
                "must be a Delivery.id (dlv_ and hex digits)",
            )
            .into());
        }
        let delivery = self
            .deliveries
            .retry_delivery(&principal, delivery_id)
            .await?;
        Ok(Response::new(delivery_pb(delivery)))
    }
}
