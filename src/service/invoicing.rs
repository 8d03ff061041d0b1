//! The invoicing use cases, shared by the gRPC InvoiceService and the
//! scheduler: issue an invoice, run a billing cycle, preview the current
//! month, consolidate a customer's history, list and watch invoices. Each
//! public use case takes the caller's principal and checks it first.
//! Billing rules come from `domain::invoice`, persistence from `storage`;
//! this module only sequences them and announces each newly issued invoice
//! to watchers.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Datelike, TimeDelta, Utc};
use chrono_tz::Tz;
use tokio::sync::{broadcast, watch};

use super::Access;
use crate::clock::Clock;
use crate::document::{self, DocumentFormat, DocumentSource, RenderedDocument};
use crate::domain::access::{self, Action, CustomerScope, Principal};
use crate::domain::delivery::{self, Event};
use crate::domain::invoice::{
    self, ConsolidatedMonth, IncludedBasis, Invoice, InvoiceDraft, MonthRows, UsageDetail,
    UsagePreview,
};
use crate::domain::model::{Customer, Operator};
use crate::domain::period::BillingPeriod;
use crate::domain::plan::{Plan, PlanKind};
use crate::error::{AppError, AppResult};
use crate::shutdown::{Stopping, until_stopping};
use crate::storage::{FeedEvent, InvoiceFilter, MonthQuery, NewDelivery, NewInvoice, Store};

/// Customers fetched per page while running a billing cycle.
const CYCLE_PAGE: u64 = 10_000;
/// Invoices issued per transaction by a billing cycle for customers whose
/// plans need only sums: one commit and a fixed number of set-based
/// statements for many. The size bounds how long a transaction holds its
/// customers' locks (storing their calls waits) and the rows it reads, here
/// one per customer, so a chunk is large and the month's calls are read in
/// few passes (on PostgreSQL, whose heap keeps arrival order, each pass
/// reads most of the table's pages: BENCHMARKS.md, "AddCall as one
/// statement again, larger cycle chunks, keys per customer").
const CYCLE_TRANSACTION_SUMMED: usize = 5_000;
/// Invoices issued per transaction for customers whose plans need every
/// call (included minutes, tariffs): a chunk holds each of their calls in
/// memory, so it is smaller.
const CYCLE_TRANSACTION_EACH_CALL: usize = 1_000;

/// What issuing did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IssueOutcome {
    /// Newly issued by this call.
    Issued(Invoice),
    /// The period's invoice existed already; it is returned unchanged.
    AlreadyIssued(Invoice),
}

/// What issuing one customer's month did: its outcome, and the invoices of
/// the customer's earlier months that were missing and were issued first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssueReport {
    pub outcome: IssueOutcome,
    /// Oldest first.
    pub earlier: Vec<Invoice>,
}

/// A customer to issue a month for, with what issuing needs of it.
#[derive(Debug, Clone, Copy)]
struct Billed<'a> {
    customer_id: i64,
    created_at: DateTime<Utc>,
    plan: &'a Plan,
}

/// What GenerateInvoice produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Generated {
    Invoice(Invoice),
    Preview(UsagePreview),
}

/// Failed customers a cycle summary describes, at most; `failed` counts
/// them all.
pub const MAX_REPORTED_FAILURES: usize = 100;

/// What a billing cycle did. Every customer that existed during the period
/// is counted once in `issued`, `already_issued` or `failed`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CycleSummary {
    pub period: Option<BillingPeriod>,
    /// Invoices of the period issued by this run.
    pub issued: i64,
    /// Customers whose invoice for the period existed before.
    pub already_issued: i64,
    /// Invoices of earlier months that were missing and were issued first.
    pub earlier_issued: i64,
    /// Customers whose invoice could not be issued; the next cycle retries.
    pub failed: i64,
    /// The first [`MAX_REPORTED_FAILURES`] of them: customer id and why.
    pub failures: Vec<(i64, String)>,
}

impl CycleSummary {
    fn fail(&mut self, customer_id: i64, err: &AppError) {
        tracing::warn!(customer_id, error = %err.detail(), "billing cycle: customer not invoiced");
        self.failed += 1;
        if self.failures.len() < MAX_REPORTED_FAILURES {
            self.failures.push((customer_id, err.to_string()));
        }
    }
}

