//! The call use cases: rate and store calls (one, or a batch of a stream),
//! and list them, each checked against the caller's principal. A switch or
//! operator may push calls only of its operator's customers; any other
//! customer is `NOT_FOUND`, per record.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;

use super::{Access, Numbers, Plans};
use crate::clock::Clock;
use crate::domain::access::{self, Action, CustomerScope, Principal};
use crate::domain::model::{Authorization, Call, CallRecord, NewCall, StoredCall, TimeRange};
use crate::domain::period::BillingPeriod;
use crate::domain::plan::{Plan, PlanKind};
use crate::domain::{invoice, numbers, rating, validation as valid};
use crate::error::{AppError, AppResult};
use crate::storage::{CallFilter, CallWriter, GroupCommit, Store};

/// What one request has learnt of each customer it pushed calls for: its
/// plan and first month, or `None` when the caller may not push calls for
/// it. A customer's plan and links are read once per request (a plan never
/// changes).
pub type CustomerCache = HashMap<i64, Option<(Arc<Plan>, BillingPeriod)>>;

/// How many times a call charged through a number that changed hands
/// while it was stored is charged again before its request fails with
/// `ABORTED`.
pub const NUMBER_RETRIES: usize = 3;

/// The call use cases. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Calls {
    store: Store,
    clock: Clock,
    access: Access,
    /// How long ago a call may have started.
    max_call_age: TimeDelta,
    /// The billing time zone: tariff windows are its local times.
    tz: Tz,
    /// Unary calls are stored through it, in group commits.
    writer: CallWriter,
    plans: Plans,
    numbers: Numbers,
}

impl Calls {
    /// Calls over `store`, accepting calls that started at most
    /// `max_call_age` ago, with tariff windows in `tz`; single calls are
    /// stored in group commits batched as `group_commit` says.
    pub fn new(
        store: Store,
        clock: Clock,
        max_call_age: TimeDelta,
        tz: Tz,
        group_commit: GroupCommit,
        numbers: Numbers,
    ) -> Self {
        Calls {
            numbers,
            access: Access::new(store.clone()),
            writer: CallWriter::start(store.clone(), group_commit),
            plans: Plans::new(store.clone()),
            store,
            clock,
            max_call_age,
            tz,
        }
    }

    /// The application's metrics.
    pub fn metrics(&self) -> &std::sync::Arc<crate::metrics::Metrics> {
        self.store.metrics()
    }

    /// The plan of a customer the caller may see.
    async fn plan_of(&self, customer_id: i64) -> AppResult<Arc<Plan>> {
        self.plans.of_customer(customer_id).await
    }

    /// Checks and rates one record for `principal`, charging it to the
    /// customer it names or to the holder of its calling number
    /// (`domain::numbers`).
    pub async fn prepare(
        &self,
        principal: &Principal,
        record: CallRecord,
        customers: &mut CustomerCache,
    ) -> AppResult<NewCall> {
        let now = self.clock.now();
        let (customer_id, number_version, plan, first_month, started_at) = match record.customer_id
        {
            Some(customer_id) => {
                let (plan, first_month) =
                    self.terms_of(principal, customer_id, customers)
                        .await?
                        .ok_or_else(|| AppError::not_found("customer", customer_id))?;
                let started_at = self.started_at(&record, now)?;
                if !record.caller_number.is_empty() {
                    let holder = self
                        .numbers
                        .holder_at(&record.caller_number, started_at)
                        .await?;
                    numbers::charged_customer(
                        Some(customer_id),
                        &record.caller_number,
                        holder.customer_id,
                    )?;
                }
                (customer_id, None, plan, first_month, started_at)
            }
            None => {
                let started_at = self.started_at(&record, now)?;
                let holder = if record.caller_number.is_empty() {
                    None
                } else {
                    Some(
                        self.numbers
                            .holder_at(&record.caller_number, started_at)
                            .await?,
                    )
                };
                let customer_id = numbers::charged_customer(
                    None,
                    &record.caller_number,
                    holder.and_then(|h| h.customer_id),
                )?;
                // A holder the caller may not see is no holder to it.
                let (plan, first_month) =
                    self.terms_of(principal, customer_id, customers)
                        .await?
                        .ok_or_else(|| numbers::no_holder(&record.caller_number))?;
                let version = holder.map(|h| h.version);
                (customer_id, version, plan, first_month, started_at)
            }
        };
        let started_in = BillingPeriod::containing(started_at, self.tz);
        invoice::check_call_within_customer_life(customer_id, started_in, first_month)?;
        let rating = rating::rate_call(
            &plan,
            &record.callee_number,
            started_at,
            record.duration_seconds,
            self.tz,
        );
        Ok(NewCall {
            record,
            customer_id,
            number_version,
            started_at,
            started_in,
            rating,
            received_at: now,
            plan_kind: plan.kind,
        })
    }

