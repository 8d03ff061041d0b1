//! Prometheus metrics, served on their own listener (`serve
//! --metrics-listen`) in the text exposition format (version 0.0.4).
//!
//! Counters and histograms belong to one application ([`Metrics`], held by
//! its `Store` and handed to the RPC layer): the layers that count (the RPC
//! layer, ingestion, group commit, invoicing, delivery) record into the
//! store's. Gauges (database pools,
//! open streams) are read from the application when scraped. Every label
//! takes values from a fixed set: RPC methods are those of the served
//! contract (anything else is `unknown`), codes the 17 gRPC codes, sources
//! and results the ones named here. No customer, call or account id is
//! ever a label.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message;
use tonic::Code;

/// Latency buckets of RPCs and commits, in seconds.
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Buckets of group-commit batch sizes, in calls.
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0, 4096.0, 10000.0,
];

/// Where stored calls came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallSource {
    /// `AddCall`.
    Unary,
    /// `IngestCalls` and `StreamCalls`.
    Stream,
    /// `StreamCalls` from `billing import-cdr`.
    File,
    /// NATS JetStream.
    Nats,
}

impl CallSource {
    const ALL: [CallSource; 4] = [
        CallSource::Unary,
        CallSource::Stream,
        CallSource::File,
        CallSource::Nats,
    ];

    fn label(self) -> &'static str {
        match self {
            CallSource::Unary => "unary",
            CallSource::Stream => "stream",
            CallSource::File => "file",
            CallSource::Nats => "nats",
        }
    }
}

/// What became of a call record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallResult {
    Accepted,
    Duplicate,
    Rejected,
}

impl CallResult {
    const ALL: [CallResult; 3] = [
        CallResult::Accepted,
        CallResult::Duplicate,
        CallResult::Rejected,
    ];

    fn label(self) -> &'static str {
        match self {
            CallResult::Accepted => "accepted",
            CallResult::Duplicate => "duplicate",
            CallResult::Rejected => "rejected",
        }
    }
}

/// A cumulative histogram.
#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative), then above the last bound.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, value: f64) {
        let bucket = self.bounds.partition_point(|bound| *bound < value);
        self.counts[bucket] += 1;
        self.sum += value;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        let sep = if labels.is_empty() { "" } else { "," };
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            cumulative += count;
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

/// The gRPC status codes: `Ok` (0) to `Unauthenticated` (16).
const CODES: usize = 17;

/// One method's RPCs: how many ended with each code, and their latency.
#[derive(Debug)]
struct RpcStats {
    codes: [AtomicU64; CODES],
    seconds: Mutex<Histogram>,
}

impl Default for RpcStats {
    fn default() -> Self {
        RpcStats {
            codes: Default::default(),
            seconds: Mutex::new(Histogram::new(SECONDS_BUCKETS)),
        }
    }
}

/// One RPC being handled ([`Metrics::rpc_started`]).
#[derive(Debug)]
pub struct InProgress(Arc<Metrics>);

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.rpcs_in_progress.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An application's counters and histograms.
#[derive(Debug)]
pub struct Metrics {
    /// Every method's label (HTTP path without its `/`), then `unknown`,
    /// each with its statistics, made once: an RPC finds its own without
    /// allocating or taking a lock other methods share.
    rpcs: BTreeMap<String, RpcStats>,
    calls: [[AtomicU64; 3]; 4],
    batch_sizes: Mutex<Histogram>,
    commit_seconds: Mutex<Histogram>,
    cycles: AtomicU64,
    invoices_issued: AtomicU64,
    deliveries: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    /// RPCs between their request and their response's headers.
    rpcs_in_progress: AtomicUsize,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every counter at zero.
    pub fn new() -> Self {
        Metrics {
            rpcs: contract_methods()
                .into_iter()
                .chain([String::from("/unknown")])
                .map(|path| (path, RpcStats::default()))
                .collect(),
            calls: Default::default(),
            batch_sizes: Mutex::new(Histogram::new(BATCH_BUCKETS)),
            commit_seconds: Mutex::new(Histogram::new(SECONDS_BUCKETS)),
            cycles: AtomicU64::new(0),
            invoices_issued: AtomicU64::new(0),
            deliveries: Mutex::default(),
            rpcs_in_progress: AtomicUsize::new(0),
        }
    }

    /// An RPC being handled until the returned guard is dropped (when its
    /// response's headers are ready: a streamed response's body is not
    /// handling).
    pub fn rpc_started(self: &Arc<Self>) -> InProgress {
        self.rpcs_in_progress.fetch_add(1, Ordering::Relaxed);
        InProgress(Arc::clone(self))
    }

    /// RPCs being handled now.
    pub fn rpcs_in_progress(&self) -> usize {
        self.rpcs_in_progress.load(Ordering::Relaxed)
    }

