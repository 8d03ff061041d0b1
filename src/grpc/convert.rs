//! Conversions between protobuf messages and domain types. Requests are
//! destructured field by field, so a new proto field fails to compile until
//! it is handled; validation errors name the proto field.

use chrono::{DateTime, Utc};
use prost_types::Timestamp;

use super::{DayOfWeek, pb};
use crate::domain::invoice::{
    ConsolidatedMonth, Invoice, InvoiceLine, InvoiceLineKind, UsagePreview,
};
use crate::domain::model::{
    Call, CallRecord, ContactUpdate, Customer, IssuerUpdate, NewCustomer, Operator, TimeRange,
    TopUpRequest,
};
use crate::domain::numbers::NumberAssignment;
use crate::domain::period::BillingPeriod;
use crate::domain::plan::{NewPlan, Plan, PlanKind, PlanTerms};
use crate::domain::tariff::{Segment, Tariff, TariffTerms};
use crate::domain::validation as valid;
use crate::error::{AppError, AppResult};

/// An optional protobuf timestamp as an instant, truncated to microseconds
/// (the stored precision).
pub fn instant(field: &str, ts: Option<&Timestamp>) -> AppResult<Option<DateTime<Utc>>> {
    let Some(ts) = ts else { return Ok(None) };
    let nanos = u32::try_from(ts.nanos)
        .ok()
        .filter(|n| *n < 1_000_000_000)
        .ok_or_else(|| AppError::invalid(field, "nanos must be in 0..999999999"))?;
    let at = DateTime::from_timestamp(ts.seconds, nanos - nanos % 1000)
        .filter(|at| (1970..=9999).contains(&chrono::Datelike::year(at)))
        .ok_or_else(|| AppError::invalid(field, "must lie between 1970 and 9999"))?;
    Ok(Some(at))
}

