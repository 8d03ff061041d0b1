//! The one mapping from [`AppError`] to a gRPC status.

use tonic::{Code, Status};

use crate::error::AppError;

/// The status code a client gets for `err`.
pub fn code_of(err: &AppError) -> Code {
    match err {
        AppError::InvalidArgument { .. } => Code::InvalidArgument,
        AppError::NotFound(_) => Code::NotFound,
        AppError::AlreadyExists(_) => Code::AlreadyExists,
        AppError::FailedPrecondition(_) => Code::FailedPrecondition,
        AppError::Aborted(_) => Code::Aborted,
        AppError::Unauthenticated(_) => Code::Unauthenticated,
        AppError::PermissionDenied(_) => Code::PermissionDenied,
        AppError::ResourceExhausted(_) => Code::ResourceExhausted,
        AppError::Unavailable(_) => Code::Unavailable,
        AppError::Internal(_) => Code::Internal,
    }
}

/// The message a client gets for `err`: the error itself for client
/// mistakes; for faults of the service only a generic text, while the full
/// source chain goes to the log.
pub fn message_of(err: &AppError) -> String {
    match err {
        AppError::Internal(_) | AppError::Unavailable(_) => {
            tracing::error!(error = %err.detail(), "request failed");
            err.to_string()
        }
        AppError::InvalidArgument { .. }
        | AppError::NotFound(_)
        | AppError::AlreadyExists(_)
        | AppError::FailedPrecondition(_)
        | AppError::Aborted(_)
        | AppError::Unauthenticated(_)
        | AppError::PermissionDenied(_)
        | AppError::ResourceExhausted(_) => err.to_string(),
    }
}

impl From<AppError> for Status {
    fn from(err: AppError) -> Self {
        Status::new(code_of(&err), message_of(&err))
    }
}
