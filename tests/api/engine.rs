//! The invoice engine, through the server: a call's billing month fixed
//! when it is stored (late usage in the preview of the month that bills
//! it), calls before the customer existed refused, the grace period at
//! month end (a call in progress at midnight keeps its included minutes),
//! and the upgrade of a database billed by the engine before.

use billing::clock::Clock;
use billing::grpc::pb::{
    self, InvoiceLineKind, PlanKind, generate_invoice_response::Result as Generated,
};
use chrono::TimeDelta;
use sea_orm::ConnectionTrait;
use tokio_stream::StreamExt;
use tonic::Code;

use crate::helpers::{
    AppOptions, TestApp, assert_status, at, call, fresh_database, spawn_app_with, ts,
};
use crate::invoices::{
    add_call_at, assert_total_is_sum_of_lines, generate, line_amounts, period, plan_with,
};

/// The app with its clock at `start` and the default grace of 4 hours.
async fn app_with_grace(start: &str, scheduler: bool) -> TestApp {
    spawn_app_with(AppOptions {
        clock: Clock::starting_at(at(start)),
        invoice_grace_period: TimeDelta::hours(4),
        scheduler,
        ..AppOptions::default()
    })
    .await
}

async fn preview(app: &TestApp, customer_id: i64) -> pb::UsagePreview {
    match generate(app, customer_id, None).await.unwrap() {
        Generated::Preview(preview) => preview,
        Generated::Invoice(invoice) => panic!("expected a preview, got {invoice:?}"),
    }
}

async fn issued(app: &TestApp, customer_id: i64, period: Option<pb::BillingPeriod>) -> pb::Invoice {
    match generate(app, customer_id, period).await.unwrap() {
        Generated::Invoice(invoice) => invoice,
        Generated::Preview(preview) => panic!("expected an invoice, got {preview:?}"),
    }
}

async fn consolidated(app: &TestApp, customer_id: i64) -> Vec<pb::ConsolidatedMonth> {
    app.invoices
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
        .unwrap()
}

/// The demo's postpaid plan: 9.99 a month, 0.12 a minute by the minute,
/// 100 minutes included.
async fn postpaid_100(app: &TestApp) -> pb::Plan {
    plan_with(app, PlanKind::Postpaid, 9_990_000, 120_000, 60, 100).await
}

#[tokio::test]
async fn a_late_call_is_in_the_preview_of_the_month_that_bills_it_and_the_invoice_equals_it() {
    let app = app_with_grace("2026-11-01T10:00:00Z", false).await;
    let plan = postpaid_100(&app).await;
    let customer = app.customer(plan.id, 1, vec![]).await.id;
    app.clock.set(at("2026-11-20T00:00:00Z"));
    add_call_at(&app, customer, 600, "2026-11-10T09:00:00Z").await;
    // November is issued on December 1st, after its close.
    app.clock.set(at("2026-12-01T05:00:00Z"));
    let november = issued(&app, customer, None).await;
    assert_eq!(november.period, period(2026, 11));
    assert_eq!(november.total_micros, 9_990_000);

    // A November call reported on the 5th: late usage, billed in December.
    app.clock.set(at("2026-12-05T12:00:00Z"));
    let late = add_call_at(&app, customer, 600, "2026-11-30T20:00:00Z").await;
    assert_eq!(late.billing_period, period(2026, 12));
    assert_eq!(late.invoice_id, 0);

    app.clock.set(at("2026-12-10T12:00:00Z"));
    let december = preview(&app, customer).await;
    assert_eq!(december.period, period(2026, 12));
    assert_eq!(
        december
            .lines
            .iter()
            .map(|l| (l.kind(), l.amount_micros))
            .collect::<Vec<_>>(),
        vec![
            (InvoiceLineKind::MonthlyFee, 9_990_000),
            (InvoiceLineKind::Usage, 0),
            (InvoiceLineKind::LateUsage, 1_200_000),
        ]
    );
    assert_eq!(december.total_micros, 11_190_000);
    assert_eq!(december.call_count, 1);
    let open = consolidated(&app, customer).await;
    let open_december = open.last().unwrap();
    assert_eq!(open_december.period, period(2026, 12));
    assert_eq!(open_december.total_micros, 11_190_000);
    assert!(open_december.invoice_number.is_empty());

    app.clock.set(at("2027-01-01T05:00:00Z"));
    let invoice = issued(&app, customer, None).await;
    assert_eq!(invoice.period, period(2026, 12));
    assert_eq!(invoice.lines, december.lines);
    assert_eq!(invoice.total_micros, 11_190_000);
    assert!(invoice.lines[2].description.contains("2026-11"));
    let history = app.history(customer).await;
    assert_eq!(history[1].invoice_id, invoice.id);
    assert_eq!(history[0].invoice_id, november.id);
}

