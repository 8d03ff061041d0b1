//! Tenants cannot touch each other and no client can starve the rest:
//! idempotency keys belong to the customer, so the same `call_id` or
//! `request_id` for two customers is two records, and a clash reports only
//! on the caller's own customer's record; at most ten passwords of one
//! username are checked per lock window however many arrive at once; and
//! password checks beyond their slots and queue are refused for load.

use billing::grpc::pb::account_service_client::AccountServiceClient;
use billing::grpc::pb::{self, PlanKind};
use tonic::Code;

use crate::helpers::{at, call, spawn_app_at, ts};

fn keyed(customer_id: i64, seconds: i64, key: &str) -> pb::AddCallRequest {
    let mut request = call(customer_id, seconds);
    request.call_id = key.into();
    request.started_at = Some(ts("2026-07-01T00:00:00Z"));
    request
}

#[tokio::test]
async fn the_same_call_id_for_two_customers_is_two_calls_and_a_clash_names_only_the_own_call() {
    let app = spawn_app_at(at("2026-07-15T00:00:00Z")).await;
    let plan = app.plan(PlanKind::Postpaid, 60_000, 60).await;
    let operator_a = app.operator("Operator A").await;
    let operator_b = app.operator("Operator B").await;
    let customer_a = app.customer(plan.id, 1, vec![operator_a.id]).await.id;
    let customer_b = app.customer(plan.id, 2, vec![operator_b.id]).await.id;
    let mut calls = app.calls.clone();

    // B's switch stores a one-second call first; A's real hour-long call
    // with the same key is A's own.
    let b_call = calls
        .add_call(keyed(customer_b, 1, "sw1-000123"))
        .await
        .unwrap()
        .into_inner();
    assert!(!b_call.duplicate);
    let a_call = calls
        .add_call(keyed(customer_a, 3600, "sw1-000123"))
        .await
        .unwrap()
        .into_inner();
    assert!(!a_call.duplicate);
    let (a_call, b_call) = (a_call.call.unwrap(), b_call.call.unwrap());
    assert_ne!(a_call.id, b_call.id);
    assert_eq!(
        (a_call.customer_id, a_call.cost_micros),
        (customer_a, 3_600_000)
    );

    // Retries are each customer's duplicates.
    let again = calls
        .add_call(keyed(customer_a, 3600, "sw1-000123"))
        .await
        .unwrap()
        .into_inner();
    assert!(again.duplicate);
    assert_eq!(again.call.unwrap().id, a_call.id);

    // A clash names the caller's own call, never the other customer's.
    let clash = calls
        .add_call(keyed(customer_a, 60, "sw1-000123"))
        .await
        .unwrap_err();
    assert_eq!(clash.code(), Code::AlreadyExists, "{clash:?}");
    assert!(
        clash.message().contains(&format!("call {}", a_call.id)),
        "{clash:?}"
    );
    assert!(
        !clash.message().contains(&format!("call {}", b_call.id)),
        "{clash:?}"
    );
    assert!(
        !clash.message().contains(&format!("customer {customer_b}")),
        "{clash:?}"
    );

    // One stream with the same key for both customers stores both.
    let report = app
        .ingest(vec![
            keyed(customer_a, 30, "sw1-000124"),
            keyed(customer_b, 40, "sw1-000124"),
            keyed(customer_b, 40, "sw1-000124"),
        ])
        .await;
    assert_eq!(
        (report.accepted, report.duplicates, report.rejected),
        (2, 1, 0)
    );
    assert_eq!(app.history(customer_a).await.len(), 2);
    assert_eq!(app.history(customer_b).await.len(), 2);
}

#[tokio::test]
async fn the_same_request_id_for_two_customers_is_two_top_ups() {
    let app = spawn_app_at(at("2026-07-15T00:00:00Z")).await;
    let plan = app.plan(PlanKind::Prepaid, 60_000, 60).await;
    let customer_a = app.customer(plan.id, 1, vec![]).await.id;
    let customer_b = app.customer(plan.id, 2, vec![]).await.id;
    let mut customers = app.customers.clone();
    let top_up = |customer_id: i64, amount_micros: i64| pb::TopUpRequest {
        customer_id,
        amount_micros,
        request_id: "topup-7".into(),
    };

    let b = customers
        .top_up(top_up(customer_b, 1_000_000))
        .await
        .unwrap()
        .into_inner();
    let a = customers
        .top_up(top_up(customer_a, 50_000_000))
        .await
        .unwrap()
        .into_inner();
    assert!(!a.duplicate && !b.duplicate);
    assert_eq!(a.balance_micros, 50_000_000);
    assert_eq!(b.balance_micros, 1_000_000);

    let retry = customers
        .top_up(top_up(customer_a, 50_000_000))
        .await
        .unwrap()
        .into_inner();
    assert!(retry.duplicate);
    assert_eq!(retry.balance_micros, 50_000_000);

    let clash = customers
        .top_up(top_up(customer_a, 2_000_000))
        .await
        .unwrap_err();
    assert_eq!(clash.code(), Code::AlreadyExists, "{clash:?}");
    assert!(
        !clash.message().contains(&format!("customer {customer_b}")),
        "{clash:?}"
    );
    assert_eq!(
        app.get_customer(customer_a).await.balance_micros,
        50_000_000
    );
    assert_eq!(app.get_customer(customer_b).await.balance_micros, 1_000_000);
}

