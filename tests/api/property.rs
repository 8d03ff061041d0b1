//! A property test of the invoice engine over random plans (every kind,
//! tariffs, included minutes), customers, calls in random order (late ones,
//! ones crossing a month end, some streamed), top-ups, and random ways and
//! moments of issuing (RunBillingCycle, GenerateInvoice with and without a
//! period, months left for the next issue to catch up). Invariants:
//! - every call and top-up is on exactly one invoice, of its own customer,
//!   for its billing month;
//! - a preview taken just before issuing equals the issued invoice line for
//!   line, and every open consolidated month equals the invoice issued from
//!   it;
//! - every total is the sum of its lines, and usage wholly inside the
//!   included minutes nets to exactly zero.

use std::collections::{BTreeMap, HashMap};

use billing::grpc::pb::{
    self, InvoiceLineKind, PlanKind, generate_invoice_response::Result as Generated,
};
use chrono::{DateTime, TimeDelta, Utc};
use tokio_stream::StreamExt;

use crate::helpers::{AppOptions, Rng, TestApp, at, call, spawn_app_with};
use crate::tariffs::tariffed_plan;

/// The callees calls go to: a domestic number and one the tariffed plans
/// price by prefix.
const CALLEES: [&str; 3] = ["+4930123", "+442071234567", "+12025550123"];

fn month_start(month: i64) -> DateTime<Utc> {
    let (year, month) = (2026 + (month - 1) / 12, (month - 1) % 12 + 1);
    at(&format!("{year}-{month:02}-01T00:00:00Z"))
}

fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: 0,
    }
}

async fn random_plan(app: &TestApp, rng: &mut Rng, n: u32) -> pb::Plan {
    let kind = [PlanKind::Postpaid, PlanKind::Prepaid, PlanKind::Fixed]
        [usize::try_from(rng.below(3)).unwrap()];
    let mut request = if kind != PlanKind::Fixed && rng.chance(50) {
        tariffed_plan()
    } else {
        pb::CreatePlanRequest {
            currency_code: "EUR".into(),
            monthly_fee_micros: rng.below(20_000_000),
            per_minute_micros: rng.below(500_000),
            billing_increment_seconds: [1, 6, 30, 60][usize::try_from(rng.below(4)).unwrap()],
            ..Default::default()
        }
    };
    request.name = format!("plan {n}");
    request.kind = kind.into();
    if kind == PlanKind::Prepaid {
        request.monthly_fee_micros = 0;
    }
    if kind == PlanKind::Postpaid && rng.chance(70) {
        request.included_minutes = 1 + rng.below(40);
        if !request.tariffs.is_empty() && rng.chance(50) {
            request.included_minutes_tariffs = vec!["peak".into()];
        }
    }
    app.customers
        .clone()
        .create_plan(request)
        .await
        .unwrap()
        .into_inner()
}

/// A call record for `customer_id` that started at `start`.
fn record(rng: &mut Rng, customer_id: i64, start: DateTime<Utc>) -> pb::AddCallRequest {
    let mut request = call(customer_id, 1 + rng.below(3600));
    request.started_at = Some(timestamp(start));
    request.callee_number = CALLEES[usize::try_from(rng.below(3)).unwrap()].into();
    request
}

/// Stores `records`, one by one or as one stream.
async fn store(app: &TestApp, rng: &mut Rng, records: Vec<pb::AddCallRequest>) {
    if rng.chance(50) {
        let report = app.ingest(records.clone()).await;
        assert_eq!(report.rejected, 0, "{report:?}");
    } else {
        for request in records {
            app.calls.clone().add_call(request).await.unwrap();
        }
    }
}

