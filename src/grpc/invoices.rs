//! `billing.v1.InvoiceService`: invoices, previews, consolidated history,
//! billing cycles and the live invoice feed.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{broadcast, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::IdPage;
use super::auth::caller_may;
use super::convert::period;
use super::pb::{self, invoice_service_server::InvoiceService};
use super::slots::StreamSlots;
use crate::document::DocumentFormat;
use crate::domain::access::Action;
use crate::domain::validation as valid;
use crate::error::AppError;
use crate::service::invoicing::{Generated, Invoicing};
use crate::shutdown::{Stopping, until_stopping};
use crate::storage::InvoiceFilter;

/// Invoices sent per database read while replaying history.
const WATCH_BATCH: u64 = 100;
/// Invoices the relay holds for watchers that have not taken them yet; a
/// watcher that falls further behind reads its own way back.
const FEED_BUFFER: usize = 1024;
/// Messages buffered per server stream.
const STREAM_BUFFER: usize = 16;
/// Months of consolidated history computed per page (three queries each).
const CONSOLIDATED_PAGE_MONTHS: usize = 120;

type ServerStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The InvoiceService implementation.
#[derive(Debug, Clone)]
pub struct InvoiceApi {
    invoicing: Invoicing,
    stopping: Stopping,
    /// The open WatchInvoices streams.
    watchers: StreamSlots,
    /// The shared feed, converted to the contract once for every watcher.
    feed: Feeds,
}

/// What watchers of this process receive from the shared feed.
#[derive(Debug, Clone)]
enum Delivery {
    /// A newly issued invoice, converted once.
    Invoice(Arc<pb::Invoice>),
    /// The relay fell behind the service's feed and lost invoices: every
    /// watcher reads its own way back.
    Gap,
}

/// One broadcast channel per filter watched on this process, so that an
/// invoice wakes only the watchers it is for: those of all invoices, of its
/// customer, and of the operators its customer is linked to.
#[derive(Debug, Clone, Default)]
struct Feeds(Arc<std::sync::Mutex<HashMap<InvoiceFilter, broadcast::Sender<Delivery>>>>);

impl Feeds {
    /// A receiver of the invoices `filter` passes, from now on.
    fn subscribe(&self, filter: InvoiceFilter) -> broadcast::Receiver<Delivery> {
        let mut feeds = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        feeds
            .entry(filter)
            .or_insert_with(|| broadcast::channel(FEED_BUFFER).0)
            .subscribe()
    }

    /// Passes `delivery` to the watchers of each of `filters` (all of
    /// them: `None`), forgetting channels no watcher holds any more.
    fn send(&self, filters: Option<&[InvoiceFilter]>, delivery: &Delivery) {
        let mut feeds = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        feeds.retain(|_, feed| feed.receiver_count() > 0);
        match filters {
            None => {
                for feed in feeds.values() {
                    let _ = feed.send(delivery.clone());
                }
            }
            Some(filters) => {
                for filter in filters {
                    if let Some(feed) = feeds.get(filter) {
                        let _ = feed.send(delivery.clone());
                    }
                }
            }
        }
    }
}

/// Converts each invoice of `invoicing`'s feed to the contract once and
/// passes it on to the watchers it is for, until `stopping`.
fn relay_feed(invoicing: &Invoicing, mut stopping: Stopping) -> Feeds {
    let feeds = Feeds::default();
    let mut issued = invoicing.subscribe_feed();
    let relay = feeds.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                item = issued.recv() => match item {
                    Ok(item) => {
                        let message = Delivery::Invoice(Arc::new(pb::Invoice::from((*item.invoice).clone())));
                        let filters = InvoiceFilter::passing(item.invoice.customer_id, &item.operators);
                        relay.send(Some(&filters), &message);
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => relay.send(None, &Delivery::Gap),
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                () = until_stopping(&mut stopping) => return,
            }
        }
    });
    feeds
}

impl InvoiceApi {
    /// How many WatchInvoices streams are open.
    pub fn open_watchers(&self) -> usize {
        self.watchers.open()
    }

    /// A service over `invoicing`; its streams end when `stopping` turns
    /// true; at most `max_watchers` WatchInvoices streams are open at once,
    /// `max_per_account` of them for one account.
    pub fn new(
        invoicing: Invoicing,
        stopping: Stopping,
        max_watchers: usize,
        max_per_account: usize,
    ) -> Self {
        InvoiceApi {
            feed: relay_feed(&invoicing, stopping.clone()),
            invoicing,
            stopping,
            watchers: StreamSlots::new(
                "invoice watchers",
                (
                    "--max-invoice-watchers",
                    "--max-invoice-watchers-per-account",
                ),
                max_watchers,
                max_per_account,
            ),
        }
    }
}

