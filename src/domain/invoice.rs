//! Every invoice rule, pure: the month a call or top-up is billed in, and
//! the composition of a month's invoice from the rows of that billing month
//! (lines and totals; every total is the sum of its parts). Invoices,
//! previews and consolidated months are all made here, the same way.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::money::cost_of;
use super::period::BillingPeriod;
use super::plan::{Plan, PlanKind};
use super::tariff::BASE_TARIFF;
use crate::error::{AppError, AppResult};

/// What an invoice line charges or credits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvoiceLineKind {
    MonthlyFee,
    Usage,
    IncludedMinutes,
    LateUsage,
    TopUp,
    ConnectFee,
}

impl InvoiceLineKind {
    /// The stored name of the kind.
    pub fn as_str(self) -> &'static str {
        match self {
            InvoiceLineKind::MonthlyFee => "monthly_fee",
            InvoiceLineKind::Usage => "usage",
            InvoiceLineKind::IncludedMinutes => "included_minutes",
            InvoiceLineKind::LateUsage => "late_usage",
            InvoiceLineKind::TopUp => "top_up",
            InvoiceLineKind::ConnectFee => "connect_fee",
        }
    }

    /// Parses a stored name.
    pub fn parse(stored: &str) -> Option<Self> {
        [
            InvoiceLineKind::MonthlyFee,
            InvoiceLineKind::Usage,
            InvoiceLineKind::IncludedMinutes,
            InvoiceLineKind::LateUsage,
            InvoiceLineKind::TopUp,
            InvoiceLineKind::ConnectFee,
        ]
        .into_iter()
        .find(|kind| kind.as_str() == stored)
    }
}

/// One line of an invoice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvoiceLine {
    pub kind: InvoiceLineKind,
    /// The line in English, as the API shows it.
    pub description: String,
    pub quantity: i64,
    pub amount_micros: i64,
    /// Calls the line bills (usage, late usage, connect fees); else 0.
    pub call_count: i64,
    /// What the line is about, for documents written in other languages:
    /// the plan's name (monthly fee), the tariff (usage by tariff), the
    /// month `YYYY-MM` (late usage), the instant in RFC 3339 (top-up).
    pub subject: String,
}

/// Calls summed up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageTotals {
    pub call_count: i64,
    pub billed_seconds: i64,
    pub usage_micros: i64,
}

/// The months an issue of `requested` covers, oldest first: every month
/// after the customer's `latest` invoiced month (or from its `first` month)
/// up to the requested one, so months are billed in order. None when the
/// latest invoice reaches the requested month (it exists already).
pub fn months_to_issue(
    first: BillingPeriod,
    requested: BillingPeriod,
    latest: Option<BillingPeriod>,
) -> Vec<BillingPeriod> {
    let from = latest.map_or(first, BillingPeriod::next);
    if from > requested {
        return Vec::new();
    }
    let mut months = vec![from];
    while let Some(&last) = months.last()
        && last < requested
    {
        months.push(last.next());
    }
    months
}

/// The month a call that started in `started` (or a top-up made then) is
/// billed in, decided once, when it is stored: that month, unless the
/// customer's invoices already cover it (`invoiced_through`, the last
/// invoiced month), in which case the first month not invoiced yet: late
/// usage.
pub fn billing_period_of(
    started: BillingPeriod,
    invoiced_through: Option<BillingPeriod>,
) -> BillingPeriod {
    match invoiced_through {
        Some(through) if started <= through => through.next(),
        _ => started,
    }
}

/// Refuses a call that started before its customer's first month (the
/// month it was created in): no invoice will ever cover that month. A call
/// earlier in the first month is that month's usage.
pub fn check_call_within_customer_life(
    customer_id: i64,
    started: BillingPeriod,
    first: BillingPeriod,
) -> AppResult<()> {
    if started < first {
        return Err(AppError::FailedPrecondition(format!(
            "started_at: the call started in {started}, before customer {customer_id}'s first month {first} (the month it was created in)"
        )));
    }
    Ok(())
}

/// What of a month's own calls an invoice needs, by plan: their sums alone
/// (no included minutes, no tariffs: the database sums them), or each
/// call, with its stored segments when the plan has tariffs. Calls of
/// earlier months billed in the month (late usage) always come one by
/// one, as they are grouped by the month they started in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UsageDetail {
    Summed,
    EachCall { segments: bool },
}

impl UsageDetail {
    /// What `plan`'s invoices need.
    pub fn of(plan: &Plan) -> UsageDetail {
        if plan.included_seconds() <= 0 && plan.tariffs.is_empty() {
            UsageDetail::Summed
        } else {
            UsageDetail::EachCall {
                segments: !plan.tariffs.is_empty(),
            }
        }
    }
}

/// The stored rows of one customer's billing month, as storage reads them
/// for the [`UsageDetail`] asked: every row whose billing month it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MonthRows {
    /// The sums of the calls that started in the month (`Summed` only).
    pub own_sums: OwnCallSums,
    /// `Summed`: the calls that started before the month; `EachCall`:
    /// every call of the billing month, with segments when asked.
    pub calls: Vec<BilledCall>,
    /// `(id, top-up)` of every top-up of the billing month.
    pub top_ups: Vec<(i64, TopUpEntry)>,
}

/// What the invoice of `period` bills, from the rows of its billing month
/// read for `detail`: the one way invoices, previews and consolidated
/// months see a month. `start` is the month's first instant; `month_of`
/// names the month a late call started in; the plan's `allowance` of
/// billed seconds falls on `basis`.
pub fn month_usage(
    period: BillingPeriod,
    start: DateTime<Utc>,
    month_of: impl Fn(DateTime<Utc>) -> BillingPeriod,
    detail: UsageDetail,
    rows: MonthRows,
    allowance: i64,
    basis: &IncludedBasis,
) -> AppResult<MonthUsage> {
    match detail {
        UsageDetail::Summed => {
            usage_from_sums(period, month_of, rows.own_sums, rows.calls, rows.top_ups)
        }
        UsageDetail::EachCall { .. } => usage_from_calls(
            period,
            start,
            month_of,
            rows.calls,
            rows.top_ups,
            allowance,
            basis,
        ),
    }
}

