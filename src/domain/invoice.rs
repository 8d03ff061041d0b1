//! Invoice composition: from a period's claimed usage and top-ups to invoice
//! lines and totals. Pure; every total is the sum of its parts.

use chrono::{DateTime, Utc};

use super::model::{Plan, PlanKind};
use super::period::BillingPeriod;
use super::rating::cost_of;

/// What an invoice line charges or credits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvoiceLineKind {
    MonthlyFee,
    Usage,
    IncludedMinutes,
    LateUsage,
    TopUp,
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
        ]
        .into_iter()
        .find(|kind| kind.as_str() == stored)
    }
}

/// One line of an invoice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvoiceLine {
    pub kind: InvoiceLineKind,
    pub description: String,
    pub quantity: i64,
    pub amount_micros: i64,
}

/// Calls summed up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageTotals {
    pub call_count: i64,
    pub billed_seconds: i64,
    pub usage_micros: i64,
}

impl UsageTotals {
    /// The sum of two totals.
    pub fn plus(self, other: UsageTotals) -> UsageTotals {
        UsageTotals {
            call_count: self.call_count + other.call_count,
            billed_seconds: self.billed_seconds + other.billed_seconds,
            usage_micros: self.usage_micros + other.usage_micros,
        }
    }
}

/// A prepaid credit as it appears on a statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopUpEntry {
    pub created_at: DateTime<Utc>,
    pub amount_micros: i64,
}

/// Everything an invoice bills: the period's own calls, calls of earlier
/// months that were not invoiced yet (by month, oldest first), and top-ups.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaimedUsage {
    pub current: UsageTotals,
    pub late: Vec<(BillingPeriod, UsageTotals)>,
    pub top_ups: Vec<TopUpEntry>,
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

/// Composes the invoice of `period` under `plan`.
///
/// - Postpaid: the monthly fee, the period's usage, a credit for the
///   included minutes (the cost of up to `included_minutes` of the period's
///   billed time at the plan's rate, never more than the usage), and one
///   late-usage line per earlier month.
/// - Fixed: the monthly fee only, whatever the usage.
/// - Prepaid: a statement of what was paid in: one line per top-up.
///
/// In every case the call figures report all calls on the invoice.
pub fn compose(plan: &Plan, period: BillingPeriod, usage: &ClaimedUsage) -> InvoiceDraft {
    let all_calls = usage
        .late
        .iter()
        .fold(usage.current, |sum, (_, late)| sum.plus(*late));
    let mut lines = Vec::new();
    let monthly_fee_micros = match plan.kind {
        PlanKind::Prepaid => 0,
        PlanKind::Postpaid | PlanKind::Fixed => plan.monthly_fee_micros,
    };
    match plan.kind {
        PlanKind::Postpaid => {
            lines.push(fee_line(plan, period));
            lines.push(InvoiceLine {
                kind: InvoiceLineKind::Usage,
                description: format!(
                    "Usage {period}: {} calls, {} billed",
                    usage.current.call_count,
                    minutes_text(usage.current.billed_seconds)
                ),
                quantity: usage.current.billed_seconds,
                amount_micros: usage.current.usage_micros,
            });
            let included_seconds = plan.included_minutes.saturating_mul(60);
            let credited_seconds = usage.current.billed_seconds.min(included_seconds);
            let credit =
                cost_of(credited_seconds, plan.per_minute_micros).min(usage.current.usage_micros);
            if credit > 0 {
                lines.push(InvoiceLine {
                    kind: InvoiceLineKind::IncludedMinutes,
                    description: format!(
                        "Included minutes: {} of {} min",
                        minutes_text(credited_seconds),
                        plan.included_minutes
                    ),
                    quantity: credited_seconds,
                    amount_micros: -credit,
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
                });
            }
        }
    }
    let total_micros = lines.iter().map(|line| line.amount_micros).sum();
    InvoiceDraft {
        lines,
        usage: all_calls,
        monthly_fee_micros,
        total_micros,
    }
}

