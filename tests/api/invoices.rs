//! InvoiceService: issuing on the 1st, plan kinds, late usage, concurrency,
//! time zones, consolidated history, listings and the live feed.

use billing::clock::Clock;
use billing::grpc::pb::{
    self, InvoiceLineKind, PlanKind, generate_invoice_response::Result as Generated,
};
use tokio_stream::StreamExt;
use tonic::Code;

use crate::helpers::{
    AppOptions, TestApp, assert_status, at, call, spawn_app_at, spawn_app_with, ts,
};

pub(crate) fn period(year: i32, month: i32) -> Option<pb::BillingPeriod> {
    Some(pb::BillingPeriod { year, month })
}

pub(crate) async fn plan_with(
    app: &TestApp,
    kind: PlanKind,
    fee: i64,
    per_minute: i64,
    increment: i32,
    included: i64,
) -> pb::Plan {
    app.customers
        .clone()
        .create_plan(pb::CreatePlanRequest {
            name: format!("{kind:?}"),
            kind: kind.into(),
            currency_code: "EUR".into(),
            monthly_fee_micros: fee,
            per_minute_micros: per_minute,
            billing_increment_seconds: increment,
            included_minutes: included,
            tariffs: Vec::new(),
            included_minutes_tariffs: Vec::new(),
        })
        .await
        .unwrap()
        .into_inner()
}

pub(crate) async fn add_call_at(
    app: &TestApp,
    customer_id: i64,
    seconds: i64,
    started_at: &str,
) -> pb::Call {
    let mut request = call(customer_id, seconds);
    request.started_at = Some(ts(started_at));
    app.calls
        .clone()
        .add_call(request)
        .await
        .unwrap()
        .into_inner()
        .call
        .unwrap()
}

pub(crate) async fn generate(
    app: &TestApp,
    customer_id: i64,
    period: Option<pb::BillingPeriod>,
) -> Result<Generated, tonic::Status> {
    app.invoices
        .clone()
        .generate_invoice(pb::GenerateInvoiceRequest {
            customer_id,
            period,
        })
        .await
        .map(|r| r.into_inner().result.expect("a result"))
}

pub(crate) async fn invoice_of(
    app: &TestApp,
    customer_id: i64,
    year: i32,
    month: i32,
) -> pb::Invoice {
    match generate(app, customer_id, period(year, month))
        .await
        .unwrap()
    {
        Generated::Invoice(invoice) => invoice,
        Generated::Preview(preview) => panic!("expected an invoice, got {preview:?}"),
    }
}

pub(crate) async fn run_cycle(
    app: &TestApp,
    period: Option<pb::BillingPeriod>,
) -> pb::RunBillingCycleResponse {
    app.invoices
        .clone()
        .run_billing_cycle(pb::RunBillingCycleRequest { period })
        .await
        .unwrap()
        .into_inner()
}

pub(crate) async fn month_invoice(
    app: &TestApp,
    customer_id: i64,
    period: Option<pb::BillingPeriod>,
) -> pb::Invoice {
    app.invoices
        .clone()
        .get_month_invoice(pb::GetMonthInvoiceRequest {
            customer_id,
            period,
        })
        .await
        .unwrap()
        .into_inner()
}

pub(crate) fn line_amounts(invoice: &pb::Invoice) -> Vec<(InvoiceLineKind, i64)> {
    invoice
        .lines
        .iter()
        .map(|l| (l.kind(), l.amount_micros))
        .collect()
}

pub(crate) fn assert_total_is_sum_of_lines(invoice: &pb::Invoice) {
    let sum: i64 = invoice.lines.iter().map(|l| l.amount_micros).sum();
    assert_eq!(invoice.total_micros, sum, "{invoice:?}");
}

