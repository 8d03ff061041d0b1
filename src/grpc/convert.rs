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
    Call, CallRecord, Customer, NewCustomer, NewPlan, Operator, Plan, PlanKind, TimeRange,
    TopUpRequest,
};
use crate::domain::period::BillingPeriod;
use crate::domain::tariff::{
    BASE_TARIFF, DaySet, MAX_TARIFFS_PER_PLAN, MINUTES_PER_DAY, Segment, Tariff, Window,
    check_tariffs,
};
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
        let kind = plan_kind(kind)?;
        let increment = valid::billing_increment_seconds(billing_increment_seconds)?;
        if kind == PlanKind::Fixed && !tariffs.is_empty() {
            return Err(AppError::invalid(
                "tariffs",
                "a fixed plan charges no usage, so it takes no tariffs",
            ));
        }
        if tariffs.len() > MAX_TARIFFS_PER_PLAN {
            return Err(AppError::invalid(
                "tariffs",
                format!(
                    "at most {MAX_TARIFFS_PER_PLAN} per plan, got {}",
                    tariffs.len()
                ),
            ));
        }
        let tariffs = tariffs
            .into_iter()
            .enumerate()
            .map(|(index, tariff)| tariff_of(index, tariff, increment))
            .collect::<AppResult<Vec<_>>>()?;
        check_tariffs(&tariffs)?;
        let mut included_minutes_tariffs = included_minutes_tariffs;
        included_minutes_tariffs.sort_unstable();
        included_minutes_tariffs.dedup();
        if !included_minutes_tariffs.is_empty() {
            if kind != PlanKind::Postpaid || tariffs.is_empty() {
                return Err(AppError::invalid(
                    "included_minutes_tariffs",
                    "only a postpaid plan with tariffs limits its included minutes to some",
                ));
            }
            if let Some(unknown) = included_minutes_tariffs
                .iter()
                .find(|name| *name != BASE_TARIFF && !tariffs.iter().any(|t| &t.name == *name))
            {
                return Err(AppError::invalid(
                    "included_minutes_tariffs",
                    format!("{} is not a tariff of the plan", valid::shown(unknown)),
                ));
            }
        }
        Ok(NewPlan {
            tariffs,
            included_minutes_tariffs,
            name: valid::name("name", &name)?,
            kind,
            currency_code: valid::currency_code(&currency_code)?,
            monthly_fee_micros: valid::non_negative_micros(
                "monthly_fee_micros",
                monthly_fee_micros,
                valid::MAX_MONTHLY_FEE_MICROS,
            )?,
            per_minute_micros: valid::non_negative_micros(
                "per_minute_micros",
                per_minute_micros,
                valid::MAX_PER_MINUTE_MICROS,
            )?,
            billing_increment_seconds: increment,
            included_minutes: valid::included_minutes(kind, included_minutes)?,
        })
    }
}

/// A validated tariff, `index` naming it in errors (`tariffs[2].end_minute`)
/// and zero increments resolved against the plan's `plan_increment`.
fn tariff_of(index: usize, tariff: pb::Tariff, plan_increment: i32) -> AppResult<Tariff> {
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
    let field = |name: &str| format!("tariffs[{index}].{name}");
    let chars = name.chars().count();
    if chars == 0 || chars > 64 || name.chars().any(char::is_control) {
        return Err(AppError::invalid(
            field("name"),
            "must have 1 to 64 characters and no control characters",
        ));
    }
    let prefix = destination_prefix
        .strip_prefix('+')
        .unwrap_or(&destination_prefix);
    if prefix.len() > 15 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return Err(AppError::invalid(
            field("destination_prefix"),
            format!(
                "must be up to 15 digits (a leading + is allowed), got {}",
                valid::shown(&destination_prefix)
            ),
        ));
    }
    let mut day_numbers = Vec::with_capacity(days.len());
    for day in days {
        match DayOfWeek::try_from(day) {
            Ok(DayOfWeek::Unspecified) | Err(_) => {
                return Err(AppError::invalid(
                    field("days"),
                    format!("{day} is not a day of the week (MONDAY to SUNDAY)"),
                ));
            }
            Ok(day) => day_numbers.push(u8::try_from(day as i32 - 1).unwrap_or(0)),
        }
    }
    let minutes = i32::from(MINUTES_PER_DAY);
    let window = match (start_minute, end_minute) {
        (0, 0) => None,
        (start, _) if !(0..minutes).contains(&start) => {
            return Err(AppError::invalid(
                field("start_minute"),
                format!("must be 0 to {}, got {start}", minutes - 1),
            ));
        }
        (_, end) if !(0..=minutes).contains(&end) => {
            return Err(AppError::invalid(
                field("end_minute"),
                format!("must be 0 to {minutes}, got {end}"),
            ));
        }
        (start, end) if start == end => {
            return Err(AppError::invalid(
                field("end_minute"),
                "must differ from start_minute (both 0 means no window)",
            ));
        }
        (start, end) => Some(Window {
            start: u16::try_from(start).unwrap_or(0),
            end: u16::try_from(end).unwrap_or(0),
        }),
    };
    let increment = |name: &str, value: i32, default: i32| match value {
        0 => Ok(i64::from(default)),
        1..=3600 => Ok(i64::from(value)),
        _ => Err(AppError::invalid(
            field(name),
            format!("must be 0 to 3600 seconds, got {value}"),
        )),
    };
    let billing = increment(
        "billing_increment_seconds",
        billing_increment_seconds,
        plan_increment,
    )?;
    let first = increment(
        "first_increment_seconds",
        first_increment_seconds,
        i32::try_from(billing).unwrap_or(plan_increment),
    )?;
    Ok(Tariff {
        name,
        destination_prefix: prefix.to_owned(),
        days: DaySet::of(day_numbers),
        window,
        per_minute_micros: valid::non_negative_micros(
            &field("per_minute_micros"),
            per_minute_micros,
            valid::MAX_PER_MINUTE_MICROS,
        )?,
        connect_fee_micros: valid::non_negative_micros(
            &field("connect_fee_micros"),
            connect_fee_micros,
            valid::MAX_MONTHLY_FEE_MICROS,
        )?,
        first_increment_seconds: first,
        billing_increment_seconds: billing,
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
        })
    }
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
            customer_id: valid::id("customer_id", customer_id)?,
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
        pb::Operator {
            id: operator.id,
            name: operator.name,
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
        } = account;
        pb::Account {
            id,
            username,
            role: pb::Role::from(role).into(),
            operator_id: operator_id.unwrap_or(0),
            customer_id: customer_id.unwrap_or(0),
            created_at: Some(timestamp(created_at)),
        }
    }
}