/// Late calls billed by the invoice of `period`, totalled per month they
/// started in, oldest first. Each call is `(month, billed_seconds,
/// cost_micros)`. A total that overflows is `FAILED_PRECONDITION`.
pub fn late_usage_by_month(
    period: BillingPeriod,
    calls: impl IntoIterator<Item = (BillingPeriod, i64, i64)>,
) -> AppResult<Vec<(BillingPeriod, UsageTotals)>> {
    let mut late: BTreeMap<BillingPeriod, UsageTotals> = BTreeMap::new();
    for (month, billed_seconds, usage_micros) in calls {
        let totals = late.entry(month).or_default();
        *totals = totals
            .checked_plus(UsageTotals {
                call_count: 1,
                billed_seconds,
                usage_micros,
            })
            .ok_or_else(|| {
                AppError::FailedPrecondition(format!(
                    "the invoice for {period} cannot be issued: the late usage of {month} exceeds the largest representable sum"
                ))
            })?;
    }
    Ok(late.into_iter().collect())
}

impl UsageTotals {
    /// The sum of two totals, or `None` if a figure overflows.
    pub fn checked_plus(self, other: UsageTotals) -> Option<UsageTotals> {
        Some(UsageTotals {
            call_count: self.call_count.checked_add(other.call_count)?,
            billed_seconds: self.billed_seconds.checked_add(other.billed_seconds)?,
            usage_micros: self.usage_micros.checked_add(other.usage_micros)?,
        })
    }
}

/// A prepaid credit as it appears on a statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopUpEntry {
    pub created_at: DateTime<Utc>,
    pub amount_micros: i64,
}

/// The one call of a month that crosses the end of the included minutes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StraddlingCall {
    pub billed_seconds: i64,
    pub cost_micros: i64,
    /// The rate the call was rated at.
    pub per_minute_micros: i64,
}

/// How a month's own calls fall against the plan's included minutes, taken
/// in the order the calls started (then by id): the calls wholly inside the
/// allowance, and the call that crosses its end, if any.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IncludedUsage {
    pub whole: UsageTotals,
    pub straddling: Option<StraddlingCall>,
}

impl IncludedUsage {
    /// Every call of `current` lies inside the allowance.
    pub fn all(current: UsageTotals) -> Self {
        IncludedUsage {
            whole: current,
            straddling: None,
        }
    }
}

/// What a plan's included minutes count, in the order calls started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum IncludedBasis {
    /// Whole calls at their stored cost: plans without tariffs.
    #[default]
    Calls,
    /// The stored segments of the calls, of every tariff or only of those
    /// named in `only`; connect fees are never included. A segment split
    /// by the allowance is priced at its tariff's rate from `rates` (the
    /// plan's own rate as `base`).
    Segments {
        rates: Vec<(String, i64)>,
        only: Vec<String>,
    },
}

impl IncludedBasis {
    /// The basis of `plan`'s included minutes.
    pub fn of(plan: &Plan) -> IncludedBasis {
        if plan.tariffs.is_empty() {
            return IncludedBasis::Calls;
        }
        let rates = plan
            .tariffs
            .iter()
            .map(|t| (t.name.clone(), t.per_minute_micros))
            .chain([(BASE_TARIFF.to_owned(), plan.per_minute_micros)])
            .collect();
        IncludedBasis::Segments {
            rates,
            only: plan.included_minutes_tariffs.clone(),
        }
    }
}

/// The included-minutes credit: `(billed seconds credited, micros)`.
///
/// The credit is the sum of the included calls' own stored costs, so usage
/// that lies wholly inside the allowance nets to exactly zero. Only the call
/// that crosses the allowance is split: its seconds inside the allowance are
/// priced once, at its own rate, rounded half up, and never above its cost.
pub fn included_credit(allowance_seconds: i64, included: &IncludedUsage) -> (i64, i64) {
    let whole = included.whole;
    match included.straddling {
        Some(call) if whole.billed_seconds < allowance_seconds => {
            let seconds = (allowance_seconds - whole.billed_seconds).min(call.billed_seconds);
            let cost = cost_of(seconds, call.per_minute_micros).min(call.cost_micros);
            (
                whole.billed_seconds.saturating_add(seconds),
                whole.usage_micros.saturating_add(cost),
            )
        }
        _ => (whole.billed_seconds, whole.usage_micros),
    }
}

/// Everything an invoice bills: the period's own calls (and how they fall
/// against the included minutes), calls of earlier months that were not
/// invoiced yet (by month, oldest first), and top-ups.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MonthUsage {
    pub current: UsageTotals,
    pub included: IncludedUsage,
    pub late: Vec<(BillingPeriod, UsageTotals)>,
    pub top_ups: Vec<TopUpEntry>,
    /// How `current` splits by tariff; empty when no call of the month was
    /// rated against tariffs.
    pub breakdown: UsageBreakdown,
}

/// A call as its invoice bills it, with its stored segments (none for a
/// call of a plan without tariffs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BilledCall {
    pub id: i64,
    pub started_at: DateTime<Utc>,
    pub billed_seconds: i64,
    pub cost_micros: i64,
    pub per_minute_micros: i64,
    pub connect_fee_micros: i64,
    /// In position order.
    pub segments: Vec<BilledSegment>,
}

/// One stored rated segment of a billed call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BilledSegment {
    pub tariff_name: String,
    pub billed_seconds: i64,
    pub cost_micros: i64,
}

