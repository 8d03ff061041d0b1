//! The customer use cases: plans, operators, customers, operator links and
//! prepaid top-ups, each checked against the caller's principal.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use super::{Access, Numbers};
use crate::clock::Clock;
use crate::domain::access::{self, Action, CustomerScope, Principal};
use crate::domain::model::{
    ContactUpdate, Customer, IssuerUpdate, NewCustomer, Operator, TopUpOutcome, TopUpRequest,
};
use crate::domain::numbers;
use crate::domain::period::BillingPeriod;
use crate::domain::plan::{NewPlan, Plan};
use crate::domain::validation as valid;
use crate::error::{AppError, AppResult};
use crate::storage::{Release, Store};

/// The customer use cases. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Customers {
    store: Store,
    clock: Clock,
    access: Access,
    /// The billing time zone: a top-up belongs to the month it is made in.
    tz: Tz,
    /// This process's cache of number holders, refreshed after a change.
    numbers: Numbers,
}

impl Customers {
    pub fn new(store: Store, clock: Clock, tz: Tz, numbers: Numbers) -> Self {
        Customers {
            numbers,
            access: Access::new(store.clone()),
            store,
            clock,
            tz,
        }
    }

    pub async fn create_plan(&self, principal: &Principal, new: NewPlan) -> AppResult<Plan> {
        access::permits(principal, Action::CreatePlan)?;
        self.store.create_plan(new, self.clock.now()).await
    }

    /// Up to `limit` plans after `after_id`.
    pub async fn list_plans(
        &self,
        principal: &Principal,
        after_id: i64,
        limit: u64,
    ) -> AppResult<Vec<Plan>> {
        access::permits(principal, Action::ListPlans)?;
        self.store.replica().list_plans(after_id, limit).await
    }

    pub async fn create_operator(
        &self,
        principal: &Principal,
        name: String,
    ) -> AppResult<Operator> {
        access::permits(principal, Action::CreateOperator)?;
        self.store.create_operator(name, self.clock.now()).await
    }

    /// Changes operator `operator_id`'s issuer details (see
    /// [`access::may_update_operator`]) and returns it.
    pub async fn update_operator(
        &self,
        principal: &Principal,
        operator_id: i64,
        update: IssuerUpdate,
    ) -> AppResult<Operator> {
        access::may_update_operator(principal, operator_id)?;
        self.store.operator(operator_id).await?;
        self.store.update_issuer(operator_id, update).await
    }

    /// Changes customer `customer_id`'s contact fields, if `principal` may
    /// (an operator: its customers; others are `NOT_FOUND`).
    pub async fn update_customer(
        &self,
        principal: &Principal,
        customer_id: i64,
        update: ContactUpdate,
    ) -> AppResult<Customer> {
        let pass = self
            .access
            .customer(principal, Action::UpdateCustomer, customer_id)
            .await?;
        if let Some(threshold) = update.low_balance_threshold_micros {
            self.store
                .plan_of_customer(pass.customer_id())
                .await?
                .check_low_balance_threshold(threshold)?;
        }
        self.store.update_contact(pass.customer_id(), update).await
    }

    /// Gives customer `customer_id` `number` from `valid_from` (default
    /// now; not before the customer was created) and returns it.
    pub async fn assign_number(
        &self,
        principal: &Principal,
        customer_id: i64,
        number: String,
        valid_from: Option<DateTime<Utc>>,
    ) -> AppResult<Customer> {
        let pass = self
            .access
            .customer(principal, Action::ManageNumbers, customer_id)
            .await?;
        let customer = self.store.customer(pass.customer_id()).await?;
        let valid_from = valid_from.unwrap_or_else(|| self.clock.now());
        if valid_from < customer.created_at {
            return Err(AppError::invalid(
                "valid_from",
                format!(
                    "{} is before customer {} was created ({})",
                    valid_from.to_rfc3339(),
                    customer.id,
                    customer.created_at.to_rfc3339()
                ),
            ));
        }
        self.store
            .assign_number(pass.customer_id(), &number, valid_from)
            .await?;
        self.numbers.refresh().await?;
        self.store.customer(pass.customer_id()).await
    }

