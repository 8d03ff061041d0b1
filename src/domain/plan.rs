//! Plans: their kinds, the rules a new plan must keep ([`NewPlan::new`],
//! the only way to make one), and the stored, immutable plan.

use chrono::{DateTime, Utc};

use super::tariff::{BASE_TARIFF, MAX_TARIFFS_PER_PLAN, Tariff, TariffTerms, check_tariffs};
use super::validation as valid;
use crate::error::{AppError, AppResult};

/// How a plan charges its customers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanKind {
    /// Monthly fee plus rated usage, billed in arrears.
    Postpaid,
    /// Usage debited from a balance paid in advance.
    Prepaid,
    /// A fixed monthly amount; calls cost nothing.
    Fixed,
}

impl PlanKind {
    /// The stored name of the kind.
    pub fn as_str(self) -> &'static str {
        match self {
            PlanKind::Postpaid => "postpaid",
            PlanKind::Prepaid => "prepaid",
            PlanKind::Fixed => "fixed",
        }
    }

    /// Parses a stored name.
    pub fn parse(stored: &str) -> Option<Self> {
        match stored {
            "postpaid" => Some(PlanKind::Postpaid),
            "prepaid" => Some(PlanKind::Prepaid),
            "fixed" => Some(PlanKind::Fixed),
            _ => None,
        }
    }
}

/// A plan as a client describes it, before any rule is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanTerms {
    pub name: String,
    pub kind: PlanKind,
    /// ISO 4217; empty means `USD`.
    pub currency_code: String,
    pub monthly_fee_micros: i64,
    pub per_minute_micros: i64,
    /// 0 means the default, 60.
    pub billing_increment_seconds: i32,
    pub included_minutes: i64,
    pub tariffs: Vec<TariffTerms>,
    /// The tariffs the included minutes cover; empty: every tariff.
    pub included_minutes_tariffs: Vec<String>,
}

/// A plan that keeps every plan rule, ready to be stored. Its only maker is
/// [`NewPlan::new`], so no caller (the API, `demo-data`, a test) can store
/// a plan that breaks one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPlan {
    name: String,
    kind: PlanKind,
    currency_code: String,
    monthly_fee_micros: i64,
    per_minute_micros: i64,
    billing_increment_seconds: i32,
    included_minutes: i64,
    tariffs: Vec<Tariff>,
    included_minutes_tariffs: Vec<String>,
}

impl NewPlan {
    /// Checks `terms` against the plan rules, each error naming its field:
    /// a printable name of at most 200 characters; an ISO 4217 currency;
    /// fees and rates within their bounds; an increment of 1 to 3,600 s;
    /// included minutes (at most 1,000,000) only on postpaid plans; tariffs
    /// only on plans that charge usage (not fixed), at most
    /// [`MAX_TARIFFS_PER_PLAN`], each valid ([`Tariff::new`]) and leaving no
    /// choice open (`tariff::check_tariffs`); included-minutes tariffs only
    /// on postpaid plans with tariffs, each a tariff of the plan or `base`.
    pub fn new(terms: PlanTerms) -> AppResult<NewPlan> {
        let PlanTerms {
            name,
            kind,
            currency_code,
            monthly_fee_micros,
            per_minute_micros,
            billing_increment_seconds,
            included_minutes,
            tariffs,
            included_minutes_tariffs,
        } = terms;
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
            .map(|(index, tariff)| Tariff::new(index, tariff, increment))
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
            included_minutes: included_minutes_of(kind, included_minutes)?,
            tariffs,
            included_minutes_tariffs,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn kind(&self) -> PlanKind {
        self.kind
    }

    pub fn currency_code(&self) -> &str {
        &self.currency_code
    }

    pub fn monthly_fee_micros(&self) -> i64 {
        self.monthly_fee_micros
    }

    pub fn per_minute_micros(&self) -> i64 {
        self.per_minute_micros
    }

    pub fn billing_increment_seconds(&self) -> i32 {
        self.billing_increment_seconds
    }

    pub fn included_minutes(&self) -> i64 {
        self.included_minutes
    }

    /// Increments resolved; no choice left open.
    pub fn tariffs(&self) -> &[Tariff] {
        &self.tariffs
    }

    /// Sorted, distinct, each a tariff of the plan or `base`.
    pub fn included_minutes_tariffs(&self) -> &[String] {
        &self.included_minutes_tariffs
    }
}

/// The most minutes a plan may include per month.
const MAX_INCLUDED_MINUTES: i64 = 1_000_000;

/// Included minutes: zero or more, and only on postpaid plans.
fn included_minutes_of(kind: PlanKind, value: i64) -> AppResult<i64> {
    if !(0..=MAX_INCLUDED_MINUTES).contains(&value) {
        return Err(AppError::invalid(
            "included_minutes",
            format!("must be between 0 and {MAX_INCLUDED_MINUTES}, got {value}"),
        ));
    }
    if value > 0 && kind != PlanKind::Postpaid {
        return Err(AppError::invalid(
            "included_minutes",
            "only postpaid plans include minutes",
        ));
    }
    Ok(value)
}

/// A stored, immutable billing plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub id: i64,
    pub name: String,
    pub kind: PlanKind,
    pub currency_code: String,
    pub monthly_fee_micros: i64,
    pub per_minute_micros: i64,
    pub billing_increment_seconds: i32,
    pub included_minutes: i64,
    pub created_at: DateTime<Utc>,
    /// Prices by destination and time; empty: the plan's rate for every call.
    pub tariffs: Vec<Tariff>,
    /// The tariffs the included minutes cover; empty: every tariff.
    pub included_minutes_tariffs: Vec<String>,
}