/// What the invoice of `period` bills, from the calls and top-ups of its
/// billing month: the month's own calls (started at or after `start`, the
/// month's first instant) summed, split by tariff and set against an
/// allowance of `allowance` billed seconds on `basis`, taken in start order
/// (then id); earlier calls as late usage per month (`month_of` names the
/// month a call started in); the top-ups in the order they were made.
///
/// A sum that overflows is `FAILED_PRECONDITION`.
pub fn usage_from_calls(
    period: BillingPeriod,
    start: DateTime<Utc>,
    month_of: impl Fn(DateTime<Utc>) -> BillingPeriod,
    mut calls: Vec<BilledCall>,
    top_ups: Vec<(i64, TopUpEntry)>,
    allowance: i64,
    basis: &IncludedBasis,
) -> AppResult<MonthUsage> {
    calls.sort_by_key(|call| (call.started_at, call.id));
    let (late, own): (Vec<BilledCall>, Vec<BilledCall>) =
        calls.into_iter().partition(|call| call.started_at < start);
    let add = |sum: UsageTotals, billed_seconds: i64, usage_micros: i64| {
        sum.checked_plus(UsageTotals {
            call_count: 1,
            billed_seconds,
            usage_micros,
        })
        .ok_or_else(|| overflow(period))
    };
    let mut current = UsageTotals::default();
    let mut tariffs: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
    let (mut connect_fee_calls, mut connect_fees_micros) = (0_i64, 0_i64);
    for call in &own {
        current = add(current, call.billed_seconds, call.cost_micros)?;
        for segment in &call.segments {
            let sum = tariffs.entry(segment.tariff_name.as_str()).or_default();
            sum.0 = sum
                .0
                .checked_add(segment.billed_seconds)
                .ok_or_else(|| overflow(period))?;
            sum.1 = sum
                .1
                .checked_add(segment.cost_micros)
                .ok_or_else(|| overflow(period))?;
        }
        if call.connect_fee_micros > 0 {
            connect_fee_calls += 1;
            connect_fees_micros = connect_fees_micros
                .checked_add(call.connect_fee_micros)
                .ok_or_else(|| overflow(period))?;
        }
    }
    let breakdown = UsageBreakdown {
        tariffs: tariffs
            .into_iter()
            .map(|(name, (seconds, micros))| (name.to_owned(), seconds, micros))
            .collect(),
        connect_fee_calls,
        connect_fees_micros,
    };
    let included = included_usage(&own, current, allowance, basis, period)?;
    Ok(MonthUsage {
        current,
        included,
        late: late_by_month(period, &month_of, &late)?,
        top_ups: in_order(top_ups),
        breakdown,
    })
}

/// The month's own calls of an invoice, summed by the database: all that a
/// plan with neither included minutes nor tariffs
/// needs of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OwnCallSums {
    pub totals: UsageTotals,
    /// Calls charged a connect fee, and the fees' sum.
    pub connect_fee_calls: i64,
    pub connect_fees_micros: i64,
}

/// [`usage_from_calls`] for a plan with neither included minutes nor tariffs:
/// the month's own calls come summed (`own`), and only the calls of
/// earlier months (`late`, every one started before the month) one by one.
/// For the same calls it gives what `usage_from_calls` gives with no
/// allowance.
pub fn usage_from_sums(
    period: BillingPeriod,
    month_of: impl Fn(DateTime<Utc>) -> BillingPeriod,
    own: OwnCallSums,
    late: Vec<BilledCall>,
    top_ups: Vec<(i64, TopUpEntry)>,
) -> AppResult<MonthUsage> {
    Ok(MonthUsage {
        current: own.totals,
        included: IncludedUsage::default(),
        late: late_by_month(period, &month_of, &late)?,
        top_ups: in_order(top_ups),
        breakdown: UsageBreakdown {
            tariffs: Vec::new(),
            connect_fee_calls: own.connect_fee_calls,
            connect_fees_micros: own.connect_fees_micros,
        },
    })
}

/// The calls of earlier months `late` summed per month, oldest first.
fn late_by_month(
    period: BillingPeriod,
    month_of: &impl Fn(DateTime<Utc>) -> BillingPeriod,
    late: &[BilledCall],
) -> AppResult<Vec<(BillingPeriod, UsageTotals)>> {
    late_usage_by_month(
        period,
        late.iter().map(|call| {
            (
                month_of(call.started_at),
                call.billed_seconds,
                call.cost_micros,
            )
        }),
    )
}

/// The top-ups in the order they were made (then by id).
fn in_order(mut top_ups: Vec<(i64, TopUpEntry)>) -> Vec<TopUpEntry> {
    top_ups.sort_by_key(|(id, entry)| (entry.created_at, *id));
    top_ups.into_iter().map(|(_, entry)| entry).collect()
}

/// How the month's own calls `own` (in start order; `current` their
/// totals) fall against `allowance` billed seconds: whole calls at their
/// cost, or on segments the stored segments (of the tariffs in `only`,
/// every tariff when empty) at their cost, with the crossing one's rate
/// from `rates` (0 for an unknown tariff).
fn included_usage(
    own: &[BilledCall],
    current: UsageTotals,
    allowance: i64,
    basis: &IncludedBasis,
    period: BillingPeriod,
) -> AppResult<IncludedUsage> {
    if allowance <= 0 {
        return Ok(IncludedUsage::default());
    }
    // (billed seconds, cost, rate) in order.
    let items: Vec<(i64, i64, i64)> = match basis {
        IncludedBasis::Calls => {
            if current.billed_seconds <= allowance {
                return Ok(IncludedUsage::all(current));
            }
            own.iter()
                .map(|call| {
                    (
                        call.billed_seconds,
                        call.cost_micros,
                        call.per_minute_micros,
                    )
                })
                .collect()
        }
        IncludedBasis::Segments { rates, only } => own
            .iter()
            .flat_map(|call| call.segments.iter())
            .filter(|segment| only.is_empty() || only.contains(&segment.tariff_name))
            .map(|segment| {
                let rate = rates
                    .iter()
                    .find(|(name, _)| *name == segment.tariff_name)
                    .map_or(0, |(_, rate)| *rate);
                (segment.billed_seconds, segment.cost_micros, rate)
            })
            .collect(),
    };
    let mut whole = UsageTotals::default();
    let mut straddling = None;
    let mut running: i64 = 0;
    for (billed_seconds, cost_micros, per_minute_micros) in items {
        let before = running;
        running = running
            .checked_add(billed_seconds)
            .ok_or_else(|| overflow(period))?;
        if running <= allowance {
            whole = whole
                .checked_plus(UsageTotals {
                    call_count: 1,
                    billed_seconds,
                    usage_micros: cost_micros,
                })
                .ok_or_else(|| overflow(period))?;
        } else if before < allowance {
            straddling = Some(StraddlingCall {
                billed_seconds,
                cost_micros,
                per_minute_micros,
            });
        } else {
            break;
        }
    }
    Ok(IncludedUsage { whole, straddling })
}

/// A month's own calls by tariff: the stored segments of tariffed calls,
/// summed per tariff name, and their connect fees. Calls without segments
/// (plans without tariffs) are the rest of the month's usage, at the base
/// rate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageBreakdown {
    /// `(tariff name, billed seconds, usage micros)` per tariff.
    pub tariffs: Vec<(String, i64, i64)>,
    /// Calls charged a connect fee, and the fees' sum.
    pub connect_fee_calls: i64,
    pub connect_fees_micros: i64,
}

impl UsageBreakdown {
    fn is_empty(&self) -> bool {
        self.tariffs.is_empty() && self.connect_fee_calls == 0
    }
}

