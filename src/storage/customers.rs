//! Plans, operators, customers, their operator links and prepaid top-ups.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, Query};
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, ConnectionTrait, EntityTrait, ExprTrait, QueryFilter, QueryOrder, QuerySelect,
    TryInsertResult,
};

use super::deliveries::{BALANCE_STATE_COLUMNS, BalanceState, write_balance_alerts_on};
use super::entities::{
    customer, customer_operator, operator, plan, plan_included_tariff, plan_tariff, top_up,
};
use super::numbers::{bump_version, insert_assignment};
use super::{
    CustomerLock, Store, instant, is_unique_violation, lock_invoiced_through, micros, statement,
};
use crate::domain::invoice::billing_period_of;
use crate::domain::model::{
    ContactUpdate, Customer, Issuer, IssuerUpdate, Language, NewCustomer, Operator, TopUpOutcome,
    TopUpRequest,
};
use crate::domain::numbers::NumberAssignment;
use crate::domain::period::BillingPeriod;
use crate::domain::plan::{NewPlan, Plan, PlanKind};
use crate::domain::tariff::{DaySet, Tariff, Window};
use crate::domain::validation::shown;
use crate::error::{AppError, AppResult};

impl Store {
    /// Stores a new plan.
    pub async fn create_plan(&self, new: NewPlan, now: DateTime<Utc>) -> AppResult<Plan> {
        let tariffs = new.tariffs().to_vec();
        let included = new.included_minutes_tariffs().to_vec();
        let row = plan::ActiveModel {
            id: NotSet,
            name: Set(new.name().to_owned()),
            kind: Set(new.kind().as_str().to_owned()),
            currency_code: Set(new.currency_code().to_owned()),
            monthly_fee_micros: Set(new.monthly_fee_micros()),
            per_minute_micros: Set(new.per_minute_micros()),
            billing_increment_seconds: Set(new.billing_increment_seconds()),
            included_minutes: Set(new.included_minutes()),
            created_at: Set(micros(now)),
        };
        let txn = self.begin_write().await?;
        let model = plan::Entity::insert(row).exec_with_returning(&txn).await?;
        if !tariffs.is_empty() {
            let rows = tariffs
                .iter()
                .enumerate()
                .map(|(position, tariff)| tariff_row(model.id, position, tariff));
            plan_tariff::Entity::insert_many(rows)
                .exec_without_returning(&txn)
                .await?;
        }
        if !included.is_empty() {
            let rows = included
                .iter()
                .map(|name| plan_included_tariff::ActiveModel {
                    plan_id: Set(model.id),
                    tariff_name: Set(name.clone()),
                });
            plan_included_tariff::Entity::insert_many(rows)
                .exec_without_returning(&txn)
                .await?;
        }
        txn.commit().await?;
        plan_from(model, PlanTariffs { tariffs, included })
    }

    /// The tariffs of each of `plan_ids`, in their order, and the tariffs
    /// their included minutes cover, in two queries.
    async fn tariffs_of(&self, plan_ids: &[i64]) -> AppResult<HashMap<i64, PlanTariffs>> {
        let mut by_plan: HashMap<i64, PlanTariffs> = HashMap::new();
        if plan_ids.is_empty() {
            return Ok(by_plan);
        }
        for row in plan_tariff::Entity::find()
            .filter(plan_tariff::Column::PlanId.is_in(plan_ids.iter().copied()))
            .order_by_asc(plan_tariff::Column::PlanId)
            .order_by_asc(plan_tariff::Column::Position)
            .all(&self.db)
            .await?
        {
            by_plan
                .entry(row.plan_id)
                .or_default()
                .tariffs
                .push(tariff_from(row));
        }
        for row in plan_included_tariff::Entity::find()
            .filter(plan_included_tariff::Column::PlanId.is_in(plan_ids.iter().copied()))
            .order_by_asc(plan_included_tariff::Column::PlanId)
            .order_by_asc(plan_included_tariff::Column::TariffName)
            .all(&self.db)
            .await?
        {
            by_plan
                .entry(row.plan_id)
                .or_default()
                .included
                .push(row.tariff_name);
        }
        Ok(by_plan)
    }

