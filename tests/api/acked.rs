//! `StreamCalls`: a long-lived stream acknowledged after each commit. A
//! switch that disconnects and replays everything after its last
//! acknowledgement stores every record exactly once.

use std::time::Duration;

use billing::grpc::pb::{self, PlanKind};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

use crate::helpers::{AppOptions, TestApp, call, spawn_app_with};

/// A server that commits a stream's records within 100 ms.
async fn app() -> TestApp {
    spawn_app_with(AppOptions {
        clock: billing::clock::Clock::starting_at(crate::helpers::at(crate::helpers::TEST_NOW)),
        limits: billing::app::Limits {
            ingest_flush_interval: Duration::from_millis(100),
            ..billing::app::Limits::default()
        },
        ..AppOptions::default()
    })
    .await
}

/// An open StreamCalls stream: where records go and where acks come from.
struct Open {
    records: mpsc::Sender<pb::AddCallRequest>,
    acks: tonic::Streaming<pb::IngestAck>,
}

async fn open(app: &TestApp) -> Open {
    let (records, stream) = mpsc::channel(64);
    let acks = app
        .calls
        .clone()
        .stream_calls(ReceiverStream::new(stream))
        .await
        .expect("stream opens")
        .into_inner();
    Open { records, acks }
}

impl Open {
    /// The next acknowledgement, within 10 s.
    async fn ack(&mut self) -> pb::IngestAck {
        tokio::time::timeout(Duration::from_secs(10), self.acks.next())
            .await
            .expect("an acknowledgement within 10 s")
            .expect("the stream goes on")
            .expect("an acknowledgement, not an error")
    }

    /// Acknowledgements until one covers `count` records; checks that each
    /// moves `next_index` forward and that its errors lie below it.
    async fn acks_until(&mut self, count: i64, last: &mut i64) -> Vec<pb::IngestAck> {
        let mut acks = Vec::new();
        while *last < count {
            let ack = self.ack().await;
            assert!(ack.next_index > *last, "{ack:?} after {last}");
            for error in &ack.errors {
                assert!(
                    *last <= error.index && error.index < ack.next_index,
                    "{ack:?}"
                );
            }
            assert_eq!(ack.rejected, ack.errors.len() as i64);
            *last = ack.next_index;
            acks.push(ack);
        }
        acks
    }
}

fn record(customer_id: i64, n: usize) -> pb::AddCallRequest {
    let mut record = call(customer_id, 60);
    record.call_id = format!("acked-{n}");
    record
}

#[tokio::test]
async fn each_commit_is_acknowledged_while_the_stream_stays_open() {
    let app = app().await;
    let plan = app.plan(PlanKind::Postpaid, 60_000, 1).await;
    let customer = app.long_standing_customer(plan.id, 1, vec![]).await;
    let mut stream = open(&app).await;
    let mut last = 0;
    for n in 0..3 {
        stream.records.send(record(customer.id, n)).await.unwrap();
        let acks = stream.acks_until(n as i64 + 1, &mut last).await;
        assert_eq!(acks.iter().map(|a| a.accepted).sum::<i64>(), 1);
        // Durable once acknowledged.
        assert_eq!(app.history(customer.id).await.len(), n + 1);
    }
    // Rejected records are settled too, with their errors in the ack that
    // covers them.
    let mut bad = record(customer.id, 3);
    bad.caller_number = "not a number".into();
    stream.records.send(bad).await.unwrap();
    stream.records.send(record(999, 4)).await.unwrap();
    stream.records.send(record(customer.id, 5)).await.unwrap();
    let acks = stream.acks_until(6, &mut last).await;
    let errors: Vec<(i64, i32)> = acks
        .iter()
        .flat_map(|a| a.errors.iter().map(|e| (e.index, e.code)))
        .collect();
    assert_eq!(
        errors,
        [
            (3, Code::InvalidArgument as i32),
            (4, Code::NotFound as i32)
        ]
    );
    assert_eq!(acks.iter().map(|a| a.accepted).sum::<i64>(), 1);
    drop(stream.records);
    assert!(stream.acks.next().await.is_none(), "ends cleanly");
}

#[tokio::test]
async fn a_switch_that_reconnects_and_replays_after_its_last_ack_stores_every_record_once() {
    let app = app().await;
    let plan = app.plan(PlanKind::Prepaid, 60_000, 1).await;
    let customer = app.long_standing_customer(plan.id, 1, vec![]).await;
    const RECORDS: usize = 3_000;
    let records: Vec<pb::AddCallRequest> = (0..RECORDS).map(|n| record(customer.id, n)).collect();

    // The first connection is acknowledged for its first third, then sends
    // the rest and is cut off before it hears more.
    let mut first = open(&app).await;
    for record in &records[..RECORDS / 3] {
        first.records.send(record.clone()).await.unwrap();
    }
    let ack = first.ack().await;
    let acked = usize::try_from(ack.next_index).unwrap();
    let mut accepted = ack.accepted;
    assert!((1..=RECORDS / 3).contains(&acked), "{ack:?}");
    for record in &records[RECORDS / 3..] {
        first.records.send(record.clone()).await.unwrap();
    }
    drop(first);

    // The second replays from the last acknowledgement.
    let mut second = open(&app).await;
    for record in &records[acked..] {
        second.records.send(record.clone()).await.unwrap();
    }
    let mut last = 0;
    let acks = second.acks_until((RECORDS - acked) as i64, &mut last).await;
    accepted += acks.iter().map(|a| a.accepted).sum::<i64>();
    let duplicates: i64 = acks.iter().map(|a| a.duplicates).sum();
    assert_eq!(acks.iter().map(|a| a.rejected).sum::<i64>(), 0);
    // Whatever the first connection stored beyond its ack comes back as
    // duplicates; nothing is stored or debited twice.
    let history = app.history(customer.id).await;
    assert_eq!(history.len(), RECORDS);
    let mut ids: Vec<&str> = history.iter().map(|c| c.call_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), RECORDS);
    assert!(accepted <= RECORDS as i64);
    assert_eq!(
        accepted + duplicates,
        (RECORDS - acked) as i64 + ack.accepted
    );
    assert_eq!(
        app.get_customer(customer.id).await.balance_micros,
        -60_000 * RECORDS as i64
    );
}

#[tokio::test]
async fn a_server_shutting_down_acknowledges_what_it_read_and_ends_the_stream_unavailable() {
    let mut app = app().await;
    let plan = app.plan(PlanKind::Postpaid, 60_000, 1).await;
    let customer = app.long_standing_customer(plan.id, 1, vec![]).await;
    let mut stream = open(&app).await;
    let mut last = 0;
    stream.records.send(record(customer.id, 0)).await.unwrap();
    stream.acks_until(1, &mut last).await;
    stream.records.send(record(customer.id, 1)).await.unwrap();
    app.begin_shutdown();
    // Whatever the server read is acknowledged before the stream ends.
    let mut acknowledged = last;
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.acks.next())
            .await
            .expect("the stream ends within 10 s of the shutdown")
        {
            Some(Ok(ack)) => acknowledged = ack.next_index,
            Some(Err(status)) => break status,
            None => panic!("the stream ended without saying why"),
        }
    };
    assert_eq!(ended.code(), Code::Unavailable, "{ended:?}");
    assert!(ended.message().contains("next_index"), "{ended:?}");
    assert!((1..=2).contains(&acknowledged));
}
