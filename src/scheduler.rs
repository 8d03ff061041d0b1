//! The billing scheduler: at startup it catches up every closed month that
//! is not fully invoiced (a service that was down on the 1st still bills),
//! then runs the cycle for the previous month when it closes: local
//! midnight of each 1st in the billing time zone plus the invoice grace
//! period. Every replica may run it: issuing is idempotent in the database.

use std::time::Duration;

use crate::domain::access::Principal;
use crate::domain::period::BillingPeriod;
use crate::service::Invoicing;
use crate::shutdown::{Stopping, until_stopping};

/// The longest single sleep: the next month start is recomputed at least
/// this often, so a changed system clock is noticed.
const MAX_NAP: Duration = Duration::from_secs(3600);
/// Wait before retrying after a failed cycle.
const RETRY_AFTER: Duration = Duration::from_secs(60);

/// The scheduler acts as the service itself.
const SCHEDULER: Principal = Principal::System("the billing scheduler");

/// Runs until `stopping` turns true.
pub async fn run(invoicing: Invoicing, mut stopping: Stopping) {
    let mut clock_moved = invoicing.clock().moved();
    loop {
        let pending = match invoicing.months_to_catch_up().await {
            Ok(months) => months,
            Err(err) => {
                tracing::error!(error = %err, "scheduler: cannot find months to invoice");
                Vec::new()
            }
        };
        let mut failed = false;
        for period in pending {
            failed |= !run_cycle(&invoicing, period).await;
        }
        let nap = if failed {
            RETRY_AFTER
        } else {
            let now = invoicing.clock().now();
            let current = BillingPeriod::containing(now, invoicing.tz());
            // The previous month closes on this month's 1st, after the
            // grace; past that, this month is the next to close.
            let previous_closes = invoicing.closes_at(current.previous());
            let next_close = if now < previous_closes {
                previous_closes
            } else {
                invoicing.closes_at(current)
            };
            (next_close - now).to_std().unwrap_or_default().min(MAX_NAP)
        };
        tokio::select! {
            () = tokio::time::sleep(nap) => {}
            changed = clock_moved.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = until_stopping(&mut stopping) => return,
        }
    }
}

/// Runs one cycle and logs its summary; false if it failed as a whole.
async fn run_cycle(invoicing: &Invoicing, period: BillingPeriod) -> bool {
    match invoicing.run_cycle(&SCHEDULER, Some(period)).await {
        Ok(summary) => {
            tracing::info!(
                period = %period,
                issued = summary.issued,
                already_issued = summary.already_issued,
                earlier_issued = summary.earlier_issued,
                failed = summary.failed,
                "billing cycle complete"
            );
            // Customers that failed are retried by the next cycle (the next
            // 1st, a restart, or RunBillingCycle), not in a tight loop: their
            // failures are rarely transient.
            true
        }
        Err(err) => {
            tracing::error!(period = %period, error = %err, "billing cycle failed");
            false
        }
    }
}
