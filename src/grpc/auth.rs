//! Authentication at the edge, once per RPC: a tower layer that turns the
//! `authorization: Bearer …` metadata into the caller's [`Principal`] and
//! puts it in the request's extensions, where handlers read it with
//! [`caller`]. `Login`, gRPC health and server reflection need no
//! credentials. Any other RPC without valid credentials ends here with
//! `UNAUTHENTICATED`, before its handler runs.
//!
//! The caller's account id is also put in the response's extensions, so the
//! RPC log line can name it (never the token).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::{Request, Status};
use tower::{Layer, Service};

use crate::domain::access::{self, Action, Principal};
use crate::service::Accounts;

/// RPC paths (or path prefixes, ending in `/`) served without credentials.
const PUBLIC: [&str; 4] = [
    "/billing.v1.AccountService/Login",
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// The principal of a server run with authentication off.
pub const NO_AUTH: Principal = Principal::System("authentication is off (--no-auth)");

/// The account id of an RPC's caller, for its log line.
#[derive(Debug, Clone, Copy)]
pub struct CallerAccount(pub Option<i64>);

/// The principal the auth layer established for `request`.
pub fn caller<T>(request: &Request<T>) -> Result<Principal, Status> {
    request
        .extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no credentials were checked for this RPC"))
}

/// The caller of `request`, if its role may perform `action` at all
/// (`PERMISSION_DENIED` otherwise). Checked before the request is
/// validated, so a caller that may not call an RPC learns nothing from it;
/// the use case then checks everything else (which customers) itself.
pub fn caller_may<T>(request: &Request<T>, action: Action) -> Result<Principal, Status> {
    let principal = caller(request)?;
    access::permits(&principal, action)?;
    Ok(principal)
}

/// How RPCs are authenticated.
#[derive(Debug, Clone)]
pub enum Authentication {
    /// Bearer tokens checked against the accounts (shared: the layer hands
    /// every request a reference, not a copy).
    On(Arc<Accounts>),
    /// Every caller acts as [`NO_AUTH`].
    Off,
}

/// Applies [`Authenticate`] to a server's routes.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    authentication: Authentication,
}

impl AuthLayer {
    pub fn new(authentication: Authentication) -> Self {
        AuthLayer { authentication }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Authenticate<S>;

    fn layer(&self, inner: S) -> Authenticate<S> {
        Authenticate {
            inner,
            authentication: self.authentication.clone(),
        }
    }
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct Authenticate<S> {
    inner: S,
    authentication: Authentication,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Authenticate<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        // The service that was polled ready serves this request; the clone
        // takes its place for the next one.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let path = request.uri().path();
        let public = PUBLIC
            .iter()
            .any(|p| path == *p || (p.ends_with('/') && path.starts_with(p)));
        let authentication = self.authentication.clone();
        Box::pin(async move {
            let mut account = None;
            if !public {
                let principal = match &authentication {
                    Authentication::Off => Ok(NO_AUTH),
                    Authentication::On(accounts) => match bearer(request.headers()) {
                        Ok(token) => accounts.authenticate(token).await.map_err(Status::from),
                        Err(status) => Err(status),
                    },
                };
                match principal {
                    Ok(principal) => {
                        account = principal.account_id();
                        request.extensions_mut().insert(principal);
                    }
                    Err(status) => return Ok(status.into_http()),
                }
            }
            let mut response = inner.call(request).await?;
            response.extensions_mut().insert(CallerAccount(account));
            Ok(response)
        })
    }
}

/// The bearer token a request presented, if any.
pub fn presented_bearer<T>(request: &Request<T>) -> Option<String> {
    let value = request.metadata().get("authorization")?.to_str().ok()?;
    bearer_in(value).ok().map(str::to_owned)
}

/// The token of an `authorization: Bearer <token>` header.
fn bearer(headers: &http::HeaderMap) -> Result<&str, Status> {
    let value = headers.get(http::header::AUTHORIZATION).ok_or_else(|| {
        Status::unauthenticated(
            "missing metadata `authorization: Bearer <token>`; sign in with AccountService/Login",
        )
    })?;
    let value = value.to_str().map_err(|_| malformed())?;
    bearer_in(value)
}

fn malformed() -> Status {
    Status::unauthenticated("`authorization` must be `Bearer <token>`")
}

/// The token of an `authorization` value `Bearer <token>`.
fn bearer_in(value: &str) -> Result<&str, Status> {
    let (scheme, token) = value.split_once(' ').ok_or_else(malformed)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(malformed());
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::AUTHORIZATION, value.parse().unwrap());
        headers
    }

    #[test]
    fn a_bearer_token_is_read_from_the_authorization_header() {
        assert_eq!(bearer(&headers("Bearer abc")).unwrap(), "abc");
        assert_eq!(bearer(&headers("bearer  abc ")).unwrap(), "abc");
        for bad in ["abc", "Basic abc", "Bearer ", "Bearer"] {
            assert_eq!(
                bearer(&headers(bad)).unwrap_err().code(),
                tonic::Code::Unauthenticated,
                "{bad}"
            );
        }
        assert!(bearer(&http::HeaderMap::new()).is_err());
    }
}
