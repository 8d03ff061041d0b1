//! `billing.v1.CallService`: rated call ingestion (single and streamed) and
//! call listings.

use std::time::Duration;

use prost::Message;
use tonic::{Request, Response, Status, Streaming};

use super::auth::caller_may;
use super::convert;
use super::page_of;
use super::pb::{self, call_service_server::CallService};
use super::slots::StreamSlots;
use super::status::{code_of, message_of};
use crate::app::Limits;
use crate::domain::access::Action;
use crate::domain::access::Principal;
use crate::domain::model::{Call, CallRecord, NewCall, StoredCall};
use crate::domain::paging::{self, TokenScope};
use crate::domain::validation as valid;
use crate::error::{AppError, AppResult};
use crate::metrics::{CallResult, CallSource, Metrics};
use crate::service::Calls;
use crate::service::calls::CustomerCache;
use crate::shutdown::{Stopping, until_stopping};

/// Rows (calls and their tariff segments) of a stream written per
/// transaction, at most: large enough to amortise the commit (each batch
/// rewrites the index pages it touches, and a batch of 2,000 calls reached
/// only 0.4x of a raw bulk insert against 0.67x for 10,000; see
/// BENCHMARKS.md), small enough to bound memory (one batch being written,
/// one being read, and `INGEST_READ_AHEAD_ROWS` more) and how long a batch holds SQLite's
/// write lock (about half a second on the benchmark machine). Counted in
/// rows, not records, so that calls a plan cuts into many segments make
/// smaller batches rather than longer locks.
const INGEST_BATCH_ROWS: usize = 10_000;

/// A batch of a stream being written: its records' stream indexes, the
/// records, and the outcome of storing them.
type Written = (
    Vec<i64>,
    Vec<NewCall>,
    AppResult<Vec<AppResult<StoredCall>>>,
);
type Write = std::pin::Pin<Box<dyn std::future::Future<Output = Written> + Send>>;

/// Stores `batch` (records with their stream indexes) in one transaction,
/// call by call if it is refused.
fn write(calls: Calls, principal: Principal, batch: Vec<(i64, NewCall)>) -> Write {
    Box::pin(async move {
        let (indexes, batch): (Vec<i64>, Vec<NewCall>) = batch.into_iter().unzip();
        match calls.store(&principal, batch).await {
            Ok((batch, outcomes)) => (indexes, batch, Ok(outcomes)),
            Err(err) => (indexes, Vec::new(), Err(err)),
        }
    })
}
/// Rows a stream reads beyond a full batch while the previous batch is
/// written, at most. The stream's HTTP/2 window is small (see
/// `limits::flow_control_windows`), so it is the handler that keeps reading
/// while the database writes: with nothing read ahead, ingestion on
/// PostgreSQL fell from 0.90x to 0.73x of a raw insert (BENCHMARKS.md).
/// With a batch being written, a stream holds at most 2 batches and this
/// many rows in memory.
const INGEST_READ_AHEAD_ROWS: usize = 5_000;

/// The rows a call writes: itself and its segments.
fn rows_of(call: &NewCall) -> usize {
    1 + call.rating.segments.len()
}

/// The records of a stream read and not yet written, oldest first, each
/// with its stream index and when it arrived.
#[derive(Default)]
struct Pending {
    records: std::collections::VecDeque<(i64, NewCall, std::time::Instant)>,
    rows: usize,
}

impl Pending {
    fn push(&mut self, index: i64, call: NewCall) {
        self.rows += rows_of(&call);
        self.records
            .push_back((index, call, std::time::Instant::now()));
    }

    fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Whether a whole batch is waiting to be written.
    fn has_batch(&self) -> bool {
        self.rows >= INGEST_BATCH_ROWS
    }

    /// Whether reading stops until a batch is taken.
    fn is_full(&self) -> bool {
        self.rows >= INGEST_BATCH_ROWS + INGEST_READ_AHEAD_ROWS
    }

    /// The stream index of the oldest record.
    fn oldest_index(&self) -> Option<i64> {
        self.records.front().map(|(index, _, _)| *index)
    }

    /// When the oldest record arrived.
    fn oldest_at(&self) -> Option<std::time::Instant> {
        self.records.front().map(|(_, _, at)| *at)
    }