#[tokio::test]
async fn on_the_first_last_month_is_invoiced_and_on_other_days_usage_is_previewed() {
    let app = spawn_app_at(at("2026-01-10T09:00:00Z")).await;
    let plan = plan_with(&app, PlanKind::Postpaid, 10_000_000, 120_000, 60, 0).await;
    let customer = app.customer(plan.id, 1, vec![]).await;
    add_call_at(&app, customer.id, 61, "2026-01-05T10:00:00Z").await;
    add_call_at(&app, customer.id, 30, "2026-01-09T10:00:00Z").await;

    let Generated::Preview(preview) = generate(&app, customer.id, None).await.unwrap() else {
        panic!("the 10th previews");
    };
    assert_eq!(preview.period, period(2026, 1));
    assert_eq!(
        (
            preview.call_count,
            preview.billed_seconds,
            preview.usage_micros
        ),
        (2, 180, 360_000)
    );
    assert_eq!(preview.monthly_fee_micros, 10_000_000);
    assert_eq!(preview.total_micros, 10_360_000);
    assert_eq!(preview.currency_code, "EUR");
    let listed = app
        .invoices
        .clone()
        .list_invoices(pb::ListInvoicesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.invoices.is_empty(), "a preview is stored nowhere");

    app.clock.set(at("2026-02-01T00:00:05Z"));
    let Generated::Invoice(invoice) = generate(&app, customer.id, None).await.unwrap() else {
        panic!("the 1st issues");
    };
    assert_eq!(invoice.period, period(2026, 1));
    assert_eq!(invoice.number, format!("INV-2026-01-{:06}", invoice.id));
    assert_eq!(invoice.period_start, Some(ts("2026-01-01T00:00:00Z")));
    assert_eq!(invoice.period_end, Some(ts("2026-02-01T00:00:00Z")));
    assert_eq!(
        line_amounts(&invoice),
        vec![
            (InvoiceLineKind::MonthlyFee, 10_000_000),
            (InvoiceLineKind::Usage, 360_000)
        ]
    );
    assert_eq!(invoice.total_micros, 10_360_000);
    assert_eq!(
        (
            invoice.call_count,
            invoice.billed_seconds,
            invoice.usage_micros
        ),
        (2, 180, 360_000)
    );
    let Generated::Invoice(again) = generate(&app, customer.id, None).await.unwrap() else {
        panic!("the 1st returns the issued invoice");
    };
    assert_eq!(again, invoice);
    assert!(
        app.history(customer.id)
            .await
            .iter()
            .all(|c| c.invoice_id == invoice.id)
    );

    app.clock.set(at("2026-02-02T00:00:00Z"));
    let Generated::Preview(february) = generate(&app, customer.id, None).await.unwrap() else {
        panic!("the 2nd previews");
    };
    assert_eq!(february.period, period(2026, 2));
    assert_eq!(february.call_count, 0);
}