/// What an invoice document of `customer_id` shows besides the invoice:
/// the customer, its plan's kind and its issuer.
pub(crate) async fn document_parties(
    store: &Store,
    customer_id: i64,
) -> AppResult<(Customer, PlanKind, Option<Operator>)> {
    let customer = store.customer(customer_id).await?;
    DocumentParties::default().of(store, customer).await
}

/// The plans' kinds and issuers documents name, each read once however
/// many documents name it (a delivery batch's emails share a few).
#[derive(Debug, Default)]
pub(crate) struct DocumentParties {
    plan_kinds: Mutex<HashMap<i64, PlanKind>>,
    operators: Mutex<HashMap<i64, Operator>>,
}

impl DocumentParties {
    /// What a document of `customer` shows besides the invoice: the
    /// customer, its plan's kind and its issuer, its first operator.
    pub(crate) async fn of(
        &self,
        store: &Store,
        customer: Customer,
    ) -> AppResult<(Customer, PlanKind, Option<Operator>)> {
        let plan_kind = self.plan_kind(store, customer.plan_id).await?;
        let issuer = match customer.operator_ids.first() {
            Some(&operator_id) => Some(self.operator(store, operator_id).await?),
            None => None,
        };
        Ok((customer, plan_kind, issuer))
    }

    async fn plan_kind(&self, store: &Store, plan_id: i64) -> AppResult<PlanKind> {
        if let Some(&kind) = lock(&self.plan_kinds).get(&plan_id) {
            return Ok(kind);
        }
        let kind = store.plan(plan_id).await?.kind;
        lock(&self.plan_kinds).insert(plan_id, kind);
        Ok(kind)
    }

    async fn operator(&self, store: &Store, operator_id: i64) -> AppResult<Operator> {
        if let Some(operator) = lock(&self.operators).get(&operator_id) {
            return Ok(operator.clone());
        }
        let operator = store.operator(operator_id).await?;
        lock(&self.operators).insert(operator_id, operator.clone());
        Ok(operator)
    }
}

/// A poisoned map of [`DocumentParties`] is only a cache: its contents are
/// still sound.
fn lock<T>(map: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    map.lock().unwrap_or_else(|e| e.into_inner())
}

/// The invoicing service. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Invoicing {
    store: Store,
    access: Access,
    clock: Clock,
    tz: Tz,
    /// How long after its end a month closes: until then its calls are
    /// still its own, and it cannot be invoiced.
    grace: TimeDelta,
    /// The highest invoice id known to be issued, by this process or (heard
    /// through [`Invoicing::relay_invoices`]) another replica; watchers wait
    /// on it, and a catch-up wakes them with the value unchanged.
    issued: Arc<watch::Sender<i64>>,
    /// Newly issued invoices, read once for every watcher of this process
    /// by [`Invoicing::serve_feed`].
    feed: broadcast::Sender<FeedItem>,
}

/// Invoices the feed reads per query.
const FEED_PAGE: u64 = 100;
/// Invoices the feed holds for watchers that have not taken them yet; a
/// watcher that falls further behind reads its own way back.
const FEED_BUFFER: usize = 1024;

/// One newly issued invoice, as every watcher of this process receives it.
#[derive(Debug, Clone)]
pub struct FeedItem {
    pub invoice: Arc<Invoice>,
    /// The operators its customer is linked to, for the watchers' filters.
    pub operators: Arc<[i64]>,
}

impl Invoicing {
    /// Invoicing over `store`, with periods in `tz`, each closing `grace`
    /// after its end.
    pub fn new(store: Store, clock: Clock, tz: Tz, grace: TimeDelta) -> Self {
        Invoicing {
            access: Access::new(store.clone()),
            store,
            clock,
            tz,
            grace,
            issued: Arc::new(watch::Sender::new(0)),
            feed: broadcast::Sender::new(FEED_BUFFER),
        }
    }

    /// The billing time zone.
    pub fn tz(&self) -> Tz {
        self.tz
    }

    /// The service clock.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// When `period` closes: its end plus the grace period.
    pub fn closes_at(&self, period: BillingPeriod) -> DateTime<Utc> {
        period.closes_at(self.tz, self.grace)
    }