    /// The oldest records, up to a batch's rows (at least one record).
    fn take_batch(&mut self) -> Vec<(i64, NewCall)> {
        let mut batch = Vec::new();
        let mut rows = 0;
        while let Some((_, call, _)) = self.records.front() {
            let call_rows = rows_of(call);
            if !batch.is_empty() && rows + call_rows > INGEST_BATCH_ROWS {
                break;
            }
            let Some((index, call, _)) = self.records.pop_front() else {
                break;
            };
            rows += call_rows;
            self.rows -= call_rows;
            batch.push((index, call));
        }
        batch
    }
}

/// Rejected records described in one IngestCalls response, at most.
const MAX_REPORTED_ERRORS: usize = 10_000;
/// Encoded bytes of the described errors, at most: with the counters the
/// response stays far below 1 MiB whatever the records held.
const MAX_REPORTED_ERROR_BYTES: usize = 900 * 1024;

/// The CallService implementation.
#[derive(Debug, Clone)]
pub struct CallApi {
    calls: Calls,
    /// The open IngestCalls streams.
    streams: StreamSlots,
    /// How long a streamed record may wait before its batch is written.
    flush_interval: Duration,
    /// The largest response a listing page may make, in encoded bytes.
    max_message_bytes: usize,
    /// Ends StreamCalls streams when the server shuts down.
    stopping: Stopping,
}

impl CallApi {
    /// How many IngestCalls and StreamCalls streams are open.
    pub fn open_streams(&self) -> usize {
        self.streams.open()
    }

    /// The service over `calls`, bounded by `limits`.
    pub fn new(calls: Calls, limits: &Limits, stopping: Stopping) -> Self {
        CallApi {
            stopping,
            calls,
            streams: StreamSlots::new(
                "call ingestion streams",
                ("--max-ingest-streams", "--max-ingest-streams-per-account"),
                limits.max_ingest_streams,
                limits.max_ingest_streams_per_account,
            ),
            flush_interval: limits.ingest_flush_interval,
            max_message_bytes: limits.max_message_bytes,
        }
    }
}

/// Running totals of one IngestCalls stream.
struct IngestTally {
    /// Where the records come from, for the metrics.
    source: CallSource,
    metrics: std::sync::Arc<Metrics>,
    accepted: i64,
    duplicates: i64,
    rejected: i64,
    errors: Vec<pb::IngestError>,
    /// Encoded size of `errors`.
    error_bytes: usize,
    errors_truncated: bool,
}

impl IngestTally {
    fn new(source: CallSource, metrics: std::sync::Arc<Metrics>) -> Self {
        IngestTally {
            source,
            metrics,
            accepted: 0,
            duplicates: 0,
            rejected: 0,
            errors: Vec::new(),
            error_bytes: 0,
            errors_truncated: false,
        }
    }

    fn reject(&mut self, index: i64, call_id: String, err: &AppError) {
        self.rejected += 1;
        self.metrics.calls(self.source, CallResult::Rejected, 1);
        let error = pb::IngestError {
            index,
            call_id: reported_call_id(call_id),
            code: code_of(err) as i32,
            message: message_of(err),
        };
        self.error_bytes += error.encoded_len();
        self.errors.push(error);
        // Bound memory: keep only the lowest indexes (a batch's errors may
        // arrive after later records' validation errors, so sort first).
        if self.errors.len() >= 2 * MAX_REPORTED_ERRORS
            || self.error_bytes >= 2 * MAX_REPORTED_ERROR_BYTES
        {
            self.keep_first_errors();
        }
    }

    /// Keeps the errors of the lowest indexes that fit both bounds.
    fn keep_first_errors(&mut self) {
        self.errors.sort_by_key(|e| e.index);
        let mut bytes = 0;
        let mut keep = 0;
        for error in &self.errors {
            let size = error.encoded_len();
            if keep == MAX_REPORTED_ERRORS || bytes + size > MAX_REPORTED_ERROR_BYTES {
                break;
            }
            bytes += size;
            keep += 1;
        }
        if keep < self.errors.len() {
            self.errors.truncate(keep);
            self.errors_truncated = true;
        }
        self.error_bytes = bytes;
    }

    /// The report: errors in stream order, as many of the first as the
    /// bounds allow.
    fn into_response(mut self) -> pb::IngestCallsResponse {
        self.keep_first_errors();
        pb::IngestCallsResponse {
            accepted: self.accepted,
            duplicates: self.duplicates,
            rejected: self.rejected,
            errors: self.errors,
            errors_truncated: self.errors_truncated,
        }
    }

