//! Billing correctness: months billed in order, exact included minutes, and
//! a billing cycle that one customer's failure cannot stop.

use billing::grpc::pb::{
    self, InvoiceLineKind, PlanKind, generate_invoice_response::Result as Generated,
};
use tonic::Code;

use crate::helpers::{TestApp, assert_status, at, call, spawn_app_at, ts};
use crate::invoices::{
    add_call_at, assert_total_is_sum_of_lines, generate, line_amounts as kinds, month_invoice,
    period, plan_with, run_cycle,
};

async fn postpaid(app: &TestApp, fee: i64, per_minute: i64, included_minutes: i64) -> pb::Plan {
    plan_with(
        app,
        PlanKind::Postpaid,
        fee,
        per_minute,
        1,
        included_minutes,
    )
    .await
}

/// The invoice GenerateInvoice returns for an ended month, or its error.
async fn issue(
    app: &TestApp,
    customer_id: i64,
    period: Option<pb::BillingPeriod>,
) -> Result<pb::Invoice, tonic::Status> {
    generate(app, customer_id, period)
        .await
        .map(|result| match result {
            Generated::Invoice(invoice) => invoice,
            Generated::Preview(preview) => panic!("expected an invoice, got {preview:?}"),
        })
}

#[tokio::test]
async fn issuing_a_month_first_issues_the_missing_earlier_months_with_their_own_calls() {
    let app = spawn_app_at(at("2026-02-10T00:00:00Z")).await;
    let plan = postpaid(&app, 1_000_000, 60_000, 0).await;
    let customer = app.customer(plan.id, 1, vec![]).await;
    app.clock.set(at("2026-05-05T00:00:00Z"));
    add_call_at(&app, customer.id, 60, "2026-02-15T10:00:00Z").await;
    add_call_at(&app, customer.id, 120, "2026-03-15T10:00:00Z").await;
    add_call_at(&app, customer.id, 30, "2026-04-15T10:00:00Z").await;

    let april = issue(&app, customer.id, period(2026, 4)).await.unwrap();
    assert_eq!(
        kinds(&april),
        vec![
            (InvoiceLineKind::MonthlyFee, 1_000_000),
            (InvoiceLineKind::Usage, 30_000)
        ],
        "no earlier month's call is April's late usage"
    );
    assert_eq!((april.call_count, april.billed_seconds), (1, 30));
    let february = month_invoice(&app, customer.id, period(2026, 2)).await;
    let march = month_invoice(&app, customer.id, period(2026, 3)).await;
    assert_eq!((february.call_count, february.usage_micros), (1, 60_000));
    assert_eq!((march.call_count, march.usage_micros), (1, 120_000));
    assert!(
        february.id < march.id && march.id < april.id,
        "issued oldest first"
    );
    for invoice in [&february, &march, &april] {
        assert_total_is_sum_of_lines(invoice);
    }
    let history = app.history(customer.id).await;
    let on = |invoice: &pb::Invoice| {
        history
            .iter()
            .filter(|c| c.invoice_id == invoice.id)
            .count()
    };
    assert_eq!((on(&february), on(&march), on(&april)), (1, 1, 1));

    // A call of March that arrives now, after March was issued, is late.
    add_call_at(&app, customer.id, 10, "2026-03-20T10:00:00Z").await;
    app.clock.set(at("2026-06-01T00:00:01Z"));
    let may = issue(&app, customer.id, None).await.unwrap();
    assert_eq!(may.period, period(2026, 5));
    assert_eq!(
        kinds(&may),
        vec![
            (InvoiceLineKind::MonthlyFee, 1_000_000),
            (InvoiceLineKind::Usage, 0),
            (InvoiceLineKind::LateUsage, 10_000)
        ]
    );
    assert!(may.lines[2].description.contains("2026-03"));
    assert_eq!(
        month_invoice(&app, customer.id, period(2026, 3)).await,
        march,
        "issued invoices never change"
    );
}