/// A customer's open consolidated months, by `(year, month)`.
async fn open_months(
    app: &TestApp,
    customer_id: i64,
) -> BTreeMap<(i32, i32), pb::ConsolidatedMonth> {
    let months: Vec<pb::ConsolidatedMonth> = app
        .invoices
        .clone()
        .stream_consolidated(pb::StreamConsolidatedRequest {
            customer_id,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .collect::<Result<_, _>>()
        .await
        .unwrap();
    months
        .into_iter()
        .filter(|month| month.invoice_number.is_empty())
        .map(|month| {
            let period = month.period.unwrap();
            ((period.year, period.month), month)
        })
        .collect()
}

async fn all_invoices(app: &TestApp) -> Vec<pb::Invoice> {
    app.invoices
        .clone()
        .list_invoices(pb::ListInvoicesRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .invoices
}

/// The issued invoice states what its open month showed just before.
fn assert_matches_open_month(seed: u64, invoice: &pb::Invoice, open: &pb::ConsolidatedMonth) {
    assert_eq!(
        (
            invoice.call_count,
            invoice.billed_seconds,
            invoice.usage_micros,
            invoice.total_micros
        ),
        (
            open.call_count,
            open.billed_seconds,
            open.usage_micros,
            open.total_micros
        ),
        "seed {seed}: {invoice:?} was {open:?} while open"
    );
}

async fn run_scenario(seed: u64) {
    let mut rng = Rng(seed);
    let app = spawn_app_with(AppOptions {
        clock: billing::clock::Clock::starting_at(month_start(1)),
        invoice_grace_period: TimeDelta::hours(1),
        ..AppOptions::default()
    })
    .await;
    let mut plans = Vec::new();
    for n in 0..4 {
        plans.push(random_plan(&app, &mut rng, n).await);
    }
    let mut customers = Vec::new();
    for n in 0..5 {
        let plan = plans[usize::try_from(rng.below(4)).unwrap()].clone();
        customers.push((app.customer(plan.id, n, vec![]).await.id, plan));
    }
    let mut topped_up = 0;
    let months = 4;
    for month in 1..=months {
        // During the month: its calls, late calls of earlier months, calls
        // that crossed the previous month's end, top-ups.
        app.clock
            .set(month_start(month) + TimeDelta::days(26) + TimeDelta::hours(12));
        let mut records = Vec::new();
        for _ in 0..rng.below(30) {
            let (customer_id, plan) = &customers[usize::try_from(rng.below(5)).unwrap()];
            let start = match rng.below(100) {
                0..15 if month > 1 => {
                    month_start(1 + rng.below(u64::try_from(month - 1).unwrap()))
                        + TimeDelta::seconds(rng.below(27 * 86_400))
                }
                15..30 if month > 1 => month_start(month) - TimeDelta::seconds(1 + rng.below(1800)),
                _ => month_start(month) + TimeDelta::seconds(rng.below(26 * 86_400)),
            };
            records.push(record(&mut rng, *customer_id, start));
            if plan.kind() == PlanKind::Prepaid && rng.chance(30) {
                let amount_micros = 1 + rng.below(10_000_000);
                app.customers
                    .clone()
                    .top_up(pb::TopUpRequest {
                        customer_id: *customer_id,
                        amount_micros,
                        request_id: format!("{seed}-{month}-{}", records.len()),
                    })
                    .await
                    .unwrap();
                topped_up += amount_micros;
            }
        }
        store(&app, &mut rng, records).await;

        // After midnight, within the grace: calls still in progress at
        // midnight arrive and belong to the month; then previews.
        app.clock
            .set(month_start(month + 1) + TimeDelta::minutes(20));
        let mut crossing = Vec::new();
        for _ in 0..rng.below(4) {
            let customer_id = customers[usize::try_from(rng.below(5)).unwrap()].0;
            let start = month_start(month + 1) - TimeDelta::seconds(1 + rng.below(600));
            crossing.push(record(&mut rng, customer_id, start));
        }
        store(&app, &mut rng, crossing).await;
        let mut previews = HashMap::new();
        let mut open = HashMap::new();
        for (customer_id, _) in &customers {
            let generated = app
                .invoices
                .clone()
                .generate_invoice(pb::GenerateInvoiceRequest {
                    customer_id: *customer_id,
                    period: None,
                })
                .await
                .unwrap()
                .into_inner()
                .result
                .unwrap();
            let Generated::Preview(preview) = generated else {
                panic!("seed {seed}: the 1st before the close previews, got {generated:?}");
            };
            let sum: i64 = preview.lines.iter().map(|l| l.amount_micros).sum();
            assert_eq!(preview.total_micros, sum, "seed {seed}: {preview:?}");
            previews.insert(*customer_id, preview);
            open.insert(*customer_id, open_months(&app, *customer_id).await);
        }

        // After the close: issue, in one of several ways, or leave the
        // month to the next issue (not the last month).
        app.clock
            .set(month_start(month + 1) + TimeDelta::minutes(90));
        let before: Vec<i64> = all_invoices(&app).await.iter().map(|i| i.id).collect();
        let period = month_start(month);
        let wanted = pb::BillingPeriod {
            year: chrono::Datelike::year(&period),
            month: i32::try_from(chrono::Datelike::month(&period)).unwrap(),
        };
        match rng.below(4) {
            0 => {
                app.invoices
                    .clone()
                    .run_billing_cycle(pb::RunBillingCycleRequest {
                        period: Some(wanted),
                    })
                    .await
                    .unwrap();
            }
            3 if month < months => {}
            way => {
                for (customer_id, _) in &customers {
                    app.invoices
                        .clone()
                        .generate_invoice(pb::GenerateInvoiceRequest {
                            customer_id: *customer_id,
                            period: (way == 1).then_some(wanted),
                        })
                        .await
                        .unwrap();
                }
            }
        }
        for invoice in all_invoices(&app).await {
            if before.contains(&invoice.id) {
                continue;
            }
            let period = invoice.period.unwrap();
            // A month without activity is not streamed: its invoice is empty.
            match open[&invoice.customer_id].get(&(period.year, period.month)) {
                Some(was_open) => assert_matches_open_month(seed, &invoice, was_open),
                None => assert_eq!(
                    (invoice.call_count, invoice.total_micros),
                    (0, 0),
                    "seed {seed}: {invoice:?}"
                ),
            }
            if period == wanted {
                let preview = &previews[&invoice.customer_id];
                assert_eq!(invoice.lines, preview.lines, "seed {seed}");
                assert_eq!(invoice.total_micros, preview.total_micros, "seed {seed}");
                assert_eq!(invoice.call_count, preview.call_count, "seed {seed}");
            }
        }
    }

    // Every call and top-up on exactly one invoice of its own customer for
    // its billing month.
    let invoices = all_invoices(&app).await;
    assert_eq!(
        invoices.len(),
        customers.len() * usize::try_from(months).unwrap(),
        "seed {seed}: one invoice per customer and month"
    );
    let mut calls_per_invoice: BTreeMap<i64, i64> = BTreeMap::new();
    let mut call_costs = 0;
    for (customer_id, _) in &customers {
        for c in app.history(*customer_id).await {
            let invoice = invoices
                .iter()
                .find(|i| i.id == c.invoice_id)
                .unwrap_or_else(|| panic!("seed {seed}: call {c:?} is on no invoice"));
            assert_eq!(invoice.customer_id, c.customer_id, "seed {seed}");
            assert_eq!(invoice.period, c.billing_period, "seed {seed}: {c:?}");
            *calls_per_invoice.entry(c.invoice_id).or_default() += 1;
            call_costs += c.cost_micros;
        }
    }
    let mut invoiced_top_ups = 0;
    for invoice in &invoices {
        let sum: i64 = invoice.lines.iter().map(|l| l.amount_micros).sum();
        assert_eq!(invoice.total_micros, sum, "seed {seed}: {invoice:?}");
        assert_eq!(
            calls_per_invoice.get(&invoice.id).copied().unwrap_or(0),
            invoice.call_count,
            "seed {seed}"
        );
        invoiced_top_ups += invoice
            .lines
            .iter()
            .filter(|l| l.kind() == InvoiceLineKind::TopUp)
            .map(|l| l.amount_micros)
            .sum::<i64>();
        let plan = &customers
            .iter()
            .find(|(id, _)| *id == invoice.customer_id)
            .unwrap()
            .1;
        assert_fully_included_usage_nets_to_zero(seed, plan, invoice);
    }
    assert_eq!(
        invoices.iter().map(|i| i.usage_micros).sum::<i64>(),
        call_costs,
        "seed {seed}"
    );
    assert_eq!(invoiced_top_ups, topped_up, "seed {seed}");
}

/// When the included minutes cover every billed second they may cover,
/// the credit cancels the usage it covers exactly.
fn assert_fully_included_usage_nets_to_zero(seed: u64, plan: &pb::Plan, invoice: &pb::Invoice) {
    let Some(credit) = invoice
        .lines
        .iter()
        .find(|l| l.kind() == InvoiceLineKind::IncludedMinutes)
    else {
        return;
    };
    let covered: Vec<&pb::InvoiceLine> = invoice
        .lines
        .iter()
        .filter(|l| l.kind() == InvoiceLineKind::Usage)
        .filter(|l| {
            plan.included_minutes_tariffs.is_empty()
                || plan
                    .included_minutes_tariffs
                    .iter()
                    .any(|name| l.description.contains(&format!("tariff {name}:")))
        })
        .collect();
    let seconds: i64 = covered.iter().map(|l| l.quantity).sum();
    if credit.quantity == seconds {
        let usage: i64 = covered.iter().map(|l| l.amount_micros).sum();
        assert_eq!(usage + credit.amount_micros, 0, "seed {seed}: {invoice:?}");
    }
}

#[tokio::test]
async fn every_call_is_billed_once_in_its_month_and_previews_equal_invoices() {
    for seed in 1..=8 {
        run_scenario(seed).await;
    }
}