/// Storing writes a batch without reading its customers' months first
/// when none of them is invoiced: every shape of batch (with and without
/// `call_id`, one call or a stream, a repeat of a late call) must still put
/// a call of an invoiced month into the next one.
#[tokio::test]
async fn late_calls_are_billed_in_the_first_open_month_however_they_are_sent() {
    let app = app_with_grace("2026-11-01T10:00:00Z", false).await;
    let plan = postpaid_100(&app).await;
    let customer = app.customer(plan.id, 1, vec![]).await.id;
    let other = app.customer(plan.id, 2, vec![]).await.id;
    app.clock.set(at("2026-12-01T05:00:00Z"));
    issued(&app, customer, period(2026, 11)).await;
    app.clock.set(at("2026-12-05T12:00:00Z"));

    let unkeyed = add_call_at(&app, customer, 60, "2026-11-30T20:00:00Z").await;
    assert_eq!(unkeyed.billing_period, period(2026, 12));

    let mut keyed = call(customer, 120);
    keyed.started_at = Some(ts("2026-11-29T08:00:00Z"));
    keyed.call_id = "late-1".into();
    let first = app
        .calls
        .clone()
        .add_call(keyed.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.call.unwrap().billing_period, period(2026, 12));
    let again = app
        .calls
        .clone()
        .add_call(keyed)
        .await
        .unwrap()
        .into_inner();
    assert!(again.duplicate);
    assert_eq!(again.call.unwrap().billing_period, period(2026, 12));

    // One stream: the other customer's November is open, this one's is not.
    let records: Vec<pb::AddCallRequest> = [
        (customer, "late-2", "2026-11-28T08:00:00Z"),
        (other, "open-1", "2026-11-28T08:00:00Z"),
        (customer, "", "2026-12-02T08:00:00Z"),
    ]
    .into_iter()
    .map(|(customer_id, key, started)| {
        let mut record = call(customer_id, 60);
        record.started_at = Some(ts(started));
        record.call_id = key.into();
        record
    })
    .collect();
    let report = app.ingest(records).await;
    assert_eq!((report.accepted, report.rejected), (3, 0));
    let months = |calls: Vec<pb::Call>| -> Vec<Option<pb::BillingPeriod>> {
        calls.into_iter().map(|c| c.billing_period).collect()
    };
    assert_eq!(
        months(app.history(customer).await),
        vec![period(2026, 12); 4]
    );
    assert_eq!(months(app.history(other).await), vec![period(2026, 11)]);
}

#[tokio::test]
async fn a_call_before_the_customer_existed_is_refused_naming_started_at() {
    let app = app_with_grace("2026-11-15T12:00:00Z", false).await;
    let plan = plan_with(&app, PlanKind::Postpaid, 1_000_000, 60_000, 1, 0).await;
    let customer = app.customer(plan.id, 1, vec![]).await.id;
    let mut before = call(customer, 60);
    before.started_at = Some(ts("2026-10-31T23:00:00Z"));
    assert_status(
        app.calls.clone().add_call(before.clone()).await,
        Code::FailedPrecondition,
        "started_at",
    );
    // Per record in a stream; the good one is stored.
    let mut good = call(customer, 30);
    good.started_at = Some(ts("2026-11-02T08:00:00Z"));
    let report = app.ingest(vec![before, good]).await;
    assert_eq!((report.accepted, report.rejected), (1, 1));
    assert_eq!(report.errors[0].index, 0);
    assert_eq!(report.errors[0].code, Code::FailedPrecondition as i32);
    assert!(
        report.errors[0].message.contains("started_at"),
        "{report:?}"
    );
    assert_status(
        generate(&app, customer, period(2026, 10)).await,
        Code::FailedPrecondition,
        "did not exist",
    );

    // Earlier in its first month than its creation: that month's usage.
    app.clock.set(at("2027-01-01T05:00:00Z"));
    let november = issued(&app, customer, period(2026, 11)).await;
    assert_eq!(
        line_amounts(&november),
        vec![
            (InvoiceLineKind::MonthlyFee, 1_000_000),
            (InvoiceLineKind::Usage, 30_000)
        ]
    );
    let december = issued(&app, customer, period(2026, 12)).await;
    assert!(
        december
            .lines
            .iter()
            .all(|l| l.kind() != InvoiceLineKind::LateUsage),
        "{december:?}"
    );
}