#[tokio::test]
async fn each_plan_kind_is_invoiced_with_exact_totals() {
    let app = spawn_app_at(at("2026-03-01T08:00:00Z")).await;
    // Postpaid: 9.99 fee, 0.12/min, 60 s increments, 10 included minutes.
    let postpaid = plan_with(&app, PlanKind::Postpaid, 9_990_000, 120_000, 60, 10).await;
    let fixed = plan_with(&app, PlanKind::Fixed, 29_000_000, 0, 60, 0).await;
    // Prepaid: 0.09/min, per-second billing.
    let prepaid = plan_with(&app, PlanKind::Prepaid, 0, 90_000, 1, 0).await;
    let p = app.customer(postpaid.id, 1, vec![]).await;
    let f = app.customer(fixed.id, 2, vec![]).await;
    let q = app.customer(prepaid.id, 3, vec![]).await;
    app.clock.set(at("2026-03-25T00:00:00Z"));
    // Postpaid: 7 min + 5 min 1 s (billed 6 min) = 13 billed minutes = 1.56.
    add_call_at(&app, p.id, 420, "2026-03-02T10:00:00Z").await;
    add_call_at(&app, p.id, 301, "2026-03-20T10:00:00Z").await;
    for n in 0..5 {
        add_call_at(&app, f.id, 3600, &format!("2026-03-1{n}T10:00:00Z")).await;
    }
    // Prepaid: 100 s + 200 s at 0.0015/s = 0.15 + 0.30.
    add_call_at(&app, q.id, 100, "2026-03-03T10:00:00Z").await;
    add_call_at(&app, q.id, 200, "2026-03-04T10:00:00Z").await;
    for (amount, key) in [(5_000_000, "t1"), (2_500_000, "t2")] {
        app.customers
            .clone()
            .top_up(pb::TopUpRequest {
                customer_id: q.id,
                amount_micros: amount,
                request_id: key.into(),
            })
            .await
            .unwrap();
    }
    app.clock.set(at("2026-04-01T00:00:01Z"));

    let postpaid_invoice = invoice_of(&app, p.id, 2026, 3).await;
    assert_eq!(
        line_amounts(&postpaid_invoice),
        vec![
            (InvoiceLineKind::MonthlyFee, 9_990_000),
            (InvoiceLineKind::Usage, 1_560_000),
            (InvoiceLineKind::IncludedMinutes, -1_200_000),
        ]
    );
    assert_eq!(postpaid_invoice.total_micros, 10_350_000);
    assert_eq!(postpaid_invoice.lines[2].quantity, 600);
    assert_eq!(
        (postpaid_invoice.call_count, postpaid_invoice.billed_seconds),
        (2, 780)
    );

    let fixed_invoice = invoice_of(&app, f.id, 2026, 3).await;
    assert_eq!(
        line_amounts(&fixed_invoice),
        vec![(InvoiceLineKind::MonthlyFee, 29_000_000)]
    );
    assert_eq!(fixed_invoice.total_micros, 29_000_000);
    assert_eq!(
        (fixed_invoice.call_count, fixed_invoice.usage_micros),
        (5, 0)
    );

    let prepaid_invoice = invoice_of(&app, q.id, 2026, 3).await;
    assert_eq!(
        line_amounts(&prepaid_invoice),
        vec![
            (InvoiceLineKind::TopUp, 5_000_000),
            (InvoiceLineKind::TopUp, 2_500_000)
        ]
    );
    assert_eq!(prepaid_invoice.total_micros, 7_500_000);
    assert_eq!(
        (prepaid_invoice.call_count, prepaid_invoice.usage_micros),
        (2, 450_000)
    );
    assert_eq!(app.get_customer(q.id).await.balance_micros, 7_050_000);
    for invoice in [&postpaid_invoice, &fixed_invoice, &prepaid_invoice] {
        assert_total_is_sum_of_lines(invoice);
        assert_eq!(invoice.currency_code, "EUR");
    }
}

#[tokio::test]
async fn a_call_arriving_after_its_month_was_invoiced_is_late_usage_on_the_next_invoice() {
    let app = spawn_app_at(at("2026-05-20T12:00:00Z")).await;
    let plan = plan_with(&app, PlanKind::Postpaid, 1_000_000, 60_000, 1, 0).await;
    let customer = app.customer(plan.id, 1, vec![]).await;
    add_call_at(&app, customer.id, 100, "2026-05-20T00:00:00Z").await;
    app.clock.set(at("2026-06-01T00:00:00Z"));
    let may = invoice_of(&app, customer.id, 2026, 5).await;
    assert_eq!(may.total_micros, 1_100_000);

    let late = add_call_at(&app, customer.id, 50, "2026-05-31T23:59:00Z").await;
    add_call_at(&app, customer.id, 10, "2026-06-01T00:00:00Z").await;
    assert_eq!(late.invoice_id, 0);
    app.clock.set(at("2026-07-01T00:00:00Z"));
    let june = invoice_of(&app, customer.id, 2026, 6).await;
    assert_eq!(
        line_amounts(&june),
        vec![
            (InvoiceLineKind::MonthlyFee, 1_000_000),
            (InvoiceLineKind::Usage, 10_000),
            (InvoiceLineKind::LateUsage, 50_000),
        ]
    );
    assert!(
        june.lines[2].description.contains("2026-05"),
        "{:?}",
        june.lines[2]
    );
    assert_eq!(june.call_count, 2);
    assert_total_is_sum_of_lines(&june);

    let may_again = month_invoice(&app, customer.id, period(2026, 5)).await;
    assert_eq!(may_again, may, "issued invoices never change");
    let history = app.history(customer.id).await;
    assert!(history.iter().all(|c| c.invoice_id != 0));
    assert_eq!(history.iter().filter(|c| c.invoice_id == may.id).count(), 1);
}

