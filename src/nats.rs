//! Call records from NATS JetStream (`serve --ingest-nats`).
//!
//! A durable pull consumer (shared by every replica, so each message goes
//! to one of them at a time) reads the stream's subject in batches. Each
//! message holds one `AddCallRequest`: its proto3 JSON form, or its binary
//! protobuf when the message's `Content-Type` header is
//! `application/x-protobuf`. A batch is charged and stored like a batch of
//! a gRPC stream, and each message is acknowledged only after its call is
//! committed; a message the database could not take now is
//! negatively acknowledged and redelivered. A redelivered message is a
//! duplicate by its `call_id`; a record without one is given
//! `nats-<stream>-<sequence>`, so its redelivery is one too. A message that
//! can never be stored (unreadable, or refused as AddCall would refuse it)
//! is published to the dead-letter subject with the reason in its
//! `Billing-Reason` header, then acknowledged.
//!
//! Records are charged with full access (the broker is the operator's
//! infrastructure, not a tenant).

use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use futures_util::StreamExt;
use prost::Message as _;

use crate::domain::access::Principal;
use crate::domain::model::{CallRecord, NewCall, StoredCall};
use crate::error::AppError;
use crate::grpc::pb;
use crate::metrics::{CallResult, CallSource};
use crate::service::Calls;
use crate::service::calls::CustomerCache;
use crate::shutdown::{Stopping, until_stopping};

/// Messages read and stored per batch, at most.
pub const NATS_BATCH: usize = 1_000;
/// How long a batch waits to fill before what it has is stored.
pub const NATS_BATCH_WAIT: Duration = Duration::from_millis(500);
/// How long the broker waits for an acknowledgement before it redelivers.
const ACK_WAIT: Duration = Duration::from_secs(60);
/// Pause before reconnecting after the broker or the database failed.
const RETRY_PAUSE: Duration = Duration::from_secs(2);

/// Where call records come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsIngest {
    /// The server, e.g. `nats://127.0.0.1:4222`. Never printed.
    pub url: String,
    /// The stream; created over `subject` when it does not exist.
    pub stream: String,
    pub subject: String,
    /// Where messages that can never be stored go.
    pub dead_letter: String,
    /// The durable consumer every replica shares.
    pub consumer: String,
}

