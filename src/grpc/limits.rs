//! Transport bounds applied to every RPC, as one tower layer:
//!
//! - a timeout for unary RPCs (and for the start of server streams): a
//!   request whose response has not begun within it ends with
//!   `DEADLINE_EXCEEDED`. Client-streaming RPCs are exempt (an upload lasts
//!   as long as the client sends); which methods stream is read from the
//!   contract's descriptors, so a new streaming RPC needs no list here.
//! - a request over the decoded message limit is `RESOURCE_EXHAUSTED`, as
//!   the gRPC spec has it; tonic reports it as `OUT_OF_RANGE`, which this
//!   layer rewrites.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};
use std::time::Duration;

use prost::Message;
use tonic::{Code, Status};
use tower::{Layer, Service};

use super::pb;

/// Paths (`/package.Service/Method`) of the client-streaming RPCs served.
static CLIENT_STREAMING: LazyLock<HashSet<String>> = LazyLock::new(|| {
    let mut paths: HashSet<String> = [
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    if let Ok(set) = prost_types::FileDescriptorSet::decode(pb::FILE_DESCRIPTOR_SET) {
        for file in &set.file {
            for service in &file.service {
                for method in &service.method {
                    if method.client_streaming() {
                        paths.insert(format!(
                            "/{}.{}/{}",
                            file.package(),
                            service.name(),
                            method.name()
                        ));
                    }
                }
            }
        }
    }
    paths
});

/// HTTP/2 flow-control windows `(stream, connection)` for a server allowing
/// `max_concurrent_streams` streams per connection.
///
/// h2 closes a connection (`GOAWAY ENHANCE_YOUR_CALM "too_many_data_frames"`)
/// once the small DATA frames it holds unread cost more than a budget of
/// half the connection window, each frame of `n < 256` bytes costing
/// `256 - n`. A client that sends every gRPC message as its own frame (as
/// grpcio and grpc-go do) fills that budget whenever a handler stops
/// reading for a while, as an upload does while its batch is written. The
/// budget is not configurable through hyper or tonic, so the windows are
/// chosen so that it cannot be reached by whole messages: unread data is
/// bounded by the stream windows (at most `max_concurrent_streams` of
/// them), the connection window is the largest HTTP/2 allows (so it never
/// binds before the stream windows do), and a frame carrying at least a
/// message's 5-byte prefix costs at most 251 for 5 bytes. Only a client that
/// splits one message into frames of fewer than 5 bytes can still exhaust
/// the budget, and only for its own connection.
pub fn flow_control_windows(max_concurrent_streams: u32) -> (u32, u32) {
    const CONNECTION_WINDOW: u32 = (1 << 31) - 1;
    // The budget h2 derives from the connection window.
    const BUDGET: u64 = CONNECTION_WINDOW as u64 / 2;
    // The worst cost per unread byte: a 5-byte frame costs 251.
    const COST: u64 = 251;
    const SMALLEST_FRAME: u64 = 5;
    const STREAM_WINDOW: u64 = 65_535;
    let streams = u64::from(max_concurrent_streams.max(1));
    let fits = BUDGET * SMALLEST_FRAME / (COST * streams);
    let stream = STREAM_WINDOW.min(fits).max(SMALLEST_FRAME);
    (u32::try_from(stream).unwrap_or(u32::MAX), CONNECTION_WINDOW)
}

/// The prefix of tonic's status for a request message over the limit.
const TONIC_TOO_LARGE: &str = "Error, decoded message length too large";

/// Applies [`UnaryTimeout`] to a server's routes.
#[derive(Debug, Clone, Copy)]
pub struct UnaryTimeoutLayer {
    timeout: Duration,
}

impl UnaryTimeoutLayer {
    /// Unary RPCs get `timeout` to produce their response.
    pub fn new(timeout: Duration) -> Self {
        UnaryTimeoutLayer { timeout }
    }
}

impl<S> Layer<S> for UnaryTimeoutLayer {
    type Service = UnaryTimeout<S>;

    fn layer(&self, inner: S) -> UnaryTimeout<S> {
        UnaryTimeout {
            inner,
            timeout: self.timeout,
        }
    }
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct UnaryTimeout<S> {
    inner: S,
    timeout: Duration,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for UnaryTimeout<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let streaming = CLIENT_STREAMING.contains(request.uri().path());
        let timeout = self.timeout;
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = if streaming {
                response.await?
            } else {
                match tokio::time::timeout(timeout, response).await {
                    Ok(response) => response?,
                    Err(_) => {
                        return Ok(Status::deadline_exceeded(format!(
                            "the request took longer than the server's {} s limit",
                            timeout.as_secs_f64()
                        ))
                        .into_http());
                    }
                }
            };
            Ok(too_large_is_resource_exhausted(response))
        })
    }
}

/// Rewrites tonic's `OUT_OF_RANGE` for an oversized request message into
/// `RESOURCE_EXHAUSTED`.
fn too_large_is_resource_exhausted<B: Default>(response: http::Response<B>) -> http::Response<B> {
    let Some(status) = Status::from_header_map(response.headers()) else {
        return response;
    };
    match status.message().strip_prefix(TONIC_TOO_LARGE) {
        Some(detail) if status.code() == Code::OutOfRange => {
            Status::resource_exhausted(format!("request message too large{detail}")).into_http()
        }
        _ => response,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_streaming_methods_are_found_in_the_contract() {
        assert!(CLIENT_STREAMING.contains("/billing.v1.CallService/IngestCalls"));
        assert!(!CLIENT_STREAMING.contains("/billing.v1.CallService/AddCall"));
        assert!(!CLIENT_STREAMING.contains("/billing.v1.InvoiceService/WatchInvoices"));
    }

    #[test]
    fn unread_whole_messages_never_exhaust_h2s_small_frame_budget() {
        for streams in [1, 2, 256, 1000, 4096] {
            let (stream, connection) = flow_control_windows(streams);
            let budget = u64::from(connection) / 2;
            let frames = u64::from(streams) * u64::from(stream) / 5;
            assert!(
                frames * 251 <= budget,
                "{streams} streams of {stream} bytes"
            );
            assert!(u64::from(stream) * u64::from(streams) <= u64::from(connection));
        }
        assert_eq!(flow_control_windows(256).0, 65_535);
        assert!(flow_control_windows(4096).0 >= 4096);
    }

    #[test]
    fn tonics_too_large_status_becomes_resource_exhausted() {
        let tonic_status: http::Response<String> = Status::out_of_range(format!(
            "{TONIC_TOO_LARGE}: found 2000000 bytes, the limit is: 1048576 bytes"
        ))
        .into_http();
        let rewritten = too_large_is_resource_exhausted(tonic_status);
        let status = Status::from_header_map(rewritten.headers()).unwrap();
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(status.message().contains("1048576"), "{status:?}");
        let other: http::Response<String> = Status::out_of_range("month 13").into_http();
        let kept = too_large_is_resource_exhausted(other);
        assert_eq!(
            Status::from_header_map(kept.headers()).unwrap().code(),
            Code::OutOfRange
        );
    }
}
