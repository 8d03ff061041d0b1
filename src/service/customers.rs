//! The customer use cases: plans, operators, customers, operator links and
//! prepaid top-ups, each checked against the caller's principal.

use chrono_tz::Tz;

use super::Access;
use crate::clock::Clock;
use crate::domain::access::{self, Action, CustomerScope, Principal};
use crate::domain::model::{
    ContactUpdate, Customer, IssuerUpdate, NewCustomer, Operator, TopUpOutcome, TopUpRequest,
};
use crate::domain::period::BillingPeriod;
use crate::domain::plan::{NewPlan, Plan};
use crate::domain::validation as valid;
use crate::error::{AppError, AppResult};
use crate::storage::Store;

/// The customer use cases. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Customers {
    store: Store,
    clock: Clock,
    access: Access,
    /// The billing time zone: a top-up belongs to the month it is made in.
    tz: Tz,
}

impl Customers {
    pub fn new(store: Store, clock: Clock, tz: Tz) -> Self {
        Customers {
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
