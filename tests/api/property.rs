//! A property test over random plans, calls (some arriving late) and top-ups:
//! the sum of invoiced usage equals the sum of call costs, every call is on
//! exactly one invoice, and every invoice's total is the sum of its lines.

use std::collections::BTreeMap;

use billing::grpc::pb::{self, PlanKind};

use crate::helpers::{Rng, TestApp, at, call, spawn_app_at};

async fn run_scenario(seed: u64) {
    let mut rng = Rng(seed);
    let app: TestApp = spawn_app_at(at("2026-01-01T00:00:00Z")).await;
    let kinds = [PlanKind::Postpaid, PlanKind::Prepaid, PlanKind::Fixed];
    let mut plans = Vec::new();
    for n in 0..4 {
        let kind = kinds[usize::try_from(rng.below(3)).unwrap()];
        let plan = app
            .customers
            .clone()
            .create_plan(pb::CreatePlanRequest {
                name: format!("plan {n}"),
                kind: kind.into(),
                currency_code: "USD".into(),
                monthly_fee_micros: rng.below(20_000_000),
                per_minute_micros: rng.below(500_000),
                billing_increment_seconds: [1, 6, 30, 60][usize::try_from(rng.below(4)).unwrap()],
                included_minutes: if kind == PlanKind::Postpaid {
                    rng.below(30)
                } else {
                    0
                },
                tariffs: Vec::new(),
                included_minutes_tariffs: Vec::new(),
            })
            .await
            .unwrap()
            .into_inner();
        plans.push(plan);
    }
    let mut customers = Vec::new();
    for n in 0..5 {
        let plan = &plans[usize::try_from(rng.below(4)).unwrap()];
        customers.push((app.customer(plan.id, n, vec![]).await.id, plan.kind()));
    }
    let month_start = |month: i64| at(&format!("2026-{month:02}-01T00:00:00Z"));
    let mut cost_of_all_calls = 0;
    let mut call_count = 0;
    // Four months; in each, calls (some for earlier months), top-ups, then a
    // billing cycle for the month that just ended.
    for month in 1..=4 {
        app.clock
            .set(month_start(month) + chrono::TimeDelta::days(25));
        for _ in 0..rng.below(40) {
            let (customer_id, kind) = customers[usize::try_from(rng.below(5)).unwrap()];
            let started_in = if month > 1 && rng.below(5) == 0 {
                month - 1
            } else {
                month
            };
            let mut request = call(customer_id, 1 + rng.below(1800));
            let start =
                month_start(started_in) + chrono::TimeDelta::seconds(rng.below(20 * 86_400));
            request.started_at = Some(prost_types::Timestamp {
                seconds: start.timestamp(),
                nanos: 0,
            });
            let stored = app
                .calls
                .clone()
                .add_call(request)
                .await
                .unwrap()
                .into_inner()
                .call
                .unwrap();
            cost_of_all_calls += stored.cost_micros;
            call_count += 1;
            if kind == PlanKind::Prepaid && rng.below(3) == 0 {
                app.customers
                    .clone()
                    .top_up(pb::TopUpRequest {
                        customer_id,
                        amount_micros: 1 + rng.below(10_000_000),
                        request_id: format!("{seed}-{month}-{call_count}"),
                    })
                    .await
                    .unwrap();
            }
        }
        app.clock.set(month_start(month + 1));
        app.invoices
            .clone()
            .run_billing_cycle(pb::RunBillingCycleRequest { period: None })
            .await
            .unwrap();
    }

    let invoices = app
        .invoices
        .clone()
        .list_invoices(pb::ListInvoicesRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .invoices;
    assert_eq!(
        invoices.len(),
        5 * 4,
        "seed {seed}: one invoice per customer and month"
    );
    let invoiced_usage: i64 = invoices.iter().map(|i| i.usage_micros).sum();
    let invoiced_calls: i64 = invoices.iter().map(|i| i.call_count).sum();
    assert_eq!(invoiced_usage, cost_of_all_calls, "seed {seed}");
    assert_eq!(invoiced_calls, call_count, "seed {seed}");
    let mut calls_per_invoice: BTreeMap<i64, i64> = BTreeMap::new();
    for (customer_id, _) in &customers {
        for c in app.history(*customer_id).await {
            assert_ne!(c.invoice_id, 0, "seed {seed}: call {} not invoiced", c.id);
            let invoice = invoices.iter().find(|i| i.id == c.invoice_id).unwrap();
            assert_eq!(invoice.customer_id, c.customer_id, "seed {seed}");
            *calls_per_invoice.entry(c.invoice_id).or_default() += 1;
        }
    }
    for invoice in &invoices {
        let sum: i64 = invoice.lines.iter().map(|l| l.amount_micros).sum();
        assert_eq!(invoice.total_micros, sum, "seed {seed}: {invoice:?}");
        assert_eq!(
            calls_per_invoice.get(&invoice.id).copied().unwrap_or(0),
            invoice.call_count,
            "seed {seed}"
        );
    }
}

#[tokio::test]
async fn invoiced_usage_equals_call_costs_and_no_call_is_billed_twice() {
    for seed in 1..=6 {
        run_scenario(seed).await;
    }
}
