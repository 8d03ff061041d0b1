//! The gRPC layer: tonic services that translate protobuf messages into the
//! domain's types, call storage and the billing rules, and map errors to
//! statuses. Only this layer touches generated `pb` types.

mod calls;
mod convert;
mod customers;
mod invoices;
pub mod logging;
pub mod status;

pub use calls::CallApi;
pub use customers::CustomerApi;
pub use invoices::InvoiceApi;

/// Code generated from `proto/billing/v1/billing.proto`.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("billing.v1");

    /// The encoded file descriptor set of the contract, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("billing_descriptor");
}
