//! NATS JetStream ingestion against the real NATS server
//! (`127.0.0.1:4222`, or `BILLING_TEST_NATS_URL`). Without one the tests
//! skip, saying so, unless `REQUIRE_NATS=1` (CI sets it): then a missing
//! server fails them.

use std::time::Duration;

use async_nats::jetstream;
use billing::grpc::pb::{self, PlanKind};
use prost::Message as _;
use tokio_stream::StreamExt;

use crate::helpers::{AppOptions, TestApp, spawn_app_with};

/// The NATS server to test against, or `None` (after saying so) when none
/// answers and none is required.
async fn nats_url() -> Option<String> {
    let url = std::env::var("BILLING_TEST_NATS_URL")
        .unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
    match async_nats::connect(url.as_str()).await {
        Ok(_) => Some(url),
        Err(err) if std::env::var("REQUIRE_NATS").is_ok_and(|v| v == "1") => {
            panic!("REQUIRE_NATS=1 needs a NATS server with JetStream at {url}: {err}")
        }
        Err(err) => {
            eprintln!("skipping: no NATS server at {url} ({err}); set BILLING_TEST_NATS_URL");
            None
        }
    }
}

/// Names no other test uses.
fn names() -> billing::nats::NatsIngest {
    let unique = format!(
        "{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    billing::nats::NatsIngest {
        url: String::new(),
        stream: format!("CALLS_{unique}"),
        subject: format!("test.{unique}.calls"),
        dead_letter: format!("test.{unique}.dead"),
        consumer: "billing".into(),
    }
}

async fn app_reading(
    config: &billing::nats::NatsIngest,
    database: Option<crate::helpers::Database>,
) -> TestApp {
    spawn_app_with(AppOptions {
        clock: billing::clock::Clock::starting_at(crate::helpers::at(crate::helpers::TEST_NOW)),
        nats: Some(config.clone()),
        database,
        ..AppOptions::default()
    })
    .await
}

