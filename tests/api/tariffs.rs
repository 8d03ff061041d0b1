//! Tariffs (issue 8) through the server: a plan with domestic peak,
//! off-peak and weekend tariffs and one international prefix; calls in each,
//! one across 22:00 and one across midnight into the weekend; the stored
//! segments; tariffs refused at CreatePlan.

use billing::grpc::DayOfWeek;
use billing::grpc::pb::{self, PlanKind};
use tonic::Code;

use billing::clock::Clock;

use crate::helpers::{
    AppOptions, TEST_NOW, TestApp, assert_status, at, call, spawn_app, spawn_app_at,
    spawn_app_with, ts,
};

fn tariff(name: &str, prefix: &str, window: (i32, i32), per_minute_micros: i64) -> pb::Tariff {
    pb::Tariff {
        name: name.into(),
        destination_prefix: prefix.into(),
        start_minute: window.0,
        end_minute: window.1,
        per_minute_micros,
        billing_increment_seconds: 1,
        ..Default::default()
    }
}

fn weekdays() -> Vec<i32> {
    [
        DayOfWeek::Monday,
        DayOfWeek::Tuesday,
        DayOfWeek::Wednesday,
        DayOfWeek::Thursday,
        DayOfWeek::Friday,
    ]
    .map(|day| day as i32)
    .to_vec()
}

pub(crate) fn tariffed_plan() -> pb::CreatePlanRequest {
    pb::CreatePlanRequest {
        name: "Peak and off-peak".into(),
        kind: PlanKind::Postpaid.into(),
        currency_code: "EUR".into(),
        monthly_fee_micros: 5_000_000,
        per_minute_micros: 90_000,
        billing_increment_seconds: 60,
        included_minutes: 0,
        tariffs: vec![
            pb::Tariff {
                days: weekdays(),
                ..tariff("peak", "", (480, 1320), 120_000)
            },
            pb::Tariff {
                days: weekdays(),
                ..tariff("off-peak", "", (1320, 480), 60_000)
            },
            pb::Tariff {
                days: vec![DayOfWeek::Saturday as i32, DayOfWeek::Sunday as i32],
                ..tariff("weekend", "", (0, 0), 30_000)
            },
            pb::Tariff {
                connect_fee_micros: 50_000,
                first_increment_seconds: 60,
                ..tariff("uk", "+44", (0, 0), 600_000)
            },
        ],
        included_minutes_tariffs: Vec::new(),
    }
}