impl Plan {
    /// Whether a customer of this plan may be topped up: prepaid only.
    pub fn check_top_up(&self, customer_id: i64) -> AppResult<()> {
        if self.kind == PlanKind::Prepaid {
            Ok(())
        } else {
            Err(AppError::FailedPrecondition(format!(
                "customer {customer_id} is on a {} plan; only prepaid customers can top up",
                self.kind.as_str()
            )))
        }
    }

    /// Whether a customer of this plan may have a low-balance threshold:
    /// prepaid only (no other plan has a balance that falls).
    pub fn check_low_balance_threshold(&self, threshold: Option<i64>) -> AppResult<()> {
        if threshold.is_none() || self.kind == PlanKind::Prepaid {
            Ok(())
        } else {
            Err(AppError::FailedPrecondition(format!(
                "low_balance_threshold_micros: plan {} is {}; only prepaid customers have \
                 low-balance alerts",
                self.id,
                self.kind.as_str()
            )))
        }
    }

    /// Billed seconds of each month's own calls the plan includes: its
    /// included minutes on a postpaid plan, none on others.
    pub fn included_seconds(&self) -> i64 {
        match self.kind {
            PlanKind::Postpaid => self.included_minutes.saturating_mul(60),
            PlanKind::Prepaid | PlanKind::Fixed => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms(kind: PlanKind) -> PlanTerms {
        PlanTerms {
            name: "Plan".into(),
            kind,
            currency_code: String::new(),
            monthly_fee_micros: 1_000_000,
            per_minute_micros: 60_000,
            billing_increment_seconds: 0,
            included_minutes: 0,
            tariffs: Vec::new(),
            included_minutes_tariffs: Vec::new(),
        }
    }

    fn tariff(name: &str) -> TariffTerms {
        TariffTerms {
            name: name.into(),
            destination_prefix: "+44".into(),
            per_minute_micros: 100_000,
            ..TariffTerms::default()
        }
    }

    fn field_of(result: AppResult<NewPlan>) -> String {
        match result {
            Err(AppError::InvalidArgument { field, .. }) => field,
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_resolved_and_values_kept() {
        let plan = NewPlan::new(terms(PlanKind::Postpaid)).unwrap();
        assert_eq!(plan.currency_code(), "USD");
        assert_eq!(plan.billing_increment_seconds(), 60);
        assert_eq!(plan.per_minute_micros(), 60_000);
    }

    #[test]
    fn included_minutes_are_for_postpaid_plans_only() {
        for kind in [PlanKind::Prepaid, PlanKind::Fixed] {
            let mut t = terms(kind);
            t.included_minutes = 10;
            assert_eq!(field_of(NewPlan::new(t)), "included_minutes");
        }
        let mut t = terms(PlanKind::Postpaid);
        t.included_minutes = MAX_INCLUDED_MINUTES + 1;
        assert_eq!(field_of(NewPlan::new(t)), "included_minutes");
    }

    #[test]
    fn a_fixed_plan_takes_no_tariffs() {
        let mut t = terms(PlanKind::Fixed);
        t.tariffs = vec![tariff("uk")];
        assert_eq!(field_of(NewPlan::new(t)), "tariffs");
    }

    #[test]
    fn included_minutes_tariffs_need_a_postpaid_plan_with_those_tariffs() {
        let mut t = terms(PlanKind::Postpaid);
        t.included_minutes_tariffs = vec!["uk".into()];
        assert_eq!(
            field_of(NewPlan::new(t.clone())),
            "included_minutes_tariffs"
        );
        t.tariffs = vec![tariff("uk")];
        t.included_minutes_tariffs = vec!["us".into()];
        assert_eq!(
            field_of(NewPlan::new(t.clone())),
            "included_minutes_tariffs"
        );
        t.included_minutes_tariffs = vec!["uk".into(), "base".into(), "uk".into()];
        let plan = NewPlan::new(t.clone()).unwrap();
        assert_eq!(plan.included_minutes_tariffs(), ["base", "uk"]);
        t.kind = PlanKind::Prepaid;
        assert_eq!(field_of(NewPlan::new(t)), "included_minutes_tariffs");
    }

    #[test]
    fn a_tariffs_field_errors_name_its_index() {
        let mut t = terms(PlanKind::Postpaid);
        let mut bad = tariff("uk");
        bad.destination_prefix = "+44x".into();
        t.tariffs = vec![tariff("us"), bad];
        assert_eq!(field_of(NewPlan::new(t)), "tariffs[1].destination_prefix");
    }
}