    /// Up to `limit` plans with an id above `after_id`, oldest first.
    pub async fn list_plans(&self, after_id: i64, limit: u64) -> AppResult<Vec<Plan>> {
        let models = plan::Entity::find()
            .filter(plan::Column::Id.gt(after_id))
            .order_by_asc(plan::Column::Id)
            .limit(limit)
            .all(&self.db)
            .await?;
        let ids: Vec<i64> = models.iter().map(|m| m.id).collect();
        let mut tariffs = self.tariffs_of(&ids).await?;
        models
            .into_iter()
            .map(|m| {
                let own = tariffs.remove(&m.id).unwrap_or_default();
                plan_from(m, own)
            })
            .collect()
    }

    /// One plan, or `NOT_FOUND`.
    pub async fn plan(&self, plan_id: i64) -> AppResult<Plan> {
        let model = plan::Entity::find_by_id(plan_id)
            .one(&self.db)
            .await?
            .ok_or(AppError::not_found("plan", plan_id))?;
        let tariffs = self.tariffs_of(&[plan_id]).await?.remove(&plan_id);
        plan_from(model, tariffs.unwrap_or_default())
    }

    /// The plan of a customer, or `NOT_FOUND` for an unknown customer. Plans
    /// and a customer's plan never change, so the answer may be cached.
    pub async fn plan_of_customer(&self, customer_id: i64) -> AppResult<Plan> {
        let plan_id = self
            .plan_ids_of_customers(&[customer_id])
            .await?
            .remove(&customer_id)
            .ok_or(AppError::not_found("customer", customer_id))?
            .0;
        self.plan(plan_id).await
    }

    /// The plan ids of those of `customer_ids` that exist, by customer:
    /// one query reading two values a customer, for a cache that may
    /// already hold the plans (customers are many, plans few). At most a
    /// few thousand ids at a time, so the statement's bound values stay far
    /// below either backend's limit.
    pub async fn plan_ids_of_customers(
        &self,
        customer_ids: &[i64],
    ) -> AppResult<HashMap<i64, (i64, DateTime<Utc>)>> {
        Ok(customer::Entity::find()
            .select_only()
            .column(customer::Column::Id)
            .column(customer::Column::PlanId)
            .column(customer::Column::CreatedAt)
            .filter(customer::Column::Id.is_in(customer_ids.iter().copied()))
            .into_tuple::<(i64, i64, i64)>()
            .all(&self.db)
            .await?
            .into_iter()
            .map(|(id, plan_id, created_at)| (id, (plan_id, instant(created_at))))
            .collect())
    }

    /// Stores a new operator; its name must be unused.
    pub async fn create_operator(&self, name: String, now: DateTime<Utc>) -> AppResult<Operator> {
        let row = operator::ActiveModel {
            id: NotSet,
            name: Set(name.clone()),
            created_at: Set(micros(now)),
            legal_name: Set(String::new()),
            address: Set(String::new()),
            tax_id: Set(String::new()),
            support_email: Set(String::new()),
        };
        match operator::Entity::insert(row)
            .exec_with_returning(&self.db)
            .await
        {
            Ok(model) => Ok(operator_from(model)),
            Err(err) if is_unique_violation(&err) => Err(AppError::AlreadyExists(format!(
                "operator name {} is already in use",
                shown(&name)
            ))),
            Err(err) => Err(err.into()),
        }
    }

    /// Up to `limit` operators with an id above `after_id`, oldest first.
    pub async fn list_operators(&self, after_id: i64, limit: u64) -> AppResult<Vec<Operator>> {
        Ok(operator::Entity::find()
            .filter(operator::Column::Id.gt(after_id))
            .order_by_asc(operator::Column::Id)
            .limit(limit)
            .all(&self.db)
            .await?
            .into_iter()
            .map(operator_from)
            .collect())
    }

    /// Operator `operator_id`, or `NOT_FOUND`.
    pub async fn operator(&self, operator_id: i64) -> AppResult<Operator> {
        operator::Entity::find_by_id(operator_id)
            .one(&self.db)
            .await?
            .map(operator_from)
            .ok_or_else(|| AppError::not_found("operator", operator_id))
    }