/// An instant as a protobuf timestamp.
pub fn timestamp(at: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// A `[start_time, end_time)` filter.
pub fn time_range(start: Option<&Timestamp>, end: Option<&Timestamp>) -> AppResult<TimeRange> {
    let range = TimeRange {
        start: instant("start_time", start)?,
        end: instant("end_time", end)?,
    };
    if let (Some(start), Some(end)) = (range.start, range.end)
        && end < start
    {
        return Err(AppError::invalid(
            "end_time",
            "must not be before start_time",
        ));
    }
    Ok(range)
}

fn plan_kind(value: i32) -> AppResult<PlanKind> {
    match pb::PlanKind::try_from(value) {
        Ok(pb::PlanKind::Postpaid) => Ok(PlanKind::Postpaid),
        Ok(pb::PlanKind::Prepaid) => Ok(PlanKind::Prepaid),
        Ok(pb::PlanKind::Fixed) => Ok(PlanKind::Fixed),
        Ok(pb::PlanKind::Unspecified) | Err(_) => Err(AppError::invalid(
            "kind",
            "must be PLAN_KIND_POSTPAID, PLAN_KIND_PREPAID or PLAN_KIND_FIXED",
        )),
    }
}

impl TryFrom<pb::CreatePlanRequest> for NewPlan {
    type Error = AppError;

    fn try_from(req: pb::CreatePlanRequest) -> AppResult<Self> {
        let pb::CreatePlanRequest {
            name,
            kind,
            currency_code,
            monthly_fee_micros,
            per_minute_micros,
            billing_increment_seconds,
            included_minutes,
            tariffs,
            included_minutes_tariffs,
        } = req;
        NewPlan::new(PlanTerms {
            name,
            kind: plan_kind(kind)?,
            currency_code,
            monthly_fee_micros,
            per_minute_micros,
            billing_increment_seconds,
            included_minutes,
            tariffs: tariffs
                .into_iter()
                .enumerate()
                .map(|(index, tariff)| tariff_terms(index, tariff))
                .collect::<AppResult<_>>()?,
            included_minutes_tariffs,
        })
    }
}

/// A tariff's terms, its days as numbers (0 = Monday); `index` names it in
/// errors (`tariffs[2].days`). The rules are `Tariff::new`'s.
fn tariff_terms(index: usize, tariff: pb::Tariff) -> AppResult<TariffTerms> {
    let pb::Tariff {
        name,
        destination_prefix,
        days,
        start_minute,
        end_minute,
        per_minute_micros,
        connect_fee_micros,
        first_increment_seconds,
        billing_increment_seconds,
    } = tariff;
    let days = days
        .into_iter()
        .map(|day| match DayOfWeek::try_from(day) {
            Ok(DayOfWeek::Unspecified) | Err(_) => Err(AppError::invalid(
                format!("tariffs[{index}].days"),
                format!("{day} is not a day of the week (MONDAY to SUNDAY)"),
            )),
            Ok(day) => Ok(u8::try_from(day as i32 - 1).unwrap_or(0)),
        })
        .collect::<AppResult<_>>()?;
    Ok(TariffTerms {
        name,
        destination_prefix,
        days,
        start_minute,
        end_minute,
        per_minute_micros,
        connect_fee_micros,
        first_increment_seconds,
        billing_increment_seconds,
    })
}

impl From<Tariff> for pb::Tariff {
    fn from(tariff: Tariff) -> Self {
        let (start_minute, end_minute) = tariff
            .window
            .map_or((0, 0), |w| (i32::from(w.start), i32::from(w.end)));
        let bits = tariff.days.bits();
        pb::Tariff {
            name: tariff.name,
            destination_prefix: tariff.destination_prefix,
            days: (0..7u8)
                .filter(|day| bits & (1 << day) != 0)
                .map(|day| i32::from(day) + 1)
                .collect(),
            start_minute,
            end_minute,
            per_minute_micros: tariff.per_minute_micros,
            connect_fee_micros: tariff.connect_fee_micros,
            first_increment_seconds: i32::try_from(tariff.first_increment_seconds)
                .unwrap_or(i32::MAX),
            billing_increment_seconds: i32::try_from(tariff.billing_increment_seconds)
                .unwrap_or(i32::MAX),
        }
    }
}

impl From<Segment> for pb::RatedSegment {
    fn from(segment: Segment) -> Self {
        pb::RatedSegment {
            tariff_name: segment.tariff_name,
            start: Some(timestamp(segment.start)),
            billed_seconds: segment.billed_seconds,
            cost_micros: segment.cost_micros,
        }
    }
}

impl TryFrom<pb::CreateCustomerRequest> for NewCustomer {
    type Error = AppError;

    fn try_from(req: pb::CreateCustomerRequest) -> AppResult<Self> {
        let pb::CreateCustomerRequest {
            name,
            phone_number,
            plan_id,
            operator_ids,
            email,
            language,
            low_balance_threshold_micros,
        } = req;
        if operator_ids.len() > valid::MAX_OPERATORS_PER_CUSTOMER {
            return Err(AppError::invalid(
                "operator_ids",
                format!(
                    "at most {} operators per customer",
                    valid::MAX_OPERATORS_PER_CUSTOMER
                ),
            ));
        }
        let mut operator_ids = operator_ids
            .into_iter()
            .map(|id| valid::id("operator_ids", id))
            .collect::<AppResult<Vec<_>>>()?;
        operator_ids.sort_unstable();
        operator_ids.dedup();
        Ok(NewCustomer {
            name: valid::name("name", &name)?,
            phone_number: valid::phone_number("phone_number", &phone_number)?,
            plan_id: valid::id("plan_id", plan_id)?,
            operator_ids,
            email: valid::email("email", &email)?,
            language: valid::language("language", &language)?,
            low_balance_threshold_micros: valid::low_balance_threshold(
                "low_balance_threshold_micros",
                low_balance_threshold_micros,
            )?,
        })
    }
}

/// The fields an update changes (AIP-134): those `mask` names, each one
/// of `updatable`; `*` names them all; no mask (or an empty one) names
/// those `is_set` says the request sets. An unknown or immutable path is
/// `INVALID_ARGUMENT` on `update_mask`.
pub fn update_paths(
    mask: Option<prost_types::FieldMask>,
    updatable: &[&'static str],
    is_set: impl Fn(&str) -> bool,
) -> AppResult<Vec<&'static str>> {
    let paths = mask.map(|mask| mask.paths).unwrap_or_default();
    if paths.is_empty() {
        return Ok(updatable
            .iter()
            .copied()
            .filter(|path| is_set(path))
            .collect());
    }
    if paths.iter().any(|path| path == "*") {
        if paths.len() > 1 {
            return Err(AppError::invalid("update_mask", "`*` stands alone"));
        }
        return Ok(updatable.to_vec());
    }
    let mut chosen = Vec::new();
    for path in &paths {
        let Some(known) = updatable.iter().find(|known| **known == path.as_str()) else {
            return Err(AppError::invalid(
                "update_mask",
                format!(
                    "{} cannot be updated; updatable: {}",
                    valid::shown(path),
                    updatable.join(", ")
                ),
            ));
        };
        if !chosen.contains(known) {
            chosen.push(*known);
        }
    }
    Ok(chosen)
}

/// The contact fields of an UpdateCustomer request, validated: the
/// customer's id and what changes.
pub fn contact_update(req: pb::UpdateCustomerRequest) -> AppResult<(i64, ContactUpdate)> {
    let pb::UpdateCustomerRequest {
        customer,
        update_mask,
    } = req;
    let customer = customer.ok_or_else(|| AppError::invalid("customer", "is required"))?;
    let id = valid::id("customer.id", customer.id)?;
    let paths = update_paths(
        update_mask,
        &["email", "language", "low_balance_threshold_micros"],
        |path| match path {
            "email" => !customer.email.is_empty(),
            "language" => !customer.language.is_empty(),
            _ => customer.low_balance_threshold_micros.is_some(),
        },
    )?;
    let mut update = ContactUpdate::default();
    for path in paths {
        match path {
            "email" => update.email = Some(valid::email("customer.email", &customer.email)?),
            "language" => {
                update.language = Some(valid::language("customer.language", &customer.language)?)
            }
            _ => {
                update.low_balance_threshold_micros = Some(valid::low_balance_threshold(
                    "customer.low_balance_threshold_micros",
                    customer.low_balance_threshold_micros,
                )?)
            }
        }
    }
    Ok((id, update))
}

/// The issuer details of an UpdateOperator request, validated: the
/// operator's id and what changes.
pub fn issuer_update(req: pb::UpdateOperatorRequest) -> AppResult<(i64, IssuerUpdate)> {
    let pb::UpdateOperatorRequest {
        operator,
        update_mask,
    } = req;
    let operator = operator.ok_or_else(|| AppError::invalid("operator", "is required"))?;
    let id = valid::id("operator.id", operator.id)?;
    let paths = update_paths(
        update_mask,
        &["legal_name", "address", "tax_id", "support_email"],
        |path| match path {
            "legal_name" => !operator.legal_name.is_empty(),
            "address" => !operator.address.is_empty(),
            "tax_id" => !operator.tax_id.is_empty(),
            _ => !operator.support_email.is_empty(),
        },
    )?;
    let mut update = IssuerUpdate::default();
    for path in paths {
        match path {
            "legal_name" => {
                update.legal_name = Some(valid::legal_name(
                    "operator.legal_name",
                    &operator.legal_name,
                )?)
            }
            "address" => {
                update.address = Some(valid::address("operator.address", &operator.address)?)
            }
            "tax_id" => update.tax_id = Some(valid::tax_id("operator.tax_id", &operator.tax_id)?),
            _ => {
                update.support_email = Some(
                    valid::email("operator.support_email", &operator.support_email)?
                        .unwrap_or_default(),
                )
            }
        }
    }
    Ok((id, update))
}

impl TryFrom<pb::TopUpRequest> for TopUpRequest {
    type Error = AppError;

    fn try_from(req: pb::TopUpRequest) -> AppResult<Self> {
        let pb::TopUpRequest {
            customer_id,
            amount_micros,
            request_id,
        } = req;
        Ok(TopUpRequest {
            customer_id: valid::id("customer_id", customer_id)?,
            amount_micros: valid::positive_micros(
                "amount_micros",
                amount_micros,
                valid::MAX_TOP_UP_MICROS,
            )?,
            request_id: valid::required_key("request_id", &request_id)?,
        })
    }
}

impl TryFrom<pb::AddCallRequest> for CallRecord {
    type Error = AppError;

    fn try_from(req: pb::AddCallRequest) -> AppResult<Self> {
        let pb::AddCallRequest {
            customer_id,
            duration,
            started_at,
            call_id,
            caller_number,
            callee_number,
        } = req;
        let duration_seconds = match duration {
            Some(pb::add_call_request::Duration::DurationSeconds(seconds)) => {
                valid::duration_seconds("duration_seconds", seconds)?
            }
            Some(pb::add_call_request::Duration::Minutes(minutes)) => {
                valid::duration_minutes(minutes)?
            }
            None => {
                return Err(AppError::invalid(
                    "duration",
                    "is required: set duration_seconds or minutes",
                ));
            }
        };
        Ok(CallRecord {
            customer_id: valid::optional_id("customer_id", customer_id)?,
            duration_seconds,
            started_at: instant("started_at", started_at.as_ref())?,
            call_id: valid::optional_key("call_id", &call_id)?,
            caller_number: valid::dialled_number("caller_number", &caller_number)?,
            callee_number: valid::dialled_number("callee_number", &callee_number)?,
        })
    }
}

impl From<Plan> for pb::Plan {
    fn from(plan: Plan) -> Self {
        let kind = match plan.kind {
            PlanKind::Postpaid => pb::PlanKind::Postpaid,
            PlanKind::Prepaid => pb::PlanKind::Prepaid,
            PlanKind::Fixed => pb::PlanKind::Fixed,
        };
        pb::Plan {
            id: plan.id,
            name: plan.name,
            kind: kind.into(),
            currency_code: plan.currency_code,
            monthly_fee_micros: plan.monthly_fee_micros,
            per_minute_micros: plan.per_minute_micros,
            billing_increment_seconds: plan.billing_increment_seconds,
            included_minutes: plan.included_minutes,
            created_at: Some(timestamp(plan.created_at)),
            tariffs: plan.tariffs.into_iter().map(Into::into).collect(),
            included_minutes_tariffs: plan.included_minutes_tariffs,
        }
    }
}

impl From<Operator> for pb::Operator {
    fn from(operator: Operator) -> Self {
        let Operator { id, name, issuer } = operator;
        pb::Operator {
            id,
            name,
            legal_name: issuer.legal_name,
            address: issuer.address,
            tax_id: issuer.tax_id,
            support_email: issuer.support_email,
        }
    }
}

impl From<Customer> for pb::Customer {
    fn from(customer: Customer) -> Self {
        pb::Customer {
            id: customer.id,
            name: customer.name,
            phone_number: customer.phone_number,
            plan_id: customer.plan_id,
            operator_ids: customer.operator_ids,
            balance_micros: customer.balance_micros,
            created_at: Some(timestamp(customer.created_at)),
            email: customer.email.unwrap_or_default(),
            language: customer.language.code().to_owned(),
            low_balance_threshold_micros: customer.low_balance_threshold_micros,
            numbers: customer.numbers.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<NumberAssignment> for pb::NumberAssignment {
    fn from(assignment: NumberAssignment) -> Self {
        let NumberAssignment {
            customer_id: _,
            number,
            valid_from,
            valid_until,
        } = assignment;
        pb::NumberAssignment {
            number,
            valid_from: Some(timestamp(valid_from)),
            valid_until: valid_until.map(timestamp),
        }
    }
}

impl From<Call> for pb::Call {
    fn from(call: Call) -> Self {
        let segments = call.segments().into_iter().map(Into::into).collect();
        pb::Call {
            segments,
            connect_fee_micros: call.connect_fee_micros,
            id: call.id,
            call_id: call.call_id.unwrap_or_default(),
            customer_id: call.customer_id,
            started_at: Some(timestamp(call.started_at)),
            duration_seconds: call.duration_seconds,
            billed_seconds: call.billed_seconds,
            cost_micros: call.cost_micros,
            caller_number: call.caller_number,
            callee_number: call.callee_number,
            received_at: Some(timestamp(call.received_at)),
            invoice_id: call.invoice_id.unwrap_or(0),
            billing_period: Some(billing_period(call.billing_period)),
            per_minute_micros: call.per_minute_micros,
            billing_increment_seconds: call.billing_increment_seconds,
        }
    }
}

/// A requested billing period; `field` names it for errors.
pub fn period(field: &str, period: pb::BillingPeriod) -> AppResult<BillingPeriod> {
    let pb::BillingPeriod { year, month } = period;
    BillingPeriod::new(field, year, month)
}

fn billing_period(period: BillingPeriod) -> pb::BillingPeriod {
    pb::BillingPeriod {
        year: period.year(),
        month: i32::try_from(period.month()).unwrap_or(0),
    }
}

impl From<InvoiceLine> for pb::InvoiceLine {
    fn from(line: InvoiceLine) -> Self {
        let kind = match line.kind {
            InvoiceLineKind::MonthlyFee => pb::InvoiceLineKind::MonthlyFee,
            InvoiceLineKind::Usage => pb::InvoiceLineKind::Usage,
            InvoiceLineKind::IncludedMinutes => pb::InvoiceLineKind::IncludedMinutes,
            InvoiceLineKind::LateUsage => pb::InvoiceLineKind::LateUsage,
            InvoiceLineKind::TopUp => pb::InvoiceLineKind::TopUp,
            InvoiceLineKind::ConnectFee => pb::InvoiceLineKind::ConnectFee,
        };
        pb::InvoiceLine {
            kind: kind.into(),
            description: line.description,
            quantity: line.quantity,
            amount_micros: line.amount_micros,
        }
    }
}

impl From<Invoice> for pb::Invoice {
    fn from(invoice: Invoice) -> Self {
        pb::Invoice {
            id: invoice.id,
            number: invoice.number,
            customer_id: invoice.customer_id,
            period: Some(billing_period(invoice.period)),
            period_start: Some(timestamp(invoice.period_start)),
            period_end: Some(timestamp(invoice.period_end)),
            issued_at: Some(timestamp(invoice.issued_at)),
            currency_code: invoice.currency_code,
            lines: invoice.lines.into_iter().map(Into::into).collect(),
            call_count: invoice.usage.call_count,
            billed_seconds: invoice.usage.billed_seconds,
            usage_micros: invoice.usage.usage_micros,
            total_micros: invoice.total_micros,
        }
    }
}

impl From<UsagePreview> for pb::UsagePreview {
    fn from(preview: UsagePreview) -> Self {
        pb::UsagePreview {
            customer_id: preview.customer_id,
            period: Some(billing_period(preview.period)),
            as_of: Some(timestamp(preview.as_of)),
            call_count: preview.usage.call_count,
            billed_seconds: preview.usage.billed_seconds,
            usage_micros: preview.usage.usage_micros,
            monthly_fee_micros: preview.monthly_fee_micros,
            total_micros: preview.total_micros,
            currency_code: preview.currency_code,
            lines: preview
                .lines
                .into_iter()
                .map(pb::InvoiceLine::from)
                .collect(),
        }
    }
}

impl From<ConsolidatedMonth> for pb::ConsolidatedMonth {
    fn from(month: ConsolidatedMonth) -> Self {
        let status = if month.invoice_number.is_some() {
            pb::ConsolidatedStatus::Issued
        } else {
            pb::ConsolidatedStatus::Open
        };
        pb::ConsolidatedMonth {
            period: Some(billing_period(month.period)),
            call_count: month.usage.call_count,
            billed_seconds: month.usage.billed_seconds,
            usage_micros: month.usage.usage_micros,
            monthly_fee_micros: month.monthly_fee_micros,
            total_micros: month.total_micros,
            currency_code: month.currency_code,
            invoice_number: month.invoice_number.unwrap_or_default(),
            status: status.into(),
        }
    }
}

impl From<crate::domain::access::Role> for pb::Role {
    fn from(role: crate::domain::access::Role) -> Self {
        use crate::domain::access::Role;
        match role {
            Role::Admin => pb::Role::Admin,
            Role::Operator => pb::Role::Operator,
            Role::Customer => pb::Role::Customer,
            Role::Switch => pb::Role::Switch,
        }
    }
}

/// The role of a request's `role` field; `None` when unset or unknown.
pub fn role(value: i32) -> Option<crate::domain::access::Role> {
    use crate::domain::access::Role;
    match pb::Role::try_from(value).ok()? {
        pb::Role::Unspecified => None,
        pb::Role::Admin => Some(Role::Admin),
        pb::Role::Operator => Some(Role::Operator),
        pb::Role::Customer => Some(Role::Customer),
        pb::Role::Switch => Some(Role::Switch),
    }
}

impl From<crate::domain::access::Account> for pb::Account {
    fn from(account: crate::domain::access::Account) -> Self {
        let crate::domain::access::Account {
            id,
            username,
            role,
            operator_id,
            customer_id,
            created_at,
            disabled_at,
        } = account;
        pb::Account {
            id,
            username,
            role: pb::Role::from(role).into(),
            operator_id: operator_id.unwrap_or(0),
            customer_id: customer_id.unwrap_or(0),
            created_at: Some(timestamp(created_at)),
            disabled_at: disabled_at.map(timestamp),
        }
    }
}

impl From<crate::domain::access::ApiKeyInfo> for pb::ApiKey {
    fn from(key: crate::domain::access::ApiKeyInfo) -> Self {
        let crate::domain::access::ApiKeyInfo {
            id,
            name,
            account_id,
            created_at,
            revoked_at,
        } = key;
        pb::ApiKey {
            id,
            name,
            account_id,
            created_at: Some(timestamp(created_at)),
            revoked_at: revoked_at.map(timestamp),
        }
    }
}