#[tokio::test]
async fn concurrent_generation_and_billing_cycles_issue_one_invoice_per_customer() {
    let app = spawn_app_at(at("2026-02-10T00:00:00Z")).await;
    let plan = plan_with(&app, PlanKind::Postpaid, 1_000_000, 60_000, 1, 0).await;
    let mut customers = Vec::new();
    for n in 0..8 {
        let customer = app.customer(plan.id, n, vec![]).await;
        add_call_at(&app, customer.id, 60, "2026-02-10T00:00:00Z").await;
        customers.push(customer.id);
    }
    app.clock.set(at("2026-03-03T00:00:00Z"));
    let mut generators = Vec::new();
    for n in 0..16 {
        let mut client = app.invoices.clone();
        let customer_id = customers[n % 3];
        generators.push(tokio::spawn(async move {
            client
                .generate_invoice(pb::GenerateInvoiceRequest {
                    customer_id,
                    period: period(2026, 2),
                })
                .await
                .map(|r| match r.into_inner().result {
                    Some(Generated::Invoice(invoice)) => invoice.id,
                    other => panic!("expected an invoice, got {other:?}"),
                })
        }));
    }
    let mut cycles = Vec::new();
    for _ in 0..4 {
        let mut client = app.invoices.clone();
        cycles.push(tokio::spawn(async move {
            client
                .run_billing_cycle(pb::RunBillingCycleRequest {
                    period: period(2026, 2),
                })
                .await
                .map(|r| r.into_inner())
        }));
    }
    let ids: Vec<i64> = futures_util::future::join_all(generators)
        .await
        .into_iter()
        .map(|r| r.unwrap().unwrap())
        .collect();
    for summary in futures_util::future::join_all(cycles).await {
        let summary = summary.unwrap().unwrap();
        assert_eq!(summary.issued + summary.already_issued, 8, "{summary:?}");
    }
    let listed = app
        .invoices
        .clone()
        .list_invoices(pb::ListInvoicesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.invoices.len(), 8);
    let mut owners: Vec<i64> = listed.invoices.iter().map(|i| i.customer_id).collect();
    owners.sort_unstable();
    assert_eq!(owners, customers);
    for (n, id) in ids.iter().enumerate() {
        let expected = listed
            .invoices
            .iter()
            .find(|i| i.customer_id == customers[n % 3])
            .unwrap()
            .id;
        assert_eq!(*id, expected, "every generator got the one invoice");
    }
    let again = run_cycle(&app, period(2026, 2)).await;
    assert_eq!((again.issued, again.already_issued), (0, 8));
}

#[tokio::test]
async fn month_boundaries_follow_the_billing_zone_across_daylight_saving() {
    let app = spawn_app_with(AppOptions {
        clock: Clock::starting_at(at("2026-03-05T12:00:00Z")),
        tz: chrono_tz::America::New_York,
        ..AppOptions::default()
    })
    .await;
    let plan = plan_with(&app, PlanKind::Postpaid, 0, 60_000, 1, 0).await;
    let customer = app.customer(plan.id, 1, vec![]).await;
    // 1 April 01:00 EDT: still the 1st in New York.
    app.clock.set(at("2026-04-01T05:00:00Z"));
    add_call_at(&app, customer.id, 10, "2026-04-01T03:30:00Z").await; // 31 March 23:30 EDT
    add_call_at(&app, customer.id, 20, "2026-04-01T04:30:00Z").await; // 1 April 00:30 EDT
    let Generated::Invoice(march) = generate(&app, customer.id, None).await.unwrap() else {
        panic!("the 1st in New York issues March");
    };
    assert_eq!(march.period, period(2026, 3));
    assert_eq!(march.period_start, Some(ts("2026-03-01T05:00:00Z")));
    assert_eq!(march.period_end, Some(ts("2026-04-01T04:00:00Z")));
    assert_eq!((march.call_count, march.usage_micros), (1, 10_000));
    // 31 March 23:00 UTC is 1 April in Berlin but 31 March 19:00 here.
    app.clock.set(at("2026-04-01T02:00:00Z"));
    let Generated::Preview(preview) = generate(&app, customer.id, None).await.unwrap() else {
        panic!("31 March in New York previews");
    };
    assert_eq!(preview.period, period(2026, 3));
}