/// Sends a watcher the invoices after `last_id` that `filter` passes, by
/// its own reads (a watcher's history, or its way back after falling
/// behind the shared feed), advancing `last_id`. False when the stream has
/// ended (the client went away, or a read failed and was reported).
async fn replay(
    invoicing: &Invoicing,
    filter: InvoiceFilter,
    last_id: &mut i64,
    tx: &mpsc::Sender<Result<pb::Invoice, Status>>,
) -> bool {
    loop {
        let batch = match invoicing.feed_page(filter, *last_id, WATCH_BATCH).await {
            Ok(batch) => batch,
            Err(err) => {
                let _ = tx.send(Err(Status::from(err))).await;
                return false;
            }
        };
        let full = batch.len() as u64 == WATCH_BATCH;
        for invoice in batch {
            *last_id = invoice.id;
            if tx.send(Ok(invoice.into())).await.is_err() {
                return false;
            }
        }
        if !full {
            return true;
        }
    }
}

#[tonic::async_trait]
impl InvoiceService for InvoiceApi {
    async fn generate_invoice(
        &self,
        request: Request<pb::GenerateInvoiceRequest>,
    ) -> Result<Response<pb::GenerateInvoiceResponse>, Status> {
        let principal = caller_may(&request, Action::GenerateInvoice)?;
        let pb::GenerateInvoiceRequest {
            customer_id,
            period: requested,
        } = request.into_inner();
        let customer_id = valid::id("customer_id", customer_id)?;
        let requested = requested.map(|p| period("period", p)).transpose()?;
        let result = match self
            .invoicing
            .generate(&principal, customer_id, requested)
            .await?
        {
            Generated::Invoice(invoice) => {
                pb::generate_invoice_response::Result::Invoice(invoice.into())
            }
            Generated::Preview(preview) => {
                pb::generate_invoice_response::Result::Preview(preview.into())
            }
        };
        Ok(Response::new(pb::GenerateInvoiceResponse {
            result: Some(result),
        }))
    }

    async fn get_month_invoice(
        &self,
        request: Request<pb::GetMonthInvoiceRequest>,
    ) -> Result<Response<pb::Invoice>, Status> {
        let principal = caller_may(&request, Action::ReadInvoices)?;
        let pb::GetMonthInvoiceRequest {
            customer_id,
            period,
        } = request.into_inner();
        let customer_id = valid::id("customer_id", customer_id)?;
        let pb::BillingPeriod { year, month } =
            period.ok_or_else(|| AppError::invalid("period", "is required"))?;
        let year = (year != 0).then_some(year);
        let invoice = self
            .invoicing
            .month_invoice(&principal, customer_id, year, month)
            .await?;
        Ok(Response::new(invoice.into()))
    }

    async fn get_invoice_document(
        &self,
        request: Request<pb::GetInvoiceDocumentRequest>,
    ) -> Result<Response<pb::InvoiceDocument>, Status> {
        let principal = caller_may(&request, Action::ReadInvoices)?;
        let pb::GetInvoiceDocumentRequest { invoice_id, format } = request.into_inner();
        let invoice_id = valid::id("invoice_id", invoice_id)?;
        let format = match pb::DocumentFormat::try_from(format) {
            Ok(pb::DocumentFormat::Pdf) => DocumentFormat::Pdf,
            Ok(pb::DocumentFormat::Html) => DocumentFormat::Html,
            Ok(pb::DocumentFormat::Unspecified) | Err(_) => {
                return Err(AppError::invalid(
                    "format",
                    "must be DOCUMENT_FORMAT_PDF or DOCUMENT_FORMAT_HTML",
                )
                .into());
            }
        };
        let document = self
            .invoicing
            .invoice_document(&principal, invoice_id, format)
            .await?;
        Ok(Response::new(pb::InvoiceDocument {
            file_name: document.file_name,
            content_type: document.content_type.to_owned(),
            content: document.content,
        }))
    }

    async fn list_invoices(
        &self,
        request: Request<pb::ListInvoicesRequest>,
    ) -> Result<Response<pb::ListInvoicesResponse>, Status> {
        let principal = caller_may(&request, Action::ReadInvoices)?;
        let pb::ListInvoicesRequest {
            customer_id,
            page_size,
            page_token,
        } = request.into_inner();
        let customer_id = valid::optional_id("customer_id", customer_id)?;
        let page = IdPage::of(
            "invoices",
            vec![customer_id.unwrap_or(0)],
            page_size,
            &page_token,
        )?;
        let invoices = self
            .invoicing
            .list_invoices(&principal, customer_id, page.after_id, page.fetch())
            .await?;
        let (invoices, next_page_token) = page.finish(invoices, |invoice| invoice.id);
        Ok(Response::new(pb::ListInvoicesResponse {
            invoices: invoices.into_iter().map(Into::into).collect(),
            next_page_token,
        }))
    }

    type StreamConsolidatedStream = ServerStream<pb::ConsolidatedMonth>;