    /// When the call of `record` started, checked against `now`.
    fn started_at(&self, record: &CallRecord, now: DateTime<Utc>) -> AppResult<DateTime<Utc>> {
        valid::call_start(
            record.started_at,
            record.duration_seconds,
            now,
            self.max_call_age,
        )
    }

    /// The plan and first month of `customer_id`, or `None` when
    /// `principal` may not push its calls; read once per request.
    async fn terms_of(
        &self,
        principal: &Principal,
        customer_id: i64,
        customers: &mut CustomerCache,
    ) -> AppResult<Option<(Arc<Plan>, BillingPeriod)>> {
        if let Some(known) = customers.get(&customer_id) {
            return Ok(known.clone());
        }
        let terms = match self
            .access
            .customer(principal, Action::AddCalls, customer_id)
            .await
        {
            Ok(pass) => {
                let (plan, created_at) = self.plans.of_customer_since(pass.customer_id()).await?;
                Some((plan, BillingPeriod::containing(created_at, self.tz)))
            }
            Err(AppError::NotFound(_)) => None,
            Err(err) => return Err(err),
        };
        customers.insert(customer_id, terms.clone());
        Ok(terms)
    }

    /// Stores prepared calls in one transaction, call by call if the batch
    /// is refused (see `Store::store_calls_each`). Calls charged through a
    /// number that changed hands meanwhile are charged again from their
    /// records, up to [`NUMBER_RETRIES`] times.
    pub async fn store(
        &self,
        principal: &Principal,
        calls: Vec<NewCall>,
    ) -> AppResult<(Vec<NewCall>, Vec<AppResult<StoredCall>>)> {
        let mut customers = CustomerCache::new();
        let mut outcomes = self.store.store_calls_each(&calls).await?;
        let mut calls = calls;
        for _ in 0..NUMBER_RETRIES {
            let again: Vec<usize> = outcomes
                .iter()
                .enumerate()
                .filter(|(_, outcome)| matches!(outcome, Err(AppError::Aborted(_))))
                .map(|(index, _)| index)
                .collect();
            if again.is_empty() {
                break;
            }
            self.numbers.refresh().await?;
            let mut charged = Vec::with_capacity(again.len());
            let mut positions = Vec::with_capacity(again.len());
            for index in again {
                match self
                    .prepare(principal, calls[index].record.clone(), &mut customers)
                    .await
                {
                    Ok(new) => {
                        calls[index] = new.clone();
                        charged.push(new);
                        positions.push(index);
                    }
                    Err(err) => outcomes[index] = Err(err),
                }
            }
            let stored = self.store.store_calls_each(&charged).await?;
            for (index, outcome) in positions.into_iter().zip(stored) {
                outcomes[index] = outcome;
            }
        }
        Ok((calls, outcomes))
    }