    /// Applies `update` to operator `operator_id` and returns it.
    pub async fn update_issuer(
        &self,
        operator_id: i64,
        update: IssuerUpdate,
    ) -> AppResult<Operator> {
        let IssuerUpdate {
            legal_name,
            address,
            tax_id,
            support_email,
        } = update;
        let mut query =
            operator::Entity::update_many().filter(operator::Column::Id.eq(operator_id));
        let mut changes = 0;
        for (column, value) in [
            (operator::Column::LegalName, legal_name),
            (operator::Column::Address, address),
            (operator::Column::TaxId, tax_id),
            (operator::Column::SupportEmail, support_email),
        ] {
            if let Some(value) = value {
                query = query.col_expr(column, value.into());
                changes += 1;
            }
        }
        if changes > 0 {
            query.exec(&self.db).await?;
        }
        self.operator(operator_id).await
    }

    /// Applies `update` to customer `customer_id`'s contact fields and
    /// returns the customer. A new low-balance threshold closes any open
    /// low alert (`domain::delivery` rule 6).
    pub async fn update_contact(
        &self,
        customer_id: i64,
        update: ContactUpdate,
    ) -> AppResult<Customer> {
        let mut query =
            customer::Entity::update_many().filter(customer::Column::Id.eq(customer_id));
        let mut changes = 0;
        if let Some(email) = update.email {
            query = query.col_expr(customer::Column::Email, email.into());
            changes += 1;
        }
        if let Some(language) = update.language {
            query = query.col_expr(customer::Column::Language, language.code().into());
            changes += 1;
        }
        if let Some(threshold) = update.low_balance_threshold_micros {
            query = query
                .col_expr(
                    customer::Column::LowBalanceThresholdMicros,
                    threshold.into(),
                )
                .col_expr(customer::Column::LowBalanceAlerted, false.into());
            changes += 1;
        }
        if changes > 0 {
            query.exec(&self.db).await?;
        }
        self.customer(customer_id).await
    }

    /// `NOT_FOUND` unless the operator exists.
    pub async fn ensure_operator(&self, operator_id: i64) -> AppResult<()> {
        operator::Entity::find_by_id(operator_id)
            .one(&self.db)
            .await?
            .map(|_| ())
            .ok_or(AppError::not_found("operator", operator_id))
    }

    /// Stores a customer and its operator links in one transaction.
    pub async fn create_customer(
        &self,
        new: NewCustomer,
        now: DateTime<Utc>,
    ) -> AppResult<Customer> {
        // Plans and operators are never deleted, so checking them first is
        // sound and gives a precise NOT_FOUND; the foreign keys still guard.
        self.plan(new.plan_id).await?;
        for &operator_id in &new.operator_ids {
            self.ensure_operator(operator_id).await?;
        }
        let txn = self.begin_write().await?;
        let row = customer::ActiveModel {
            id: NotSet,
            name: Set(new.name),
            phone_number: Set(new.phone_number.clone()),
            plan_id: Set(new.plan_id),
            balance_micros: Set(0),
            created_at: Set(micros(now)),
            invoiced_through: Set(None),
            email: Set(new.email.clone()),
            language: Set(new.language.code().to_owned()),
            low_balance_threshold_micros: Set(new.low_balance_threshold_micros),
            low_balance_alerted: Set(false),
        };
        let model = match customer::Entity::insert(row)
            .exec_with_returning(&txn)
            .await
        {
            Ok(model) => model,
            Err(err) => return Err(err.into()),
        };
        bump_version(&txn).await?;
        if let Err(err) = insert_assignment(&txn, model.id, &new.phone_number, now).await {
            return Err(match err {
                AppError::AlreadyExists(_) => AppError::AlreadyExists(format!(
                    "phone number {} is already in use",
                    new.phone_number
                )),
                other => other,
            });
        }
        if !new.operator_ids.is_empty() {
            let links =
                new.operator_ids
                    .iter()
                    .map(|&operator_id| customer_operator::ActiveModel {
                        customer_id: Set(model.id),
                        operator_id: Set(operator_id),
                    });
            customer_operator::Entity::insert_many(links)
                .exec_without_returning(&txn)
                .await?;
        }
        txn.commit().await?;
        let numbers = vec![NumberAssignment {
            customer_id: model.id,
            number: new.phone_number,
            valid_from: instant(model.created_at),
            valid_until: None,
        }];
        Ok(customer_from(model, new.operator_ids, numbers))
    }