    /// Counts the outcomes of a written batch (a refused batch was stored
    /// call by call, so only the records at fault are rejected). Only an
    /// unavailable database ends the stream; batches written before stay
    /// written.
    fn settle(&mut self, (indexes, batch, outcomes): Written) -> AppResult<()> {
        for ((index, new), outcome) in indexes.into_iter().zip(&batch).zip(outcomes?) {
            self.count(index, new, outcome);
        }
        Ok(())
    }

    fn count(&mut self, index: i64, new: &NewCall, outcome: AppResult<StoredCall>) {
        match outcome {
            Ok(StoredCall::Inserted(_)) => {
                self.accepted += 1;
                self.metrics.calls(self.source, CallResult::Accepted, 1);
            }
            Ok(StoredCall::Duplicate(_)) => {
                self.duplicates += 1;
                self.metrics.calls(self.source, CallResult::Duplicate, 1);
            }
            Err(err) => self.reject(index, call_id_of(new), &err),
        }
    }
}

fn call_id_of(new: &NewCall) -> String {
    new.record.call_id.clone().unwrap_or_default()
}

/// A rejected record's `call_id` as reported: whole when it is a valid key
/// (at most 128 characters), else cut to its first 64 characters.
fn reported_call_id(call_id: String) -> String {
    if call_id.chars().count() <= valid::MAX_KEY_LEN {
        call_id
    } else {
        call_id.chars().take(valid::MAX_ECHOED_CHARS).collect()
    }
}

/// Acknowledgements a StreamCalls stream holds for a client that does not
/// read them, at most; then it stops reading records until the client
/// does.
const ACKS_BUFFERED: usize = 16;

/// Records a StreamCalls stream rejects while earlier ones are being
/// written that it holds, at most, before it stops reading until they are
/// acknowledged.
const HELD_REJECTIONS: usize = INGEST_READ_AHEAD_ROWS;

/// The request header by which a client names where its records come
/// from (`file`: `billing import-cdr`), for the metrics only.
pub const SOURCE_HEADER: &str = "billing-source";

/// Where a StreamCalls stream's acknowledgements go.
type AckSink = tokio::sync::mpsc::Sender<Result<pb::IngestAck, Status>>;

/// One ingestion stream: reads records, rates them, writes them in
/// batches, and settles each record (stored, duplicate or rejected).
struct Ingestion {
    calls: Calls,
    principal: Principal,
    flush_interval: Duration,
    /// StreamCalls only: ends the stream (after committing and
    /// acknowledging what it holds) when the server shuts down.
    stopping: Option<Stopping>,
    /// Where the records come from, for the metrics.
    source: CallSource,
}

/// What a StreamCalls stream has settled and not yet acknowledged.
struct Unacked {
    /// The outcomes below the next acknowledgement's `next_index`.
    settled: IngestTally,
    /// Records rejected before they were written, at positions that may
    /// still lie beyond records being written: they join `settled` once
    /// every record before them has settled.
    rejected: std::collections::VecDeque<(i64, String, AppError)>,
    /// The `next_index` last acknowledged.
    acked: i64,
    /// When the oldest of `rejected` was read.
    oldest_rejected: Option<std::time::Instant>,
}

impl Unacked {
    /// The acknowledgement of everything settled below `next_index`, if it
    /// says anything new.
    fn ack(&mut self, next_index: i64) -> Option<pb::IngestAck> {
        while let Some((index, _, _)) = self.rejected.front()
            && *index < next_index
        {
            let Some((index, call_id, err)) = self.rejected.pop_front() else {
                break;
            };
            self.settled.reject(index, call_id, &err);
        }
        self.oldest_rejected = if self.rejected.is_empty() {
            None
        } else {
            self.oldest_rejected
        };
        if next_index <= self.acked {
            return None;
        }
        self.acked = next_index;
        let fresh = IngestTally::new(
            self.settled.source,
            std::sync::Arc::clone(&self.settled.metrics),
        );
        let report = std::mem::replace(&mut self.settled, fresh).into_response();
        Some(pb::IngestAck {
            next_index,
            accepted: report.accepted,
            duplicates: report.duplicates,
            rejected: report.rejected,
            errors: report.errors,
            errors_truncated: report.errors_truncated,
        })
    }
}