    /// `FAILED_PRECONDITION` unless `period` has closed by `now`.
    fn check_closed(&self, period: BillingPeriod, now: DateTime<Utc>) -> AppResult<()> {
        let closes = self.closes_at(period);
        if closes > now {
            return Err(AppError::FailedPrecondition(format!(
                "period {period} has not closed yet: it closes at {} (its end plus the invoice grace period of {} s), until then its calls may still arrive",
                closes.to_rfc3339(),
                self.grace.num_seconds()
            )));
        }
        Ok(())
    }

    /// A receiver that changes whenever an invoice is issued, here or by
    /// another replica, and at each catch-up.
    pub fn issued(&self) -> watch::Receiver<i64> {
        self.issued.subscribe()
    }

    /// Relays invoices issued by other replicas to this process's watchers
    /// until `stopping`: on PostgreSQL through one listening connection
    /// (`LISTEN/NOTIFY`); and, on every backend, wakes all watchers every
    /// `catch_up` to look for themselves, so that a notification lost with
    /// a connection never loses an invoice.
    pub async fn relay_invoices(self, catch_up: Duration, mut stopping: Stopping) {
        let mut catch_up = tokio::time::interval(catch_up);
        catch_up.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut listener = None;
        // Whether to (re)open the listener now: at start, after a lost
        // connection, and at each catch-up while it cannot be opened.
        let mut open = self.store.listens_for_invoices();
        loop {
            if open && listener.is_none() {
                open = false;
                match self.store.invoice_listener().await {
                    Ok(opened) => {
                        listener = opened;
                        // Whatever was issued while no one listened.
                        self.wake_watchers();
                    }
                    Err(err) => tracing::warn!(
                        error = %err.detail(),
                        "invoice feed: cannot listen for other replicas' invoices; retrying at the next catch-up"
                    ),
                }
            }
            let event = async {
                match listener.as_mut() {
                    Some(listener) => listener.next().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                event = event => match event {
                    Ok(FeedEvent::Issued(id)) => self.announce(id),
                    Ok(FeedEvent::Missed) => self.wake_watchers(),
                    Err(err) => {
                        tracing::warn!(error = %err.detail(), "invoice feed: listening connection lost");
                        listener = None;
                        open = true;
                    }
                },
                _ = catch_up.tick() => {
                    self.wake_watchers();
                    open = self.store.listens_for_invoices();
                }
                () = until_stopping(&mut stopping) => return,
            }
        }
    }

    /// The feed's current position (the highest invoice id), where
    /// [`Invoicing::serve_feed`] starts.
    pub async fn feed_position(&self) -> AppResult<i64> {
        self.store.feed_position().await
    }

    /// Newly issued invoices, from the moment of subscribing.
    pub fn subscribe_feed(&self) -> broadcast::Receiver<FeedItem> {
        self.feed.subscribe()
    }

    /// Reads each newly issued invoice once for every watcher of this
    /// process, from `position` on, until `stopping`: woken like the
    /// watchers were (an issue here, another replica's notification, a
    /// catch-up), it reads the new page (under the feed lock, see
    /// `Store::feed_page`) and the operators of its customers, and
    /// broadcasts them; each watcher filters in memory. A failed read is
    /// retried at the next wake, from where it stopped.
    pub async fn serve_feed(self, mut position: i64, mut stopping: Stopping) {
        let mut issued = self.issued();
        loop {
            issued.borrow_and_update();
            if let Err(err) = self.publish_new(&mut position).await {
                tracing::warn!(error = %err.detail(), "invoice feed: reading new invoices failed; retrying at the next wake");
            }
            tokio::select! {
                _ = issued.changed() => {}
                () = until_stopping(&mut stopping) => return,
            }
        }
    }

    /// Broadcasts the invoices after `position`, advancing it.
    async fn publish_new(&self, position: &mut i64) -> AppResult<()> {
        loop {
            let page = self
                .store
                .feed_page(InvoiceFilter::All, *position, FEED_PAGE)
                .await?;
            let full = page.len() as u64 == FEED_PAGE;
            let mut customers: Vec<i64> = page.iter().map(|i| i.customer_id).collect();
            customers.sort_unstable();
            customers.dedup();
            let operators = self.store.operators_of(&customers).await?;
            for invoice in page {
                *position = invoice.id;
                let linked = operators
                    .get(&invoice.customer_id)
                    .map_or_else(|| Arc::from([]), |ids| Arc::from(ids.as_slice()));
                // No receiver is no watcher: nothing to do.
                let _ = self.feed.send(FeedItem {
                    invoice: Arc::new(invoice),
                    operators: linked,
                });
            }
            if !full {
                return Ok(());
            }
        }
    }

    /// Wakes every watcher to read the feed, with no new id known.
    fn wake_watchers(&self) {
        self.issued.send_modify(|_| {});
    }

    /// GenerateInvoice: with a period, issue (or return) that closed
    /// period's invoice; without, on the 1st issue last month's once it has
    /// closed (before, preview it), on other days preview this month.
    pub async fn generate(
        &self,
        principal: &Principal,
        customer_id: i64,
        period: Option<BillingPeriod>,
    ) -> AppResult<Generated> {
        let (customer, plan) = self
            .customer_and_plan(principal, Action::GenerateInvoice, customer_id)
            .await?;
        let now = self.clock.now();
        let today = now.with_timezone(&self.tz);
        let current = BillingPeriod::containing(now, self.tz);
        let period = match period {
            Some(period) => period,
            None if today.day() == 1 && self.closes_at(current.previous()) <= now => {
                current.previous()
            }
            None => {
                // On the 1st, before the close, last month is still open;
                // a customer created this month has no last month.
                let first = BillingPeriod::containing(customer.created_at, self.tz);
                let open = if today.day() == 1 && current.previous() >= first {
                    current.previous()
                } else {
                    current
                };
                return Ok(Generated::Preview(
                    self.preview(&customer, &plan, open, now).await?,
                ));
            }
        };
        let invoice = match self.issue(&customer, &plan, period).await?.outcome {
            IssueOutcome::Issued(invoice) | IssueOutcome::AlreadyIssued(invoice) => invoice,
        };
        Ok(Generated::Invoice(invoice))
    }

    /// Issues (or returns) one customer's invoice for a closed period,
    /// after issuing every earlier month of the customer still missing
    /// (months are billed in order).
    pub async fn issue(
        &self,
        customer: &Customer,
        plan: &Plan,
        period: BillingPeriod,
    ) -> AppResult<IssueReport> {
        let now = self.clock.now();
        self.check_closed(period, now)?;
        if period.end(self.tz) <= customer.created_at {
            return Err(AppError::FailedPrecondition(format!(
                "customer {} did not exist yet in {period} (created {})",
                customer.id,
                customer.created_at.to_rfc3339()
            )));
        }
        let billed = Billed {
            customer_id: customer.id,
            created_at: customer.created_at,
            plan,
        };
        self.issue_together(&[billed], period, now)
            .await?
            .pop()
            .ok_or_else(|| AppError::internal("issuing returned no outcome"))
    }

    /// Issues `period` for every customer of `billed` in one transaction,
    /// each after its missing earlier months, and returns each one's report
    /// in order. Round *k* issues the *k*-th month due of every customer,
    /// so each customer's months stay in order, and every round is a fixed
    /// number of set-based statements: the months' rows are read, composed
    /// by `domain::invoice` (the one place the rules live, as for previews
    /// and consolidated months), and the invoices inserted; then each
    /// customer's last invoiced month advances. No call or top-up is
    /// written. Any error rolls the whole batch back.
    async fn issue_together(
        &self,
        billed: &[Billed<'_>],
        period: BillingPeriod,
        now: DateTime<Utc>,
    ) -> AppResult<Vec<IssueReport>> {
        let ids: Vec<i64> = billed.iter().map(|b| b.customer_id).collect();
        let (txn, invoiced_through) = self.store.begin_issue(&ids).await?;
        let months: Vec<Vec<BillingPeriod>> = billed
            .iter()
            .map(|b| {
                invoice::months_to_issue(
                    BillingPeriod::containing(b.created_at, self.tz),
                    period,
                    invoiced_through.get(&b.customer_id).copied().flatten(),
                )
            })
            .collect();
        let rounds = months.iter().map(Vec::len).max().unwrap_or(0);
        let mut issued: Vec<Vec<Invoice>> = vec![Vec::new(); billed.len()];
        for round in 0..rounds {
            let due: Vec<(usize, BillingPeriod)> = months
                .iter()
                .enumerate()
                .filter_map(|(index, months)| months.get(round).map(|month| (index, *month)))
                .collect();
            let queries: Vec<MonthQuery> = due
                .iter()
                .map(|&(index, month)| {
                    self.month_query(billed[index].customer_id, billed[index].plan, month)
                })
                .collect();
            let rows = txn.month_rows(&queries).await?;
            let mut invoices = Vec::with_capacity(due.len());
            for ((&(index, month), query), rows) in due.iter().zip(&queries).zip(rows) {
                let plan = billed[index].plan;
                invoices.push(NewInvoice {
                    customer_id: billed[index].customer_id,
                    period: month,
                    period_start: month.start(self.tz),
                    period_end: month.end(self.tz),
                    issued_at: now,
                    currency_code: plan.currency_code.clone(),
                    draft: self.compose(plan, month, query.detail, rows)?,
                });
            }
            for (invoice, (index, _)) in txn.insert_invoices(invoices).await?.into_iter().zip(due) {
                issued[index].push(invoice);
            }
        }
        let recipients = txn.recipients(&ids, self.store.outbox().email_on).await?;
        let mut deliveries = Vec::new();
        for (b, invoices) in billed.iter().zip(&issued) {
            let Some(recipients) = recipients.get(&b.customer_id) else {
                continue;
            };
            for invoice in invoices {
                for plan in delivery::deliveries_of(
                    Event::InvoiceIssued,
                    b.customer_id,
                    Some(invoice.id),
                    recipients,
                ) {
                    deliveries.push(NewDelivery {
                        public_id: delivery::new_delivery_id()?,
                        plan,
                        payload: String::new(),
                    });
                }
            }
        }
        txn.insert_deliveries(&deliveries, now).await?;
        let through: Vec<(i64, BillingPeriod)> = billed
            .iter()
            .zip(&issued)
            .filter_map(|(b, invoices)| invoices.last().map(|last| (b.customer_id, last.period)))
            .collect();
        txn.advance_invoiced_through(&through).await?;
        let newest = issued.iter().flatten().map(|invoice| invoice.id).max();
        txn.commit(newest).await?;
        self.store
            .metrics()
            .invoices_issued(issued.iter().map(Vec::len).sum::<usize>() as u64);
        if !deliveries.is_empty() {
            self.store.outbox().wake.notify_one();
        }
        let mut reports = Vec::with_capacity(billed.len());
        for (b, mut invoices) in billed.iter().zip(issued) {
            for invoice in &invoices {
                self.announce(invoice.id);
            }
            let outcome = match invoices.pop_if(|last| last.period == period) {
                Some(invoice) => IssueOutcome::Issued(invoice),
                None => IssueOutcome::AlreadyIssued(
                    self.store
                        .invoice_for(b.customer_id, period)
                        .await?
                        .ok_or_else(|| {
                            AppError::FailedPrecondition(format!(
                                "customer {} has invoices after {period} but none for it",
                                b.customer_id
                            ))
                        })?,
                ),
            };
            reports.push(IssueReport {
                outcome,
                earlier: invoices,
            });
        }
        Ok(reports)
    }

    /// What to read of one customer's billing month.
    fn month_query(&self, customer_id: i64, plan: &Plan, period: BillingPeriod) -> MonthQuery {
        MonthQuery {
            customer_id,
            period,
            start: period.start(self.tz),
            end: period.end(self.tz),
            detail: UsageDetail::of(plan),
        }
    }

    /// The invoice of `period` under `plan` from its billing month's rows:
    /// the one way invoices, previews and consolidated months are made.
    fn compose(
        &self,
        plan: &Plan,
        period: BillingPeriod,
        detail: UsageDetail,
        rows: MonthRows,
    ) -> AppResult<InvoiceDraft> {
        let tz = self.tz;
        let usage = invoice::month_usage(
            period,
            period.start(tz),
            |at| BillingPeriod::containing(at, tz),
            detail,
            rows,
            plan.included_seconds(),
            &IncludedBasis::of(plan),
        )?;
        invoice::compose(plan, period, &usage)
    }

    /// Wakes the invoice watchers.
    fn announce(&self, invoice_id: i64) {
        self.issued
            .send_modify(|last| *last = (*last).max(invoice_id));
    }

    /// The invoice of `month` in `year`, or in the latest year that month has
    /// started when `year` is `None`.
    pub async fn month_invoice(
        &self,
        principal: &Principal,
        customer_id: i64,
        year: Option<i32>,
        month: i32,
    ) -> AppResult<Invoice> {
        self.access
            .customer(principal, Action::ReadInvoices, customer_id)
            .await?;
        self.store.ensure_customer(customer_id).await?;
        let period = match year {
            Some(year) => BillingPeriod::new("period", year, month)?,
            None => BillingPeriod::latest_started("period", month, self.clock.now(), self.tz)?,
        };
        self.store
            .replica()
            .invoice_for(customer_id, period)
            .await?
            .ok_or_else(|| {
                AppError::NotFound(format!(
                    "customer {customer_id} has no invoice for {period}"
                ))
            })
    }

    /// Invoice `invoice_id` rendered as `format`, for whoever may read the
    /// customer's invoices; `NOT_FOUND` alike whether it does not exist or
    /// is outside what `principal` may see.
    pub async fn invoice_document(
        &self,
        principal: &Principal,
        invoice_id: i64,
        format: DocumentFormat,
    ) -> AppResult<RenderedDocument> {
        access::permits(principal, Action::ReadInvoices)?;
        let replica = self.store.replica();
        let invoice = match replica.invoice(invoice_id).await? {
            Some(invoice) if self.access.sees(principal, invoice.customer_id).await? => invoice,
            _ => return Err(AppError::not_found("invoice", invoice_id)),
        };
        let (customer, plan_kind, issuer) = document_parties(&replica, invoice.customer_id).await?;
        let tz = self.tz;
        // Rendering a long invoice takes milliseconds of CPU: off the
        // request threads.
        tokio::task::spawn_blocking(move || {
            document::render(
                DocumentSource {
                    invoice: &invoice,
                    customer: &customer,
                    plan_kind,
                    issuer: issuer.as_ref(),
                    tz,
                },
                format,
            )
        })
        .await
        .map_err(AppError::internal)
    }

    /// Issues every missing invoice of a closed period (default: the
    /// previous month), each after the customer's missing earlier months.
    /// Safe to run again and concurrently: the database keeps one invoice
    /// per customer and period. A customer whose invoice cannot be issued
    /// is logged, counted and skipped (the next cycle retries it); only an
    /// unavailable database ends the cycle early, keeping what it committed.
    pub async fn run_cycle(
        &self,
        principal: &Principal,
        period: Option<BillingPeriod>,
    ) -> AppResult<CycleSummary> {
        access::permits(principal, Action::RunBillingCycle)?;
        let now = self.clock.now();
        let period = period.unwrap_or_else(|| BillingPeriod::containing(now, self.tz).previous());
        self.check_closed(period, now)?;
        let end = period.end(self.tz);
        // Plans are immutable: each is read once per cycle.
        let mut plans: HashMap<i64, Plan> = HashMap::new();
        let mut summary = CycleSummary {
            period: Some(period),
            ..CycleSummary::default()
        };
        let mut after_id = 0;
        loop {
            let page = self
                .store
                .customers_to_invoice(period, end, after_id, CYCLE_PAGE)
                .await?;
            let Some(last) = page.last() else { break };
            after_id = last.customer_id;
            for pending in &page {
                if let Entry::Vacant(slot) = plans.entry(pending.plan_id) {
                    slot.insert(self.store.plan(pending.plan_id).await?);
                }
            }
            let (summed, each_call): (Vec<Billed<'_>>, Vec<Billed<'_>>) = page
                .iter()
                .map(|pending| Billed {
                    customer_id: pending.customer_id,
                    created_at: pending.created_at,
                    plan: &plans[&pending.plan_id],
                })
                .partition(|billed| UsageDetail::of(billed.plan) == UsageDetail::Summed);
            let chunks = summed
                .chunks(CYCLE_TRANSACTION_SUMMED)
                .chain(each_call.chunks(CYCLE_TRANSACTION_EACH_CALL));
            for billed in chunks {
                for (customer_id, result) in self.issue_chunk(billed, period, now).await? {
                    match result {
                        Ok(report) => {
                            summary.earlier_issued +=
                                i64::try_from(report.earlier.len()).unwrap_or(i64::MAX);
                            if let IssueOutcome::Issued(_) = report.outcome {
                                summary.issued += 1;
                            }
                        }
                        Err(err) => summary.fail(customer_id, &err),
                    }
                }
            }
        }
        let existing = self.store.customers_existing_before(end).await?;
        summary.already_issued = (existing - summary.issued - summary.failed).max(0);
        self.store.metrics().billing_cycle();
        Ok(summary)
    }

    /// Issues a chunk in one transaction; if that fails for anything but an
    /// unavailable database, issues its customers one by one, so one
    /// customer's failure costs only that customer its invoice.
    async fn issue_chunk(
        &self,
        billed: &[Billed<'_>],
        period: BillingPeriod,
        now: DateTime<Utc>,
    ) -> AppResult<Vec<(i64, AppResult<IssueReport>)>> {
        let ids = billed.iter().map(|b| b.customer_id);
        match self.issue_together(billed, period, now).await {
            Ok(reports) => return Ok(ids.zip(reports.into_iter().map(Ok)).collect()),
            Err(err @ AppError::Unavailable(_)) => return Err(err),
            Err(_) => {}
        }
        let mut results = Vec::with_capacity(billed.len());
        for one in billed {
            let result = match self
                .issue_together(std::slice::from_ref(one), period, now)
                .await
            {
                Ok(mut reports) => reports
                    .pop()
                    .ok_or_else(|| AppError::internal("issuing returned no outcome")),
                Err(err @ AppError::Unavailable(_)) => return Err(err),
                Err(err) => Err(err),
            };
            results.push((one.customer_id, result));
        }
        Ok(results)
    }

    /// Every closed month since the first customer that is not fully
    /// invoiced yet, oldest first.
    pub async fn months_to_catch_up(&self) -> AppResult<Vec<BillingPeriod>> {
        let Some(first) = self.store.first_customer_created_at().await? else {
            return Ok(Vec::new());
        };
        let now = self.clock.now();
        let mut months = Vec::new();
        let mut period = BillingPeriod::containing(first, self.tz);
        while self.closes_at(period) <= now {
            let missing = self
                .store
                .customers_to_invoice(period, period.end(self.tz), 0, 1)
                .await?;
            if !missing.is_empty() {
                months.push(period);
            }
            period = period.next();
        }
        Ok(months)
    }

    /// An open month's invoice as it would be issued now, stored nowhere:
    /// the same rows and the same composition as the invoice.
    async fn preview(
        &self,
        customer: &Customer,
        plan: &Plan,
        period: BillingPeriod,
        now: DateTime<Utc>,
    ) -> AppResult<UsagePreview> {
        let query = self.month_query(customer.id, plan, period);
        let rows = self
            .store
            .month_rows(&[query])
            .await?
            .pop()
            .unwrap_or_default();
        let draft = self.compose(plan, period, query.detail, rows)?;
        Ok(UsagePreview {
            customer_id: customer.id,
            period,
            as_of: now,
            usage: draft.usage,
            monthly_fee_micros: draft.monthly_fee_micros,
            total_micros: draft.total_micros,
            currency_code: plan.currency_code.clone(),
            lines: draft.lines,
        })
    }

    /// The months a consolidated history covers: the requested range
    /// (default: the customer's first month to the current month) clamped to
    /// those bounds, since no month outside them has anything to show;
    /// `None` when nothing of the range lies within them.
    pub fn consolidated_range(
        &self,
        customer: &Customer,
        from: Option<BillingPeriod>,
        to: Option<BillingPeriod>,
    ) -> AppResult<Option<(BillingPeriod, BillingPeriod)>> {
        if let (Some(from), Some(to)) = (from, to)
            && from > to
        {
            return Err(AppError::invalid(
                "to_period",
                format!("{to} is before from_period {from}"),
            ));
        }
        let first = BillingPeriod::containing(customer.created_at, self.tz);
        let current = BillingPeriod::containing(self.clock.now(), self.tz);
        let from = from.map_or(first, |from| from.max(first));
        let to = to.map_or(current, |to| to.min(current));
        Ok((from <= to).then_some((from, to)))
    }

    /// The consolidated months `from..=to` of a customer with any activity,
    /// oldest first: each issued month as its invoice states it, each other
    /// month as its invoice would be issued now (the same rows and
    /// composition). A fixed number of queries whatever the number of
    /// months.
    pub async fn consolidated_page(
        &self,
        customer: &Customer,
        plan: &Plan,
        from: BillingPeriod,
        to: BillingPeriod,
    ) -> AppResult<Vec<ConsolidatedMonth>> {
        // Consolidated months may lag the primary: the reads go to the read
        // replica.
        let store = self.store.replica();
        let mut issued: BTreeMap<BillingPeriod, ConsolidatedMonth> = store
            .invoiced_months(customer.id, from, to)
            .await?
            .into_iter()
            .map(|month| (month.period, month))
            .collect();
        let mut open = Vec::new();
        let mut month = from;
        loop {
            if !issued.contains_key(&month) {
                open.push(month);
            }
            if month >= to {
                break;
            }
            month = month.next();
        }
        let queries: Vec<MonthQuery> = open
            .iter()
            .map(|&month| self.month_query(customer.id, plan, month))
            .collect();
        let mut open_rows = queries
            .iter()
            .zip(store.month_rows(&queries).await?)
            .peekable();
        let mut months = Vec::new();
        let mut month = from;
        loop {
            if let Some(invoiced) = issued.remove(&month) {
                months.push(invoiced);
            } else if let Some((query, rows)) = open_rows.next_if(|(q, _)| q.period == month) {
                let top_ups = rows.top_ups.len();
                let draft = self.compose(plan, month, query.detail, rows)?;
                let consolidated = ConsolidatedMonth::open(month, &draft, &plan.currency_code);
                if consolidated.has_activity(top_ups) {
                    months.push(consolidated);
                }
            }
            if month >= to {
                break;
            }
            month = month.next();
        }
        Ok(months)
    }

    /// Up to `limit` invoices after `after_id`, of one customer or of every
    /// customer the caller may see.
    pub async fn list_invoices(
        &self,
        principal: &Principal,
        customer_id: Option<i64>,
        after_id: i64,
        limit: u64,
    ) -> AppResult<Vec<Invoice>> {
        let filter = match customer_id {
            Some(customer_id) => {
                let pass = self
                    .access
                    .customer(principal, Action::ReadInvoices, customer_id)
                    .await?;
                self.store.ensure_customer(pass.customer_id()).await?;
                InvoiceFilter::Customer(pass.customer_id())
            }
            None => self.scope_filter(principal, Action::ReadInvoices)?,
        };
        self.store
            .replica()
            .list_invoices(filter, after_id, limit)
            .await
    }

    /// The invoices a `WatchInvoices` stream of `principal` may carry.
    pub fn watch_filter(&self, principal: &Principal) -> AppResult<InvoiceFilter> {
        self.scope_filter(principal, Action::WatchInvoices)
    }

    /// Up to `limit` invoices matching `filter` after `after_id`, for a
    /// feed whose filter was checked by [`Invoicing::watch_filter`].
    pub async fn feed_page(
        &self,
        filter: InvoiceFilter,
        after_id: i64,
        limit: u64,
    ) -> AppResult<Vec<Invoice>> {
        self.store.feed_page(filter, after_id, limit).await
    }

    fn scope_filter(&self, principal: &Principal, action: Action) -> AppResult<InvoiceFilter> {
        access::permits(principal, action)?;
        Ok(match access::customer_scope(principal) {
            CustomerScope::All => InvoiceFilter::All,
            CustomerScope::Operator(id) => InvoiceFilter::Operator(id),
            CustomerScope::Customer(id) => InvoiceFilter::Customer(id),
        })
    }

    /// A customer and its plan for a consolidated history, or `NOT_FOUND`.
    pub async fn consolidated_customer(
        &self,
        principal: &Principal,
        customer_id: i64,
    ) -> AppResult<(Customer, Plan)> {
        self.customer_and_plan(principal, Action::StreamConsolidated, customer_id)
            .await
    }

    /// A customer the caller may `action` on, and its plan, or `NOT_FOUND`.
    async fn customer_and_plan(
        &self,
        principal: &Principal,
        action: Action,
        customer_id: i64,
    ) -> AppResult<(Customer, Plan)> {
        let pass = self.access.customer(principal, action, customer_id).await?;
        let customer = self.store.customer(pass.customer_id()).await?;
        let plan = self.store.plan(customer.plan_id).await?;
        Ok((customer, plan))
    }
}
