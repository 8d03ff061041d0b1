//! `billing demo-data`: a small, realistic data set so a new user can try
//! every RPC at once. Goes through the same validation, rating and storage
//! paths as the API.

use chrono::TimeDelta;
use chrono_tz::Tz;

use crate::clock::Clock;
use crate::domain::access::{NewAccount, Principal, Role};
use crate::domain::credentials;
use crate::domain::model::{CallRecord, Language, NewCall, NewCustomer, TopUpRequest};
use crate::domain::period::BillingPeriod;
use crate::domain::plan::{NewPlan, PlanKind, PlanTerms};
use crate::domain::rating;
use crate::error::{AppError, AppResult};
use crate::service::Accounts;
use crate::storage::Store;

/// What `fill` created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoSummary {
    pub plans: usize,
    pub operators: usize,
    pub customers: usize,
    pub calls: usize,
    /// One account of each role: `(role, username, password)`.
    pub accounts: Vec<(&'static str, String, String)>,
}

/// Fills an empty database: three plans (one of each kind), two operators,
/// five customers linked to them, monthly top-ups for the prepaid customers and a
/// few hundred calls over the three months before now, and one account of
/// each role with a random password.
///
/// Months are those of `tz`, the billing time zone the service will run
/// with.
pub async fn fill(store: &Store, clock: Clock, tz: Tz) -> AppResult<DemoSummary> {
    let now = clock.now();
    if !store.list_plans(0, 1).await?.is_empty() {
        return Err(AppError::FailedPrecondition(
            "the database already holds data; demo-data fills only an empty database".into(),
        ));
    }
    let since = now - TimeDelta::days(92);
    let plan = |name: &str, kind, fee, per_minute, increment, included| {
        NewPlan::new(PlanTerms {
            name: name.into(),
            kind,
            currency_code: "USD".into(),
            monthly_fee_micros: fee,
            per_minute_micros: per_minute,
            billing_increment_seconds: increment,
            included_minutes: included,
            tariffs: Vec::new(),
            included_minutes_tariffs: Vec::new(),
        })
    };
    let plans = [
        plan(
            "Postpaid 100",
            PlanKind::Postpaid,
            9_990_000,
            120_000,
            60,
            100,
        ),
        plan("Prepaid per second", PlanKind::Prepaid, 0, 90_000, 1, 0),
        plan("Unlimited fixed", PlanKind::Fixed, 29_000_000, 0, 60, 0),
    ];
    let mut plan_ids = Vec::new();
    for new in plans {
        plan_ids.push(store.create_plan(new?, since).await?.id);
    }
    let north = store
        .create_operator("North Telecom".into(), since)
        .await?
        .id;
    let south = store
        .create_operator("South Mobile".into(), since)
        .await?
        .id;
    let people = [
        ("Ada Lovelace", "+14155550101", plan_ids[0], vec![north]),
        (
            "Alan Turing",
            "+14155550102",
            plan_ids[1],
            vec![north, south],
        ),
        ("Grace Hopper", "+14155550103", plan_ids[2], vec![south]),
        ("Edsger Dijkstra", "+31205550104", plan_ids[0], vec![south]),
        ("Barbara Liskov", "+16175550105", plan_ids[1], vec![north]),
    ];
    let mut customers = Vec::new();
    for (name, phone, plan_id, operator_ids) in people {
        let new = NewCustomer {
            name: name.into(),
            phone_number: phone.into(),
            plan_id,
            operator_ids,
            email: None,
            language: Language::En,
            low_balance_threshold_micros: None,
        };
        customers.push(store.create_customer(new, since).await?);
    }
    let mut calls = Vec::new();
    let mut seed: u64 = 0x5eed;
    let mut next = move |bound: u64| {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) % bound
    };
    for customer in &customers {
        let plan = store.plan(customer.plan_id).await?;
        if plan.kind == PlanKind::Prepaid {
            for month in 0..3 {
                let top_up = TopUpRequest {
                    customer_id: customer.id,
                    amount_micros: 20_000_000,
                    request_id: format!("demo-top-up-{}-{month}", customer.id),
                };
                let at = since + TimeDelta::hours(1) + TimeDelta::days(30 * month);
                store
                    .top_up(top_up, at, BillingPeriod::containing(at, tz))
                    .await?;
            }
        }
        for n in 0..60 {
            let offset = i64::try_from(next(91 * 24 * 3600)).unwrap_or(0);
            let started_at = since + TimeDelta::days(1) + TimeDelta::seconds(offset);
            let duration_seconds = i64::try_from(5 + next(900)).unwrap_or(60);
            let record = CallRecord {
                customer_id: Some(customer.id),
                duration_seconds,
                started_at: Some(started_at),
                call_id: Some(format!("demo-{}-{n}", customer.id)),
                caller_number: customer.phone_number.clone(),
                callee_number: format!("+1202555{:04}", next(10_000)),
            };
            calls.push(NewCall {
                customer_id: customer.id,
                number_version: None,
                rating: rating::rate(duration_seconds, &plan),
                record,
                started_at,
                started_in: BillingPeriod::containing(started_at, tz),
                received_at: started_at + TimeDelta::seconds(duration_seconds),
                plan_kind: plan.kind,
            });
        }
    }
    let call_count = calls.len();
    for outcome in store.store_calls(&calls).await? {
        outcome?;
    }
    let accounts = Accounts::new(store.clone(), clock, TimeDelta::hours(12));
    let demo = Principal::System("demo-data creates the first accounts");
    let mut created = Vec::new();
    for (username, role, operator_id, customer_id) in [
        ("demo-admin", Role::Admin, 0, 0),
        ("north-ops", Role::Operator, north, 0),
        ("north-switch", Role::Switch, north, 0),
        ("ada", Role::Customer, 0, customers[0].id),
    ] {
        let password = credentials::random_password()?;
        let new = NewAccount::new(
            username.into(),
            password.clone(),
            Some(role),
            operator_id,
            customer_id,
        )?;
        accounts.create_account(&demo, new).await?;
        created.push((role.as_str(), username.to_owned(), password));
    }
    Ok(DemoSummary {
        plans: plan_ids.len(),
        operators: 2,
        customers: customers.len(),
        calls: call_count,
        accounts: created,
    })
}