impl Ingestion {
    fn new(
        calls: Calls,
        principal: Principal,
        flush_interval: Duration,
        stopping: Option<Stopping>,
        source: CallSource,
    ) -> Self {
        Ingestion {
            source,
            calls,
            principal,
            flush_interval,
            stopping,
        }
    }

    /// Reads `stream` to its end and returns what became of its records;
    /// with `acks`, acknowledges each commit there as it goes. Only an
    /// unavailable database (or, with `acks`, a server shutting down) ends
    /// the stream early; batches written before stay written.
    async fn run(
        &self,
        mut stream: Streaming<pb::AddCallRequest>,
        acks: Option<&AckSink>,
    ) -> Result<IngestTally, Status> {
        let mut customers = CustomerCache::new();
        let metrics = self.calls.metrics();
        let mut tally = IngestTally::new(self.source, std::sync::Arc::clone(metrics));
        let mut unacked = Unacked {
            settled: IngestTally::new(self.source, std::sync::Arc::clone(metrics)),
            rejected: std::collections::VecDeque::new(),
            acked: 0,
            oldest_rejected: None,
        };
        let mut pending = Pending::default();
        let mut index: i64 = 0;
        let mut stopping = self.stopping.clone();
        // One batch is written while the next is read and rated: the
        // database works on its own thread (SQLite) or server (PostgreSQL)
        // meanwhile. A batch is written when it is full, when the stream
        // ends, or once its oldest record has waited the flush interval, so
        // a slowly fed stream's calls are stored (and debited) within it.
        // Dropping the stream drops the write in flight, which rolls it back.
        let mut writing: Option<Write> = None;
        let mut open = true;
        let mut stopped = false;
        while open || writing.is_some() || !pending.is_empty() {
            let due = pending
                .oldest_at()
                .is_some_and(|oldest| oldest.elapsed() >= self.flush_interval);
            if writing.is_none() && (pending.has_batch() || due || (!open && !pending.is_empty())) {
                writing = Some(write(
                    self.calls.clone(),
                    self.principal.clone(),
                    pending.take_batch(),
                ));
            }
            // Rejections alone are acknowledged within the flush interval
            // too, once nothing before them is being written.
            if let Some(acks) = acks
                && writing.is_none()
                && pending.is_empty()
                && unacked.oldest_rejected.is_some_and(|oldest| {
                    oldest.elapsed() >= self.flush_interval
                        || !open
                        || unacked.rejected.len() >= HELD_REJECTIONS
                })
                && let Some(ack) = unacked.ack(index)
                && acks.send(Ok(ack)).await.is_err()
            {
                return Ok(tally);
            }
            let flush_at = pending
                .oldest_at()
                .or(unacked.oldest_rejected.filter(|_| acks.is_some()))
                .map(|oldest| tokio::time::Instant::from_std(oldest + self.flush_interval));
            tokio::select! {
                written = async { writing.as_mut().expect("guarded by the condition").await }, if writing.is_some() => {
                    writing = None;
                    match acks {
                        None => tally.settle(written)?,
                        Some(acks) => {
                            unacked.settled.settle(written)?;
                            let next_index = pending.oldest_index().unwrap_or(index);
                            if let Some(ack) = unacked.ack(next_index)
                                && acks.send(Ok(ack)).await.is_err()
                            {
                                return Ok(tally);
                            }
                        }
                    }
                }
                message = stream.message(), if open && !pending.is_full() && unacked.rejected.len() < HELD_REJECTIONS => {
                    let Some(record) = message? else {
                        open = false;
                        continue;
                    };
                    let call_id = record.call_id.clone();
                    match self.prepare(record, &mut customers).await {
                        Ok(new) => pending.push(index, new),
                        Err(err) if acks.is_some() => {
                            unacked.oldest_rejected.get_or_insert_with(std::time::Instant::now);
                            unacked.rejected.push_back((index, call_id, err));
                        }
                        Err(err) => tally.reject(index, call_id, &err),
                    }
                    index += 1;
                }
                () = async { tokio::time::sleep_until(flush_at.expect("guarded by the condition")).await }, if writing.is_none() && flush_at.is_some() => {}
                () = async { until_stopping(stopping.as_mut().expect("guarded by the condition")).await }, if open && stopping.is_some() => {
                    // Stop reading; what was read is written and
                    // acknowledged before the stream ends.
                    open = false;
                    stopped = true;
                }
            }
        }
        if let Some(acks) = acks {
            if let Some(ack) = unacked.ack(index) {
                let _ = acks.send(Ok(ack)).await;
            }
            if stopped {
                return Err(Status::unavailable(
                    "server shutting down; reconnect and send again every record after the last acknowledged next_index",
                ));
            }
        }
        Ok(tally)
    }