#[tokio::test]
async fn a_billing_cycle_bills_each_customers_missing_months_in_order() {
    let app = spawn_app_at(at("2026-02-10T00:00:00Z")).await;
    let plan = postpaid(&app, 1_000_000, 60_000, 0).await;
    let mut customers = Vec::new();
    for n in 0..3 {
        customers.push(app.customer(plan.id, n, vec![]).await.id);
    }
    app.clock.set(at("2026-04-02T00:00:00Z"));
    for &customer_id in &customers {
        add_call_at(&app, customer_id, 60, "2026-02-20T00:00:00Z").await;
        add_call_at(&app, customer_id, 120, "2026-03-20T00:00:00Z").await;
    }
    // March's cycle runs before February's ever did.
    let march = run_cycle(&app, period(2026, 3)).await;
    assert_eq!(
        (
            march.issued,
            march.already_issued,
            march.earlier_issued,
            march.failed
        ),
        (3, 0, 3, 0)
    );
    for &customer_id in &customers {
        let february = month_invoice(&app, customer_id, period(2026, 2)).await;
        let march = month_invoice(&app, customer_id, period(2026, 3)).await;
        assert_eq!((february.call_count, february.usage_micros), (1, 60_000));
        assert_eq!((march.call_count, march.usage_micros), (1, 120_000));
        assert!(
            march
                .lines
                .iter()
                .all(|l| l.kind() != InvoiceLineKind::LateUsage)
        );
    }
    let february = run_cycle(&app, period(2026, 2)).await;
    assert_eq!(
        (
            february.issued,
            february.already_issued,
            february.earlier_issued
        ),
        (0, 3, 0)
    );
}

