//! The service's one error type. Every layer returns it; only `grpc::status`
//! turns it into a gRPC status. Client mistakes are named precisely; anything
//! else is `Internal`, logged with its source chain and never shown to clients.

use std::error::Error as StdError;

/// Everything that can go wrong while serving a request.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The request is malformed; `field` names the offending proto field.
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    /// A referenced resource does not exist; the text says which.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with stored state (a unique value already taken,
    /// an idempotency key reused with a different request).
    #[error("{0}")]
    AlreadyExists(String),
    /// The caller has no valid credentials; the text says what is wrong
    /// without saying which part of a login was.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller's role may not do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// A limit on the caller was reached (the login throttle, the number of
    /// watchers); the text says which and for how long.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The request met a concurrent change and may be tried again as it is
    /// (the use cases retry it themselves first).
    #[error("{0}")]
    Aborted(String),
    /// The request is valid but the system is not in a state to perform it.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The database is momentarily unable to serve (busy or out of
    /// connections); the client may retry.
    #[error("service temporarily unavailable")]
    Unavailable(#[source] Box<dyn StdError + Send + Sync>),
    /// A fault of the service, not of the client.
    #[error("internal error")]
    Internal(#[source] Box<dyn StdError + Send + Sync>),
}

impl AppError {
    /// An `InvalidArgument` naming `field`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        AppError::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// A `NotFound` for the resource with this id, e.g. "customer 7 not found".
    pub fn not_found(resource: &str, id: i64) -> Self {
        AppError::NotFound(format!("{resource} {id} not found"))
    }

    /// An `Internal` error from any source.
    pub fn internal(source: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        AppError::Internal(source.into())
    }

    /// A copy of this error for each of several requests that met it (the
    /// requests of one coalesced lookup): the same kind and text, with the
    /// source chain flattened into one message.
    pub fn shared(&self) -> AppError {
        match self {
            AppError::InvalidArgument { field, reason } => AppError::invalid(field, reason),
            AppError::NotFound(text) => AppError::NotFound(text.clone()),
            AppError::AlreadyExists(text) => AppError::AlreadyExists(text.clone()),
            AppError::Unauthenticated(text) => AppError::Unauthenticated(text.clone()),
            AppError::PermissionDenied(text) => AppError::PermissionDenied(text.clone()),
            AppError::ResourceExhausted(text) => AppError::ResourceExhausted(text.clone()),
            AppError::FailedPrecondition(text) => AppError::FailedPrecondition(text.clone()),
            AppError::Aborted(text) => AppError::Aborted(text.clone()),
            AppError::Unavailable(source) => AppError::Unavailable(chain(source.as_ref()).into()),
            AppError::Internal(source) => AppError::Internal(chain(source.as_ref()).into()),
        }
    }

    /// The error with its whole source chain, for logs (never for clients).
    pub fn detail(&self) -> String {
        let mut text = self.to_string();
        let mut source = StdError::source(self);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        text
    }
}

/// The result type of the service's operations.
pub type AppResult<T> = Result<T, AppError>;

/// `err` and its sources, as one line.
fn chain(err: &(dyn StdError + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_error_keeps_its_kind_and_its_whole_text() {
        let not_found = AppError::not_found("customer", 7).shared();
        assert!(matches!(&not_found, AppError::NotFound(text) if text == "customer 7 not found"));
        let invalid = AppError::invalid("page_size", "too large").shared();
        assert_eq!(invalid.to_string(), "page_size: too large");
        let cause = std::io::Error::other("database is locked");
        let unavailable = AppError::Unavailable(Box::new(cause)).shared();
        assert!(matches!(unavailable, AppError::Unavailable(_)));
        assert_eq!(
            unavailable.detail(),
            "service temporarily unavailable: database is locked"
        );
        let internal = AppError::internal("no outcome").shared();
        assert!(matches!(internal, AppError::Internal(_)));
        assert_eq!(internal.detail(), "internal error: no outcome");
    }
}