    /// Converts and prepares one streamed record.
    async fn prepare(
        &self,
        request: pb::AddCallRequest,
        customers: &mut CustomerCache,
    ) -> AppResult<NewCall> {
        let record = CallRecord::try_from(request)?;
        self.calls.prepare(&self.principal, record, customers).await
    }
}

#[tonic::async_trait]
impl CallService for CallApi {
    async fn add_call(
        &self,
        request: Request<pb::AddCallRequest>,
    ) -> Result<Response<pb::AddCallResponse>, Status> {
        let principal = caller_may(&request, Action::AddCalls)?;
        let added = match CallRecord::try_from(request.into_inner()) {
            Ok(record) => self.calls.add_call(&principal, record).await,
            Err(err) => Err(err),
        };
        let result = match &added {
            Ok((_, false)) => CallResult::Accepted,
            Ok((_, true)) => CallResult::Duplicate,
            Err(_) => CallResult::Rejected,
        };
        self.calls.metrics().calls(CallSource::Unary, result, 1);
        let (call, duplicate) = added?;
        Ok(Response::new(pb::AddCallResponse {
            call: Some(call.into()),
            duplicate,
        }))
    }

    async fn ingest_calls(
        &self,
        request: Request<Streaming<pb::AddCallRequest>>,
    ) -> Result<Response<pb::IngestCallsResponse>, Status> {
        let principal = caller_may(&request, Action::AddCalls)?;
        self.calls.may_add_calls(&principal)?;
        let _slot = self.streams.take(&principal)?;
        let ingestion = Ingestion::new(
            self.calls.clone(),
            principal,
            self.flush_interval,
            None,
            CallSource::Stream,
        );
        let tally = ingestion.run(request.into_inner(), None).await?;
        Ok(Response::new(tally.into_response()))
    }

    type StreamCallsStream =
        std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<pb::IngestAck, Status>> + Send>>;