/// A customer on [`tariffed_plan`], created on 2025-01-01 so that calls
/// dated in 2026 fall within its life.
async fn customer_on_tariffs(app: &TestApp) -> (pb::Plan, i64) {
    let now = app.clock.now();
    app.clock.set(at("2025-01-01T00:00:00Z"));
    let plan = app
        .customers
        .clone()
        .create_plan(tariffed_plan())
        .await
        .unwrap()
        .into_inner();
    let customer = app
        .customers
        .clone()
        .create_customer(pb::CreateCustomerRequest {
            name: "Tariffed".into(),
            phone_number: "+4930555000".into(),
            plan_id: plan.id,
            operator_ids: vec![],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    app.clock.set(now);
    (plan, customer.id)
}

async fn rated(
    app: &TestApp,
    customer_id: i64,
    callee: &str,
    start: &str,
    seconds: i64,
) -> pb::Call {
    let mut request = call(customer_id, seconds);
    request.callee_number = callee.into();
    request.started_at = Some(ts(start));
    app.calls
        .clone()
        .add_call(request)
        .await
        .unwrap()
        .into_inner()
        .call
        .unwrap()
}

fn pieces(call: &pb::Call) -> Vec<(&str, i64, i64)> {
    call.segments
        .iter()
        .map(|s| (s.tariff_name.as_str(), s.billed_seconds, s.cost_micros))
        .collect()
}

#[tokio::test]
async fn a_plan_keeps_its_tariffs_with_their_increments_resolved() {
    let app = spawn_app().await;
    let (plan, _) = customer_on_tariffs(&app).await;
    assert_eq!(plan.tariffs.len(), 4);
    let uk = &plan.tariffs[3];
    assert_eq!(uk.destination_prefix, "44");
    assert_eq!(
        (uk.first_increment_seconds, uk.billing_increment_seconds),
        (60, 1)
    );
    assert_eq!(plan.tariffs[0].days, weekdays());
    let listed = app
        .customers
        .clone()
        .list_plans(pb::ListPlansRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.plans[0].tariffs, plan.tariffs);
}

#[tokio::test]
async fn calls_are_rated_by_destination_and_time_and_split_where_the_tariff_changes() {
    let app = spawn_app().await;
    let (_, customer) = customer_on_tariffs(&app).await;
    // Tuesday 2 June 2026, 10:00 UTC (the billing zone): peak.
    let peak = rated(&app, customer, "+4930123", "2026-06-02T10:00:00Z", 90).await;
    assert_eq!(pieces(&peak), vec![("peak", 90, 180_000)]);
    assert_eq!(peak.cost_micros, 180_000);
    // 21:58 for five minutes: two minutes peak, three off-peak.
    let evening = rated(&app, customer, "+4930123", "2026-06-02T21:58:00Z", 300).await;
    assert_eq!(
        pieces(&evening),
        vec![("peak", 120, 240_000), ("off-peak", 180, 180_000)]
    );
    assert_eq!(evening.segments[1].start, Some(ts("2026-06-02T22:00:00Z")));
    assert_eq!(evening.cost_micros, 420_000);
    // Friday 5 June 23:50 for nine hours: Friday's off-peak window runs to
    // Saturday 08:00, then the weekend rate.
    let night = rated(&app, customer, "+4930123", "2026-06-05T23:50:00Z", 9 * 3600).await;
    assert_eq!(
        pieces(&night),
        vec![
            ("off-peak", 29_400, 29_400_000),
            ("weekend", 3_000, 1_500_000)
        ]
    );
    // The UK: 60/1 increments and a connect fee, whatever the time.
    let uk = rated(&app, customer, "+442071234567", "2026-06-02T10:00:00Z", 5).await;
    assert_eq!(pieces(&uk), vec![("uk", 60, 600_000)]);
    assert_eq!((uk.connect_fee_micros, uk.cost_micros), (50_000, 650_000));
    // History returns the stored segments.
    let history = app.history(customer).await;
    let stored: Vec<_> = history.iter().map(pieces).collect();
    assert!(stored.contains(&pieces(&evening)));
    assert!(stored.contains(&pieces(&night)));
    for call in &history {
        let sum: i64 = call.segments.iter().map(|s| s.cost_micros).sum();
        assert_eq!(call.cost_micros, call.connect_fee_micros + sum);
    }
}

#[tokio::test]
async fn a_plan_without_tariffs_reports_one_segment_at_its_own_rate() {
    let app = spawn_app().await;
    let plan = app.plan(PlanKind::Postpaid, 60_000, 1).await;
    let customer = app.long_standing_customer(plan.id, 1, vec![]).await;
    let stored = rated(&app, customer.id, "+4930123", "2026-06-02T10:00:00Z", 61).await;
    assert_eq!(pieces(&stored), vec![("base", 61, 61_000)]);
    assert_eq!(stored.connect_fee_micros, 0);
}

#[tokio::test]
async fn tariffs_that_leave_the_choice_open_or_hold_bad_values_are_refused() {
    let app = spawn_app().await;
    let mut customers = app.customers.clone();
    let mut overlapping = tariffed_plan();
    overlapping.tariffs.push(pb::Tariff {
        days: vec![DayOfWeek::Tuesday as i32],
        ..tariff("lunch", "", (720, 780), 1)
    });
    assert_status(
        customers.create_plan(overlapping).await,
        Code::InvalidArgument,
        "\"lunch\"",
    );
    let mut bad_window = tariffed_plan();
    bad_window.tariffs[1].start_minute = 1440;
    assert_status(
        customers.create_plan(bad_window).await,
        Code::InvalidArgument,
        "tariffs[1].start_minute",
    );
    let mut bad_day = tariffed_plan();
    bad_day.tariffs[0].days = vec![0];
    assert_status(
        customers.create_plan(bad_day).await,
        Code::InvalidArgument,
        "tariffs[0].days",
    );
    let mut bad_prefix = tariffed_plan();
    bad_prefix.tariffs[3].destination_prefix = "+44x".into();
    assert_status(
        customers.create_plan(bad_prefix).await,
        Code::InvalidArgument,
        "tariffs[3].destination_prefix",
    );
    let mut fixed = tariffed_plan();
    fixed.kind = PlanKind::Fixed.into();
    assert_status(
        customers.create_plan(fixed).await,
        Code::InvalidArgument,
        "tariffs",
    );
    let plans = customers
        .list_plans(pb::ListPlansRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(plans.plans.is_empty(), "nothing half-written");
}

#[tokio::test]
async fn authorize_call_allows_a_prepaid_customer_what_the_balance_pays_for_at_the_tariffs() {
    let app = spawn_app().await;
    let mut prepaid = tariffed_plan();
    prepaid.kind = PlanKind::Prepaid.into();
    prepaid.monthly_fee_micros = 0;
    let plan = app
        .customers
        .clone()
        .create_plan(prepaid)
        .await
        .unwrap()
        .into_inner();
    let customer = app.customer(plan.id, 7, vec![]).await.id;
    let ask = |callee: &str| pb::AuthorizeCallRequest {
        customer_id: customer,
        callee_number: callee.into(),
        started_at: Some(ts("2026-06-30T10:00:00Z")),
    };
    let mut calls = app.calls.clone();
    // Nothing on the balance: not even the first second.
    let none = calls
        .authorize_call(ask("+4930123"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((none.allowed, none.max_duration_seconds), (false, 0));
    assert!(none.reason.contains("balance"), "{none:?}");
    let top_up = |amount_micros: i64, request_id: &str| pb::TopUpRequest {
        customer_id: customer,
        amount_micros,
        request_id: request_id.into(),
    };
    let mut customers = app.customers.clone();
    customers.top_up(top_up(1_000_000, "t1")).await.unwrap();
    // Tuesday 10:00, peak at 2,000 micros a second: 500 s.
    let part = calls
        .authorize_call(ask("+4930123"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((part.allowed, part.max_duration_seconds), (true, 500));
    // The UK: 50,000 connect fee, the first 60 s for 600,000, then 10,000 a
    // second: 60 + 35 s.
    let uk = calls
        .authorize_call(ask("+4420712345"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((uk.allowed, uk.max_duration_seconds), (true, 95));
    customers
        .top_up(top_up(1_000_000_000_000, "t2"))
        .await
        .unwrap();
    let day = calls
        .authorize_call(ask("+4930123"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((day.allowed, day.max_duration_seconds), (true, 86_400));
    assert!(day.reason.is_empty(), "{day:?}");
    // Nothing was written.
    assert!(app.history(customer).await.is_empty());
    assert_eq!(
        app.get_customer(customer).await.balance_micros,
        1_000_001_000_000
    );
}

#[tokio::test]
async fn authorize_call_always_allows_postpaid_customers_a_day() {
    let app = spawn_app().await;
    let (_, customer) = customer_on_tariffs(&app).await;
    let answer = app
        .calls
        .clone()
        .authorize_call(pb::AuthorizeCallRequest {
            customer_id: customer,
            callee_number: "+4930123".into(),
            started_at: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (answer.allowed, answer.max_duration_seconds),
        (true, 86_400)
    );
    assert_status(
        app.calls
            .clone()
            .authorize_call(pb::AuthorizeCallRequest {
                customer_id: 999,
                ..Default::default()
            })
            .await,
        Code::NotFound,
        "customer 999",
    );
}

#[tokio::test]
async fn the_invoice_shows_usage_per_tariff_and_the_connect_fees_summing_to_the_calls() {
    // The customer joins on 1 June, calls through June, and June is
    // invoiced on 2 July.
    let app = spawn_app_at(at("2026-06-01T00:00:00Z")).await;
    let (_, customer) = customer_on_tariffs(&app).await;
    app.clock.set(at("2026-06-20T00:00:00Z"));
    let mut costs = 0;
    for (callee, start, seconds) in [
        ("+4930123", "2026-06-02T10:00:00Z", 90),
        ("+4930123", "2026-06-02T21:58:00Z", 300),
        ("+4930123", "2026-06-05T23:50:00Z", 9 * 3600),
        ("+442071234567", "2026-06-02T10:00:00Z", 5),
        ("+442071234567", "2026-06-03T10:00:00Z", 61),
    ] {
        costs += rated(&app, customer, callee, start, seconds)
            .await
            .cost_micros;
    }
    app.clock.set(at("2026-07-02T00:00:00Z"));
    let invoice = app
        .invoices
        .clone()
        .generate_invoice(pb::GenerateInvoiceRequest {
            customer_id: customer,
            period: Some(pb::BillingPeriod {
                year: 2026,
                month: 6,
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let Some(pb::generate_invoice_response::Result::Invoice(invoice)) = invoice.result else {
        panic!("an invoice for June");
    };
    let usage: Vec<(String, i64, i64)> = invoice
        .lines
        .iter()
        .filter(|l| l.kind == pb::InvoiceLineKind::Usage as i32)
        .map(|l| (l.description.clone(), l.quantity, l.amount_micros))
        .collect();
    let named = |tariff: &str| {
        usage
            .iter()
            .find(|(description, _, _)| description.contains(&format!("tariff {tariff}:")))
            .map(|(_, quantity, amount)| (*quantity, *amount))
            .unwrap_or_else(|| panic!("no line for {tariff}: {usage:?}"))
    };
    assert_eq!(usage.len(), 4, "{usage:?}");
    assert_eq!(named("peak"), (90 + 120, 180_000 + 240_000));
    assert_eq!(named("off-peak"), (180 + 29_400, 180_000 + 29_400_000));
    assert_eq!(named("weekend"), (3_000, 1_500_000));
    assert_eq!(named("uk"), (60 + 61, 600_000 + 610_000));
    let fees: Vec<_> = invoice
        .lines
        .iter()
        .filter(|l| l.kind == pb::InvoiceLineKind::ConnectFee as i32)
        .map(|l| (l.quantity, l.amount_micros))
        .collect();
    assert_eq!(fees, vec![(2, 100_000)]);
    let usage_sum: i64 = usage.iter().map(|(_, _, amount)| amount).sum::<i64>() + 100_000;
    assert_eq!(usage_sum, costs);
    assert_eq!(invoice.usage_micros, costs);
    let lines_sum: i64 = invoice.lines.iter().map(|l| l.amount_micros).sum();
    assert_eq!(invoice.total_micros, lines_sum);
    assert_eq!(invoice.total_micros, 5_000_000 + costs);
}

/// A June with a peak call, an off-peak call and a UK call for a customer
/// of `plan`, invoiced; the invoice's included-minutes line, if any.
async fn june_included_line(plan: pb::CreatePlanRequest) -> (Option<(i64, i64)>, pb::Invoice) {
    let (line, invoice, open_total) = june_invoiced(plan).await;
    // The open month showed, before invoicing, what the invoice states.
    assert_eq!(open_total, invoice.total_micros);
    (line, invoice)
}

/// As [`june_included_line`], with June's consolidated total while open.
async fn june_invoiced(plan: pb::CreatePlanRequest) -> (Option<(i64, i64)>, pb::Invoice, i64) {
    let app = spawn_app_at(at("2026-06-01T00:00:00Z")).await;
    let plan = app
        .customers
        .clone()
        .create_plan(plan)
        .await
        .unwrap()
        .into_inner();
    let customer = app.customer(plan.id, 3, vec![]).await.id;
    app.clock.set(at("2026-06-20T00:00:00Z"));
    // Peak 120 s = 240,000; off-peak 600 s = 600,000; UK 5 s = 60 s billed,
    // 600,000 + 50,000 connect fee.
    rated(&app, customer, "+4930123", "2026-06-02T10:00:00Z", 120).await;
    rated(&app, customer, "+4930123", "2026-06-02T23:00:00Z", 600).await;
    rated(&app, customer, "+442071234567", "2026-06-03T10:00:00Z", 5).await;
    app.clock.set(at("2026-07-02T00:00:00Z"));
    let june = Some(pb::BillingPeriod {
        year: 2026,
        month: 6,
    });
    let mut open = app
        .invoices
        .clone()
        .stream_consolidated(pb::StreamConsolidatedRequest {
            customer_id: customer,
            from_period: june,
            to_period: june,
        })
        .await
        .unwrap()
        .into_inner();
    let open_total = open
        .message()
        .await
        .unwrap()
        .expect("June is open")
        .total_micros;
    let response = app
        .invoices
        .clone()
        .generate_invoice(pb::GenerateInvoiceRequest {
            customer_id: customer,
            period: Some(pb::BillingPeriod {
                year: 2026,
                month: 6,
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let Some(pb::generate_invoice_response::Result::Invoice(invoice)) = response.result else {
        panic!("an invoice for June");
    };
    let line = invoice
        .lines
        .iter()
        .find(|l| l.kind == pb::InvoiceLineKind::IncludedMinutes as i32)
        .map(|l| (l.quantity, l.amount_micros));
    (line, invoice, open_total)
}

#[tokio::test]
async fn included_minutes_cover_billed_seconds_of_any_tariff_but_never_connect_fees() {
    let mut plan = tariffed_plan();
    plan.included_minutes = 60;
    let (line, invoice) = june_included_line(plan).await;
    // Everything fits: 780 billed seconds, credited at their segments' cost.
    assert_eq!(line, Some((780, -1_440_000)));
    assert_eq!(invoice.total_micros, 5_000_000 + 50_000);
}

#[tokio::test]
async fn included_minutes_limited_to_some_tariffs_count_only_their_seconds() {
    let mut plan = tariffed_plan();
    plan.included_minutes = 5;
    plan.included_minutes_tariffs = vec!["off-peak".into()];
    let (line, invoice) = june_included_line(plan).await;
    // 300 of the 600 off-peak seconds, at 1,000 micros a second.
    assert_eq!(line, Some((300, -300_000)));
    assert_eq!(
        invoice.total_micros,
        5_000_000 + 240_000 + 600_000 + 650_000 - 300_000
    );
}

#[tokio::test]
async fn included_minutes_tariffs_must_name_tariffs_of_a_postpaid_tariffed_plan() {
    let app = spawn_app().await;
    let mut customers = app.customers.clone();
    let mut unknown = tariffed_plan();
    unknown.included_minutes_tariffs = vec!["night".into()];
    assert_status(
        customers.create_plan(unknown).await,
        Code::InvalidArgument,
        "included_minutes_tariffs",
    );
    let mut flat = tariffed_plan();
    flat.tariffs.clear();
    flat.included_minutes_tariffs = vec!["base".into()];
    assert_status(
        customers.create_plan(flat).await,
        Code::InvalidArgument,
        "included_minutes_tariffs",
    );
    let mut with_base = tariffed_plan();
    with_base.included_minutes_tariffs = vec!["base".into(), "peak".into(), "peak".into()];
    let plan = customers.create_plan(with_base).await.unwrap().into_inner();
    assert_eq!(plan.included_minutes_tariffs, vec!["base", "peak"]);
}

/// Migration 000008 rebuilds SQLite's `calls` in customer order (nothing
/// changes on PostgreSQL). A database taken back to the rowid table and
/// started again, as a database from before it is upgraded, keeps every
/// call with its id and segments; a keyed call sent again is still its
/// duplicate, and a new call gets an id after every stored one.
#[tokio::test]
async fn calls_and_their_segments_survive_the_rebuild_of_the_calls_table() {
    let before = spawn_app().await;
    let (_, customer) = customer_on_tariffs(&before).await;
    rated(&before, customer, "+4930123", "2026-06-02T21:58:00Z", 300).await;
    rated(
        &before,
        customer,
        "+442071234567",
        "2026-06-02T10:00:00Z",
        5,
    )
    .await;
    let mut keyed = call(customer, 90);
    keyed.call_id = "switch-1".into();
    keyed.started_at = Some(ts("2026-06-01T09:00:00Z"));
    let first = before.calls.clone().add_call(keyed.clone()).await.unwrap();
    let history = before.history(customer).await;
    assert_eq!(history.len(), 3);
    assert!(history.iter().all(|call| !call.segments.is_empty()));
    let database = before.database.clone();
    before.stop().await;

    let db = sea_orm::Database::connect(&database.url).await.unwrap();
    // Back past migration 000008, which rebuilt `calls` (and 000009 and
    // 000010 after it, which rebuilds it again), then up again.
    <migration::Migrator as migration::MigratorTrait>::down(&db, Some(3))
        .await
        .unwrap();
    db.close().await.unwrap();
    let after = spawn_app_with(AppOptions {
        clock: Clock::starting_at(at(TEST_NOW)),
        database: Some(database),
        ..AppOptions::default()
    })
    .await;

    assert_eq!(after.history(customer).await, history);
    let again = after
        .calls
        .clone()
        .add_call(keyed)
        .await
        .unwrap()
        .into_inner();
    assert!(again.duplicate);
    assert_eq!(again.call, first.into_inner().call);
    let newest = rated(&after, customer, "+4930123", "2026-06-01T08:00:00Z", 60).await;
    assert!(history.iter().all(|call| call.id < newest.id));
    assert_eq!(after.history(customer).await.len(), 4);
}