    /// Rates and stores one call: the stored call and whether it was a
    /// duplicate.
    pub async fn add_call(
        &self,
        principal: &Principal,
        record: CallRecord,
    ) -> AppResult<(Call, bool)> {
        access::permits(principal, Action::AddCalls)?;
        let mut customers = HashMap::new();
        let mut attempts = 0;
        let outcome = loop {
            let new = self
                .prepare(principal, record.clone(), &mut customers)
                .await?;
            match self.writer.store(new).await {
                Err(AppError::Aborted(_)) if attempts < NUMBER_RETRIES => {
                    attempts += 1;
                    self.numbers.refresh().await?;
                }
                outcome => break outcome?,
            }
        };
        Ok(match outcome {
            StoredCall::Inserted(call) => (call, false),
            StoredCall::Duplicate(call) => (call, true),
        })
    }

    /// May `customer_id` call `callee` starting at `started_at` (default
    /// now), and for how long? Prepaid: as long as the balance pays for;
    /// other plans: up to 24 h. Reads only.
    pub async fn authorize(
        &self,
        principal: &Principal,
        customer_id: i64,
        callee: &str,
        started_at: Option<DateTime<Utc>>,
    ) -> AppResult<Authorization> {
        let pass = self
            .access
            .customer(principal, Action::AuthorizeCall, customer_id)
            .await?;
        let now = self.clock.now();
        let start = match started_at {
            Some(at) => {
                valid::start_within(at, now, valid::MAX_AUTHORIZE_AHEAD, self.max_call_age)?
            }
            None => now,
        };
        let plan = self.plan_of(pass.customer_id()).await?;
        if plan.kind != PlanKind::Prepaid {
            return Ok(Authorization {
                allowed: true,
                max_duration_seconds: valid::MAX_CALL_SECONDS,
                reason: String::new(),
            });
        }
        let balance = self
            .store
            .customer(pass.customer_id())
            .await?
            .balance_micros;
        let seconds = rating::longest_affordable_seconds(&plan, callee, start, self.tz, balance);
        Ok(if seconds == 0 {
            Authorization {
                allowed: false,
                max_duration_seconds: 0,
                reason: format!(
                    "the prepaid balance of {balance} micros does not pay for the shortest call"
                ),
            }
        } else if seconds < valid::MAX_CALL_SECONDS {
            Authorization {
                allowed: true,
                max_duration_seconds: seconds,
                reason: format!("limited by the prepaid balance of {balance} micros"),
            }
        } else {
            Authorization {
                allowed: true,
                max_duration_seconds: seconds,
                reason: String::new(),
            }
        })
    }

    /// Checks that `principal` may push calls at all (before a stream is
    /// read).
    pub fn may_add_calls(&self, principal: &Principal) -> AppResult<()> {
        access::permits(principal, Action::AddCalls)
    }

    /// Up to `limit` calls of one customer in `range` after `after`.
    pub async fn history(
        &self,
        principal: &Principal,
        customer_id: i64,
        range: TimeRange,
        after: Option<(i64, i64)>,
        limit: u64,
    ) -> AppResult<Vec<Call>> {
        let pass = self
            .access
            .customer(principal, Action::GetCallHistory, customer_id)
            .await?;
        // NOT_FOUND for an unknown customer; a customer's plan never
        // changes, so a plan without tariffs means calls without segments.
        let plan = self.plan_of(pass.customer_id()).await?;
        self.store
            .replica()
            .list_calls(
                CallFilter::Customer(pass.customer_id()),
                range,
                after,
                limit,
                !plan.tariffs.is_empty(),
            )
            .await
    }

    /// Up to `limit` calls of all customers, or those of `operator_id` (an
    /// operator: always its own), in `range` after `after`.
    pub async fn list(
        &self,
        principal: &Principal,
        operator_id: Option<i64>,
        range: TimeRange,
        after: Option<(i64, i64)>,
        limit: u64,
    ) -> AppResult<Vec<Call>> {
        access::permits(principal, Action::ListCalls)?;
        let filter = match access::operator_listing(principal, operator_id)? {
            CustomerScope::All => CallFilter::All,
            CustomerScope::Operator(id) => {
                self.store.ensure_operator(id).await?;
                CallFilter::Operator(id)
            }
            CustomerScope::Customer(id) => CallFilter::Customer(id),
        };
        self.store
            .replica()
            .list_calls(filter, range, after, limit, true)
            .await
    }
}