/// An invoice's content before it is numbered and stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvoiceDraft {
    pub lines: Vec<InvoiceLine>,
    /// All calls on the invoice, late ones included.
    pub usage: UsageTotals,
    pub monthly_fee_micros: i64,
    /// Always the sum of the lines' amounts.
    pub total_micros: i64,
}

/// The error of an invoice whose figures exceed what 64-bit micros hold.
fn overflow(period: BillingPeriod) -> AppError {
    AppError::FailedPrecondition(format!(
        "the invoice for {period} cannot be issued: its amounts exceed the largest representable sum"
    ))
}

/// Composes the invoice of `period` under `plan`.
///
/// - Postpaid: the monthly fee, the period's usage, a credit for the
///   included minutes (see [`included_credit`]), and one late-usage line per
///   earlier month.
/// - Fixed: the monthly fee only, whatever the usage.
/// - Prepaid: a statement of what was paid in: one line per top-up.
///
/// In every case the call figures report all calls on the invoice. Every
/// sum is checked: figures that overflow are `FAILED_PRECONDITION`.
pub fn compose(plan: &Plan, period: BillingPeriod, usage: &MonthUsage) -> AppResult<InvoiceDraft> {
    let all_calls = usage
        .late
        .iter()
        .try_fold(usage.current, |sum, (_, late)| sum.checked_plus(*late))
        .ok_or_else(|| overflow(period))?;
    let mut lines = Vec::new();
    let monthly_fee_micros = match plan.kind {
        PlanKind::Prepaid => 0,
        PlanKind::Postpaid | PlanKind::Fixed => plan.monthly_fee_micros,
    };
    match plan.kind {
        PlanKind::Postpaid => {
            lines.push(fee_line(plan, period));
            lines.extend(usage_lines(period, usage.current, &usage.breakdown)?);
            let allowance = plan.included_minutes.saturating_mul(60);
            let (credited_seconds, credit) = included_credit(allowance, &usage.included);
            if credited_seconds > 0 {
                lines.push(InvoiceLine {
                    kind: InvoiceLineKind::IncludedMinutes,
                    description: format!(
                        "Included minutes: {} of {} min",
                        minutes_text(credited_seconds),
                        plan.included_minutes
                    ),
                    quantity: credited_seconds,
                    amount_micros: -credit,
                    call_count: 0,
                    subject: String::new(),
                });
            }
            for (month, late) in &usage.late {
                lines.push(InvoiceLine {
                    kind: InvoiceLineKind::LateUsage,
                    description: format!(
                        "Late usage for {month}: {} calls, {} billed",
                        late.call_count,
                        minutes_text(late.billed_seconds)
                    ),
                    quantity: late.billed_seconds,
                    amount_micros: late.usage_micros,
                    call_count: late.call_count,
                    subject: month.to_string(),
                });
            }
        }
        PlanKind::Fixed => lines.push(fee_line(plan, period)),
        PlanKind::Prepaid => {
            for top_up in &usage.top_ups {
                lines.push(InvoiceLine {
                    kind: InvoiceLineKind::TopUp,
                    description: format!(
                        "Top-up on {}",
                        top_up.created_at.format("%Y-%m-%d %H:%M UTC")
                    ),
                    quantity: 1,
                    amount_micros: top_up.amount_micros,
                    call_count: 0,
                    subject: top_up
                        .created_at
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                });
            }
        }
    }
    let total_micros = lines
        .iter()
        .try_fold(0_i64, |sum, line| sum.checked_add(line.amount_micros))
        .ok_or_else(|| overflow(period))?;
    Ok(InvoiceDraft {
        lines,
        usage: all_calls,
        monthly_fee_micros,
        total_micros,
    })
}

/// The month's own usage as invoice lines: one line when no call was rated
/// against tariffs; else one line per tariff used (the plan's own rate as
/// `base`, covering calls without segments too) and one for the connect
/// fees. The lines always sum to `current.usage_micros`.
fn usage_lines(
    period: BillingPeriod,
    current: UsageTotals,
    breakdown: &UsageBreakdown,
) -> AppResult<Vec<InvoiceLine>> {
    if breakdown.is_empty() {
        return Ok(vec![InvoiceLine {
            kind: InvoiceLineKind::Usage,
            description: format!(
                "Usage {period}: {} calls, {} billed",
                current.call_count,
                minutes_text(current.billed_seconds)
            ),
            quantity: current.billed_seconds,
            amount_micros: current.usage_micros,
            call_count: current.call_count,
            subject: String::new(),
        }]);
    }
    let mut by_tariff: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
    let (mut billed, mut usage) = (0_i64, breakdown.connect_fees_micros);
    for (name, seconds, micros) in &breakdown.tariffs {
        let entry = by_tariff.entry(name).or_default();
        entry.0 = entry
            .0
            .checked_add(*seconds)
            .ok_or_else(|| overflow(period))?;
        entry.1 = entry
            .1
            .checked_add(*micros)
            .ok_or_else(|| overflow(period))?;
        billed = billed
            .checked_add(*seconds)
            .ok_or_else(|| overflow(period))?;
        usage = usage.checked_add(*micros).ok_or_else(|| overflow(period))?;
    }
    // Calls without segments are at the plan's own rate.
    let rest_seconds = current
        .billed_seconds
        .checked_sub(billed)
        .ok_or_else(|| overflow(period))?;
    let rest_micros = current
        .usage_micros
        .checked_sub(usage)
        .ok_or_else(|| overflow(period))?;
    if rest_seconds != 0 || rest_micros != 0 {
        let entry = by_tariff.entry(BASE_TARIFF).or_default();
        entry.0 = entry
            .0
            .checked_add(rest_seconds)
            .ok_or_else(|| overflow(period))?;
        entry.1 = entry
            .1
            .checked_add(rest_micros)
            .ok_or_else(|| overflow(period))?;
    }
    let mut lines: Vec<InvoiceLine> = by_tariff
        .into_iter()
        .map(|(name, (seconds, micros))| InvoiceLine {
            kind: InvoiceLineKind::Usage,
            description: format!(
                "Usage {period}, tariff {name}: {} billed",
                minutes_text(seconds)
            ),
            quantity: seconds,
            amount_micros: micros,
            call_count: 0,
            subject: name.to_owned(),
        })
        .collect();
    if breakdown.connect_fee_calls > 0 {
        lines.push(InvoiceLine {
            kind: InvoiceLineKind::ConnectFee,
            description: format!(
                "Connect fees {period}: {} calls",
                breakdown.connect_fee_calls
            ),
            quantity: breakdown.connect_fee_calls,
            amount_micros: breakdown.connect_fees_micros,
            call_count: breakdown.connect_fee_calls,
            subject: String::new(),
        });
    }
    Ok(lines)
}