    /// One customer, or `NOT_FOUND`.
    pub async fn customer(&self, customer_id: i64) -> AppResult<Customer> {
        let model = self.customer_row(customer_id).await?;
        self.customers_from(vec![model])
            .await?
            .pop()
            .ok_or_else(|| AppError::internal("a read customer went missing"))
    }

    /// The customers of `ids` that exist, in two queries.
    pub async fn customers_by_id(&self, ids: &[i64]) -> AppResult<Vec<Customer>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let models = customer::Entity::find()
            .filter(customer::Column::Id.is_in(ids.to_vec()))
            .all(&self.db)
            .await?;
        self.customers_from(models).await
    }

    /// Up to `limit` customers with an id above `after_id`, in id order,
    /// optionally only those linked to `operator_id`.
    pub async fn list_customers(
        &self,
        operator_id: Option<i64>,
        after_id: i64,
        limit: u64,
    ) -> AppResult<Vec<Customer>> {
        let mut query = customer::Entity::find()
            .filter(customer::Column::Id.gt(after_id))
            .order_by_asc(customer::Column::Id)
            .limit(limit);
        if let Some(operator_id) = operator_id {
            query = query.filter(
                customer::Column::Id.in_subquery(
                    Query::select()
                        .column(customer_operator::Column::CustomerId)
                        .from(customer_operator::Entity)
                        .and_where(customer_operator::Column::OperatorId.eq(operator_id))
                        .to_owned(),
                ),
            );
        }
        let models = query.all(&self.db).await?;
        self.customers_from(models).await
    }

    /// Links a customer to an operator; linking twice changes nothing. A
    /// customer has at most `max_links` operators: the count and the insert
    /// happen in one transaction that holds the customer's row (PostgreSQL:
    /// `FOR UPDATE`; SQLite: the write lock), so concurrent links cannot
    /// pass the cap together.
    pub async fn link_operator(
        &self,
        customer_id: i64,
        operator_id: i64,
        max_links: usize,
    ) -> AppResult<Customer> {
        self.ensure_operator(operator_id).await?;
        let txn = self.begin_write().await?;
        customer::Entity::find_by_id(customer_id)
            .lock_exclusive()
            .one(&txn)
            .await?
            .ok_or(AppError::not_found("customer", customer_id))?;
        let links: Vec<i64> = customer_operator::Entity::find()
            .select_only()
            .column(customer_operator::Column::OperatorId)
            .filter(customer_operator::Column::CustomerId.eq(customer_id))
            .into_tuple()
            .all(&txn)
            .await?;
        if !links.contains(&operator_id) {
            if links.len() >= max_links {
                return Err(AppError::FailedPrecondition(format!(
                    "customer {customer_id} is already linked to {} operators, the most allowed",
                    links.len()
                )));
            }
            let link = customer_operator::ActiveModel {
                customer_id: Set(customer_id),
                operator_id: Set(operator_id),
            };
            customer_operator::Entity::insert(link)
                .on_conflict_do_nothing()
                .exec_without_returning(&txn)
                .await?;
        }
        txn.commit().await?;
        self.customer(customer_id).await
    }

    /// Credits a balance once per customer and `request_id` (whether the customer may be
    /// topped up is the caller's rule). The top-up row and the balance change
    /// commit together, so a retry never credits twice.
    ///
    /// The top-up is billed in the month it is made in (`made_in`), or in
    /// the customer's first month not invoiced yet, decided under a lock of
    /// the customer's row that issuing waits for.
    pub async fn top_up(
        &self,
        request: TopUpRequest,
        now: DateTime<Utc>,
        made_in: BillingPeriod,
    ) -> AppResult<TopUpOutcome> {
        let txn = self.begin_write().await?;
        let invoiced_through =
            lock_invoiced_through(&txn, &[request.customer_id], CustomerLock::Store)
                .await?
                .remove(&request.customer_id)
                .ok_or(AppError::not_found("customer", request.customer_id))?;
        let row = top_up::ActiveModel {
            id: NotSet,
            request_id: Set(request.request_id.clone()),
            customer_id: Set(request.customer_id),
            amount_micros: Set(request.amount_micros),
            created_at: Set(micros(now)),
            billing_period: Set(billing_period_of(made_in, invoiced_through).key()),
        };
        let inserted = top_up::Entity::insert(row)
            .on_conflict_do_nothing_on([top_up::Column::CustomerId, top_up::Column::RequestId])
            .exec_without_returning(&txn)
            .await?;
        let credited_micros;
        let duplicate = match inserted {
            TryInsertResult::Inserted(rows) if rows > 0 => {
                // Checked in the statement itself: a balance that cannot take
                // the credit is left alone (SQLite would otherwise store a
                // REAL), and the transaction with the top-up row rolls back.
                let credited = customer::Entity::update_many()
                    .col_expr(
                        customer::Column::BalanceMicros,
                        Expr::col(customer::Column::BalanceMicros).add(request.amount_micros),
                    )
                    .filter(customer::Column::Id.eq(request.customer_id))
                    .filter(customer::Column::BalanceMicros.lte(i64::MAX - request.amount_micros))
                    .exec(&txn)
                    .await?;
                if credited.rows_affected == 0 {
                    return Err(AppError::FailedPrecondition(format!(
                        "customer {}'s balance cannot hold another {} micros",
                        request.customer_id, request.amount_micros
                    )));
                }
                credited_micros = request.amount_micros;
                false
            }
            TryInsertResult::Inserted(_) | TryInsertResult::Conflicted | TryInsertResult::Empty => {
                let earlier = top_up::Entity::find()
                    .filter(top_up::Column::CustomerId.eq(request.customer_id))
                    .filter(top_up::Column::RequestId.eq(request.request_id.as_str()))
                    .one(&txn)
                    .await?
                    .ok_or_else(|| AppError::internal("conflicting top-up vanished"))?;
                if earlier.amount_micros != request.amount_micros {
                    return Err(AppError::AlreadyExists(format!(
                        "request_id {} was already used for a different top-up of customer {}",
                        shown(&request.request_id),
                        request.customer_id
                    )));
                }
                credited_micros = 0;
                true
            }
        };
        let backend = txn.get_database_backend();
        let balance = txn
            .query_one_raw(statement(
                backend,
                &format!("SELECT {BALANCE_STATE_COLUMNS} FROM customers WHERE customers.id = ?"),
                vec![request.customer_id.into()],
            ))
            .await?
            .map(|row| BalanceState::from_row(&row))
            .transpose()?
            .ok_or(AppError::not_found("customer", request.customer_id))?;
        let balance_micros = balance.balance_micros;
        let change = balance.since(balance_micros.saturating_sub(credited_micros));
        let alerted = write_balance_alerts_on(&txn, &[change], &self.outbox).await?;
        txn.commit().await?;
        if alerted {
            self.outbox.wake.notify_one();
        }
        Ok(TopUpOutcome {
            balance_micros,
            duplicate,
        })
    }

    /// `NOT_FOUND` unless the customer exists.
    pub async fn ensure_customer(&self, customer_id: i64) -> AppResult<()> {
        self.customer_row(customer_id).await.map(|_| ())
    }

    async fn customer_row(&self, customer_id: i64) -> AppResult<customer::Model> {
        customer::Entity::find_by_id(customer_id)
            .one(&self.db)
            .await?
            .ok_or(AppError::not_found("customer", customer_id))
    }

    /// The operator ids of each of `customer_ids`, ascending, in one query.
    /// The customers of `models`, in their order, with their operators
    /// and numbers (two queries).
    async fn customers_from(&self, models: Vec<customer::Model>) -> AppResult<Vec<Customer>> {
        let ids: Vec<i64> = models.iter().map(|m| m.id).collect();
        let mut links = self.operator_links(&ids).await?;
        let mut numbers = self.numbers_of(&ids).await?;
        Ok(models
            .into_iter()
            .map(|m| {
                let operator_ids = links.remove(&m.id).unwrap_or_default();
                let held = numbers.remove(&m.id).unwrap_or_default();
                customer_from(m, operator_ids, held)
            })
            .collect())
    }

    async fn operator_links(&self, customer_ids: &[i64]) -> AppResult<BTreeMap<i64, Vec<i64>>> {
        if customer_ids.is_empty() {
            return Ok(BTreeMap::new());
        }
        let rows = customer_operator::Entity::find()
            .filter(customer_operator::Column::CustomerId.is_in(customer_ids.iter().copied()))
            .order_by_asc(customer_operator::Column::CustomerId)
            .order_by_asc(customer_operator::Column::OperatorId)
            .all(&self.db)
            .await?;
        let mut links: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
        for row in rows {
            links
                .entry(row.customer_id)
                .or_default()
                .push(row.operator_id);
        }
        Ok(links)
    }
}