#[tokio::test]
async fn bad_invoice_requests_get_clear_statuses() {
    let app = spawn_app_at(at("2026-06-15T00:00:00Z")).await;
    let plan = plan_with(&app, PlanKind::Postpaid, 0, 60_000, 1, 0).await;
    let customer = app.customer(plan.id, 1, vec![]).await;
    assert_status(
        generate(&app, customer.id, period(2026, 13)).await,
        Code::InvalidArgument,
        "period.month",
    );
    assert_status(
        generate(&app, customer.id, period(2026, 0)).await,
        Code::InvalidArgument,
        "period.month",
    );
    assert_status(
        generate(&app, 999, period(2026, 5)).await,
        Code::NotFound,
        "customer 999",
    );
    assert_status(
        generate(&app, customer.id, period(2026, 5)).await,
        Code::FailedPrecondition,
        "did not exist",
    );
    assert_status(
        generate(&app, customer.id, period(2026, 6)).await,
        Code::FailedPrecondition,
        "closes at 2026-07-01T00:00:00",
    );
    let mut client = app.invoices.clone();
    assert_status(
        client
            .get_month_invoice(pb::GetMonthInvoiceRequest {
                customer_id: customer.id,
                period: period(2026, 6),
            })
            .await,
        Code::NotFound,
        "no invoice",
    );
    assert_status(
        client
            .get_month_invoice(pb::GetMonthInvoiceRequest {
                customer_id: customer.id,
                period: period(0, 13),
            })
            .await,
        Code::InvalidArgument,
        "period.month",
    );
    assert_status(
        client
            .run_billing_cycle(pb::RunBillingCycleRequest {
                period: period(2026, 7),
            })
            .await,
        Code::FailedPrecondition,
        "closes at 2026-08-01T00:00:00",
    );
    assert_status(
        client
            .list_invoices(pb::ListInvoicesRequest {
                customer_id: 404,
                ..Default::default()
            })
            .await,
        Code::NotFound,
        "customer 404",
    );
}

#[tokio::test]
async fn year_zero_finds_the_latest_year_in_which_the_month_started() {
    let app = spawn_app_at(at("2025-11-10T00:00:00Z")).await;
    let plan = plan_with(&app, PlanKind::Fixed, 1_000_000, 0, 60, 0).await;
    let customer = app.customer(plan.id, 1, vec![]).await;
    app.clock.set(at("2026-02-10T00:00:00Z"));
    let cycle = run_cycle(&app, period(2025, 12)).await;
    assert_eq!(cycle.issued, 1);
    let december = month_invoice(&app, customer.id, period(0, 12)).await;
    assert_eq!(december.period, period(2025, 12));
    // The default cycle bills the previous month.
    let january = run_cycle(&app, None).await;
    assert_eq!(january.issued, 1);
    let found = month_invoice(&app, customer.id, period(0, 1)).await;
    assert_eq!(found.period, period(2026, 1));
}