/// Reads call records until `stopping`, reconnecting after failures.
pub async fn run(calls: Calls, config: NatsIngest, mut stopping: Stopping) {
    loop {
        tokio::select! {
            ended = consume(&calls, &config) => {
                if let Err(err) = ended {
                    tracing::warn!(error = %err, "NATS ingestion stopped; reconnecting");
                }
            }
            () = until_stopping(&mut stopping) => return,
        }
        tokio::select! {
            () = tokio::time::sleep(RETRY_PAUSE) => {}
            () = until_stopping(&mut stopping) => return,
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn consume(calls: &Calls, config: &NatsIngest) -> Result<(), BoxError> {
    let client = async_nats::connect(config.url.as_str()).await?;
    let context = jetstream::new(client);
    let stream = context
        .get_or_create_stream(jetstream::stream::Config {
            name: config.stream.clone(),
            subjects: vec![config.subject.clone()],
            ..Default::default()
        })
        .await?;
    let consumer: PullConsumer = stream
        .get_or_create_consumer(
            &config.consumer,
            jetstream::consumer::pull::Config {
                durable_name: Some(config.consumer.clone()),
                filter_subject: config.subject.clone(),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: ACK_WAIT,
                ..Default::default()
            },
        )
        .await?;
    tracing::info!(stream = %config.stream, subject = %config.subject, "reading calls from NATS");
    let principal = Principal::System("nats");
    let mut customers = CustomerCache::new();
    loop {
        let mut batch = consumer
            .batch()
            .max_messages(NATS_BATCH)
            .expires(NATS_BATCH_WAIT)
            .messages()
            .await?;
        let mut messages = Vec::new();
        while let Some(message) = batch.next().await {
            messages.push(message?);
        }
        if messages.is_empty() {
            continue;
        }
        let mut prepared: Vec<(jetstream::Message, NewCall)> = Vec::with_capacity(messages.len());
        let mut unread = messages.into_iter();
        while let Some(message) = unread.next() {
            match prepare(calls, &principal, &message, &mut customers).await {
                Ok(new) => prepared.push((message, new)),
                Err(Unstorable::Invalid(reason)) => {
                    dead_letter(calls, &context, config, message, &reason).await?
                }
                Err(Unstorable::NotNow(err)) => {
                    // The whole batch comes back after the pause, not after
                    // the ack wait.
                    let batch = prepared.into_iter().map(|(m, _)| m);
                    for message in batch.chain([message]).chain(unread) {
                        message.ack_with(AckKind::Nak(Some(RETRY_PAUSE))).await?;
                    }
                    return Err(err.into());
                }
            }
        }
        let (messages, batch): (Vec<_>, Vec<_>) = prepared.into_iter().unzip();
        match calls.store(&principal, batch).await {
            Ok((_, outcomes)) => {
                for (message, outcome) in messages.into_iter().zip(outcomes) {
                    match outcome {
                        Ok(StoredCall::Inserted(_)) => {
                            calls
                                .metrics()
                                .calls(CallSource::Nats, CallResult::Accepted, 1);
                            message.ack().await?;
                        }
                        Ok(StoredCall::Duplicate(_)) => {
                            calls
                                .metrics()
                                .calls(CallSource::Nats, CallResult::Duplicate, 1);
                            message.ack().await?;
                        }
                        // Numbers kept changing hands while the call was
                        // charged: it is charged again when redelivered.
                        Err(AppError::Aborted(_)) => {
                            message.ack_with(AckKind::Nak(Some(RETRY_PAUSE))).await?;
                        }
                        Err(err) => {
                            dead_letter(calls, &context, config, message, &err.to_string()).await?
                        }
                    }
                }
            }
            Err(err) => {
                for message in messages {
                    message.ack_with(AckKind::Nak(Some(RETRY_PAUSE))).await?;
                }
                return Err(err.into());
            }
        }
    }
}

/// Why a message's call cannot be stored.
enum Unstorable {
    /// Never: the message goes to the dead letter with this reason.
    Invalid(String),
    /// Not now (the database is unavailable): redelivered after a pause.
    NotNow(AppError),
}

/// The call `message` carries, read, checked and charged.
async fn prepare(
    calls: &Calls,
    principal: &Principal,
    message: &jetstream::Message,
    customers: &mut CustomerCache,
) -> Result<NewCall, Unstorable> {
    let record = record_of(message).map_err(Unstorable::Invalid)?;
    calls
        .prepare(principal, record, customers)
        .await
        .map_err(|err| match err {
            AppError::Unavailable(_) => Unstorable::NotNow(err),
            err => Unstorable::Invalid(err.to_string()),
        })
}

/// Publishes `message` to the dead-letter subject with `reason`, then
/// acknowledges it.
async fn dead_letter(
    calls: &Calls,
    context: &jetstream::Context,
    config: &NatsIngest,
    message: jetstream::Message,
    reason: &str,
) -> Result<(), BoxError> {
    calls
        .metrics()
        .calls(CallSource::Nats, CallResult::Rejected, 1);
    let mut headers = message.headers.clone().unwrap_or_default();
    headers.insert("Billing-Reason", reason);
    headers.insert("Billing-Subject", message.subject.as_str());
    // Stored durably when a stream captures the dead-letter subject.
    match context
        .publish_with_headers(
            config.dead_letter.clone(),
            headers.clone(),
            message.payload.clone(),
        )
        .await
    {
        Ok(ack) => {
            if ack.await.is_err() {
                context
                    .client()
                    .publish_with_headers(
                        config.dead_letter.clone(),
                        headers,
                        message.payload.clone(),
                    )
                    .await?;
            }
        }
        Err(err) => return Err(err.into()),
    }
    tracing::info!(reason, "NATS message sent to the dead letter");
    message.ack().await?;
    Ok(())
}

/// The call record a message holds.
fn record_of(message: &jetstream::Message) -> Result<CallRecord, String> {
    let protobuf = message
        .headers
        .as_ref()
        .and_then(|h| h.get("Content-Type"))
        .is_some_and(|v| v.as_str() == "application/x-protobuf");
    let mut request = if protobuf {
        pb::AddCallRequest::decode(message.payload.as_ref())
            .map_err(|err| format!("not an AddCallRequest in protobuf: {err}"))?
    } else {
        request_from_json(&message.payload)?
    };
    if request.call_id.is_empty()
        && let Ok(info) = message.info()
    {
        request.call_id = format!("nats-{}-{}", info.stream, info.stream_sequence);
    }
    CallRecord::try_from(request).map_err(|err| err.to_string())
}

/// An `AddCallRequest` from its proto3 JSON form: field names in
/// lowerCamelCase or as in the proto, 64-bit integers as numbers or
/// strings, `startedAt` as RFC 3339. Unknown fields are refused.
pub fn request_from_json(bytes: &[u8]) -> Result<pb::AddCallRequest, String> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|err| format!("not JSON: {err}"))?;
    let serde_json::Value::Object(fields) = value else {
        return Err("not a JSON object".into());
    };
    let mut request = pb::AddCallRequest::default();
    for (name, value) in fields {
        if value.is_null() {
            continue;
        }
        match name.as_str() {
            "customerId" | "customer_id" => request.customer_id = int64(&name, &value)?,
            "durationSeconds" | "duration_seconds" => {
                request.duration = Some(pb::add_call_request::Duration::DurationSeconds(int64(
                    &name, &value,
                )?));
            }
            "minutes" => {
                request.duration = Some(pb::add_call_request::Duration::Minutes(int64(
                    &name, &value,
                )?));
            }
            "startedAt" | "started_at" => {
                let text = string(&name, &value)?;
                let at = chrono::DateTime::parse_from_rfc3339(&text)
                    .map_err(|_| format!("{name}: {text:?} is not an RFC 3339 time"))?;
                request.started_at = Some(crate::grpc::convert::timestamp(at.to_utc()));
            }
            "callId" | "call_id" => request.call_id = string(&name, &value)?,
            "callerNumber" | "caller_number" => request.caller_number = string(&name, &value)?,
            "calleeNumber" | "callee_number" => request.callee_number = string(&name, &value)?,
            other => return Err(format!("{other}: not a field of AddCallRequest")),
        }
    }
    Ok(request)
}

fn int64(name: &str, value: &serde_json::Value) -> Result<i64, String> {
    match value {
        serde_json::Value::Number(n) => n.as_i64(),
        serde_json::Value::String(s) => s.parse().ok(),
        _ => None,
    }
    .ok_or_else(|| format!("{name}: not a 64-bit integer"))
}

fn string(name: &str, value: &serde_json::Value) -> Result<String, String> {
    value
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("{name}: not a string"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proto3_json_takes_either_field_name_and_integers_as_strings() {
        let request = request_from_json(
            br#"{"customerId":"7","duration_seconds":95,"startedAt":"2026-06-01T10:00:00Z",
                 "callId":"c-1","callerNumber":"+14155550100","callee_number":"+12025550123"}"#,
        )
        .unwrap();
        assert_eq!(request.customer_id, 7);
        assert_eq!(
            request.duration,
            Some(pb::add_call_request::Duration::DurationSeconds(95))
        );
        assert_eq!(request.started_at.unwrap().seconds, 1_780_308_000);
        assert_eq!(request.call_id, "c-1");
        assert!(
            request_from_json(br#"{"customer":1}"#)
                .unwrap_err()
                .starts_with("customer")
        );
        assert!(request_from_json(b"[1]").is_err());
        assert!(
            request_from_json(br#"{"minutes":"x"}"#)
                .unwrap_err()
                .starts_with("minutes")
        );
    }
}
