//! The billing domain's types: operators, customers and calls (plans are
//! in `plan.rs`).

use super::numbers::NumberAssignment;
use super::period::BillingPeriod;
use super::plan::PlanKind;
use super::tariff::{BASE_TARIFF, Segment};
use chrono::{DateTime, Utc};

/// An operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operator {
    pub id: i64,
    pub name: String,
    /// What its customers' invoices carry as their issuer.
    pub issuer: Issuer,
}

/// The issuer details an operator's invoices carry; each empty until set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Issuer {
    pub legal_name: String,
    /// Lines separated by `\n`.
    pub address: String,
    pub tax_id: String,
    pub support_email: String,
}

/// The language a customer is written to in: its invoices and emails.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Language {
    #[default]
    En,
    De,
}

impl Language {
    /// The stored and shown code.
    pub fn code(self) -> &'static str {
        match self {
            Language::En => "en",
            Language::De => "de",
        }
    }

    /// The language of `code`, if supported.
    pub fn parse(code: &str) -> Option<Language> {
        match code {
            "en" => Some(Language::En),
            "de" => Some(Language::De),
            _ => None,
        }
    }
}

/// A validated change of a customer's contact fields: `None` leaves a
/// field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContactUpdate {
    /// `Some(None)` removes the email address.
    pub email: Option<Option<String>>,
    pub language: Option<Language>,
    /// `Some(None)` turns low-balance alerts off.
    pub low_balance_threshold_micros: Option<Option<i64>>,
}

/// A validated change of an operator's issuer details: `None` leaves a
/// field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IssuerUpdate {
    pub legal_name: Option<String>,
    pub address: Option<String>,
    pub tax_id: Option<String>,
    pub support_email: Option<String>,
}

/// A validated request to create a customer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCustomer {
    pub name: String,
    pub phone_number: String,
    pub plan_id: i64,
    /// Distinct operator ids, ascending.
    pub operator_ids: Vec<i64>,
    pub email: Option<String>,
    pub language: Language,
    pub low_balance_threshold_micros: Option<i64>,
}

/// A stored customer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Customer {
    pub id: i64,
    pub name: String,
    pub phone_number: String,
    pub plan_id: i64,
    /// Linked operators, ascending.
    pub operator_ids: Vec<i64>,
    pub balance_micros: i64,
    pub created_at: DateTime<Utc>,
    /// Where its invoices are sent, if anywhere.
    pub email: Option<String>,
    pub language: Language,
    /// Prepaid: the balance below which it is alerted, if at all.
    pub low_balance_threshold_micros: Option<i64>,
    /// Every number it holds or held, oldest first.
    pub numbers: Vec<NumberAssignment>,
}

/// A validated prepaid credit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopUpRequest {
    pub customer_id: i64,
    pub amount_micros: i64,
    pub request_id: String,
}

/// What a top-up did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopUpOutcome {
    pub balance_micros: i64,
    /// The request id had been applied before; nothing was credited.
    pub duplicate: bool,
}

/// A validated call record as a switch reported it, before rating.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRecord {
    /// The customer the record names; `None`: the holder of
    /// `caller_number` when the call started.
    pub customer_id: Option<i64>,
    pub duration_seconds: i64,
    /// When the call started; `None` means "now minus the duration".
    pub started_at: Option<DateTime<Utc>>,
    pub call_id: Option<String>,
    pub caller_number: String,
    pub callee_number: String,
}

impl CallRecord {
    /// Whether a retry of this record describes `stored`: same customer,
    /// duration and numbers, and the same start when the record gives one.
    pub fn describes(&self, stored: &Call) -> bool {
        self.customer_id.is_none_or(|id| id == stored.customer_id)
            && self.duration_seconds == stored.duration_seconds
            && self.caller_number == stored.caller_number
            && self.callee_number == stored.callee_number
            && self.started_at.is_none_or(|at| at == stored.started_at)
    }
}

/// The price of one call under the plan in force when it was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rating {
    pub billed_seconds: i64,
    /// Connect fee plus the segments' costs.
    pub cost_micros: i64,
    /// The per-minute rate of the tariff the call started in (0 on fixed
    /// plans).
    pub per_minute_micros: i64,
    /// The billing increment of the tariff the call started in.
    pub billing_increment_seconds: i32,
    pub connect_fee_micros: i64,
    /// The billed time cut where the tariff changed; empty when the plan
    /// has no tariffs (one piece at the plan's rate, see [`Call::segments`]).
    pub segments: Vec<Segment>,
}

/// A rated call ready to be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCall {
    pub record: CallRecord,
    /// The customer charged: the one the record names, or the holder of
    /// its calling number.
    pub customer_id: i64,
    /// When the customer was found through the calling number: the
    /// version of the numbers that said so, checked when the call is
    /// stored.
    pub number_version: Option<i64>,
    pub started_at: DateTime<Utc>,
    /// The month the call started in (billing time zone); its billing
    /// month is decided from it when it is stored
    /// (`invoice::billing_period_of`).
    pub started_in: BillingPeriod,
    pub rating: Rating,
    pub received_at: DateTime<Utc>,
    /// The customer's plan kind: prepaid calls debit the balance.
    pub plan_kind: PlanKind,
}

impl NewCall {
    /// What storing this call takes from the customer's balance: its cost
    /// on a prepaid plan (a call that happened is never refused, so the
    /// balance may go negative), nothing on other plans.
    pub fn balance_debit_micros(&self) -> i64 {
        match self.plan_kind {
            PlanKind::Prepaid => self.rating.cost_micros,
            PlanKind::Postpaid | PlanKind::Fixed => 0,
        }
    }
}

/// The answer to a switch asking whether a call may connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    pub allowed: bool,
    /// 0 when not allowed; at most 86 400.
    pub max_duration_seconds: i64,
    /// Why not, or what limits the call; empty when nothing does.
    pub reason: String,
}

/// A stored call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub id: i64,
    pub call_id: Option<String>,
    pub customer_id: i64,
    pub started_at: DateTime<Utc>,
    pub duration_seconds: i64,
    pub billed_seconds: i64,
    pub cost_micros: i64,
    pub per_minute_micros: i64,
    pub billing_increment_seconds: i32,
    pub caller_number: String,
    pub callee_number: String,
    pub received_at: DateTime<Utc>,
    /// The month whose invoice bills the call, fixed when it was stored.
    pub billing_period: BillingPeriod,
    /// That invoice, once issued.
    pub invoice_id: Option<i64>,
    pub connect_fee_micros: i64,
    /// Stored segments; empty for a call of a plan without tariffs.
    pub stored_segments: Vec<Segment>,
}

impl Call {
    /// The call's priced pieces: those stored, or for a call of a plan
    /// without tariffs its whole billed time at the plan's rate.
    pub fn segments(&self) -> Vec<Segment> {
        if !self.stored_segments.is_empty() {
            return self.stored_segments.clone();
        }
        vec![Segment {
            tariff_name: BASE_TARIFF.to_owned(),
            start: self.started_at,
            billed_seconds: self.billed_seconds,
            cost_micros: self.cost_micros - self.connect_fee_micros,
        }]
    }
}

/// What storing a call did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredCall {
    /// Newly stored (and debited, on a prepaid plan).
    Inserted(Call),
    /// Its `call_id` was stored before with the same content; nothing changed.
    Duplicate(Call),
}

/// A half-open time range `[start, end)`; either side may be open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimeRange {
    pub start: Option<DateTime<Utc>>,
    pub end: Option<DateTime<Utc>>,
}
