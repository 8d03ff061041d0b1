//! CallService: AddCall rating, idempotency, validation and listings.

use billing::grpc::pb::{self, PlanKind, add_call_request::Duration};
use tonic::Code;

use crate::helpers::{assert_status, call, spawn_app, spawn_app_at, ts};

#[tokio::test]
async fn calls_are_rated_in_increments_of_1_6_and_60_seconds() {
    let app = spawn_app().await;
    // (increment, duration, expected billed seconds, expected cost) at 0.10/min.
    let cases = [
        (1, 61, 61, 101_667),
        (1, 1, 1, 1_667),
        (6, 7, 12, 20_000),
        (6, 6, 6, 10_000),
        (60, 61, 120, 200_000),
        (60, 1, 60, 100_000),
    ];
    for (n, (increment, duration, billed, cost)) in cases.into_iter().enumerate() {
        let plan = app.plan(PlanKind::Postpaid, 100_000, increment).await;
        let customer = app
            .long_standing_customer(plan.id, u32::try_from(n).unwrap(), vec![])
            .await;
        let stored = app
            .calls
            .clone()
            .add_call(call(customer.id, duration))
            .await
            .unwrap()
            .into_inner();
        let c = stored.call.unwrap();
        assert!(!stored.duplicate);
        assert_eq!(
            (c.duration_seconds, c.billed_seconds, c.cost_micros),
            (duration, billed, cost),
            "increment {increment}"
        );
        assert_eq!(c.per_minute_micros, 100_000);
        assert_eq!(c.billing_increment_seconds, increment);
        assert_eq!(c.invoice_id, 0);
    }
}

#[tokio::test]
async fn minutes_are_accepted_as_the_original_api_did() {
    let app = spawn_app().await;
    let plan = app.plan(PlanKind::Postpaid, 120_000, 60).await;
    let customer = app.long_standing_customer(plan.id, 1, vec![]).await;
    let request = pb::AddCallRequest {
        customer_id: customer.id,
        duration: Some(Duration::Minutes(3)),
        ..Default::default()
    };
    let c = app
        .calls
        .clone()
        .add_call(request)
        .await
        .unwrap()
        .into_inner()
        .call
        .unwrap();
    assert_eq!(c.duration_seconds, 180);
    assert_eq!(c.cost_micros, 360_000);
}

#[tokio::test]
async fn a_call_without_start_started_its_duration_before_it_was_received() {
    let app = spawn_app_at(
        chrono::DateTime::parse_from_rfc3339("2026-03-10T12:00:00Z")
            .unwrap()
            .to_utc(),
    )
    .await;
    let plan = app.plan(PlanKind::Postpaid, 60_000, 1).await;
    let customer = app.long_standing_customer(plan.id, 1, vec![]).await;
    let c = app
        .calls
        .clone()
        .add_call(call(customer.id, 95))
        .await
        .unwrap()
        .into_inner()
        .call
        .unwrap();
    let started = c.started_at.unwrap();
    let received = c.received_at.unwrap();
    assert_eq!(received.seconds - started.seconds, 95);
    assert_eq!(received.nanos, started.nanos);
    assert!(received.seconds >= ts("2026-03-10T12:00:00Z").seconds);
    assert!(received.seconds < ts("2026-03-10T12:05:00Z").seconds);
}

#[tokio::test]
async fn fixed_plan_calls_cost_nothing() {
    let app = spawn_app().await;
    let plan = app.plan(PlanKind::Fixed, 0, 60).await;
    let customer = app.long_standing_customer(plan.id, 1, vec![]).await;
    let c = app
        .calls
        .clone()
        .add_call(call(customer.id, 600))
        .await
        .unwrap()
        .into_inner()
        .call
        .unwrap();
    assert_eq!(c.billed_seconds, 600);
    assert_eq!(c.cost_micros, 0);
}

#[tokio::test]
async fn prepaid_calls_debit_the_balance_which_may_go_negative() {
    let app = spawn_app().await;
    let plan = app.plan(PlanKind::Prepaid, 600_000, 60).await;
    let customer = app.long_standing_customer(plan.id, 1, vec![]).await;
    app.customers
        .clone()
        .top_up(pb::TopUpRequest {
            customer_id: customer.id,
            amount_micros: 1_000_000,
            request_id: "t".into(),
        })
        .await
        .unwrap();
    let mut request = call(customer.id, 90);
    request.call_id = "c-1".into();
    let first = app
        .calls
        .clone()
        .add_call(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.call.unwrap().cost_micros, 1_200_000);
    assert_eq!(app.get_customer(customer.id).await.balance_micros, -200_000);
    let retry = app
        .calls
        .clone()
        .add_call(request)
        .await
        .unwrap()
        .into_inner();
    assert!(retry.duplicate);
    assert_eq!(app.get_customer(customer.id).await.balance_micros, -200_000);
}