#[tokio::test]
async fn consolidated_history_streams_each_active_month_issued_or_open() {
    let app = spawn_app_at(at("2026-01-15T00:00:00Z")).await;
    let plan = plan_with(&app, PlanKind::Prepaid, 0, 60_000, 1, 0).await;
    let customer = app.customer(plan.id, 1, vec![]).await;
    add_call_at(&app, customer.id, 60, "2026-01-15T00:00:00Z").await;
    app.clock.set(at("2026-04-20T00:00:00Z"));
    add_call_at(&app, customer.id, 120, "2026-03-16T00:00:00Z").await;
    add_call_at(&app, customer.id, 30, "2026-04-16T00:00:00Z").await;
    // January is invoiced; February had no activity; March and April are open.
    invoice_of(&app, customer.id, 2026, 1).await;
    let months: Vec<pb::ConsolidatedMonth> = app
        .invoices
        .clone()
        .stream_consolidated(pb::StreamConsolidatedRequest {
            customer_id: customer.id,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .collect::<Result<_, _>>()
        .await
        .unwrap();
    let summary: Vec<_> = months
        .iter()
        .map(|m| {
            (
                m.period.unwrap().month,
                m.status(),
                m.call_count,
                m.usage_micros,
                !m.invoice_number.is_empty(),
            )
        })
        .collect();
    use pb::ConsolidatedStatus::{Issued, Open};
    assert_eq!(
        summary,
        vec![
            (1, Issued, 1, 60_000, true),
            (3, Open, 1, 120_000, false),
            (4, Open, 1, 30_000, false)
        ]
    );
    let bounded: Vec<pb::ConsolidatedMonth> = app
        .invoices
        .clone()
        .stream_consolidated(pb::StreamConsolidatedRequest {
            customer_id: customer.id,
            from_period: period(2026, 2),
            to_period: period(2026, 3),
        })
        .await
        .unwrap()
        .into_inner()
        .collect::<Result<_, _>>()
        .await
        .unwrap();
    assert_eq!(bounded.len(), 1);
    assert_status(
        app.invoices
            .clone()
            .stream_consolidated(pb::StreamConsolidatedRequest {
                customer_id: customer.id,
                from_period: period(2026, 3),
                to_period: period(2026, 2),
            })
            .await,
        Code::InvalidArgument,
        "to_period",
    );
}

#[tokio::test]
async fn list_invoices_pages_in_issue_order_and_filters_by_customer() {
    let app = spawn_app_at(at("2026-01-15T00:00:00Z")).await;
    let plan = plan_with(&app, PlanKind::Fixed, 1_000_000, 0, 60, 0).await;
    let a = app.customer(plan.id, 1, vec![]).await;
    let b = app.customer(plan.id, 2, vec![]).await;
    app.clock.set(at("2026-05-01T00:00:00Z"));
    for month in 1..=4 {
        run_cycle(&app, period(2026, month)).await;
    }
    let mut client = app.invoices.clone();
    let mut ids = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_invoices(pb::ListInvoicesRequest {
                customer_id: 0,
                page_size: 3,
                page_token,
            })
            .await
            .unwrap()
            .into_inner();
        ids.extend(page.invoices.iter().map(|i| i.id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(ids.len(), 8);
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    let of_b = client
        .list_invoices(pb::ListInvoicesRequest {
            customer_id: b.id,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(of_b.invoices.len(), 4);
    assert!(
        of_b.invoices
            .iter()
            .all(|i| i.customer_id == b.id && i.total_micros == 1_000_000)
    );
    assert!(a.id != b.id);
}

#[tokio::test]
async fn watch_invoices_delivers_history_then_live_invoices() {
    let app = spawn_app_at(at("2026-01-15T00:00:00Z")).await;
    let plan = plan_with(&app, PlanKind::Fixed, 1_000_000, 0, 60, 0).await;
    let a = app.customer(plan.id, 1, vec![]).await;
    let b = app.customer(plan.id, 2, vec![]).await;
    app.clock.set(at("2026-03-01T00:00:00Z"));
    let january_a = invoice_of(&app, a.id, 2026, 1).await;
    let january_b = invoice_of(&app, b.id, 2026, 1).await;

    let mut all = app
        .invoices
        .clone()
        .watch_invoices(pb::WatchInvoicesRequest {
            after_invoice_id: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut after_first = app
        .invoices
        .clone()
        .watch_invoices(pb::WatchInvoicesRequest {
            after_invoice_id: january_a.id,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        within("the feed", all.next()).await.unwrap().unwrap(),
        january_a
    );
    assert_eq!(
        within("the feed", all.next()).await.unwrap().unwrap(),
        january_b
    );
    assert_eq!(
        within("the feed", after_first.next())
            .await
            .unwrap()
            .unwrap(),
        january_b
    );

    let february = invoice_of(&app, a.id, 2026, 2).await;
    assert_eq!(
        within("the feed", all.next()).await.unwrap().unwrap(),
        february
    );
    assert_eq!(
        within("the feed", after_first.next())
            .await
            .unwrap()
            .unwrap(),
        february
    );
}

/// A watcher whose client stops reading falls behind the feed shared by
/// every watcher of the server; once it reads again it receives every
/// invoice, each once, in id order.
#[tokio::test]
async fn a_watcher_that_falls_behind_the_shared_feed_still_receives_every_invoice_once() {
    let app = spawn_app_at(at("2026-01-15T00:00:00Z")).await;
    let plan = plan_with(&app, PlanKind::Fixed, 1_000_000, 0, 60, 0).await;
    const CUSTOMERS: usize = 1500;
    for n in 0..CUSTOMERS {
        app.customer(plan.id, u32::try_from(n).unwrap(), vec![])
            .await;
    }
    app.clock.set(at("2026-02-01T00:00:00Z"));
    // A small window: the server cannot send far ahead of the reader, so
    // the watcher's task waits while the shared feed moves on.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .initial_stream_window_size(1024)
        .connect()
        .await
        .unwrap();
    let mut slow = pb::invoice_service_client::InvoiceServiceClient::new(channel)
        .watch_invoices(pb::WatchInvoicesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut keeping_up = app
        .invoices
        .clone()
        .watch_invoices(pb::WatchInvoicesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let cycle = app
        .invoices
        .clone()
        .run_billing_cycle(pb::RunBillingCycleRequest {
            period: period(2026, 1),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cycle.issued, CUSTOMERS as i64);
    let mut last = 0;
    for n in 0..CUSTOMERS {
        let invoice = within("the feed", keeping_up.next())
            .await
            .unwrap()
            .unwrap();
        assert!(invoice.id > last, "invoice {n} out of order");
        last = invoice.id;
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut last = 0;
    for n in 0..CUSTOMERS {
        let invoice = within("the slow feed", slow.next()).await.unwrap().unwrap();
        assert!(invoice.id > last, "invoice {n} out of order or repeated");
        last = invoice.id;
        seen.insert(invoice.customer_id);
    }
    assert_eq!(seen.len(), CUSTOMERS);
}

/// Guards a wait on a stream, so a missing invoice fails the test instead of
/// hanging it.
async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(std::time::Duration::from_secs(30), future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

#[tokio::test]
async fn the_scheduler_issues_last_months_invoices_at_midnight_on_the_first() {
    let app = spawn_app_with(AppOptions {
        clock: Clock::starting_at(at("2026-01-31T23:00:00Z")),
        scheduler: true,
        ..AppOptions::default()
    })
    .await;
    let plan = plan_with(&app, PlanKind::Fixed, 3_000_000, 0, 60, 0).await;
    let a = app.customer(plan.id, 1, vec![]).await;
    let b = app.customer(plan.id, 2, vec![]).await;
    let mut feed = app
        .invoices
        .clone()
        .watch_invoices(pb::WatchInvoicesRequest {
            after_invoice_id: 0,
        })
        .await
        .unwrap()
        .into_inner();
    // Half a second before midnight; the scheduler's timer takes it from here.
    app.clock.set(at("2026-01-31T23:59:59.500Z"));
    let first = within("the first invoice", feed.next())
        .await
        .unwrap()
        .unwrap();
    let second = within("the second invoice", feed.next())
        .await
        .unwrap()
        .unwrap();
    let mut owners = vec![first.customer_id, second.customer_id];
    owners.sort_unstable();
    assert_eq!(owners, vec![a.id, b.id]);
    for invoice in [first, second] {
        assert_eq!(invoice.period, period(2026, 1));
        assert!(invoice.issued_at.unwrap().seconds >= ts("2026-02-01T00:00:00Z").seconds);
    }
}

#[tokio::test]
async fn the_scheduler_catches_up_every_month_missed_while_down() {
    let before = spawn_app_at(at("2026-01-10T00:00:00Z")).await;
    let plan = plan_with(&before, PlanKind::Postpaid, 2_000_000, 60_000, 1, 0).await;
    let a = before.customer(plan.id, 1, vec![]).await;
    let b = before.customer(plan.id, 2, vec![]).await;
    add_call_at(&before, a.id, 60, "2026-01-10T00:00:00Z").await;
    let database = before.database.clone();
    before.stop().await;

    let after = spawn_app_with(AppOptions {
        clock: Clock::starting_at(at("2026-04-10T00:00:00Z")),
        scheduler: true,
        database: Some(database),
        ..AppOptions::default()
    })
    .await;
    let feed = after
        .invoices
        .clone()
        .watch_invoices(pb::WatchInvoicesRequest {
            after_invoice_id: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let invoices: Vec<pb::Invoice> = within("six invoices", feed.take(6).collect::<Result<_, _>>())
        .await
        .unwrap();
    let mut issued: Vec<(i64, i32)> = invoices
        .iter()
        .map(|i| (i.customer_id, i.period.unwrap().month))
        .collect();
    issued.sort_unstable();
    assert_eq!(
        issued,
        vec![
            (a.id, 1),
            (a.id, 2),
            (a.id, 3),
            (b.id, 1),
            (b.id, 2),
            (b.id, 3)
        ]
    );
    let january_a = invoices
        .iter()
        .find(|i| i.customer_id == a.id && i.period == period(2026, 1))
        .unwrap();
    assert_eq!(january_a.total_micros, 2_060_000);
}