fn fee_line(plan: &Plan, period: BillingPeriod) -> InvoiceLine {
    InvoiceLine {
        kind: InvoiceLineKind::MonthlyFee,
        description: format!("Monthly fee {period}: {}", plan.name),
        quantity: 1,
        amount_micros: plan.monthly_fee_micros,
        call_count: 0,
        subject: plan.name.clone(),
    }
}

/// Billed time as minutes and seconds, `75:30 min`: how invoices and their
/// documents write it.
pub fn minutes_text(seconds: i64) -> String {
    format!("{}:{:02} min", seconds / 60, (seconds % 60).abs())
}

/// An issued, immutable invoice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invoice {
    pub id: i64,
    pub number: String,
    pub customer_id: i64,
    pub period: BillingPeriod,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    pub issued_at: DateTime<Utc>,
    pub currency_code: String,
    pub lines: Vec<InvoiceLine>,
    /// All calls on the invoice, late ones included.
    pub usage: UsageTotals,
    pub monthly_fee_micros: i64,
    pub total_micros: i64,
}

/// An open month's invoice as it would be issued now; stored nowhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsagePreview {
    pub customer_id: i64,
    pub period: BillingPeriod,
    pub as_of: DateTime<Utc>,
    pub usage: UsageTotals,
    pub monthly_fee_micros: i64,
    /// Always the sum of the lines' amounts.
    pub total_micros: i64,
    pub currency_code: String,
    /// The lines the invoice would have if issued now.
    pub lines: Vec<InvoiceLine>,
}

/// One month of a customer's consolidated history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsolidatedMonth {
    pub period: BillingPeriod,
    pub usage: UsageTotals,
    pub monthly_fee_micros: i64,
    pub total_micros: i64,
    pub currency_code: String,
    /// The invoice's number once issued; `None` while the month is open.
    pub invoice_number: Option<String>,
}

impl ConsolidatedMonth {
    /// The month as its issued invoice states it.
    pub fn issued(invoice: &Invoice) -> Self {
        ConsolidatedMonth {
            period: invoice.period,
            usage: invoice.usage,
            monthly_fee_micros: invoice.monthly_fee_micros,
            total_micros: invoice.total_micros,
            currency_code: invoice.currency_code.clone(),
            invoice_number: Some(invoice.number.clone()),
        }
    }

    /// A month not invoiced yet, with its figures so far.
    pub fn open(period: BillingPeriod, draft: &InvoiceDraft, currency_code: &str) -> Self {
        ConsolidatedMonth {
            period,
            usage: draft.usage,
            monthly_fee_micros: draft.monthly_fee_micros,
            total_micros: draft.total_micros,
            currency_code: currency_code.to_owned(),
            invoice_number: None,
        }
    }

    /// Whether the month had any activity: calls, top-ups, a fee or an
    /// invoice.
    pub fn has_activity(&self, top_ups: usize) -> bool {
        self.invoice_number.is_some()
            || self.usage.call_count > 0
            || self.monthly_fee_micros != 0
            || top_ups > 0
    }
}