#[tokio::test]
async fn the_same_call_id_is_a_duplicate_and_different_content_is_already_exists() {
    let app = spawn_app().await;
    let plan = app.plan(PlanKind::Postpaid, 60_000, 1).await;
    let customer = app.long_standing_customer(plan.id, 1, vec![]).await;
    let mut request = call(customer.id, 30);
    request.call_id = "switch-7/123".into();
    request.started_at = Some(ts("2026-01-05T10:00:00.123456Z"));
    request.callee_number = "+12025550100".into();
    let mut client = app.calls.clone();
    let first = client.add_call(request.clone()).await.unwrap().into_inner();
    let again = client.add_call(request.clone()).await.unwrap().into_inner();
    assert!(!first.duplicate);
    assert!(again.duplicate);
    assert_eq!(again.call, first.call);

    let mut different = request.clone();
    different.duration = Some(Duration::DurationSeconds(31));
    assert_status(
        client.add_call(different).await,
        Code::AlreadyExists,
        "switch-7/123",
    );
    let mut elsewhere = request;
    elsewhere.started_at = Some(ts("2026-01-05T10:00:01Z"));
    assert_status(
        client.add_call(elsewhere).await,
        Code::AlreadyExists,
        "switch-7/123",
    );
    assert_eq!(app.history(customer.id).await.len(), 1);
}

#[tokio::test]
async fn concurrent_calls_of_customers_new_to_the_server_are_each_rated_on_their_own_plan() {
    // The plan lookups of concurrent requests are answered together (one
    // query for many customers): each call still gets its own customer's
    // plan, and unknown customers among them are NOT_FOUND without failing
    // the others.
    let app = spawn_app().await;
    let per_minute = app.plan(PlanKind::Postpaid, 60_000, 60).await;
    let per_second = app.plan(PlanKind::Postpaid, 120_000, 1).await;
    let mut expected = Vec::new();
    for n in 0..10 {
        let (plan, cost) = if n % 2 == 0 {
            (&per_minute, 120_000)
        } else {
            (&per_second, 180_000)
        };
        let customer = app.long_standing_customer(plan.id, n, vec![]).await;
        // Two calls of each customer, so a customer is asked for twice.
        expected.push((customer.id, Some(cost)));
        expected.push((customer.id, Some(cost)));
    }
    let unknown = expected.iter().map(|(id, _)| *id).max().unwrap() + 1_000;
    expected.push((unknown, None));
    expected.push((unknown + 1, None));
    let attempts = expected.iter().map(|&(customer_id, _)| {
        let mut client = app.calls.clone();
        tokio::spawn(async move {
            client
                .add_call(call(customer_id, 90))
                .await
                .map(|r| r.into_inner())
        })
    });
    let outcomes = futures_util::future::join_all(attempts).await;
    for ((customer_id, cost), outcome) in expected.into_iter().zip(outcomes) {
        let outcome = outcome.unwrap();
        match cost {
            Some(cost) => {
                let stored = outcome.unwrap().call.unwrap();
                assert_eq!(stored.customer_id, customer_id);
                assert_eq!(stored.cost_micros, cost, "customer {customer_id}");
            }
            None => assert_status(outcome, Code::NotFound, &format!("customer {customer_id}")),
        }
    }
}

#[tokio::test]
async fn concurrent_duplicates_store_one_call_and_debit_once() {
    let app = spawn_app().await;
    let plan = app.plan(PlanKind::Prepaid, 60_000, 1).await;
    let customer = app.long_standing_customer(plan.id, 1, vec![]).await;
    let mut request = call(customer.id, 100);
    request.call_id = "race".into();
    request.started_at = Some(ts("2026-01-05T10:00:00Z"));
    let attempts = (0..24).map(|_| {
        let mut client = app.calls.clone();
        let request = request.clone();
        tokio::spawn(async move { client.add_call(request).await.map(|r| r.into_inner()) })
    });
    let outcomes = futures_util::future::join_all(attempts).await;
    let mut ids = std::collections::BTreeSet::new();
    let mut inserted = 0;
    for outcome in outcomes {
        let response = outcome.unwrap().unwrap();
        ids.insert(response.call.unwrap().id);
        if !response.duplicate {
            inserted += 1;
        }
    }
    assert_eq!(inserted, 1);
    assert_eq!(ids.len(), 1, "every attempt returns the one stored call");
    assert_eq!(app.history(customer.id).await.len(), 1);
    assert_eq!(app.get_customer(customer.id).await.balance_micros, -100_000);
}