    async fn stream_calls(
        &self,
        request: Request<Streaming<pb::AddCallRequest>>,
    ) -> Result<Response<Self::StreamCallsStream>, Status> {
        let principal = caller_may(&request, Action::AddCalls)?;
        self.calls.may_add_calls(&principal)?;
        let slot = self.streams.take(&principal)?;
        // `billing import-cdr` says so, for the metrics.
        let source = match request.metadata().get(SOURCE_HEADER) {
            Some(value) if value == "file" => CallSource::File,
            _ => CallSource::Stream,
        };
        let (tx, rx) = tokio::sync::mpsc::channel(ACKS_BUFFERED);
        let ingestion = Ingestion::new(
            self.calls.clone(),
            principal,
            self.flush_interval,
            Some(self.stopping.clone()),
            source,
        );
        let stream = request.into_inner();
        tokio::spawn(async move {
            // Held until the stream ends, however it ends.
            let _slot = slot;
            if let Err(err) = ingestion.run(stream, Some(&tx)).await {
                let _ = tx.send(Err(err)).await;
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn authorize_call(
        &self,
        request: Request<pb::AuthorizeCallRequest>,
    ) -> Result<Response<pb::AuthorizeCallResponse>, Status> {
        let principal = caller_may(&request, Action::AuthorizeCall)?;
        let pb::AuthorizeCallRequest {
            customer_id,
            callee_number,
            started_at,
        } = request.into_inner();
        let customer_id = valid::id("customer_id", customer_id)?;
        let callee = valid::dialled_number("callee_number", &callee_number)?;
        let started_at = convert::instant("started_at", started_at.as_ref())?;
        let answer = self
            .calls
            .authorize(&principal, customer_id, &callee, started_at)
            .await?;
        Ok(Response::new(pb::AuthorizeCallResponse {
            allowed: answer.allowed,
            max_duration_seconds: answer.max_duration_seconds,
            reason: answer.reason,
        }))
    }

    async fn get_call_history(
        &self,
        request: Request<pb::GetCallHistoryRequest>,
    ) -> Result<Response<pb::GetCallHistoryResponse>, Status> {
        let principal = caller_may(&request, Action::GetCallHistory)?;
        let pb::GetCallHistoryRequest {
            customer_id,
            start_time,
            end_time,
            page_size,
            page_token,
        } = request.into_inner();
        let customer_id = valid::id("customer_id", customer_id)?;
        let (calls, next_page_token) = self
            .page_of_calls(
                &principal,
                Listing::History(customer_id),
                "call_history",
                vec![customer_id],
                (start_time, end_time, page_size, page_token),
            )
            .await?;
        Ok(Response::new(pb::GetCallHistoryResponse {
            calls,
            next_page_token,
        }))
    }

    async fn list_calls(
        &self,
        request: Request<pb::ListCallsRequest>,
    ) -> Result<Response<pb::ListCallsResponse>, Status> {
        let principal = caller_may(&request, Action::ListCalls)?;
        let pb::ListCallsRequest {
            operator_id,
            start_time,
            end_time,
            page_size,
            page_token,
        } = request.into_inner();
        let operator_id = valid::optional_id("operator_id", operator_id)?;
        let (calls, next_page_token) = self
            .page_of_calls(
                &principal,
                Listing::Calls(operator_id),
                "calls",
                vec![operator_id.unwrap_or(0)],
                (start_time, end_time, page_size, page_token),
            )
            .await?;
        Ok(Response::new(pb::ListCallsResponse {
            calls,
            next_page_token,
        }))
    }
}

/// Bytes of a page response kept for what is not a call (the next page
/// token and framing).
const PAGE_RESERVE_BYTES: usize = 1024;

/// How many of `calls`, from the first, fit in a response of at most
/// `max_bytes` encoded bytes (at least one: a single call is far below
/// the smallest allowed limit, as its segments are bounded).
fn fitting<'a>(calls: impl Iterator<Item = &'a pb::Call>, max_bytes: usize) -> usize {
    let budget = max_bytes.saturating_sub(PAGE_RESERVE_BYTES);
    let mut used = 0usize;
    let mut count = 0usize;
    for call in calls {
        let len = call.encoded_len();
        used += 1 + prost::encoding::encoded_len_varint(len as u64) + len;
        if used > budget && count > 0 {
            break;
        }
        count += 1;
    }
    count.max(1)
}

/// Which call listing a page is of.
enum Listing {
    /// One customer's history.
    History(i64),
    /// All calls, or an operator's.
    Calls(Option<i64>),
}

/// The paging fields shared by both call listings:
/// `(start_time, end_time, page_size, page_token)`.
type CallPaging = (
    Option<prost_types::Timestamp>,
    Option<prost_types::Timestamp>,
    i32,
    String,
);

impl CallApi {
    /// One page of calls in `(started_at, id)` order, and the next token. The
    /// token is bound to the listing, its filter ids and its time range.
    async fn page_of_calls(
        &self,
        principal: &Principal,
        listing_of: Listing,
        listing: &'static str,
        mut filters: Vec<i64>,
        (start_time, end_time, page_size, page_token): CallPaging,
    ) -> AppResult<(Vec<pb::Call>, String)> {
        let range = convert::time_range(start_time.as_ref(), end_time.as_ref())?;
        let limit = paging::page_size(page_size)?;
        filters.push(range.start.map_or(i64::MIN, |at| at.timestamp_micros()));
        filters.push(range.end.map_or(i64::MAX, |at| at.timestamp_micros()));
        let scope = TokenScope { listing, filters };
        let after = paging::decode_token(&scope, &page_token, 2)?.map(|keys| (keys[0], keys[1]));
        let calls = match listing_of {
            Listing::History(customer_id) => {
                self.calls
                    .history(principal, customer_id, range, after, limit + 1)
                    .await?
            }
            Listing::Calls(operator_id) => {
                self.calls
                    .list(principal, operator_id, range, after, limit + 1)
                    .await?
            }
        };
        let calls: Vec<(i64, i64, pb::Call)> = calls
            .into_iter()
            .map(|call: Call| (call.started_at.timestamp_micros(), call.id, call.into()))
            .collect();
        let fit = fitting(
            calls.iter().map(|(_, _, call)| call),
            self.max_message_bytes,
        );
        let limit = limit.min(u64::try_from(fit).unwrap_or(u64::MAX));
        let (calls, token) = page_of(calls, limit, |(started_at, id, _)| {
            paging::encode_token(&scope, &[*started_at, *id])
        });
        Ok((calls.into_iter().map(|(_, _, call)| call).collect(), token))
    }
}