/// A plan's tariffs and the tariffs its included minutes cover.
#[derive(Debug, Default)]
struct PlanTariffs {
    tariffs: Vec<Tariff>,
    included: Vec<String>,
}

fn tariff_row(plan_id: i64, position: usize, tariff: &Tariff) -> plan_tariff::ActiveModel {
    let (start, end) = tariff.window.map_or((0, 0), |w| (w.start, w.end));
    plan_tariff::ActiveModel {
        plan_id: Set(plan_id),
        position: Set(i32::try_from(position).unwrap_or(i32::MAX)),
        name: Set(tariff.name.clone()),
        destination_prefix: Set(tariff.destination_prefix.clone()),
        days: Set(i32::from(tariff.days.bits())),
        start_minute: Set(i32::from(start)),
        end_minute: Set(i32::from(end)),
        per_minute_micros: Set(tariff.per_minute_micros),
        connect_fee_micros: Set(tariff.connect_fee_micros),
        first_increment_seconds: Set(
            i32::try_from(tariff.first_increment_seconds).unwrap_or(i32::MAX)
        ),
        billing_increment_seconds: Set(
            i32::try_from(tariff.billing_increment_seconds).unwrap_or(i32::MAX)
        ),
    }
}

fn tariff_from(row: plan_tariff::Model) -> Tariff {
    let window = (row.start_minute != row.end_minute).then(|| Window {
        start: u16::try_from(row.start_minute).unwrap_or(0),
        end: u16::try_from(row.end_minute).unwrap_or(0),
    });
    Tariff {
        name: row.name,
        destination_prefix: row.destination_prefix,
        days: DaySet::from_bits(u8::try_from(row.days).unwrap_or(0)),
        window,
        per_minute_micros: row.per_minute_micros,
        connect_fee_micros: row.connect_fee_micros,
        first_increment_seconds: i64::from(row.first_increment_seconds),
        billing_increment_seconds: i64::from(row.billing_increment_seconds),
    }
}

