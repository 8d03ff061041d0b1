//! Numbers held by customers over time: calls by calling number charged to
//! whoever held it when the call started, assignments that never overlap
//! (also when two replicas race), and caches that follow a change made on
//! another replica.

use billing::grpc::pb::{self, PlanKind};
use tokio_stream::StreamExt;
use tonic::Code;

use crate::helpers::{AppOptions, TestApp, assert_status, call, spawn_app, spawn_app_with, ts};

/// Two servers on one fresh database, on one clock.
async fn two_replicas() -> (TestApp, TestApp) {
    let a = spawn_app().await;
    let b = spawn_app_with(AppOptions {
        database: Some(a.database.clone()),
        clock: a.clock.clone(),
        ..AppOptions::default()
    })
    .await;
    (a, b)
}

/// A record charged by its calling number alone.
fn by_number(number: &str, started_at: &str, call_id: &str) -> pb::AddCallRequest {
    pb::AddCallRequest {
        caller_number: number.into(),
        started_at: Some(ts(started_at)),
        call_id: call_id.into(),
        ..call(0, 60)
    }
}

async fn assign(
    app: &TestApp,
    customer_id: i64,
    number: &str,
    valid_from: Option<&str>,
) -> Result<pb::Customer, tonic::Status> {
    app.customers
        .clone()
        .assign_number(pb::AssignNumberRequest {
            customer_id,
            number: number.into(),
            valid_from: valid_from.map(ts),
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn release(
    app: &TestApp,
    number: &str,
    valid_until: Option<&str>,
) -> Result<pb::Customer, tonic::Status> {
    app.customers
        .clone()
        .release_number(pb::ReleaseNumberRequest {
            number: number.into(),
            valid_until: valid_until.map(ts),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// The call ids of a customer's history, sorted.
async fn call_ids(app: &TestApp, customer_id: i64) -> Vec<String> {
    let mut ids: Vec<String> = app
        .history(customer_id)
        .await
        .into_iter()
        .map(|c| c.call_id)
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn a_customers_phone_number_is_its_first_number_held_from_its_creation() {
    let app = spawn_app().await;
    let plan = app.plan(PlanKind::Postpaid, 60_000, 1).await;
    let customer = app.customer(plan.id, 1, vec![]).await;
    assert_eq!(customer.numbers.len(), 1);
    let first = &customer.numbers[0];
    assert_eq!(first.number, customer.phone_number);
    assert_eq!(first.valid_from, customer.created_at);
    assert_eq!(first.valid_until, None);
    let read = app.get_customer(customer.id).await;
    assert_eq!(read.numbers, customer.numbers);

    let second = assign(&app, customer.id, "+4930555000", None)
        .await
        .unwrap();
    let numbers: Vec<&str> = second.numbers.iter().map(|n| n.number.as_str()).collect();
    assert_eq!(numbers, [customer.phone_number.as_str(), "+4930555000"]);
}

#[tokio::test]
async fn calls_by_number_are_charged_to_whoever_held_it_when_the_call_started() {
    let app = spawn_app().await;
    let plan = app.plan(PlanKind::Postpaid, 60_000, 1).await;
    let old = app.long_standing_customer(plan.id, 1, vec![]).await;
    let new = app.long_standing_customer(plan.id, 2, vec![]).await;
    let number = old.phone_number.clone();
    let handover = "2026-06-15T00:00:00Z";

    // Cached by a call before the change, then reassigned.
    app.calls
        .clone()
        .add_call(by_number(&number, "2026-06-01T10:00:00Z", "before-cached"))
        .await
        .unwrap();
    let released = release(&app, &number, Some(handover)).await.unwrap();
    assert_eq!(released.id, old.id);
    assert_eq!(released.numbers[0].valid_until, Some(ts(handover)));
    let assigned = assign(&app, new.id, &number, Some(handover)).await.unwrap();
    assert!(assigned.numbers.iter().any(|n| n.number == number
        && n.valid_from == Some(ts(handover))
        && n.valid_until.is_none()));

    let mut calls = app.calls.clone();
    let unary = calls
        .add_call(by_number(&number, "2026-06-14T23:59:59Z", "before-unary"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(unary.call.unwrap().customer_id, old.id);
    let at_handover = calls
        .add_call(by_number(&number, handover, "at-handover"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(at_handover.call.unwrap().customer_id, new.id);
    let response = app
        .ingest(vec![
            by_number(&number, "2026-06-10T08:00:00Z", "before-stream"),
            by_number(&number, "2026-06-20T08:00:00Z", "after-stream"),
        ])
        .await;
    assert_eq!(
        (response.accepted, response.rejected),
        (2, 0),
        "{response:?}"
    );
    let acks = calls
        .stream_calls(tokio_stream::iter(vec![
            by_number(&number, "2026-06-11T08:00:00Z", "before-acked"),
            by_number(&number, "2026-06-21T08:00:00Z", "after-acked"),
        ]))
        .await
        .unwrap()
        .into_inner()
        .collect::<Result<Vec<_>, _>>()
        .await
        .unwrap();
    assert_eq!(acks.last().unwrap().next_index, 2);
    assert_eq!(acks.iter().map(|a| a.accepted).sum::<i64>(), 2);

    assert_eq!(
        call_ids(&app, old.id).await,
        [
            "before-acked",
            "before-cached",
            "before-stream",
            "before-unary"
        ]
    );
    assert_eq!(
        call_ids(&app, new.id).await,
        ["after-acked", "after-stream", "at-handover"]
    );
}

#[tokio::test]
async fn a_number_nobody_held_or_held_by_another_is_refused_naming_caller_number() {
    let app = spawn_app().await;
    let plan = app.plan(PlanKind::Postpaid, 60_000, 1).await;
    let holder = app.long_standing_customer(plan.id, 1, vec![]).await;
    let other = app.long_standing_customer(plan.id, 2, vec![]).await;
    let mut calls = app.calls.clone();
    assert_status(
        calls
            .add_call(by_number("+4930999999", "2026-06-01T10:00:00Z", "nobody"))
            .await,
        Code::NotFound,
        "caller_number",
    );
    // Before its holder existed, nobody held it.
    let recent = app.customer(plan.id, 3, vec![]).await;
    assert_status(
        calls
            .add_call(by_number(
                &recent.phone_number,
                "2026-06-01T10:00:00Z",
                "early",
            ))
            .await,
        Code::NotFound,
        "caller_number",
    );
    // Named and held by another: refused; named and held by nobody: taken.
    let mut disagreeing = by_number(&holder.phone_number, "2026-06-01T10:00:00Z", "mismatch");
    disagreeing.customer_id = other.id;
    assert_status(
        calls.add_call(disagreeing).await,
        Code::InvalidArgument,
        "caller_number",
    );
    let mut unmanaged = by_number("+4930999999", "2026-06-01T10:00:00Z", "unmanaged");
    unmanaged.customer_id = other.id;
    calls.add_call(unmanaged).await.unwrap();
    // Neither a customer nor a number.
    assert_status(
        calls.add_call(call(0, 60)).await,
        Code::InvalidArgument,
        "customer_id",
    );
    // In a stream, per record.
    let response = app
        .ingest(vec![
            by_number("+4930999999", "2026-06-01T10:00:00Z", "s-nobody"),
            by_number(&holder.phone_number, "2026-06-01T10:00:00Z", "s-held"),
        ])
        .await;
    assert_eq!((response.accepted, response.rejected), (1, 1));
    assert_eq!(response.errors[0].index, 0);
    assert_eq!(response.errors[0].code, Code::NotFound as i32);
    assert!(response.errors[0].message.starts_with("caller_number"));
}

#[tokio::test]
async fn a_number_assigned_twice_at_overlapping_times_is_refused() {
    let app = spawn_app().await;
    let plan = app.plan(PlanKind::Postpaid, 60_000, 1).await;
    let first = app.long_standing_customer(plan.id, 1, vec![]).await;
    let second = app.long_standing_customer(plan.id, 2, vec![]).await;
    let number = first.phone_number.clone();
    assert_status(
        assign(&app, second.id, &number, Some("2026-06-01T00:00:00Z")).await,
        Code::AlreadyExists,
        &number,
    );
    assert_status(
        app.customers
            .clone()
            .create_customer(pb::CreateCustomerRequest {
                name: "Copy".into(),
                phone_number: number.clone(),
                plan_id: plan.id,
                ..Default::default()
            })
            .await,
        Code::AlreadyExists,
        &number,
    );
    release(&app, &number, Some("2026-06-15T00:00:00Z"))
        .await
        .unwrap();
    assert_status(
        assign(&app, second.id, &number, Some("2026-06-14T23:59:59Z")).await,
        Code::AlreadyExists,
        &number,
    );
    assign(&app, second.id, &number, Some("2026-06-15T00:00:00Z"))
        .await
        .unwrap();
    // Released again and free from then on: a new customer may start with it.
    release(&app, &number, None).await.unwrap();
    let third = app
        .customers
        .clone()
        .create_customer(pb::CreateCustomerRequest {
            name: "Third".into(),
            phone_number: number.clone(),
            plan_id: plan.id,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(third.numbers[0].number, number);

    // What a request gets wrong is named.
    assert_status(
        assign(&app, second.id, "0301234", None).await,
        Code::InvalidArgument,
        "number",
    );
    assert_status(
        assign(&app, 999, "+4930555000", None).await,
        Code::NotFound,
        "customer",
    );
    assert_status(
        assign(&app, second.id, "+4930555000", Some("2024-01-01T00:00:00Z")).await,
        Code::InvalidArgument,
        "valid_from",
    );
    assert_status(
        release(&app, "+4930555001", None).await,
        Code::NotFound,
        "+4930555001",
    );
    assign(&app, second.id, "+4930555002", Some("2026-06-20T00:00:00Z"))
        .await
        .unwrap();
    assert_status(
        release(&app, "+4930555002", Some("2026-06-20T00:00:00Z")).await,
        Code::InvalidArgument,
        "valid_until",
    );
}

#[tokio::test]
async fn a_release_before_calls_already_charged_to_the_holder_is_refused() {
    let app = spawn_app().await;
    let plan = app.plan(PlanKind::Postpaid, 60_000, 1).await;
    let holder = app.long_standing_customer(plan.id, 1, vec![]).await;
    let number = holder.phone_number.clone();
    app.calls
        .clone()
        .add_call(by_number(&number, "2026-06-20T10:00:00Z", "charged"))
        .await
        .unwrap();
    assert_status(
        release(&app, &number, Some("2026-06-15T00:00:00Z")).await,
        Code::FailedPrecondition,
        "calls",
    );
    release(&app, &number, Some("2026-06-20T10:00:01Z"))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_number_reassigned_on_one_replica_is_charged_to_the_new_holder_on_the_other() {
    let (a, b) = two_replicas().await;
    let plan = a.plan(PlanKind::Postpaid, 60_000, 1).await;
    let old = a.long_standing_customer(plan.id, 1, vec![]).await;
    let new = a.long_standing_customer(plan.id, 2, vec![]).await;
    let number = old.phone_number.clone();
    // Replica A has the number's holder cached.
    let first = a
        .calls
        .clone()
        .add_call(by_number(&number, "2026-06-20T10:00:00Z", "cached"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.call.unwrap().customer_id, old.id);
    // Replica B hands it over from 2026-06-25.
    release(&b, &number, Some("2026-06-25T00:00:00Z"))
        .await
        .unwrap();
    assign(&b, new.id, &number, Some("2026-06-25T00:00:00Z"))
        .await
        .unwrap();
    // A charges a later call to the new holder, however it arrives.
    let unary = a
        .calls
        .clone()
        .add_call(by_number(&number, "2026-06-26T10:00:00Z", "after-unary"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(unary.call.unwrap().customer_id, new.id);
    let response = a
        .ingest(vec![
            by_number(&number, "2026-06-24T10:00:00Z", "before-stream"),
            by_number(&number, "2026-06-27T10:00:00Z", "after-stream"),
        ])
        .await;
    assert_eq!(response.accepted, 2, "{response:?}");
    assert_eq!(call_ids(&a, old.id).await, ["before-stream", "cached"]);
    assert_eq!(call_ids(&a, new.id).await, ["after-stream", "after-unary"]);
}

#[tokio::test]
async fn two_replicas_racing_to_assign_one_number_give_it_to_one_customer() {
    let (a, b) = two_replicas().await;
    let plan = a.plan(PlanKind::Postpaid, 60_000, 1).await;
    let mut customers = Vec::new();
    for n in 1..=8 {
        customers.push(a.long_standing_customer(plan.id, n, vec![]).await);
    }
    let number = "+4930777000";
    let attempts = customers.iter().enumerate().map(|(i, customer)| {
        let replica = if i % 2 == 0 { &a } else { &b };
        // Overlapping intervals: each from its own instant, all open.
        let from = format!("2026-06-{:02}T00:00:00Z", 10 + i);
        async move { assign(replica, customer.id, number, Some(&from)).await }
    });
    let outcomes = futures_util::future::join_all(attempts).await;
    let won = outcomes.iter().filter(|o| o.is_ok()).count();
    assert_eq!(won, 1, "{outcomes:?}");
    for outcome in outcomes.iter().filter_map(|o| o.as_ref().err()) {
        assert_eq!(outcome.code(), Code::AlreadyExists, "{outcome:?}");
    }
    let holders: usize =
        futures_util::future::join_all(customers.iter().map(|c| a.get_customer(c.id)))
            .await
            .iter()
            .map(|c| c.numbers.iter().filter(|n| n.number == number).count())
            .sum();
    assert_eq!(holders, 1);
}
