//! The readiness gate: while the database is unreachable (see
//! [`crate::readiness`]), every RPC but health and reflection ends at once
//! with `UNAVAILABLE`, the status gRPC clients retry, instead of waiting for
//! a connection the pool cannot open.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::watch;
use tonic::Status;
use tower::{Layer, Service};

/// Path prefixes served whatever the database's state.
const ALWAYS: [&str; 3] = [
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// Applies [`ReadinessGate`] to a server's routes.
#[derive(Debug, Clone)]
pub struct ReadinessLayer {
    database_up: watch::Receiver<bool>,
}

impl ReadinessLayer {
    /// A gate that is open while `database_up` holds true.
    pub fn new(database_up: watch::Receiver<bool>) -> Self {
        ReadinessLayer { database_up }
    }
}

impl<S> Layer<S> for ReadinessLayer {
    type Service = ReadinessGate<S>;

    fn layer(&self, inner: S) -> ReadinessGate<S> {
        ReadinessGate {
            inner,
            database_up: self.database_up.clone(),
        }
    }
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct ReadinessGate<S> {
    inner: S,
    database_up: watch::Receiver<bool>,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for ReadinessGate<S>
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
        let path = request.uri().path();
        if !*self.database_up.borrow() && !ALWAYS.iter().any(|prefix| path.starts_with(prefix)) {
            return Box::pin(async {
                Ok(Status::unavailable(
                    "the database is unreachable; retry later or on another replica",
                )
                .into_http())
            });
        }
        Box::pin(self.inner.call(request))
    }
}