#[tokio::test]
async fn a_call_in_progress_at_midnight_keeps_its_included_minutes_within_the_grace() {
    let app = app_with_grace("2026-01-10T00:00:00Z", true).await;
    let plan = postpaid_100(&app).await;
    let customer = app.customer(plan.id, 1, vec![]).await.id;
    app.clock.set(at("2026-01-25T00:00:00Z"));
    add_call_at(&app, customer, 90 * 60, "2026-01-20T10:00:00Z").await;

    // Started 23:59:25 on the 31st, 20 minutes long, reported at 00:19:25:
    // January has not closed, so the call is January's.
    app.clock.set(at("2026-02-01T00:19:25Z"));
    let crossing = add_call_at(&app, customer, 20 * 60, "2026-01-31T23:59:25Z").await;
    assert_eq!(crossing.billing_period, period(2026, 1));
    let january = preview(&app, customer).await;
    assert_eq!(january.period, period(2026, 1));
    assert_eq!(
        january
            .lines
            .iter()
            .map(|l| (l.kind(), l.quantity, l.amount_micros))
            .collect::<Vec<_>>(),
        vec![
            (InvoiceLineKind::MonthlyFee, 1, 9_990_000),
            (InvoiceLineKind::Usage, 110 * 60, 13_200_000),
            // 90 minutes whole, then 10 of the crossing call's 20.
            (InvoiceLineKind::IncludedMinutes, 100 * 60, -12_000_000),
        ]
    );
    for explicit in [
        generate(&app, customer, period(2026, 1)).await.map(|_| ()),
        app.invoices
            .clone()
            .run_billing_cycle(pb::RunBillingCycleRequest { period: None })
            .await
            .map(|_| ()),
    ] {
        assert_status(
            explicit,
            Code::FailedPrecondition,
            "closes at 2026-02-01T04:00:00",
        );
    }

    // The scheduler issues January when it closes, still on the 1st.
    let mut feed = app
        .invoices
        .clone()
        .watch_invoices(pb::WatchInvoicesRequest {
            after_invoice_id: 0,
        })
        .await
        .unwrap()
        .into_inner();
    app.clock.set(at("2026-02-01T03:59:59Z"));
    let invoice = feed.next().await.unwrap().unwrap();
    assert_eq!(invoice.period, period(2026, 1));
    assert_eq!(invoice.lines, january.lines);
    let issued_at = invoice.issued_at.unwrap().seconds - ts("2026-02-01T04:00:00Z").seconds;
    assert!(
        (0..60).contains(&issued_at),
        "issued {issued_at} s after the close"
    );
    assert_total_is_sum_of_lines(&invoice);

    // After the close, a call of January is February's late usage, at full
    // price, and GenerateInvoice without a period returns January's invoice.
    let after = add_call_at(&app, customer, 5 * 60, "2026-01-31T23:50:00Z").await;
    assert_eq!(after.billing_period, period(2026, 2));
    assert_eq!(issued(&app, customer, None).await, invoice);
    app.clock.set(at("2026-02-10T00:00:00Z"));
    let february = preview(&app, customer).await;
    assert_eq!(
        february.lines.last().map(|l| (l.kind(), l.amount_micros)),
        Some((InvoiceLineKind::LateUsage, 600_000))
    );
}