    async fn stream_consolidated(
        &self,
        request: Request<pb::StreamConsolidatedRequest>,
    ) -> Result<Response<Self::StreamConsolidatedStream>, Status> {
        let principal = caller_may(&request, Action::StreamConsolidated)?;
        let pb::StreamConsolidatedRequest {
            customer_id,
            from_period,
            to_period,
        } = request.into_inner();
        let customer_id = valid::id("customer_id", customer_id)?;
        let from = from_period.map(|p| period("from_period", p)).transpose()?;
        let to = to_period.map(|p| period("to_period", p)).transpose()?;
        let (customer, plan) = self
            .invoicing
            .consolidated_customer(&principal, customer_id)
            .await?;
        let range = self.invoicing.consolidated_range(&customer, from, to)?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let invoicing = self.invoicing.clone();
        let mut stopping = self.stopping.clone();
        tokio::spawn(async move {
            let Some((mut from, to)) = range else { return };
            loop {
                let mut until = from;
                for _ in 1..CONSOLIDATED_PAGE_MONTHS {
                    if until >= to {
                        break;
                    }
                    until = until.next();
                }
                // The task ends as soon as the client is gone or the server
                // stops, even mid-query.
                let page = tokio::select! {
                    page = invoicing.consolidated_page(&customer, &plan, from, until) => page,
                    () = tx.closed() => return,
                    () = until_stopping(&mut stopping) => {
                        let _ = tx.send(Err(Status::unavailable("server shutting down"))).await;
                        return;
                    }
                };
                match page {
                    Ok(months) => {
                        for month in months {
                            if tx.send(Ok(month.into())).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(err) => {
                        let _ = tx.send(Err(Status::from(err))).await;
                        return;
                    }
                }
                if until >= to {
                    return;
                }
                from = until.next();
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn run_billing_cycle(
        &self,
        request: Request<pb::RunBillingCycleRequest>,
    ) -> Result<Response<pb::RunBillingCycleResponse>, Status> {
        let principal = caller_may(&request, Action::RunBillingCycle)?;
        let pb::RunBillingCycleRequest { period: requested } = request.into_inner();
        let requested = requested.map(|p| period("period", p)).transpose()?;
        let summary = self.invoicing.run_cycle(&principal, requested).await?;
        if let Some(period) = summary.period {
            tracing::info!(
                period = %period,
                issued = summary.issued,
                already_issued = summary.already_issued,
                earlier_issued = summary.earlier_issued,
                failed = summary.failed,
                "billing cycle complete"
            );
        }
        Ok(Response::new(pb::RunBillingCycleResponse {
            issued: summary.issued,
            already_issued: summary.already_issued,
            failed: summary.failed,
            failures: summary
                .failures
                .into_iter()
                .map(|(customer_id, message)| pb::BillingFailure {
                    customer_id,
                    message,
                })
                .collect(),
            earlier_issued: summary.earlier_issued,
        }))
    }

    type WatchInvoicesStream = ServerStream<pb::Invoice>;

    async fn watch_invoices(
        &self,
        request: Request<pb::WatchInvoicesRequest>,
    ) -> Result<Response<Self::WatchInvoicesStream>, Status> {
        let principal = caller_may(&request, Action::WatchInvoices)?;
        let pb::WatchInvoicesRequest { after_invoice_id } = request.into_inner();
        if after_invoice_id < 0 {
            return Err(AppError::invalid("after_invoice_id", "must not be negative").into());
        }
        let filter = self.invoicing.watch_filter(&principal)?;
        let slot = self.watchers.take(&principal)?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let invoicing = self.invoicing.clone();
        let mut stopping = self.stopping.clone();
        // Subscribed before the replay reads, so that every invoice is in
        // one or the other (ids seen twice are skipped).
        let mut feed = self.feed.subscribe(filter);
        tokio::spawn(async move {
            // Held until the stream ends, however it ends.
            let _slot = slot;
            let mut last_id = after_invoice_id;
            if !replay(&invoicing, filter, &mut last_id, &tx).await {
                return;
            }
            loop {
                tokio::select! {
                    item = feed.recv() => match item {
                        Ok(Delivery::Invoice(message)) => {
                            if message.id > last_id {
                                last_id = message.id;
                                if tx.send(Ok((*message).clone())).await.is_err() {
                                    return;
                                }
                            }
                        }
                        // Fell behind the shared feed: read its own way back.
                        Ok(Delivery::Gap) | Err(broadcast::error::RecvError::Lagged(_)) => {
                            if !replay(&invoicing, filter, &mut last_id, &tx).await {
                                return;
                            }
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    () = tx.closed() => return,
                    () = until_stopping(&mut stopping) => {
                        let _ = tx.send(Err(Status::unavailable("server shutting down; reconnect with your last invoice id"))).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