#[tokio::test]
async fn concurrent_issuers_of_different_months_bill_every_call_in_its_own_month() {
    let app = spawn_app_at(at("2026-01-10T00:00:00Z")).await;
    let plan = postpaid(&app, 500_000, 60_000, 0).await;
    let mut customers = Vec::new();
    for n in 0..4 {
        customers.push(app.customer(plan.id, n, vec![]).await.id);
    }
    app.clock.set(at("2026-05-03T00:00:00Z"));
    for &customer_id in &customers {
        for month in 1..=4 {
            add_call_at(
                &app,
                customer_id,
                60 * i64::from(month),
                &format!("2026-{month:02}-15T00:00:00Z"),
            )
            .await;
        }
    }
    let mut tasks = Vec::new();
    for n in 0..24_usize {
        let mut client = app.invoices.clone();
        let customer_id = customers[n % customers.len()];
        let month = i32::try_from(4 - n % 4).unwrap();
        tasks.push(tokio::spawn(async move {
            if n % 6 == 0 {
                client
                    .run_billing_cycle(pb::RunBillingCycleRequest {
                        period: period(2026, month),
                    })
                    .await
                    .map(|_| ())
            } else {
                client
                    .generate_invoice(pb::GenerateInvoiceRequest {
                        customer_id,
                        period: period(2026, month),
                    })
                    .await
                    .map(|_| ())
            }
        }));
    }
    for task in futures_util::future::join_all(tasks).await {
        task.unwrap().unwrap();
    }
    run_cycle(&app, period(2026, 4)).await;
    let listed = app
        .invoices
        .clone()
        .list_invoices(pb::ListInvoicesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .invoices;
    assert_eq!(listed.len(), customers.len() * 4, "one invoice per month");
    for invoice in &listed {
        let month = i64::from(invoice.period.unwrap().month);
        assert_eq!(
            (invoice.call_count, invoice.billed_seconds),
            (1, 60 * month),
            "{invoice:?}"
        );
        assert!(
            invoice
                .lines
                .iter()
                .all(|l| l.kind() != InvoiceLineKind::LateUsage)
        );
    }
    for &customer_id in &customers {
        let mut months: Vec<(i64, i32)> = listed
            .iter()
            .filter(|i| i.customer_id == customer_id)
            .map(|i| (i.id, i.period.unwrap().month))
            .collect();
        months.sort_unstable();
        let order: Vec<i32> = months.iter().map(|m| m.1).collect();
        assert_eq!(order, vec![1, 2, 3, 4], "ids grow with the month");
    }
}

#[tokio::test]
async fn fully_included_usage_nets_to_exactly_zero() {
    let app = spawn_app_at(at("2026-03-01T00:00:00Z")).await;
    // 90 micros a minute: a one-second call costs 1.5 -> 2 micros.
    let plan = postpaid(&app, 7_000_000, 90, 100).await;
    let customer = app.customer(plan.id, 1, vec![]).await;
    app.clock.set(at("2026-03-20T00:00:00Z"));
    let records: Vec<_> = (0..100)
        .map(|n| {
            let mut request = call(customer.id, 1);
            request.started_at = Some(ts(&format!("2026-03-02T10:{:02}:{:02}Z", n / 60, n % 60)));
            request
        })
        .collect();
    assert_eq!(app.ingest(records).await.accepted, 100);

    // The preview states it the same way as the invoice will.
    let preview = match app
        .invoices
        .clone()
        .generate_invoice(pb::GenerateInvoiceRequest {
            customer_id: customer.id,
            period: None,
        })
        .await
        .unwrap()
        .into_inner()
        .result
    {
        Some(Generated::Preview(preview)) => preview,
        other => panic!("expected a preview, got {other:?}"),
    };
    assert_eq!(preview.usage_micros, 200);
    assert_eq!(preview.total_micros, 7_000_000);

    app.clock.set(at("2026-04-01T00:00:01Z"));
    let invoice = issue(&app, customer.id, period(2026, 3)).await.unwrap();
    assert_eq!(
        kinds(&invoice),
        vec![
            (InvoiceLineKind::MonthlyFee, 7_000_000),
            (InvoiceLineKind::Usage, 200),
            (InvoiceLineKind::IncludedMinutes, -200)
        ]
    );
    assert_eq!(invoice.lines[2].quantity, 100);
    assert_eq!(invoice.total_micros, 7_000_000);
}

#[tokio::test]
async fn only_the_call_crossing_the_allowance_is_split() {
    let app = spawn_app_at(at("2026-03-01T00:00:00Z")).await;
    // One included minute at 90 micros/minute, per-second billing.
    let plan = postpaid(&app, 1_000_000, 90, 1).await;
    let customer = app.customer(plan.id, 1, vec![]).await;
    // In start order: 50 s (cost 75) wholly included; 30 s (cost 45) crosses
    // the end with 10 s inside (10 * 90 / 60 = 15); 40 s (cost 60) is not
    // included. Stored out of order to show the order is by start.
    app.clock.set(at("2026-03-20T00:00:00Z"));
    let third = add_call_at(&app, customer.id, 40, "2026-03-12T00:00:00Z").await;
    let first = add_call_at(&app, customer.id, 50, "2026-03-10T00:00:00Z").await;
    let second = add_call_at(&app, customer.id, 30, "2026-03-11T00:00:00Z").await;
    assert_eq!(
        (first.cost_micros, second.cost_micros, third.cost_micros),
        (75, 45, 60)
    );
    app.clock.set(at("2026-04-01T00:00:01Z"));
    let invoice = issue(&app, customer.id, period(2026, 3)).await.unwrap();
    assert_eq!(
        kinds(&invoice),
        vec![
            (InvoiceLineKind::MonthlyFee, 1_000_000),
            (InvoiceLineKind::Usage, 180),
            (InvoiceLineKind::IncludedMinutes, -90)
        ]
    );
    assert_eq!(invoice.lines[2].quantity, 60);
    assert_eq!(invoice.total_micros, 1_000_090);
    assert_total_is_sum_of_lines(&invoice);
}

#[tokio::test]
async fn one_customer_that_cannot_be_invoiced_never_stops_the_cycle() {
    let app = spawn_app_at(at("2026-02-10T00:00:00Z")).await;
    let plan = postpaid(&app, 1_000_000, 60_000, 0).await;
    let mut customers = Vec::new();
    for n in 0..5 {
        customers.push(app.customer(plan.id, n, vec![]).await.id);
    }
    app.clock.set(at("2026-02-25T00:00:00Z"));
    let mut calls = Vec::new();
    for &customer_id in &customers {
        calls.push(add_call_at(&app, customer_id, 60, "2026-02-20T00:00:00Z").await);
    }
    // The third customer's call was damaged in the database: its cost
    // leaves no room for the monthly fee in 64-bit micros.
    let broken = customers[2];
    app.execute_sql(&format!(
        "UPDATE calls SET cost_micros = {} WHERE id = {}",
        i64::MAX - 10,
        calls[2].id
    ))
    .await;
    app.clock.set(at("2026-03-02T00:00:00Z"));

    let cycle = run_cycle(&app, period(2026, 2)).await;
    assert_eq!(
        (cycle.issued, cycle.already_issued, cycle.failed),
        (4, 0, 1)
    );
    assert_eq!(cycle.failures.len(), 1);
    assert_eq!(cycle.failures[0].customer_id, broken);
    assert!(
        cycle.failures[0].message.contains("2026-02"),
        "{:?}",
        cycle.failures
    );
    for &customer_id in customers.iter().filter(|&&id| id != broken) {
        let invoice = month_invoice(&app, customer_id, period(2026, 2)).await;
        assert_eq!(invoice.total_micros, 1_060_000);
    }
    assert_eq!(
        app.history(broken).await[0].invoice_id,
        0,
        "nothing half-written"
    );
    assert_status(
        issue(&app, broken, period(2026, 2)).await,
        Code::FailedPrecondition,
        "2026-02",
    );

    // The next cycle retries it: still failing, then issued once repaired.
    let again = run_cycle(&app, period(2026, 2)).await;
    assert_eq!(
        (again.issued, again.already_issued, again.failed),
        (0, 4, 1)
    );
    app.execute_sql(&format!(
        "UPDATE calls SET cost_micros = 60000 WHERE id = {}",
        calls[2].id
    ))
    .await;
    let repaired = run_cycle(&app, period(2026, 2)).await;
    assert_eq!(
        (repaired.issued, repaired.already_issued, repaired.failed),
        (1, 4, 0)
    );
    assert!(repaired.failures.is_empty());
}

#[tokio::test]
async fn a_debit_or_credit_that_would_overflow_a_balance_is_refused_and_writes_nothing() {
    let app = spawn_app_at(at("2026-03-01T00:00:00Z")).await;
    let plan = plan_with(&app, PlanKind::Prepaid, 0, 60_000, 1, 0).await;
    let customer = app.long_standing_customer(plan.id, 1, vec![]).await;
    app.set_balance(customer.id, i64::MIN + 5).await;
    assert_status(
        app.calls.clone().add_call(call(customer.id, 60)).await,
        Code::FailedPrecondition,
        "balance",
    );
    assert!(app.history(customer.id).await.is_empty());
    assert_eq!(
        app.get_customer(customer.id).await.balance_micros,
        i64::MIN + 5
    );

    app.set_balance(customer.id, i64::MAX - 5).await;
    let top_up = pb::TopUpRequest {
        customer_id: customer.id,
        amount_micros: 10,
        request_id: "overflowing".into(),
    };
    assert_status(
        app.customers.clone().top_up(top_up.clone()).await,
        Code::FailedPrecondition,
        "balance",
    );
    assert_eq!(
        app.get_customer(customer.id).await.balance_micros,
        i64::MAX - 5
    );
    // Nothing of the refused top-up was kept: its key is still free.
    app.set_balance(customer.id, 0).await;
    let credited = app
        .customers
        .clone()
        .top_up(top_up)
        .await
        .unwrap()
        .into_inner();
    assert_eq!((credited.balance_micros, credited.duplicate), (10, false));
}

#[tokio::test]
async fn an_invoice_whose_sums_overflow_is_failed_precondition_not_internal() {
    let app = spawn_app_at(at("2026-03-01T00:00:00Z")).await;
    let plan = postpaid(&app, 0, 60_000, 0).await;
    let customer = app.customer(plan.id, 1, vec![]).await;
    app.clock.set(at("2026-03-10T00:00:00Z"));
    let first = add_call_at(&app, customer.id, 60, "2026-03-02T00:00:00Z").await;
    let second = add_call_at(&app, customer.id, 60, "2026-03-03T00:00:00Z").await;
    // Two damaged rows whose costs add up past the largest 64-bit amount:
    // the database's own SUM overflows.
    app.execute_sql(&format!(
        "UPDATE calls SET cost_micros = {} WHERE id IN ({}, {})",
        i64::MAX / 2 + 1,
        first.id,
        second.id
    ))
    .await;
    app.clock.set(at("2026-04-01T00:00:01Z"));
    assert_status(
        issue(&app, customer.id, period(2026, 3)).await,
        Code::FailedPrecondition,
        "largest",
    );
    let preview = app
        .invoices
        .clone()
        .stream_consolidated(pb::StreamConsolidatedRequest {
            customer_id: customer.id,
            ..Default::default()
        })
        .await;
    if let Err(status) = preview {
        assert_ne!(status.code(), Code::Internal, "{status:?}");
    }
    assert!(
        app.history(customer.id)
            .await
            .iter()
            .all(|c| c.invoice_id == 0)
    );
    let cycle = run_cycle(&app, period(2026, 3)).await;
    assert_eq!((cycle.issued, cycle.failed), (0, 1));
}

async fn consolidated(
    app: &TestApp,
    customer_id: i64,
    from: Option<pb::BillingPeriod>,
    to: Option<pb::BillingPeriod>,
) -> Vec<pb::ConsolidatedMonth> {
    use tokio_stream::StreamExt;
    let stream = app
        .invoices
        .clone()
        .stream_consolidated(pb::StreamConsolidatedRequest {
            customer_id,
            from_period: from,
            to_period: to,
        })
        .await
        .unwrap()
        .into_inner();
    tokio::time::timeout(
        std::time::Duration::from_secs(30),
        stream.collect::<Result<Vec<_>, _>>(),
    )
    .await
    .expect("the stream ends")
    .unwrap()
}

#[tokio::test]
async fn consolidated_history_never_streams_months_outside_the_customers_life() {
    let app = spawn_app_at(at("2026-01-15T00:00:00Z")).await;
    let plan = plan_with(&app, PlanKind::Fixed, 2_000_000, 0, 60, 0).await;
    let customer = app.customer(plan.id, 1, vec![]).await;
    app.clock.set(at("2026-04-20T00:00:00Z"));
    // 1970-01 to 9998-12: over 96,000 months asked for, four exist.
    let months = consolidated(&app, customer.id, period(1970, 1), period(9998, 12)).await;
    let streamed: Vec<(i32, i32)> = months
        .iter()
        .map(|m| (m.period.unwrap().year, m.period.unwrap().month))
        .collect();
    assert_eq!(streamed, vec![(2026, 1), (2026, 2), (2026, 3), (2026, 4)]);
    assert!(months.iter().all(|m| m.total_micros == 2_000_000));
    // A range wholly before the customer or after today is empty.
    assert!(
        consolidated(&app, customer.id, period(2020, 1), period(2025, 12))
            .await
            .is_empty()
    );
    assert!(
        consolidated(&app, customer.id, period(2026, 5), period(2030, 1))
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn a_long_consolidated_history_streams_every_month_once_in_order() {
    let app = spawn_app_at(at("2010-01-15T00:00:00Z")).await;
    let plan = plan_with(&app, PlanKind::Fixed, 1_000_000, 0, 60, 0).await;
    let customer = app.customer(plan.id, 1, vec![]).await;
    app.clock.set(at("2026-06-10T00:00:00Z"));
    // Issuing June 2015 issues every month from January 2010 first.
    let cycle = run_cycle(&app, period(2015, 6)).await;
    assert_eq!((cycle.issued, cycle.earlier_issued), (1, 65));
    let months = consolidated(&app, customer.id, None, None).await;
    assert_eq!(months.len(), 16 * 12 + 6, "2010-01 to 2026-06");
    let mut expected = (2010, 1);
    for (n, month) in months.iter().enumerate() {
        let p = month.period.unwrap();
        assert_eq!((p.year, p.month), expected);
        expected = if expected.1 == 12 {
            (expected.0 + 1, 1)
        } else {
            (expected.0, expected.1 + 1)
        };
        let status = if n < 66 {
            pb::ConsolidatedStatus::Issued
        } else {
            pb::ConsolidatedStatus::Open
        };
        assert_eq!(month.status(), status, "{month:?}");
        assert_eq!(month.total_micros, 1_000_000);
    }
}

#[tokio::test]
async fn an_open_months_figures_are_those_its_invoice_will_state() {
    let app = spawn_app_at(at("2026-03-01T00:00:00Z")).await;
    let plan = postpaid(&app, 1_000_000, 90, 1).await;
    let customer = app.customer(plan.id, 1, vec![]).await;
    app.clock.set(at("2026-03-20T00:00:00Z"));
    add_call_at(&app, customer.id, 40, "2026-03-12T00:00:00Z").await;
    add_call_at(&app, customer.id, 50, "2026-03-10T00:00:00Z").await;
    add_call_at(&app, customer.id, 30, "2026-03-11T00:00:00Z").await;
    let open = consolidated(&app, customer.id, None, None).await;
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].status(), pb::ConsolidatedStatus::Open);
    assert_eq!(
        (open[0].usage_micros, open[0].total_micros),
        (180, 1_000_090)
    );
    app.clock.set(at("2026-04-02T00:00:00Z"));
    let invoice = issue(&app, customer.id, period(2026, 3)).await.unwrap();
    assert_eq!(invoice.total_micros, open[0].total_micros);
    let after = consolidated(&app, customer.id, period(2026, 3), period(2026, 3)).await;
    assert_eq!(after[0].status(), pb::ConsolidatedStatus::Issued);
    assert_eq!(after[0].invoice_number, invoice.number);
}
