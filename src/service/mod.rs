//! The use cases: one module per area (accounts, customers, calls,
//! invoicing). Each takes the caller's [`Principal`], checks the access
//! policy, applies the billing rules of `domain` and calls `storage`. The
//! gRPC handlers, the scheduler and `demo-data` all go through here.
//!
//! [`Principal`]: crate::domain::access::Principal

pub mod access;
pub mod accounts;
pub mod calls;
pub mod customers;
pub mod deliveries;
pub mod invoicing;
pub mod numbers;
pub mod plans;

pub use access::{Access, CustomerPass};
pub use accounts::{Accounts, PasswordHashing, default_password_hash_concurrency};
pub use calls::Calls;
pub use customers::Customers;
pub use deliveries::{Deliveries, DeliveryConfig};
pub use invoicing::Invoicing;
pub use numbers::Numbers;
pub use plans::Plans;
