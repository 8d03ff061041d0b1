//! IngestCalls: the switch's bulk path.

use billing::grpc::pb::{self, PlanKind, add_call_request::Duration};
use tonic::Code;

use crate::helpers::{call, spawn_app, ts};

#[tokio::test]
async fn a_mixed_stream_stores_every_good_record_and_reports_each_bad_one() {
    let app = spawn_app().await;
    let plan = app.plan(PlanKind::Prepaid, 60_000, 1).await;
    let customer = app.long_standing_customer(plan.id, 1, vec![]).await;
    let keyed = |key: &str, seconds: i64| {
        let mut request = call(customer.id, seconds);
        request.call_id = key.into();
        request.started_at = Some(ts("2026-01-01T08:00:00Z"));
        request
    };
    let records = vec![
        keyed("a", 10),       // 0 accepted
        call(customer.id, 0), // 1 bad duration
        keyed("b", 20),       // 2 accepted
        call(9999, 30),       // 3 unknown customer
        keyed("a", 10),       // 4 duplicate of 0
        keyed("a", 11),       // 5 same key, other content
        pb::AddCallRequest {
            duration: None,
            ..keyed("c", 1)
        }, // 6 no duration
        keyed("d", 40),       // 7 accepted
    ];
    let response = app.ingest(records).await;
    assert_eq!(response.accepted, 3);
    assert_eq!(response.duplicates, 1);
    assert_eq!(response.rejected, 4);
    assert_eq!(
        response.accepted + response.duplicates + response.rejected,
        8
    );
    let errors: Vec<(i64, &str, Code)> = response
        .errors
        .iter()
        .map(|e| (e.index, e.call_id.as_str(), Code::from_i32(e.code)))
        .collect();
    assert_eq!(
        errors,
        vec![
            (1, "", Code::InvalidArgument),
            (3, "", Code::NotFound),
            (5, "a", Code::AlreadyExists),
            (6, "c", Code::InvalidArgument),
        ]
    );
    assert!(response.errors[0].message.contains("duration_seconds"));
    assert!(response.errors[3].message.contains("duration"));
    let stored = app.history(customer.id).await;
    let mut keys: Vec<&str> = stored.iter().map(|c| c.call_id.as_str()).collect();
    keys.sort_unstable();
    assert_eq!(keys, vec!["a", "b", "d"]);
    assert_eq!(
        app.get_customer(customer.id).await.balance_micros,
        -(10_000 + 20_000 + 40_000)
    );
}

#[tokio::test]
async fn keyed_and_unkeyed_records_in_one_batch_are_each_stored_once_as_sent() {
    let app = spawn_app().await;
    let plan = app.plan(PlanKind::Postpaid, 60_000, 1).await;
    let customer = app.long_standing_customer(plan.id, 1, vec![]).await;
    let record = |seconds: i64, key: &str| {
        let mut request = call(customer.id, seconds);
        request.call_id = key.into();
        request.started_at = Some(ts("2026-01-01T08:00:00.250001Z"));
        request.caller_number = customer.phone_number.clone();
        request
    };
    let records = vec![
        record(10, "k1"),
        record(20, ""),   // unkeyed
        record(20, ""),   // its twin: another call
        record(30, "k2"), //
        record(10, "k1"), // a duplicate of the first, in the same batch
        record(40, ""),
    ];
    let response = app.ingest(records).await;
    assert_eq!(
        (response.accepted, response.duplicates, response.rejected),
        (5, 1, 0)
    );
    let mut stored: Vec<(String, i64, i64, String)> = app
        .history(customer.id)
        .await
        .into_iter()
        .map(|c| {
            (
                c.call_id,
                c.duration_seconds,
                c.cost_micros,
                c.caller_number,
            )
        })
        .collect();
    stored.sort();
    let caller = || customer.phone_number.clone();
    assert_eq!(
        stored,
        vec![
            (String::new(), 20, 20_000, caller()),
            (String::new(), 20, 20_000, caller()),
            (String::new(), 40, 40_000, caller()),
            ("k1".to_owned(), 10, 10_000, caller()),
            ("k2".to_owned(), 30, 30_000, caller()),
        ]
    );
}

#[tokio::test]
async fn replaying_a_stream_stores_and_debits_nothing_twice() {
    let app = spawn_app().await;
    let plan = app.plan(PlanKind::Prepaid, 60_000, 1).await;
    let customer = app.long_standing_customer(plan.id, 1, vec![]).await;
    // More records than one write batch, so the replay crosses batches.
    let records: Vec<_> = (0..1200)
        .map(|n| {
            let mut request = call(customer.id, 1 + n % 90);
            request.call_id = format!("sw-{n}");
            request.started_at = Some(prost_types::Timestamp {
                seconds: ts("2026-01-01T00:00:00Z").seconds + n,
                nanos: 0,
            });
            request
        })
        .collect();
    let expected_cost: i64 = (0..1200).map(|n| (1 + n % 90) * 1000).sum();
    let first = app.ingest(records.clone()).await;
    assert_eq!(
        (first.accepted, first.duplicates, first.rejected),
        (1200, 0, 0)
    );
    let replay = app.ingest(records).await;
    assert_eq!(
        (replay.accepted, replay.duplicates, replay.rejected),
        (0, 1200, 0)
    );
    assert_eq!(app.history(customer.id).await.len(), 1200);
    assert_eq!(
        app.get_customer(customer.id).await.balance_micros,
        -expected_cost
    );
}