/// An app with authentication on, its first admin `root`, and room for
/// `slots` password checks at once.
async fn secured_with_hash_slots(slots: usize) -> crate::helpers::TestApp {
    let app = crate::helpers::spawn_app_with(crate::helpers::AppOptions {
        clock: billing::clock::Clock::starting_at(at(crate::helpers::TEST_NOW)),
        auth: true,
        limits: billing::app::Limits {
            password_hash_concurrency: slots,
            ..billing::app::Limits::default()
        },
        ..crate::helpers::AppOptions::default()
    })
    .await;
    crate::access::bootstrap_admin(&app).await;
    app
}

/// Sends `n` logins of `root` at once with `password`; their status codes.
async fn login_burst(app: &crate::helpers::TestApp, n: usize, password: &str) -> Vec<Code> {
    let attempts = (0..n).map(|_| {
        let mut accounts = AccountServiceClient::new(app.channel.clone());
        let request = pb::LoginRequest {
            username: "root".into(),
            password: password.into(),
        };
        async move {
            match accounts.login(request).await {
                Ok(_) => Code::Ok,
                Err(status) => status.code(),
            }
        }
    });
    futures_util::future::join_all(attempts).await
}

#[tokio::test]
async fn however_many_wrong_passwords_arrive_at_once_at_most_ten_are_checked() {
    // Room for every attempt at once: only the throttle may stop them.
    let app = secured_with_hash_slots(64).await;
    let codes = login_burst(&app, 300, "wrong password!").await;
    let checked = codes
        .iter()
        .filter(|c| **c == Code::Unauthenticated)
        .count();
    let locked = codes
        .iter()
        .filter(|c| **c == Code::ResourceExhausted)
        .count();
    assert_eq!(checked, 10, "{codes:?}");
    assert_eq!(locked, 290, "{codes:?}");
    let right = AccountServiceClient::new(app.channel.clone())
        .login(pb::LoginRequest {
            username: "root".into(),
            password: crate::access::PASSWORD.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(right.code(), Code::ResourceExhausted, "{right:?}");
    assert!(right.message().contains("failed logins"), "{right:?}");
}

#[tokio::test]
async fn password_checks_beyond_the_slots_and_their_queue_are_refused_without_counting() {
    // One slot and its queue of 8: a burst of 100 right passwords gets 9
    // sessions at most; the rest are refused for load, not counted as
    // failures, so the right password still works after.
    let app = secured_with_hash_slots(1).await;
    let codes = login_burst(&app, 100, crate::access::PASSWORD).await;
    let ok = codes.iter().filter(|c| **c == Code::Ok).count();
    assert!((1..=9).contains(&ok), "{codes:?}");
    assert!(
        codes
            .iter()
            .all(|c| matches!(c, Code::Ok | Code::ResourceExhausted)),
        "{codes:?}"
    );
    let after = AccountServiceClient::new(app.channel.clone())
        .login(pb::LoginRequest {
            username: "root".into(),
            password: crate::access::PASSWORD.into(),
        })
        .await;
    assert!(after.is_ok(), "{after:?}");
}

#[tokio::test]
async fn idempotency_keys_are_printable_ascii_or_refused_naming_the_field() {
    let app = spawn_app_at(at("2026-07-15T00:00:00Z")).await;
    let postpaid = app.plan(PlanKind::Postpaid, 60_000, 60).await;
    let prepaid = app.plan(PlanKind::Prepaid, 60_000, 60).await;
    let customer = app.customer(postpaid.id, 1, vec![]).await.id;
    let prepaid_customer = app.customer(prepaid.id, 2, vec![]).await.id;
    for key in ["caf\u{e9}-1", "sw1\u{200b}", "tab\there", "bell\u{7}"] {
        let refused = app
            .calls
            .clone()
            .add_call(keyed(customer, 60, key))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert!(refused.message().starts_with("call_id"), "{refused:?}");
        let refused = app
            .customers
            .clone()
            .top_up(pb::TopUpRequest {
                customer_id: prepaid_customer,
                amount_micros: 1_000_000,
                request_id: key.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert!(refused.message().starts_with("request_id"), "{refused:?}");
    }
    assert!(app.history(customer).await.is_empty());
    assert_eq!(app.get_customer(prepaid_customer).await.balance_micros, 0);
    // Every printable ASCII character, space included, is a key.
    let all: String = (' '..='~').collect();
    let stored = app
        .calls
        .clone()
        .add_call(keyed(customer, 60, &all[..95]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stored.call.unwrap().call_id, all);
}

/// A plan whose windows could cut one call into hundreds of segments (a
/// small upload becoming millions of rows) is refused when it is created.
#[tokio::test]
async fn a_plan_whose_windows_could_cut_a_day_long_call_into_more_than_100_segments_is_refused() {
    let app = spawn_app_at(at("2026-07-15T00:00:00Z")).await;
    let windows = |count: i32, every: i32| -> Vec<pb::Tariff> {
        (0..count)
            .map(|n| pb::Tariff {
                name: format!("w{n}"),
                start_minute: n * every,
                end_minute: n * every + 1,
                per_minute_micros: 1,
                ..Default::default()
            })
            .collect()
    };
    let plan = |tariffs: Vec<pb::Tariff>| pb::CreatePlanRequest {
        name: "Windows".into(),
        kind: PlanKind::Postpaid.into(),
        per_minute_micros: 60_000,
        tariffs,
        ..Default::default()
    };
    let refused = app
        .customers
        .clone()
        .create_plan(plan(windows(200, 7)))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().starts_with("tariffs"), "{refused:?}");
    assert!(refused.message().contains("more than 100"), "{refused:?}");
    // Forty windows spread over the day are a plan.
    app.customers
        .clone()
        .create_plan(plan(windows(40, 36)))
        .await
        .unwrap();
}