    /// An RPC that ended with `code` after `latency`; `path` is its HTTP
    /// path (`/billing.v1.CallService/AddCall`).
    pub fn rpc(&self, path: &str, code: Code, latency: Duration) {
        let stats = self.rpcs.get(path).or_else(|| self.rpcs.get("/unknown"));
        if let Some(stats) = stats {
            stats.codes[(code as usize).min(CODES - 1)].fetch_add(1, Ordering::Relaxed);
            if let Ok(mut seconds) = stats.seconds.lock() {
                seconds.observe(latency.as_secs_f64());
            }
        }
    }

    /// `count` call records from `source` that ended as `result`.
    pub fn calls(&self, source: CallSource, result: CallResult, count: u64) {
        self.calls[source as usize][result as usize].fetch_add(count, Ordering::Relaxed);
    }

    /// A group commit of `calls` that took `latency`.
    pub fn group_commit(&self, calls: usize, latency: Duration) {
        if let Ok(mut sizes) = self.batch_sizes.lock() {
            sizes.observe(calls as f64);
        }
        if let Ok(mut seconds) = self.commit_seconds.lock() {
            seconds.observe(latency.as_secs_f64());
        }
    }

    /// A billing cycle run to its end.
    pub fn billing_cycle(&self) {
        self.cycles.fetch_add(1, Ordering::Relaxed);
    }

    /// `count` invoices newly issued (by a cycle, the scheduler or
    /// `GenerateInvoice`).
    pub fn invoices_issued(&self, count: u64) {
        self.invoices_issued.fetch_add(count, Ordering::Relaxed);
    }

    /// A delivery attempt on `channel` (`email`, `webhook`) that left the
    /// delivery in `status` (`delivered`, `pending`, `failed`).
    pub fn delivery(&self, channel: &'static str, status: &'static str) {
        if let Ok(mut deliveries) = self.deliveries.lock() {
            *deliveries.entry((channel, status)).or_default() += 1;
        }
    }

    /// The counters and histograms in the text format, then `gauges`.
    pub fn render(&self, gauges: &[Gauge]) -> String {
        let mut out = String::with_capacity(16 * 1024);
        header(
            &mut out,
            "billing_build_info",
            "gauge",
            "The running build: always 1.",
        );
        let _ = writeln!(
            out,
            "billing_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        header(
            &mut out,
            "billing_rpc_requests_total",
            "counter",
            "RPCs served, by method and gRPC status code.",
        );
        for (path, stats) in &self.rpcs {
            let method = path.trim_start_matches('/');
            for (code, count) in stats.codes.iter().enumerate() {
                let count = count.load(Ordering::Relaxed);
                if count == 0 {
                    continue;
                }
                let code = format!("{:?}", Code::from_i32(code as i32));
                let _ = writeln!(
                    out,
                    "billing_rpc_requests_total{{method=\"{method}\",code=\"{}\"}} {count}",
                    snake(&code)
                );
            }
        }
        header(
            &mut out,
            "billing_rpc_duration_seconds",
            "histogram",
            "RPC latency, from the request to the end of the response.",
        );
        for (path, stats) in &self.rpcs {
            if let Ok(seconds) = stats.seconds.lock()
                && seconds.count > 0
            {
                seconds.render(
                    &mut out,
                    "billing_rpc_duration_seconds",
                    &format!("method=\"{}\"", path.trim_start_matches('/')),
                );
            }
        }
        header(
            &mut out,
            "billing_calls_stored_total",
            "counter",
            "Call records by source and what became of them.",
        );
        for source in CallSource::ALL {
            for result in CallResult::ALL {
                let count = self.calls[source as usize][result as usize].load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "billing_calls_stored_total{{source=\"{}\",result=\"{}\"}} {count}",
                    source.label(),
                    result.label()
                );
            }
        }
        header(
            &mut out,
            "billing_group_commit_batch_size",
            "histogram",
            "Calls per group commit of AddCall.",
        );
        if let Ok(sizes) = self.batch_sizes.lock() {
            sizes.render(&mut out, "billing_group_commit_batch_size", "");
        }
        header(
            &mut out,
            "billing_group_commit_duration_seconds",
            "histogram",
            "Time to store one group commit.",
        );
        if let Ok(seconds) = self.commit_seconds.lock() {
            seconds.render(&mut out, "billing_group_commit_duration_seconds", "");
        }
        header(
            &mut out,
            "billing_billing_cycles_total",
            "counter",
            "Billing cycles run (scheduled or RunBillingCycle).",
        );
        let _ = writeln!(
            out,
            "billing_billing_cycles_total {}",
            self.cycles.load(Ordering::Relaxed)
        );
        header(
            &mut out,
            "billing_invoices_issued_total",
            "counter",
            "Invoices issued by this process.",
        );
        let _ = writeln!(
            out,
            "billing_invoices_issued_total {}",
            self.invoices_issued.load(Ordering::Relaxed)
        );
        header(
            &mut out,
            "billing_deliveries_total",
            "counter",
            "Delivery attempts by channel and the status they left.",
        );
        if let Ok(deliveries) = self.deliveries.lock() {
            for ((channel, status), count) in deliveries.iter() {
                let _ = writeln!(
                    out,
                    "billing_deliveries_total{{channel=\"{channel}\",status=\"{status}\"}} {count}"
                );
            }
        }
        header(
            &mut out,
            "billing_rpcs_in_progress",
            "gauge",
            "RPCs being handled (until their response's headers; a streamed body is not counted).",
        );
        let _ = writeln!(out, "billing_rpcs_in_progress {}", self.rpcs_in_progress());
        let mut named = None;
        for gauge in gauges {
            if named != Some(gauge.name) {
                header(&mut out, gauge.name, "gauge", gauge.help);
                named = Some(gauge.name);
            }
            let _ = writeln!(out, "{}{{{}}} {}", gauge.name, gauge.labels, gauge.value);
        }
        out
    }
}