/// Waits (at most a minute) until the consumer has every message of its
/// stream acknowledged.
async fn all_acknowledged(
    context: &jetstream::Context,
    config: &billing::nats::NatsIngest,
    published: u64,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(mut stream) = context.get_stream(&config.stream).await
            && let Ok(mut consumer) = stream
                .get_consumer::<jetstream::consumer::pull::Config>(&config.consumer)
                .await
            && let Ok(info) = consumer.info().await
            && info.ack_floor.stream_sequence >= published
            && info.num_ack_pending == 0
        {
            let _ = stream.info().await;
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not every NATS message was acknowledged within a minute"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn json(customer_id: i64, caller: &str, call_id: &str) -> bytes::Bytes {
    let customer = if customer_id == 0 {
        String::new()
    } else {
        format!("\"customerId\":\"{customer_id}\",")
    };
    let call_id = if call_id.is_empty() {
        String::new()
    } else {
        format!(",\"callId\":\"{call_id}\"")
    };
    format!(
        "{{{customer}\"durationSeconds\":\"60\",\"startedAt\":\"2026-06-20T10:00:00Z\",\
         \"callerNumber\":\"{caller}\",\"calleeNumber\":\"+12025550123\"{call_id}}}"
    )
    .into()
}

#[tokio::test]
async fn nats_messages_are_stored_once_and_unstorable_ones_go_to_the_dead_letter() {
    let Some(url) = nats_url().await else { return };
    let mut config = names();
    config.url = url.clone();
    let client = async_nats::connect(url.as_str()).await.unwrap();
    let context = jetstream::new(client);
    // The dead letters are kept where the test can read them.
    let mut dead = context
        .create_stream(jetstream::stream::Config {
            name: format!("{}_DEAD", config.stream),
            subjects: vec![config.dead_letter.clone()],
            ..Default::default()
        })
        .await
        .unwrap();
    let app = app_reading(&config, None).await;
    let plan = app.plan(PlanKind::Postpaid, 60_000, 1).await;
    let customer = app.long_standing_customer(plan.id, 1, vec![]).await;
    let number = customer.phone_number.clone();

    let mut binary_record = pb::AddCallRequest {
        call_id: "nats-binary".into(),
        caller_number: number.clone(),
        duration: Some(pb::add_call_request::Duration::DurationSeconds(30)),
        started_at: Some(crate::helpers::ts("2026-06-21T10:00:00Z")),
        ..Default::default()
    };
    binary_record.callee_number = "+12025550123".into();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Content-Type", "application/x-protobuf");
    let messages: Vec<(Option<async_nats::HeaderMap>, bytes::Bytes)> = vec![
        (None, json(customer.id, &number, "nats-1")),
        (None, json(0, &number, "nats-2")),
        (Some(headers), binary_record.encode_to_vec().into()),
        (None, json(0, &number, "")),
        // Delivered again: the same call.
        (None, json(customer.id, &number, "nats-1")),
        (None, "{not json".into()),
        (None, json(0, "+4930999999", "nats-nobody")),
    ];
    let published = messages.len() as u64;
    for (headers, payload) in messages {
        let ack = match headers {
            Some(headers) => context
                .publish_with_headers(config.subject.clone(), headers, payload)
                .await
                .unwrap(),
            None => context
                .publish(config.subject.clone(), payload)
                .await
                .unwrap(),
        };
        ack.await.unwrap();
    }
    all_acknowledged(&context, &config, published).await;

    let mut ids: Vec<String> = app
        .history(customer.id)
        .await
        .into_iter()
        .map(|c| c.call_id)
        .collect();
    ids.sort();
    // A record without call_id is keyed by its stream sequence.
    let keyed = format!("nats-{}-4", config.stream);
    let mut expected = vec!["nats-1", "nats-2", "nats-binary", keyed.as_str()];
    expected.sort_unstable();
    assert_eq!(ids, expected);

    let info = dead.info().await.unwrap();
    assert_eq!(info.state.messages, 2);
    let mut reasons = Vec::new();
    for sequence in 1..=2 {
        let message = dead.get_raw_message(sequence).await.unwrap();
        let headers = message.headers;
        let reason = headers.get("Billing-Reason").unwrap().as_str().to_owned();
        reasons.push(reason);
    }
    assert!(reasons[0].starts_with("not JSON"), "{reasons:?}");
    assert!(reasons[1].starts_with("caller_number"), "{reasons:?}");
    context.delete_stream(&config.stream).await.unwrap();
    context
        .delete_stream(format!("{}_DEAD", config.stream))
        .await
        .unwrap();
}

#[tokio::test]
async fn two_replicas_share_one_durable_consumer_and_store_each_message_once() {
    let Some(url) = nats_url().await else { return };
    let mut config = names();
    config.url = url.clone();
    let a = app_reading(&config, None).await;
    let b = app_reading(&config, Some(a.database.clone())).await;
    let plan = a.plan(PlanKind::Postpaid, 60_000, 1).await;
    let customer = a.long_standing_customer(plan.id, 1, vec![]).await;
    let client = async_nats::connect(url.as_str()).await.unwrap();
    let context = jetstream::new(client);
    const MESSAGES: u64 = 300;
    for n in 0..MESSAGES {
        context
            .publish(
                config.subject.clone(),
                json(0, &customer.phone_number, &format!("shared-{n}")),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    all_acknowledged(&context, &config, MESSAGES).await;
    let history = b.history(customer.id).await;
    let mut ids: Vec<&str> = history.iter().map(|c| c.call_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(
        (history.len(), ids.len()),
        (MESSAGES as usize, MESSAGES as usize)
    );
    context.delete_stream(&config.stream).await.unwrap();
}

#[tokio::test]
async fn a_message_never_acknowledged_is_redelivered_and_a_stored_one_comes_back_a_duplicate() {
    let Some(url) = nats_url().await else { return };
    let mut config = names();
    config.url = url.clone();
    let client = async_nats::connect(url.as_str()).await.unwrap();
    let context = jetstream::new(client);
    let stream = context
        .create_stream(jetstream::stream::Config {
            name: config.stream.clone(),
            subjects: vec![config.subject.clone()],
            ..Default::default()
        })
        .await
        .unwrap();
    // The durable consumer the servers share, redelivering after 1 s.
    let consumer: jetstream::consumer::PullConsumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some(config.consumer.clone()),
            filter_subject: config.subject.clone(),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(1),
            ..Default::default()
        })
        .await
        .unwrap();
    let first = crate::helpers::spawn_app().await;
    let plan = first.plan(PlanKind::Postpaid, 60_000, 1).await;
    let customer = first.long_standing_customer(plan.id, 1, vec![]).await;
    for call_id in ["redelivered-1", ""] {
        context
            .publish(
                config.subject.clone(),
                json(0, &customer.phone_number, call_id),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    // A replica takes both and dies before acknowledging them, having
    // committed the second one's call (keyed by its stream sequence).
    let mut taken = consumer.fetch().max_messages(2).messages().await.unwrap();
    let mut delivered = 0;
    while let Some(message) = taken.next().await {
        message.unwrap();
        delivered += 1;
    }
    assert_eq!(delivered, 2);
    let mut committed = crate::helpers::call(0, 60);
    committed.caller_number = customer.phone_number.clone();
    committed.callee_number = "+12025550123".into();
    committed.started_at = Some(crate::helpers::ts("2026-06-20T10:00:00Z"));
    committed.call_id = format!("nats-{}-2", config.stream);
    first.calls.clone().add_call(committed).await.unwrap();

    let second = app_reading(&config, Some(first.database.clone())).await;
    all_acknowledged(&context, &config, 2).await;
    let mut ids: Vec<String> = second
        .history(customer.id)
        .await
        .into_iter()
        .map(|c| c.call_id)
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        [
            format!("nats-{}-2", config.stream),
            "redelivered-1".to_owned()
        ]
    );
    let mut consumer = consumer;
    // Two deliveries to the replica that died, two redeliveries after.
    assert!(consumer.info().await.unwrap().delivered.consumer_sequence >= 4);
    context.delete_stream(&config.stream).await.unwrap();
}