#[tokio::test]
async fn a_key_repeated_within_one_stream_is_stored_once() {
    let app = spawn_app().await;
    let plan = app.plan(PlanKind::Postpaid, 60_000, 60).await;
    let customer = app.long_standing_customer(plan.id, 1, vec![]).await;
    let mut request = call(customer.id, 42);
    request.call_id = "twice".into();
    request.started_at = Some(ts("2026-01-01T00:00:00Z"));
    let minutes = pb::AddCallRequest {
        duration: Some(Duration::Minutes(2)),
        call_id: "m".into(),
        ..request.clone()
    };
    let response = app.ingest(vec![request.clone(), request, minutes]).await;
    assert_eq!(
        (response.accepted, response.duplicates, response.rejected),
        (2, 1, 0)
    );
    assert_eq!(app.history(customer.id).await.len(), 2);
}

#[tokio::test]
async fn an_empty_stream_is_an_empty_report() {
    let app = spawn_app().await;
    let response = app.ingest(Vec::<pb::AddCallRequest>::new()).await;
    assert_eq!(response, pb::IngestCallsResponse::default());
}

#[tokio::test]
async fn a_flood_of_bad_records_is_counted_whole_and_described_up_to_ten_thousand() {
    let app = spawn_app().await;
    let plan = app.plan(PlanKind::Postpaid, 60_000, 1).await;
    let customer = app.long_standing_customer(plan.id, 1, vec![]).await;
    let mut records: Vec<_> = (0..25_000).map(|_| call(customer.id, 0)).collect();
    records.push(call(customer.id, 5));
    let response = app.ingest(records).await;
    assert_eq!((response.accepted, response.rejected), (1, 25_000));
    assert_eq!(response.errors.len(), 10_000);
    assert!(response.errors_truncated);
    let indexes: Vec<i64> = response.errors.iter().map(|e| e.index).collect();
    assert_eq!(indexes, (0..10_000).collect::<Vec<i64>>());
}

#[tokio::test]
async fn a_batch_refused_for_one_customer_is_stored_record_by_record() {
    let app = spawn_app().await;
    let plan = app.plan(PlanKind::Prepaid, 60_000, 1).await;
    let full = app.long_standing_customer(plan.id, 1, vec![]).await;
    let fine = app.long_standing_customer(plan.id, 2, vec![]).await;
    // One customer's balance cannot take another debit.
    app.set_balance(full.id, i64::MIN + 100).await;
    let records: Vec<_> = (0..10)
        .map(|n| {
            let customer_id = if n % 2 == 0 { full.id } else { fine.id };
            let mut request = call(customer_id, 60);
            request.call_id = format!("mixed-{n}");
            request.started_at = Some(ts("2026-06-01T00:00:00Z"));
            request
        })
        .collect();
    let report = app.ingest(records).await;
    assert_eq!(
        (report.accepted, report.duplicates, report.rejected),
        (5, 0, 5)
    );
    let rejected: Vec<(i64, Code)> = report
        .errors
        .iter()
        .map(|e| (e.index, Code::from_i32(e.code)))
        .collect();
    assert_eq!(
        rejected,
        (0..10)
            .step_by(2)
            .map(|i| (i, Code::FailedPrecondition))
            .collect::<Vec<_>>()
    );
    assert!(report.errors[0].message.contains("balance"));
    assert_eq!(
        app.get_customer(full.id).await.balance_micros,
        i64::MIN + 100,
        "left alone, not wrapped"
    );
    assert!(app.history(full.id).await.is_empty());
    assert_eq!(app.get_customer(fine.id).await.balance_micros, -300_000);
    assert_eq!(app.history(fine.id).await.len(), 5);
}

#[tokio::test]
async fn a_database_that_stays_locked_ends_a_stream_unavailable_keeping_what_was_acknowledged() {
    let app = spawn_app().await;
    if app.database.url.starts_with("postgres") {
        // PostgreSQL waits on a row lock without a time limit; what is
        // checked here is SQLite's busy time-out (SQLITE_BUSY) classified by
        // its code as UNAVAILABLE.
        return;
    }
    let plan = app.plan(PlanKind::Postpaid, 60_000, 1).await;
    let customer = app.long_standing_customer(plan.id, 1, vec![]).await;
    let record = |n: usize| {
        let mut request = call(customer.id, 60);
        request.call_id = format!("held-{n}");
        request.started_at = Some(ts("2026-06-01T00:00:00Z"));
        request
    };
    let (records, stream) = tokio::sync::mpsc::channel(1000);
    let mut client = app.calls.clone();
    let ingest = tokio::spawn(async move {
        client
            .ingest_calls(tokio_stream::wrappers::ReceiverStream::new(stream))
            .await
    });
    // One full batch (10,000 records, INGEST_BATCH) is written and
    // acknowledged by the database before the lock is taken.
    for n in 0..10_000 {
        records.send(record(n)).await.unwrap();
    }
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while app.history(customer.id).await.len() < 10_000 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first batch was never written"
        );
        tokio::task::yield_now().await;
    }
    let lock = app.hold_lock(customer.id).await;
    for n in 10_000..10_010 {
        records.send(record(n)).await.unwrap();
    }
    drop(records);
    let unary = app.calls.clone().add_call(record(999)).await.unwrap_err();
    let streamed = ingest.await.unwrap().unwrap_err();
    lock.release().await;
    assert_eq!(unary.code(), Code::Unavailable, "{unary:?}");
    assert_eq!(streamed.code(), Code::Unavailable, "{streamed:?}");
    assert_eq!(app.history(customer.id).await.len(), 10_000);
}