/// The human-readable invoice number, e.g. `INV-2026-11-000042`.
pub fn invoice_number(period: BillingPeriod, invoice_id: i64) -> String {
    format!(
        "INV-{:04}-{:02}-{invoice_id:06}",
        period.year(),
        period.month()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn month(year: i32, month: i32) -> BillingPeriod {
        BillingPeriod::new("period", year, month).unwrap()
    }

    fn at(day: u32, second: u32) -> DateTime<Utc> {
        use chrono::TimeZone;
        Utc.with_ymd_and_hms(2026, 6, day, 0, 0, second).unwrap()
    }

    fn call(id: i64, started_at: DateTime<Utc>, billed_seconds: i64, rate: i64) -> BilledCall {
        BilledCall {
            id,
            started_at,
            billed_seconds,
            cost_micros: billed_seconds * rate / 60,
            per_minute_micros: rate,
            connect_fee_micros: 0,
            segments: Vec::new(),
        }
    }

    fn segment(name: &str, billed_seconds: i64, cost_micros: i64) -> BilledSegment {
        BilledSegment {
            tariff_name: name.to_owned(),
            billed_seconds,
            cost_micros,
        }
    }

    fn june_usage(
        calls: Vec<BilledCall>,
        top_ups: Vec<(i64, TopUpEntry)>,
        allowance: i64,
        basis: &IncludedBasis,
    ) -> MonthUsage {
        usage_from_calls(
            month(2026, 6),
            at(1, 0),
            |instant| BillingPeriod::containing(instant, chrono_tz::UTC),
            calls,
            top_ups,
            allowance,
            basis,
        )
        .unwrap()
    }

    #[test]
    fn billed_calls_split_into_the_months_own_and_late_ones_per_month() {
        use chrono::TimeZone;
        let may = Utc.with_ymd_and_hms(2026, 5, 31, 23, 59, 59).unwrap();
        let april = Utc.with_ymd_and_hms(2026, 4, 2, 0, 0, 0).unwrap();
        let usage = june_usage(
            vec![
                call(3, at(2, 0), 60, 600),
                call(1, may, 120, 600),
                call(2, april, 60, 600),
                call(4, at(1, 0), 30, 600),
            ],
            Vec::new(),
            0,
            &IncludedBasis::Calls,
        );
        assert_eq!(
            usage.current,
            UsageTotals {
                call_count: 2,
                billed_seconds: 90,
                usage_micros: 900
            }
        );
        assert_eq!(
            usage.late,
            vec![
                (
                    month(2026, 4),
                    UsageTotals {
                        call_count: 1,
                        billed_seconds: 60,
                        usage_micros: 600
                    }
                ),
                (
                    month(2026, 5),
                    UsageTotals {
                        call_count: 1,
                        billed_seconds: 120,
                        usage_micros: 1200
                    }
                ),
            ]
        );
        assert_eq!(usage.included, IncludedUsage::default());
    }

    #[test]
    fn included_calls_are_taken_in_start_then_id_order_up_to_the_one_crossing_the_allowance() {
        // Ids out of start order: the start decides, the id breaks ties.
        let calls = vec![
            call(9, at(1, 0), 60, 600),
            call(5, at(3, 0), 90, 1200),
            call(2, at(2, 0), 60, 600),
            call(1, at(3, 0), 60, 600),
        ];
        let usage = june_usage(calls, Vec::new(), 150, &IncludedBasis::Calls);
        assert_eq!(
            usage.included,
            IncludedUsage {
                whole: UsageTotals {
                    call_count: 2,
                    billed_seconds: 120,
                    usage_micros: 1200
                },
                straddling: Some(StraddlingCall {
                    billed_seconds: 60,
                    cost_micros: 600,
                    per_minute_micros: 600
                }),
            }
        );
        let all = june_usage(
            vec![call(1, at(1, 0), 60, 600)],
            Vec::new(),
            60,
            &IncludedBasis::Calls,
        );
        assert_eq!(all.included, IncludedUsage::all(all.current));
    }

    #[test]
    fn on_segments_only_the_named_tariffs_count_and_the_breakdown_sums_per_tariff() {
        let mut first = call(1, at(1, 0), 120, 0);
        first.cost_micros = 1500;
        first.connect_fee_micros = 100;
        first.segments = vec![segment("peak", 60, 1000), segment("night", 60, 400)];
        let mut second = call(2, at(2, 0), 60, 0);
        second.cost_micros = 1000;
        second.segments = vec![segment("peak", 60, 1000)];
        let basis = IncludedBasis::Segments {
            rates: vec![("peak".to_owned(), 1000), ("night".to_owned(), 400)],
            only: vec!["peak".to_owned()],
        };
        let usage = june_usage(vec![second, first], Vec::new(), 90, &basis);
        assert_eq!(
            usage.breakdown,
            UsageBreakdown {
                tariffs: vec![
                    ("night".to_owned(), 60, 400),
                    ("peak".to_owned(), 120, 2000)
                ],
                connect_fee_calls: 1,
                connect_fees_micros: 100,
            }
        );
        assert_eq!(
            usage.included,
            IncludedUsage {
                whole: UsageTotals {
                    call_count: 1,
                    billed_seconds: 60,
                    usage_micros: 1000
                },
                straddling: Some(StraddlingCall {
                    billed_seconds: 60,
                    cost_micros: 1000,
                    per_minute_micros: 1000
                }),
            }
        );
    }

    #[test]
    fn summed_own_calls_give_what_the_calls_one_by_one_give_without_an_allowance() {
        use chrono::TimeZone;
        let may = Utc.with_ymd_and_hms(2026, 5, 31, 23, 59, 59).unwrap();
        let april = Utc.with_ymd_and_hms(2026, 4, 2, 0, 0, 0).unwrap();
        let mut with_fee = call(5, at(3, 0), 90, 1_200);
        with_fee.connect_fee_micros = 50_000;
        with_fee.cost_micros += 50_000;
        let calls = vec![
            call(3, at(2, 0), 60, 600),
            call(1, may, 120, 600),
            with_fee,
            call(2, april, 60, 600),
            call(4, at(1, 0), 30, 600),
            call(6, may, 7, 900),
        ];
        let top_ups = vec![
            (
                2,
                TopUpEntry {
                    created_at: at(4, 0),
                    amount_micros: 5,
                },
            ),
            (
                1,
                TopUpEntry {
                    created_at: at(2, 0),
                    amount_micros: 7,
                },
            ),
        ];
        let (late, own): (Vec<BilledCall>, Vec<BilledCall>) = calls
            .iter()
            .cloned()
            .partition(|call| call.started_at < at(1, 0));
        let mut sums = OwnCallSums::default();
        for call in &own {
            sums.totals = sums
                .totals
                .checked_plus(UsageTotals {
                    call_count: 1,
                    billed_seconds: call.billed_seconds,
                    usage_micros: call.cost_micros,
                })
                .unwrap();
            if call.connect_fee_micros > 0 {
                sums.connect_fee_calls += 1;
                sums.connect_fees_micros += call.connect_fee_micros;
            }
        }
        let summed = usage_from_sums(
            month(2026, 6),
            |instant| BillingPeriod::containing(instant, chrono_tz::UTC),
            sums,
            late,
            top_ups.clone(),
        )
        .unwrap();
        let each = june_usage(calls, top_ups, 0, &IncludedBasis::Calls);
        assert_eq!(summed, each);
        assert_eq!(summed.late.len(), 2);
        assert_eq!(summed.breakdown.connect_fee_calls, 1);
    }

    #[test]
    fn top_ups_come_in_the_order_they_were_made_and_overflow_is_refused() {
        let entry = |second, amount_micros| TopUpEntry {
            created_at: at(1, second),
            amount_micros,
        };
        let usage = june_usage(
            Vec::new(),
            vec![(7, entry(5, 1)), (3, entry(5, 2)), (9, entry(1, 3))],
            0,
            &IncludedBasis::Calls,
        );
        let amounts: Vec<i64> = usage.top_ups.iter().map(|t| t.amount_micros).collect();
        assert_eq!(amounts, vec![3, 2, 1]);

        let mut huge = call(1, at(1, 0), 60, 0);
        huge.cost_micros = i64::MAX;
        let result = usage_from_calls(
            month(2026, 6),
            at(1, 0),
            |instant| BillingPeriod::containing(instant, chrono_tz::UTC),
            vec![huge.clone(), BilledCall { id: 2, ..huge }],
            Vec::new(),
            0,
            &IncludedBasis::Calls,
        );
        assert!(matches!(result, Err(AppError::FailedPrecondition(_))));
    }

    #[test]
    fn tariffed_usage_is_one_line_per_tariff_plus_connect_fees_summing_to_the_calls() {
        let current = UsageTotals {
            call_count: 4,
            billed_seconds: 400,
            usage_micros: 1_000_000,
        };
        let breakdown = UsageBreakdown {
            tariffs: vec![
                ("peak".into(), 120, 240_000),
                ("off-peak".into(), 180, 180_000),
            ],
            connect_fee_calls: 2,
            connect_fees_micros: 100_000,
        };
        let lines = usage_lines(period(2026, 6), current, &breakdown).unwrap();
        let shown: Vec<_> = lines
            .iter()
            .map(|l| (l.kind, l.description.as_str(), l.quantity, l.amount_micros))
            .collect();
        assert_eq!(
            shown,
            vec![
                (
                    InvoiceLineKind::Usage,
                    "Usage 2026-06, tariff base: 1:40 min billed",
                    100,
                    480_000
                ),
                (
                    InvoiceLineKind::Usage,
                    "Usage 2026-06, tariff off-peak: 3:00 min billed",
                    180,
                    180_000
                ),
                (
                    InvoiceLineKind::Usage,
                    "Usage 2026-06, tariff peak: 2:00 min billed",
                    120,
                    240_000
                ),
                (
                    InvoiceLineKind::ConnectFee,
                    "Connect fees 2026-06: 2 calls",
                    2,
                    100_000
                ),
            ]
        );
        let sum: i64 = lines.iter().map(|l| l.amount_micros).sum();
        assert_eq!(sum, current.usage_micros);
        // Without tariffed calls: the one usage line of old.
        let plain = usage_lines(period(2026, 6), current, &UsageBreakdown::default()).unwrap();
        assert_eq!(plain.len(), 1);
        assert_eq!(plain[0].amount_micros, 1_000_000);
    }

    #[test]
    fn issuing_a_month_covers_every_missing_month_before_it_oldest_first() {
        let first = month(2026, 1);
        assert_eq!(
            months_to_issue(first, month(2026, 3), None),
            vec![month(2026, 1), month(2026, 2), month(2026, 3)]
        );
        assert_eq!(
            months_to_issue(first, month(2026, 4), Some(month(2026, 2))),
            vec![month(2026, 3), month(2026, 4)]
        );
        assert_eq!(
            months_to_issue(first, month(2026, 3), Some(month(2026, 2))),
            vec![month(2026, 3)]
        );
        // Already issued: nothing.
        assert!(months_to_issue(first, month(2026, 2), Some(month(2026, 2))).is_empty());
        assert!(months_to_issue(first, month(2026, 1), Some(month(2026, 5))).is_empty());
    }

    #[test]
    fn a_call_is_billed_in_its_month_or_the_first_month_not_invoiced() {
        let (oct, nov, dec) = (month(2026, 10), month(2026, 11), month(2026, 12));
        assert_eq!(billing_period_of(nov, None), nov);
        assert_eq!(billing_period_of(nov, Some(oct)), nov);
        assert_eq!(billing_period_of(dec, Some(oct)), dec);
        // Late: its month is invoiced.
        assert_eq!(billing_period_of(nov, Some(nov)), dec);
        assert_eq!(billing_period_of(oct, Some(nov)), dec);
    }

    #[test]
    fn a_call_before_the_customers_first_month_is_refused_naming_started_at() {
        let (oct, nov) = (month(2026, 10), month(2026, 11));
        assert!(check_call_within_customer_life(7, nov, nov).is_ok());
        let err = check_call_within_customer_life(7, oct, nov).unwrap_err();
        assert!(matches!(err, AppError::FailedPrecondition(_)), "{err:?}");
        assert!(err.to_string().contains("started_at"), "{err}");
    }

    #[test]
    fn late_calls_are_totalled_per_month_they_started_in_oldest_first() {
        let late = late_usage_by_month(
            month(2026, 5),
            [
                (month(2026, 3), 60, 100),
                (month(2026, 1), 30, 5),
                (month(2026, 3), 1, 1),
            ],
        )
        .unwrap();
        let total = |call_count, billed_seconds, usage_micros| UsageTotals {
            call_count,
            billed_seconds,
            usage_micros,
        };
        assert_eq!(
            late,
            vec![
                (month(2026, 1), total(1, 30, 5)),
                (month(2026, 3), total(2, 61, 101)),
            ]
        );
        let overflow = late_usage_by_month(
            month(2026, 5),
            [(month(2026, 3), 1, i64::MAX), (month(2026, 3), 1, 1)],
        );
        assert!(matches!(overflow, Err(AppError::FailedPrecondition(_))));
    }

    fn plan(kind: PlanKind, fee: i64, per_minute: i64, included_minutes: i64) -> Plan {
        Plan {
            id: 1,
            name: "Plan".into(),
            kind,
            currency_code: "USD".into(),
            monthly_fee_micros: fee,
            per_minute_micros: per_minute,
            billing_increment_seconds: 60,
            included_minutes,
            created_at: DateTime::UNIX_EPOCH,
            tariffs: Vec::new(),
            included_minutes_tariffs: Vec::new(),
        }
    }

    fn period(year: i32, month: i32) -> BillingPeriod {
        BillingPeriod::new("period", year, month).unwrap()
    }

    fn totals(call_count: i64, billed_seconds: i64, usage_micros: i64) -> UsageTotals {
        UsageTotals {
            call_count,
            billed_seconds,
            usage_micros,
        }
    }

    fn assert_sums(draft: &InvoiceDraft) {
        let sum: i64 = draft.lines.iter().map(|l| l.amount_micros).sum();
        assert_eq!(draft.total_micros, sum);
    }

    #[test]
    fn postpaid_bills_fee_plus_usage_minus_included_minutes() {
        // 100 included minutes at 0.12/min; 30 five-minute calls (150
        // minutes) used: the first 20 are included.
        let usage = MonthUsage {
            current: totals(30, 9000, 18_000_000),
            included: IncludedUsage::all(totals(20, 6000, 12_000_000)),
            ..Default::default()
        };
        let draft = compose(
            &plan(PlanKind::Postpaid, 10_000_000, 120_000, 100),
            period(2026, 10),
            &usage,
        )
        .unwrap();
        let kinds: Vec<_> = draft
            .lines
            .iter()
            .map(|l| (l.kind, l.amount_micros))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (InvoiceLineKind::MonthlyFee, 10_000_000),
                (InvoiceLineKind::Usage, 18_000_000),
                (InvoiceLineKind::IncludedMinutes, -12_000_000),
            ]
        );
        assert_eq!(draft.total_micros, 16_000_000);
        assert_eq!(draft.usage, usage.current);
        assert_sums(&draft);
    }

    #[test]
    fn included_minutes_never_credit_more_than_the_usage() {
        let usage = MonthUsage {
            current: totals(2, 120, 240_000),
            included: IncludedUsage::all(totals(2, 120, 240_000)),
            ..Default::default()
        };
        let draft = compose(
            &plan(PlanKind::Postpaid, 5_000_000, 120_000, 100),
            period(2026, 10),
            &usage,
        )
        .unwrap();
        assert_eq!(draft.total_micros, 5_000_000);
        assert_eq!(draft.lines[2].amount_micros, -240_000);
        assert_eq!(draft.lines[2].quantity, 120);
    }

    #[test]
    fn late_usage_gets_a_line_per_month_and_no_included_minutes() {
        let usage = MonthUsage {
            current: totals(0, 0, 0),
            included: IncludedUsage::default(),
            late: vec![
                (period(2026, 8), totals(1, 60, 120_000)),
                (period(2026, 9), totals(2, 180, 360_000)),
            ],
            top_ups: vec![],
            breakdown: UsageBreakdown::default(),
        };
        let draft = compose(
            &plan(PlanKind::Postpaid, 1_000_000, 120_000, 100),
            period(2026, 10),
            &usage,
        )
        .unwrap();
        let late: Vec<_> = draft
            .lines
            .iter()
            .filter(|l| l.kind == InvoiceLineKind::LateUsage)
            .collect();
        assert_eq!(late.len(), 2);
        assert!(late[0].description.contains("2026-08"));
        assert_eq!(draft.total_micros, 1_000_000 + 120_000 + 360_000);
        assert_eq!(draft.usage, totals(3, 240, 480_000));
        assert_sums(&draft);
    }

    #[test]
    fn fixed_plans_bill_the_fee_whatever_the_usage() {
        let usage = MonthUsage {
            current: totals(500, 90_000, 0),
            ..Default::default()
        };
        let draft = compose(
            &plan(PlanKind::Fixed, 29_000_000, 0, 0),
            period(2026, 10),
            &usage,
        )
        .unwrap();
        assert_eq!(draft.lines.len(), 1);
        assert_eq!(draft.total_micros, 29_000_000);
        assert_eq!(draft.usage.call_count, 500);
    }

    #[test]
    fn prepaid_invoices_state_the_top_ups() {
        let at = DateTime::parse_from_rfc3339("2026-10-03T10:00:00Z")
            .unwrap()
            .to_utc();
        let usage = MonthUsage {
            current: totals(4, 600, 900_000),
            included: IncludedUsage::default(),
            late: vec![],
            top_ups: vec![
                TopUpEntry {
                    created_at: at,
                    amount_micros: 10_000_000,
                },
                TopUpEntry {
                    created_at: at,
                    amount_micros: 5_000_000,
                },
            ],
            breakdown: UsageBreakdown::default(),
        };
        let draft = compose(
            &plan(PlanKind::Prepaid, 0, 90_000, 0),
            period(2026, 10),
            &usage,
        )
        .unwrap();
        assert!(draft.lines.iter().all(|l| l.kind == InvoiceLineKind::TopUp));
        assert_eq!(draft.total_micros, 15_000_000);
        assert_eq!(draft.usage.usage_micros, 900_000);
        assert_sums(&draft);
    }

    #[test]
    fn a_quiet_month_is_an_invoice_for_the_fee_or_for_zero() {
        let empty = MonthUsage::default();
        assert_eq!(
            compose(
                &plan(PlanKind::Prepaid, 0, 90_000, 0),
                period(2026, 1),
                &empty
            )
            .unwrap()
            .total_micros,
            0
        );
        assert_eq!(
            compose(
                &plan(PlanKind::Postpaid, 0, 90_000, 10),
                period(2026, 1),
                &empty
            )
            .unwrap()
            .total_micros,
            0
        );
    }

    #[test]
    fn fully_included_usage_nets_to_exactly_zero() {
        // 100 one-second calls at 90 micros/minute cost 2 micros each (1.5
        // rounded half up): usage 200. Re-rating 100 s would credit only 150.
        let current = totals(100, 100, 200);
        let usage = MonthUsage {
            current,
            included: IncludedUsage::all(current),
            ..Default::default()
        };
        let draft = compose(
            &plan(PlanKind::Postpaid, 0, 90, 100),
            period(2026, 10),
            &usage,
        )
        .unwrap();
        assert_eq!(draft.lines[2].amount_micros, -200);
        assert_eq!(draft.lines[2].quantity, 100);
        assert_eq!(draft.total_micros, 0);
    }

    #[test]
    fn only_the_call_crossing_the_allowance_is_split_and_priced_once() {
        // One included minute: a 50 s call (cost 75) is wholly inside; a
        // 30 s call at 90/min (cost 45) crosses the end with 10 s inside:
        // those cost 10 * 90 / 60 = 15.
        let included = IncludedUsage {
            whole: totals(1, 50, 75),
            straddling: Some(StraddlingCall {
                billed_seconds: 30,
                cost_micros: 45,
                per_minute_micros: 90,
            }),
        };
        assert_eq!(included_credit(60, &included), (60, 90));
        // Half up on the split part: 1 s at 90/min is 1.5 -> 2.
        let one_second = IncludedUsage {
            whole: totals(1, 59, 89),
            straddling: Some(StraddlingCall {
                billed_seconds: 60,
                cost_micros: 90,
                per_minute_micros: 90,
            }),
        };
        assert_eq!(included_credit(60, &one_second), (60, 91));
        // Never more than the crossing call's own cost.
        let dear_rounding = IncludedUsage {
            whole: totals(0, 0, 0),
            straddling: Some(StraddlingCall {
                billed_seconds: 2,
                cost_micros: 2,
                per_minute_micros: 90,
            }),
        };
        assert_eq!(included_credit(1, &dear_rounding), (1, 2));
        assert_eq!(included_credit(0, &IncludedUsage::default()), (0, 0));
    }

    #[test]
    fn sums_that_overflow_are_refused_not_wrapped() {
        let usage = MonthUsage {
            current: totals(1, 60, i64::MAX - 10),
            ..Default::default()
        };
        let err = compose(
            &plan(PlanKind::Postpaid, 1_000_000, 90, 0),
            period(2026, 10),
            &usage,
        )
        .unwrap_err();
        assert!(matches!(err, AppError::FailedPrecondition(_)), "{err:?}");
        let late = MonthUsage {
            current: totals(1, 60, i64::MAX - 10),
            late: vec![(period(2026, 9), totals(1, 60, 100))],
            ..Default::default()
        };
        assert!(compose(&plan(PlanKind::Fixed, 0, 0, 0), period(2026, 10), &late).is_err());
    }

    #[test]
    fn invoice_numbers_name_the_month_and_id() {
        assert_eq!(invoice_number(period(2026, 11), 42), "INV-2026-11-000042");
    }
}