#[tokio::test]
async fn without_a_grace_period_a_month_closes_at_midnight() {
    let app = spawn_app_with(AppOptions {
        clock: Clock::starting_at(at("2026-01-10T00:00:00Z")),
        ..AppOptions::default()
    })
    .await;
    let plan = plan_with(&app, PlanKind::Postpaid, 1_000_000, 60_000, 1, 0).await;
    let customer = app.customer(plan.id, 1, vec![]).await.id;
    app.clock.set(at("2026-02-01T00:00:01Z"));
    let january = issued(&app, customer, None).await;
    assert_eq!(january.period, period(2026, 1));
    let late = add_call_at(&app, customer, 60, "2026-01-31T23:59:30Z").await;
    assert_eq!(late.billing_period, period(2026, 2));
}

#[test]
fn the_grace_period_flag_takes_0s_to_24h() {
    for (value, accepted) in [
        ("0s", true),
        ("90m", true),
        ("24h", true),
        ("25h", false),
        ("-1s", false),
        ("4x", false),
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_billing"))
            .args([
                "serve",
                &format!("--invoice-grace-period={value}"),
                "--help",
            ])
            .output()
            .expect("billing runs");
        assert_eq!(output.status.success(), accepted, "{value}: {output:?}");
        if !accepted {
            let text = String::from_utf8_lossy(&output.stderr);
            assert!(text.contains("--invoice-grace-period"), "{value}: {text}");
        }
    }
}

/// Builds a database billed by the engine before migration 000009: a
/// postpaid customer with September invoiced (one call on it), a September
/// call that arrived after (uninvoiced: late) and an October call; a
/// prepaid customer with a September top-up invoiced and an October one
/// not.
async fn database_billed_before_the_engine(url: &str) {
    let connect_url = if url.starts_with("sqlite") {
        format!("{url}?mode=rwc")
    } else {
        url.to_owned()
    };
    let db = sea_orm::Database::connect(&connect_url).await.unwrap();
    <migration::Migrator as migration::MigratorTrait>::up(&db, Some(8))
        .await
        .unwrap();
    let micros = |text: &str| at(text).timestamp_micros();
    let (sept, oct, created) = (
        micros("2026-09-01T00:00:00Z"),
        micros("2026-10-01T00:00:00Z"),
        micros("2026-09-01T00:00:00Z"),
    );
    for sql in [
        format!(
            "INSERT INTO plans (id, name, kind, currency_code, monthly_fee_micros, \
             per_minute_micros, billing_increment_seconds, included_minutes, created_at) VALUES \
             (1, 'Postpaid', 'postpaid', 'EUR', 1000000, 60000, 1, 0, {created}), \
             (2, 'Prepaid', 'prepaid', 'EUR', 0, 60000, 1, 0, {created})"
        ),
        format!(
            "INSERT INTO customers (id, name, phone_number, plan_id, balance_micros, created_at) \
             VALUES (1, 'Post', '+14155550001', 1, 0, {created}), \
                    (2, 'Pre', '+14155550002', 2, 7000000, {created})"
        ),
        format!(
            "INSERT INTO invoices (id, number, customer_id, period_year, period_month, \
             period_start, period_end, issued_at, currency_code, call_count, billed_seconds, \
             usage_micros, monthly_fee_micros, total_micros) VALUES \
             (1, 'INV-2026-09-000001', 1, 2026, 9, {sept}, {oct}, {oct}, 'EUR', 1, 60, 60000, \
              1000000, 1060000), \
             (2, 'INV-2026-09-000002', 2, 2026, 9, {sept}, {oct}, {oct}, 'EUR', 0, 0, 0, 0, \
              5000000)"
        ),
        "INSERT INTO invoice_lines (id, invoice_id, position, kind, description, quantity, \
         amount_micros) VALUES \
         (1, 1, 0, 'monthly_fee', 'Monthly fee 2026-09: Postpaid', 1, 1000000), \
         (2, 1, 1, 'usage', 'Usage 2026-09: 1 calls, 1:00 min billed', 60, 60000), \
         (3, 2, 0, 'top_up', 'Top-up on 2026-09-02 00:00 UTC', 1, 5000000)"
            .to_owned(),
        format!(
            "INSERT INTO calls (id, call_id, customer_id, started_at, duration_seconds, \
             billed_seconds, per_minute_micros, billing_increment_seconds, cost_micros, \
             caller_number, callee_number, received_at, invoice_id, connect_fee_micros) VALUES \
             (1, 'on-invoice', 1, {}, 60, 60, 60000, 1, 60000, '', '', {}, 1, 0), \
             (2, 'late', 1, {}, 120, 120, 60000, 1, 120000, '', '', {}, NULL, 0), \
             (3, 'october', 1, {}, 30, 30, 60000, 1, 30000, '', '', {}, NULL, 0)",
            micros("2026-09-10T10:00:00Z"),
            micros("2026-09-10T10:01:00Z"),
            micros("2026-09-30T22:00:00Z"),
            micros("2026-10-03T00:00:00Z"),
            micros("2026-10-05T10:00:00Z"),
            micros("2026-10-05T10:01:00Z"),
        ),
        format!(
            "INSERT INTO top_ups (id, request_id, customer_id, amount_micros, created_at, \
             invoice_id) VALUES (1, 'sept', 2, 5000000, {}, 2), (2, 'oct', 2, 2000000, {}, NULL)",
            micros("2026-09-02T00:00:00Z"),
            micros("2026-10-02T00:00:00Z"),
        ),
    ] {
        db.execute_unprepared(&sql).await.unwrap();
    }
    if url.starts_with("postgres") {
        for table in [
            "plans",
            "customers",
            "invoices",
            "invoice_lines",
            "calls",
            "top_ups",
        ] {
            db.execute_unprepared(&format!(
                "SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT MAX(id) FROM {table}))"
            ))
            .await
            .unwrap();
        }
    }
    db.close().await.unwrap();
}

