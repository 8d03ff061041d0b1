//! The billing scheduler: at startup it catches up every ended month that is
//! not fully invoiced (a service that was down on the 1st still bills), then
//! runs the cycle for the previous month at 00:00 on each 1st in the billing
//! time zone. Every replica may run it: issuing is idempotent in the database.

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
            let next_start = BillingPeriod::containing(now, invoicing.tz()).end(invoicing.tz());
            (next_start - now).to_std().unwrap_or_default().min(MAX_NAP)
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