/// One value of a gauge read at scrape time.
#[derive(Debug, Clone)]
pub struct Gauge {
    pub name: &'static str,
    pub help: &'static str,
    /// `key="value"` pairs, comma-separated.
    pub labels: String,
    pub value: i64,
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// `DeadlineExceeded` as `deadline_exceeded`.
fn snake(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 4);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// The HTTP paths of every RPC the server serves: the contract's, health
/// and reflection.
fn contract_methods() -> HashSet<String> {
    let mut methods = HashSet::new();
    if let Ok(set) = prost_types::FileDescriptorSet::decode(crate::grpc::pb::FILE_DESCRIPTOR_SET) {
        for file in set.file {
            let package = file.package.unwrap_or_default();
            for service in file.service {
                let service_name = service.name.unwrap_or_default();
                for method in service.method {
                    methods.insert(format!(
                        "/{package}.{service_name}/{}",
                        method.name.unwrap_or_default()
                    ));
                }
            }
        }
    }
    for path in [
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    ] {
        methods.insert(path.to_owned());
    }
    methods
}

/// Serves `GET /metrics` on `listener` (HTTP/1.1) until `stopping`: the
/// counters of `metrics` and the gauges `gauges` reads at each scrape.
/// Anything else is 404.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: std::sync::Arc<Metrics>,
    gauges: std::sync::Arc<dyn Fn() -> Vec<Gauge> + Send + Sync>,
    mut stopping: crate::shutdown::Stopping,
) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    tracing::warn!(error = %err, "metrics listener could not accept");
                    continue;
                }
            },
            () = crate::shutdown::until_stopping(&mut stopping) => return,
        };
        let gauges = std::sync::Arc::clone(&gauges);
        let metrics = std::sync::Arc::clone(&metrics);
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let response = if request.method() == http::Method::GET
                        && request.uri().path() == "/metrics"
                    {
                        http::Response::builder()
                            .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
                            .body(http_body_util::Full::new(bytes::Bytes::from(
                                metrics.render(&gauges()),
                            )))
                    } else {
                        http::Response::builder()
                            .status(http::StatusCode::NOT_FOUND)
                            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                                b"metrics are at /metrics\n",
                            )))
                    };
                    async move { response }
                });
            let io = hyper_util::rt::TokioIo::new(stream);
            // A scraper that stalls is dropped, not kept.
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(io, service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_counts_each_observation_in_every_bucket_at_or_above_it() {
        let mut histogram = Histogram::new(&[1.0, 2.0]);
        for value in [0.5, 1.0, 1.5, 3.0] {
            histogram.observe(value);
        }
        let mut out = String::new();
        histogram.render(&mut out, "x", "m=\"a\"");
        assert_eq!(
            out,
            "x_bucket{m=\"a\",le=\"1\"} 2\nx_bucket{m=\"a\",le=\"2\"} 3\n\
             x_bucket{m=\"a\",le=\"+Inf\"} 4\nx_sum{m=\"a\"} 6\nx_count{m=\"a\"} 4\n"
        );
    }

    #[test]
    fn only_the_contracts_methods_are_labels() {
        let metrics = Metrics::new();
        metrics.rpc(
            "/billing.v1.CallService/AddCall",
            Code::Ok,
            Duration::from_millis(2),
        );
        metrics.rpc(
            "/evil/1234567",
            Code::Unimplemented,
            Duration::from_millis(1),
        );
        let text = metrics.render(&[]);
        assert!(text.contains(
            "billing_rpc_requests_total{method=\"billing.v1.CallService/AddCall\",code=\"ok\"} 1"
        ));
        assert!(text.contains("method=\"unknown\",code=\"unimplemented\"} 1"));
        assert!(!text.contains("evil"));
        assert_eq!(snake("DeadlineExceeded"), "deadline_exceeded");
    }
}