    /// Ends the current holding of `number` at `valid_until` (default now)
    /// and returns the customer who held it.
    pub async fn release_number(
        &self,
        principal: &Principal,
        number: String,
        valid_until: Option<DateTime<Utc>>,
    ) -> AppResult<Customer> {
        access::permits(principal, Action::ManageNumbers)?;
        let not_held =
            || AppError::NotFound(format!("number {number} is not held by any customer"));
        let holding = self
            .store
            .current_holding(&number)
            .await?
            .ok_or_else(not_held)?;
        // Another operator's number reads as held by nobody.
        let pass = match self
            .access
            .customer(principal, Action::ManageNumbers, holding.customer_id)
            .await
        {
            Ok(pass) => pass,
            Err(AppError::NotFound(_)) => return Err(not_held()),
            Err(err) => return Err(err),
        };
        let valid_until = valid_until.unwrap_or_else(|| self.clock.now());
        numbers::check_release(holding.valid_from, valid_until)?;
        match self.store.release_number(&holding, valid_until).await? {
            Release::Ended => {}
            Release::CallsAfter => {
                return Err(AppError::FailedPrecondition(format!(
                    "customer {} has calls from {number} stored at or after {}; \
                     release it from a later instant",
                    holding.customer_id,
                    valid_until.to_rfc3339()
                )));
            }
            Release::Changed => {
                return Err(AppError::Aborted(format!(
                    "the holding of {number} changed meanwhile; read it again"
                )));
            }
        }
        self.numbers.refresh().await?;
        self.store.customer(pass.customer_id()).await
    }

    /// Up to `limit` operators after `after_id`.
    pub async fn list_operators(
        &self,
        principal: &Principal,
        after_id: i64,
        limit: u64,
    ) -> AppResult<Vec<Operator>> {
        access::permits(principal, Action::ListOperators)?;
        self.store.replica().list_operators(after_id, limit).await
    }

    /// Creates a customer. An operator's new customer is linked to it, and
    /// an operator may not link it to any other operator.
    pub async fn create_customer(
        &self,
        principal: &Principal,
        mut new: NewCustomer,
    ) -> AppResult<Customer> {
        access::permits(principal, Action::CreateCustomer)?;
        if let CustomerScope::Operator(own) = access::customer_scope(principal) {
            if new.operator_ids.iter().any(|&id| id != own) {
                return Err(AppError::PermissionDenied(
                    "operator_ids: an operator links its new customers only to itself".to_owned(),
                ));
            }
            new.operator_ids = vec![own];
        }
        self.store
            .plan(new.plan_id)
            .await?
            .check_low_balance_threshold(new.low_balance_threshold_micros)?;
        self.store.create_customer(new, self.clock.now()).await
    }

    pub async fn customer(&self, principal: &Principal, customer_id: i64) -> AppResult<Customer> {
        let pass = self
            .access
            .customer(principal, Action::GetCustomer, customer_id)
            .await?;
        self.store.customer(pass.customer_id()).await
    }

    /// Up to `limit` customers after `after_id`, all or those of
    /// `operator_id` (an operator: always its own).
    pub async fn list_customers(
        &self,
        principal: &Principal,
        operator_id: Option<i64>,
        after_id: i64,
        limit: u64,
    ) -> AppResult<Vec<Customer>> {
        access::permits(principal, Action::ListCustomers)?;
        let operator_id = match access::operator_listing(principal, operator_id)? {
            CustomerScope::All => None,
            CustomerScope::Operator(id) => Some(id),
            CustomerScope::Customer(_) => {
                return Err(AppError::internal(
                    "a customer passed the ListCustomers check",
                ));
            }
        };
        if let Some(operator_id) = operator_id {
            self.store.ensure_operator(operator_id).await?;
        }
        self.store
            .replica()
            .list_customers(operator_id, after_id, limit)
            .await
    }

    pub async fn link_operator(
        &self,
        principal: &Principal,
        customer_id: i64,
        operator_id: i64,
    ) -> AppResult<Customer> {
        access::permits(principal, Action::LinkOperator)?;
        self.store
            .link_operator(customer_id, operator_id, valid::MAX_OPERATORS_PER_CUSTOMER)
            .await
    }

    pub async fn top_up(
        &self,
        principal: &Principal,
        top_up: TopUpRequest,
    ) -> AppResult<TopUpOutcome> {
        let pass = self
            .access
            .customer(principal, Action::TopUp, top_up.customer_id)
            .await?;
        let plan = self.store.plan_of_customer(pass.customer_id()).await?;
        plan.check_top_up(pass.customer_id())?;
        let now = self.clock.now();
        self.store
            .top_up(top_up, now, BillingPeriod::containing(now, self.tz))
            .await
    }
}