#[tokio::test]
async fn bad_call_records_are_rejected_naming_the_field() {
    let app = spawn_app_at(
        chrono::DateTime::parse_from_rfc3339("2026-06-01T00:00:00Z")
            .unwrap()
            .to_utc(),
    )
    .await;
    let plan = app.plan(PlanKind::Postpaid, 60_000, 1).await;
    let customer = app.long_standing_customer(plan.id, 1, vec![]).await;
    let mut client = app.calls.clone();
    let with = |change: &dyn Fn(&mut pb::AddCallRequest)| {
        let mut request = call(customer.id, 60);
        change(&mut request);
        request
    };
    let cases: Vec<(pb::AddCallRequest, Code, &str)> = vec![
        (
            with(&|r| r.duration = None),
            Code::InvalidArgument,
            "duration",
        ),
        (
            with(&|r| r.duration = Some(Duration::DurationSeconds(0))),
            Code::InvalidArgument,
            "duration_seconds",
        ),
        (
            with(&|r| r.duration = Some(Duration::DurationSeconds(-5))),
            Code::InvalidArgument,
            "duration_seconds",
        ),
        (
            with(&|r| r.duration = Some(Duration::DurationSeconds(86_401))),
            Code::InvalidArgument,
            "duration_seconds",
        ),
        (
            with(&|r| r.duration = Some(Duration::Minutes(0))),
            Code::InvalidArgument,
            "minutes",
        ),
        (
            with(&|r| r.started_at = Some(ts("2026-06-01T00:10:00Z"))),
            Code::InvalidArgument,
            "started_at",
        ),
        (
            with(&|r| r.caller_number = "not a number".into()),
            Code::InvalidArgument,
            "caller_number",
        ),
        (
            with(&|r| r.callee_number = "+0123".into()),
            Code::InvalidArgument,
            "callee_number",
        ),
        (
            with(&|r| r.call_id = "x".repeat(129)),
            Code::InvalidArgument,
            "call_id",
        ),
        (
            with(&|r| r.customer_id = 0),
            Code::InvalidArgument,
            "customer_id",
        ),
        (
            with(&|r| r.customer_id = 4242),
            Code::NotFound,
            "customer 4242",
        ),
    ];
    for (request, code, field) in cases {
        assert_status(client.add_call(request).await, code, field);
    }
    // Within the five-minute skew a future start is accepted.
    client
        .add_call(with(&|r| r.started_at = Some(ts("2026-06-01T00:04:00Z"))))
        .await
        .unwrap();
    assert_eq!(
        app.history(customer.id).await.len(),
        1,
        "only the valid call was stored"
    );
}

