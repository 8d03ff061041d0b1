//! One log line per RPC: method, the caller's account id (`-` for none;
//! never a token), gRPC status code and latency. The status is
//! read from the response headers (trailers-only errors) or, for ordinary and
//! streamed responses, from the trailers when the body ends; a response body
//! dropped before its end (a cancelled stream) is logged as `Cancelled`.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http_body::{Body, Frame, SizeHint};
use tonic::Code;
use tower::{Layer, Service};

use super::auth::CallerAccount;
use crate::metrics::Metrics;

/// Wraps every RPC of a server in [`RpcLog`], counting each in `metrics`.
#[derive(Debug, Clone)]
pub struct RpcLogLayer {
    pub metrics: Arc<Metrics>,
}

impl<S> Layer<S> for RpcLogLayer {
    type Service = RpcLog<S>;

    fn layer(&self, inner: S) -> RpcLog<S> {
        RpcLog {
            inner,
            metrics: Arc::clone(&self.metrics),
        }
    }
}

/// A service that logs (and counts) each RPC it serves once it completes.
#[derive(Debug, Clone)]
pub struct RpcLog<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for RpcLog<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<LoggedBody<ResBody>>;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let method = request.uri().path().to_owned();
        let started = Instant::now();
        let metrics = Arc::clone(&self.metrics);
        let in_progress = metrics.rpc_started();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            drop(in_progress);
            let response = response?;
            let status = status_in(response.headers());
            let account = response
                .extensions()
                .get::<CallerAccount>()
                .and_then(|caller| caller.0);
            Ok(response.map(|inner| LoggedBody {
                inner,
                pending: Some(PendingLog {
                    metrics,
                    method,
                    account,
                    started,
                    status,
                }),
            }))
        })
    }
}

/// The log line of an RPC whose response is still being sent.
#[derive(Debug)]
struct PendingLog {
    metrics: Arc<Metrics>,
    method: String,
    account: Option<i64>,
    started: Instant,
    status: Option<Code>,
}

impl PendingLog {
    fn emit(self, fallback: Code) {
        let code = self.status.unwrap_or(fallback);
        let latency = self.started.elapsed();
        self.metrics.rpc(&self.method, code, latency);
        let account = self
            .account
            .map_or_else(|| "-".to_owned(), |id| id.to_string());
        if matches!(
            code,
            Code::Internal | Code::Unknown | Code::DataLoss | Code::Unavailable
        ) {
            tracing::warn!(method = %self.method, account = %account, code = ?code, latency = ?latency, "rpc");
        } else {
            tracing::info!(method = %self.method, account = %account, code = ?code, latency = ?latency, "rpc");
        }
    }
}

fn status_in(headers: &http::HeaderMap) -> Option<Code> {
    headers
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<i32>().ok())
        .map(Code::from_i32)
}

/// A response body that logs its RPC when it ends.
#[derive(Debug)]
pub struct LoggedBody<B> {
    inner: B,
    pending: Option<PendingLog>,
}

impl<B> Body for LoggedBody<B>
where
    B: Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(trailers), Some(pending)) = (frame.trailers_ref(), &mut this.pending)
                    && let Some(code) = status_in(trailers)
                {
                    pending.status = Some(code);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(pending) = this.pending.take() {
                    pending.emit(Code::Unknown);
                }
            }
            Poll::Ready(None) => {
                if let Some(pending) = this.pending.take() {
                    pending.emit(Code::Ok);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for LoggedBody<B> {
    fn drop(&mut self) {
        if let Some(pending) = self.pending.take() {
            let fallback = if pending.status.is_some() {
                Code::Ok
            } else {
                Code::Cancelled
            };
            pending.emit(fallback);
        }
    }
}
