//! The billing rules: pure functions and plain types, no I/O. Nothing here
//! imports tonic or sea_orm; the gRPC layer converts into these types and the
//! storage layer persists them.

pub mod access;
pub mod credentials;
pub mod delivery;
pub mod invoice;
pub mod model;
pub mod money;
pub mod numbers;
pub mod paging;
pub mod period;
pub mod plan;
pub mod rating;
pub mod tariff;
pub mod throttle;
pub mod validation;