#[tokio::test]
async fn call_history_returns_one_customers_calls_within_the_range_in_start_order() {
    let app = spawn_app().await;
    let plan = app.plan(PlanKind::Postpaid, 60_000, 1).await;
    let ada = app.long_standing_customer(plan.id, 1, vec![]).await;
    let bob = app.long_standing_customer(plan.id, 2, vec![]).await;
    let mut client = app.calls.clone();
    for (customer, start) in [
        (ada.id, "2026-02-01T00:00:00Z"),
        (ada.id, "2026-01-31T23:59:59Z"),
        (bob.id, "2026-01-15T00:00:00Z"),
        (ada.id, "2026-01-01T00:00:00Z"),
        (ada.id, "2026-01-15T12:00:00Z"),
    ] {
        let mut request = call(customer, 10);
        request.started_at = Some(ts(start));
        client.add_call(request).await.unwrap();
    }
    let january = client
        .get_call_history(pb::GetCallHistoryRequest {
            customer_id: ada.id,
            start_time: Some(ts("2026-01-01T00:00:00Z")),
            end_time: Some(ts("2026-02-01T00:00:00Z")),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let starts: Vec<i64> = january
        .calls
        .iter()
        .map(|c| c.started_at.unwrap().seconds)
        .collect();
    assert_eq!(
        starts,
        vec![
            ts("2026-01-01T00:00:00Z").seconds,
            ts("2026-01-15T12:00:00Z").seconds,
            ts("2026-01-31T23:59:59Z").seconds
        ]
    );
    assert!(january.calls.iter().all(|c| c.customer_id == ada.id));
    assert_eq!(app.history(ada.id).await.len(), 4);
    assert_status(
        client
            .get_call_history(pb::GetCallHistoryRequest {
                customer_id: 999,
                ..Default::default()
            })
            .await,
        Code::NotFound,
        "customer 999",
    );
    assert_status(
        client
            .get_call_history(pb::GetCallHistoryRequest {
                customer_id: ada.id,
                start_time: Some(ts("2026-02-01T00:00:00Z")),
                end_time: Some(ts("2026-01-01T00:00:00Z")),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "end_time",
    );
}

#[tokio::test]
async fn list_calls_returns_all_calls_or_one_operators_customers() {
    let app = spawn_app().await;
    let plan = app.plan(PlanKind::Postpaid, 60_000, 1).await;
    let north = app.operator("North").await;
    let south = app.operator("South").await;
    let both = app
        .long_standing_customer(plan.id, 1, vec![north.id, south.id])
        .await;
    let only_south = app.long_standing_customer(plan.id, 2, vec![south.id]).await;
    let nobody = app.long_standing_customer(plan.id, 3, vec![]).await;
    let mut client = app.calls.clone();
    for customer in [both.id, only_south.id, nobody.id, both.id] {
        client.add_call(call(customer, 10)).await.unwrap();
    }
    let list = |operator_id: i64| pb::ListCallsRequest {
        operator_id,
        ..Default::default()
    };
    let all = client.list_calls(list(0)).await.unwrap().into_inner().calls;
    assert_eq!(all.len(), 4);
    let of_north = client
        .list_calls(list(north.id))
        .await
        .unwrap()
        .into_inner()
        .calls;
    assert_eq!(
        of_north.iter().map(|c| c.customer_id).collect::<Vec<_>>(),
        vec![both.id, both.id]
    );
    let of_south = client
        .list_calls(list(south.id))
        .await
        .unwrap()
        .into_inner()
        .calls;
    assert_eq!(of_south.len(), 3);
    assert!(of_south.iter().all(|c| c.customer_id != nobody.id));
    assert_status(
        client.list_calls(list(77)).await,
        Code::NotFound,
        "operator 77",
    );
}

#[tokio::test]
async fn a_call_that_cannot_be_stored_never_fails_the_calls_committed_with_it() {
    let app = spawn_app().await;
    let plan = app.plan(PlanKind::Prepaid, 60_000, 1).await;
    let blocker = app.long_standing_customer(plan.id, 1, vec![]).await.id;
    let poor = app.long_standing_customer(plan.id, 2, vec![]).await.id;
    // A balance that cannot take any debit: its call is refused.
    app.set_balance(poor, i64::MIN + 1).await;
    let mut others = Vec::new();
    for n in 3..13 {
        others.push(app.long_standing_customer(plan.id, n, vec![]).await.id);
    }
    // While the test holds the lock, concurrent calls queue up for the
    // writer and are committed together once it is released.
    let lock = app.hold_lock(blocker).await;
    let send = |customer_id: i64| {
        let mut client = app.calls.clone();
        tokio::spawn(async move { client.add_call(call(customer_id, 60)).await })
    };
    let first = send(blocker);
    let refused = send(poor);
    let neighbours: Vec<_> = others.iter().map(|&id| send(id)).collect();
    lock.release().await;
    first.await.unwrap().unwrap();
    let status = refused.await.unwrap().unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    for (neighbour, id) in neighbours.into_iter().zip(&others) {
        let stored = neighbour.await.unwrap().unwrap().into_inner();
        assert!(!stored.duplicate);
        assert_eq!(app.get_customer(*id).await.balance_micros, -60_000);
    }
    assert!(app.history(poor).await.is_empty());
    assert_eq!(app.get_customer(poor).await.balance_micros, i64::MIN + 1);
}

#[tokio::test]
async fn with_a_linger_and_small_batches_concurrent_calls_and_duplicates_are_stored_once() {
    use billing::app::Limits;
    use billing::storage::GroupCommit;

    use crate::helpers::{AppOptions, spawn_app_with};
    let app = spawn_app_with(AppOptions {
        limits: Limits {
            group_commit: GroupCommit {
                max_batch: 3,
                queue: 4,
                linger: std::time::Duration::from_millis(20),
                // Batches written at once (on PostgreSQL, on three
                // connections).
                writers: Some(3),
            },
            ..Limits::default()
        },
        ..AppOptions::default()
    })
    .await;
    let plan = app.plan(PlanKind::Prepaid, 60_000, 1).await;
    let customer = app.long_standing_customer(plan.id, 1, vec![]).await.id;
    // Ten distinct calls, each sent twice at once: more than a batch and
    // more than the queue holds.
    let sends: Vec<_> = (0..20)
        .map(|n| {
            let mut client = app.calls.clone();
            let mut request = call(customer, 60);
            request.call_id = format!("linger-{}", n % 10);
            request.started_at = Some(ts(&format!("2026-06-30T10:00:{:02}Z", n % 10)));
            tokio::spawn(async move { client.add_call(request).await })
        })
        .collect();
    let mut duplicates = 0;
    for send in sends {
        if send.await.unwrap().unwrap().into_inner().duplicate {
            duplicates += 1;
        }
    }
    assert_eq!(duplicates, 10);
    assert_eq!(app.history(customer).await.len(), 10);
    // Each stored call was debited once.
    assert_eq!(app.get_customer(customer).await.balance_micros, -600_000);
}