fn plan_from(model: plan::Model, tariffs: PlanTariffs) -> AppResult<Plan> {
    let kind = PlanKind::parse(&model.kind).ok_or_else(|| {
        AppError::internal(format!(
            "plan {} has unknown kind {:?}",
            model.id, model.kind
        ))
    })?;
    Ok(Plan {
        id: model.id,
        name: model.name,
        kind,
        currency_code: model.currency_code,
        monthly_fee_micros: model.monthly_fee_micros,
        per_minute_micros: model.per_minute_micros,
        billing_increment_seconds: model.billing_increment_seconds,
        included_minutes: model.included_minutes,
        created_at: instant(model.created_at),
        tariffs: tariffs.tariffs,
        included_minutes_tariffs: tariffs.included,
    })
}

fn customer_from(
    model: customer::Model,
    operator_ids: Vec<i64>,
    numbers: Vec<NumberAssignment>,
) -> Customer {
    Customer {
        id: model.id,
        name: model.name,
        phone_number: model.phone_number,
        plan_id: model.plan_id,
        operator_ids,
        balance_micros: model.balance_micros,
        created_at: instant(model.created_at),
        email: model.email,
        // A code this version does not know reads as the default.
        language: Language::parse(&model.language).unwrap_or_default(),
        low_balance_threshold_micros: model.low_balance_threshold_micros,
        numbers,
    }
}

fn operator_from(model: operator::Model) -> Operator {
    Operator {
        id: model.id,
        name: model.name,
        issuer: Issuer {
            legal_name: model.legal_name,
            address: model.address,
            tax_id: model.tax_id,
            support_email: model.support_email,
        },
    }
}
