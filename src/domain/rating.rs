//! Rating: what a call costs under a plan. The only place call prices are
//! computed; integer micros throughout.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use super::model::Rating;
use super::money::cost_of;
use super::plan::{Plan, PlanKind};
use super::tariff::PriceList;

/// Rates a call to `callee` of `duration_seconds` (validated: 1..=86 400)
/// starting at `start` under `plan`, reading tariff windows in `tz`. A plan
/// without tariffs (or a fixed plan) takes the flat path of [`rate`].
pub fn rate_call(
    plan: &Plan,
    callee: &str,
    start: DateTime<Utc>,
    duration_seconds: i64,
    tz: Tz,
) -> Rating {
    if plan.tariffs.is_empty() || plan.kind == PlanKind::Fixed {
        return rate(duration_seconds, plan);
    }
    let increment = i64::from(plan.billing_increment_seconds.max(1));
    let prices = PriceList::new(&plan.tariffs, plan.per_minute_micros, increment);
    let rated = prices.rate(callee, start, duration_seconds, tz);
    Rating {
        billed_seconds: rated.billed_seconds,
        cost_micros: rated.cost_micros,
        per_minute_micros: rated.first_per_minute_micros,
        billing_increment_seconds: i32::try_from(rated.first_billing_increment_seconds)
            .unwrap_or(i32::MAX),
        connect_fee_micros: rated.connect_fee_micros,
        segments: rated.segments,
    }
}

/// The longest duration (in seconds, at most 86 400) of a call to `callee`
/// starting at `start` whose cost under `plan`, connect fee included, is at
/// most `budget_micros`; 0 when not even the shortest call is covered. Cost
/// never falls as a call gets longer, so a binary search finds it.
pub fn longest_affordable_seconds(
    plan: &Plan,
    callee: &str,
    start: DateTime<Utc>,
    tz: Tz,
    budget_micros: i64,
) -> i64 {
    const DAY: i64 = 86_400;
    let cost = |seconds: i64| rate_call(plan, callee, start, seconds, tz).cost_micros;
    if cost(1) > budget_micros {
        return 0;
    }
    if cost(DAY) <= budget_micros {
        return DAY;
    }
    // cost(low) fits, cost(high) does not.
    let (mut low, mut high) = (1, DAY);
    while high - low > 1 {
        let middle = low + (high - low) / 2;
        if cost(middle) <= budget_micros {
            low = middle;
        } else {
            high = middle;
        }
    }
    low
}

/// Rates a call of `duration_seconds` (validated: 1..=86 400) under `plan`.
///
/// `billed_seconds` is the duration rounded up to whole billing increments;
/// the cost is `billed_seconds * per_minute_micros / 60`, rounded half up,
/// and 0 on fixed plans.
pub fn rate(duration_seconds: i64, plan: &Plan) -> Rating {
    let increment = i64::from(plan.billing_increment_seconds.max(1));
    let billed_seconds = (duration_seconds + increment - 1) / increment * increment;
    let per_minute_micros = match plan.kind {
        PlanKind::Fixed => 0,
        PlanKind::Postpaid | PlanKind::Prepaid => plan.per_minute_micros,
    };
    Rating {
        billed_seconds,
        cost_micros: cost_of(billed_seconds, per_minute_micros),
        per_minute_micros,
        billing_increment_seconds: plan.billing_increment_seconds,
        connect_fee_micros: 0,
        segments: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;

    fn plan(kind: PlanKind, per_minute_micros: i64, increment: i32) -> Plan {
        Plan {
            id: 1,
            name: "test".into(),
            kind,
            currency_code: "USD".into(),
            monthly_fee_micros: 0,
            per_minute_micros,
            billing_increment_seconds: increment,
            included_minutes: 0,
            created_at: DateTime::UNIX_EPOCH,
            tariffs: Vec::new(),
            included_minutes_tariffs: Vec::new(),
        }
    }

    #[test]
    fn per_second_billing_charges_exact_seconds() {
        let r = rate(61, &plan(PlanKind::Postpaid, 60_000, 1));
        assert_eq!(r.billed_seconds, 61);
        assert_eq!(r.cost_micros, 61_000);
    }

    #[test]
    fn six_second_increments_round_up_each_started_block() {
        let p = plan(PlanKind::Postpaid, 100_000, 6);
        assert_eq!(rate(1, &p).billed_seconds, 6);
        assert_eq!(rate(6, &p).billed_seconds, 6);
        assert_eq!(rate(7, &p).billed_seconds, 12);
        assert_eq!(rate(7, &p).cost_micros, 20_000);
    }

    #[test]
    fn minute_increments_bill_every_started_minute_whole() {
        let p = plan(PlanKind::Prepaid, 250_000, 60);
        assert_eq!(rate(1, &p).billed_seconds, 60);
        assert_eq!(rate(60, &p).cost_micros, 250_000);
        assert_eq!(rate(61, &p).billed_seconds, 120);
        assert_eq!(rate(61, &p).cost_micros, 500_000);
    }

    #[test]
    fn fixed_plans_rate_calls_at_zero() {
        let r = rate(600, &plan(PlanKind::Fixed, 1_000_000, 60));
        assert_eq!(r.billed_seconds, 600);
        assert_eq!(r.cost_micros, 0);
        assert_eq!(r.per_minute_micros, 0);
    }

    #[test]
    fn the_longest_affordable_call_ends_at_the_last_paid_increment() {
        let start = DateTime::UNIX_EPOCH;
        let minute = plan(PlanKind::Prepaid, 60_000, 60);
        // 150,000 pays two whole minutes: up to 120 s.
        assert_eq!(
            longest_affordable_seconds(&minute, "", start, Tz::UTC, 150_000),
            120
        );
        assert_eq!(
            longest_affordable_seconds(&minute, "", start, Tz::UTC, 59_999),
            0
        );
        assert_eq!(
            longest_affordable_seconds(&minute, "", start, Tz::UTC, i64::MAX),
            86_400
        );
        let second = plan(PlanKind::Prepaid, 60_000, 1);
        assert_eq!(
            longest_affordable_seconds(&second, "", start, Tz::UTC, 1_500),
            1
        );
    }
}