#[tokio::test]
async fn upgrading_keeps_every_invoice_and_bills_every_uninvoiced_row_once() {
    let database = fresh_database().await;
    database_billed_before_the_engine(&database.url).await;
    let app = spawn_app_with(AppOptions {
        clock: Clock::starting_at(at("2026-10-20T00:00:00Z")),
        database: Some(database),
        ..AppOptions::default()
    })
    .await;
    let september = issued(&app, 1, period(2026, 9)).await;
    assert_eq!(
        (september.id, september.total_micros, september.lines.len()),
        (1, 1_060_000, 2)
    );
    assert_eq!(
        issued(&app, 2, period(2026, 9)).await.total_micros,
        5_000_000
    );
    let history = app.history(1).await;
    let months: Vec<(i64, Option<pb::BillingPeriod>)> = history
        .iter()
        .map(|c| (c.invoice_id, c.billing_period))
        .collect();
    assert_eq!(
        months,
        vec![
            (1, period(2026, 9)),
            (0, period(2026, 10)),
            (0, period(2026, 10))
        ],
        "the invoiced call keeps its invoice; the late one is due in October"
    );

    // October's preview bills the late September call, as its invoice will.
    let october = preview(&app, 1).await;
    assert_eq!(
        october
            .lines
            .iter()
            .map(|l| (l.kind(), l.amount_micros))
            .collect::<Vec<_>>(),
        vec![
            (InvoiceLineKind::MonthlyFee, 1_000_000),
            (InvoiceLineKind::Usage, 30_000),
            (InvoiceLineKind::LateUsage, 120_000),
        ]
    );
    let top_ups = preview(&app, 2).await;
    assert_eq!(top_ups.total_micros, 2_000_000);
    app.clock.set(at("2026-11-01T00:00:01Z"));
    let invoice = issued(&app, 1, None).await;
    assert_eq!(invoice.lines, october.lines);
    assert_eq!(issued(&app, 2, None).await.lines, top_ups.lines);
    assert!(app.history(1).await.iter().all(|c| c.invoice_id != 0));
    // A call of September now is late usage for November.
    let late = add_call_at(&app, 1, 10, "2026-09-30T23:00:00Z").await;
    assert_eq!(late.billing_period, period(2026, 11));
}