fn fee_line(plan: &Plan, period: BillingPeriod) -> InvoiceLine {
    InvoiceLine {
        kind: InvoiceLineKind::MonthlyFee,
        description: format!("Monthly fee {period}: {}", plan.name),
        quantity: 1,
        amount_micros: plan.monthly_fee_micros,
    }
}

fn minutes_text(seconds: i64) -> String {
    format!("{}:{:02} min", seconds / 60, seconds % 60)
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

/// The current month's usage so far; stored nowhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsagePreview {
    pub customer_id: i64,
    pub period: BillingPeriod,
    pub as_of: DateTime<Utc>,
    pub usage: UsageTotals,
    pub monthly_fee_micros: i64,
    pub total_micros: i64,
    pub currency_code: String,
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
        // 100 included minutes at 0.12/min; 150 minutes used.
        let usage = ClaimedUsage {
            current: totals(30, 9000, 18_000_000),
            ..Default::default()
        };
        let draft = compose(
            &plan(PlanKind::Postpaid, 10_000_000, 120_000, 100),
            period(2026, 10),
            &usage,
        );
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
        let usage = ClaimedUsage {
            current: totals(2, 120, 240_000),
            ..Default::default()
        };
        let draft = compose(
            &plan(PlanKind::Postpaid, 5_000_000, 120_000, 100),
            period(2026, 10),
            &usage,
        );
        assert_eq!(draft.total_micros, 5_000_000);
        assert_eq!(draft.lines[2].amount_micros, -240_000);
        assert_eq!(draft.lines[2].quantity, 120);
    }

    #[test]
    fn late_usage_gets_a_line_per_month_and_no_included_minutes() {
        let usage = ClaimedUsage {
            current: totals(0, 0, 0),
            late: vec![
                (period(2026, 8), totals(1, 60, 120_000)),
                (period(2026, 9), totals(2, 180, 360_000)),
            ],
            top_ups: vec![],
        };
        let draft = compose(
            &plan(PlanKind::Postpaid, 1_000_000, 120_000, 100),
            period(2026, 10),
            &usage,
        );
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
        let usage = ClaimedUsage {
            current: totals(500, 90_000, 0),
            ..Default::default()
        };
        let draft = compose(
            &plan(PlanKind::Fixed, 29_000_000, 0, 0),
            period(2026, 10),
            &usage,
        );
        assert_eq!(draft.lines.len(), 1);
        assert_eq!(draft.total_micros, 29_000_000);
        assert_eq!(draft.usage.call_count, 500);
    }

    #[test]
    fn prepaid_invoices_state_the_top_ups() {
        let at = DateTime::parse_from_rfc3339("2026-10-03T10:00:00Z")
            .unwrap()
            .to_utc();
        let usage = ClaimedUsage {
            current: totals(4, 600, 900_000),
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
        };
        let draft = compose(
            &plan(PlanKind::Prepaid, 0, 90_000, 0),
            period(2026, 10),
            &usage,
        );
        assert!(draft.lines.iter().all(|l| l.kind == InvoiceLineKind::TopUp));
        assert_eq!(draft.total_micros, 15_000_000);
        assert_eq!(draft.usage.usage_micros, 900_000);
        assert_sums(&draft);
    }

    #[test]
    fn a_quiet_month_is_an_invoice_for_the_fee_or_for_zero() {
        let empty = ClaimedUsage::default();
        assert_eq!(
            compose(
                &plan(PlanKind::Prepaid, 0, 90_000, 0),
                period(2026, 1),
                &empty
            )
            .total_micros,
            0
        );
        assert_eq!(
            compose(
                &plan(PlanKind::Postpaid, 0, 90_000, 10),
                period(2026, 1),
                &empty
            )
            .total_micros,
            0
        );
    }

    #[test]
    fn invoice_numbers_name_the_month_and_id() {
        assert_eq!(invoice_number(period(2026, 11), 42), "INV-2026-11-000042");
    }
}
