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

/// Splits a fetch of `limit + 1` rows into the page and the token of the
/// next page (empty when this is the last page).
fn page_of<T>(
    mut rows: Vec<T>,
    limit: u64,
    token_after: impl Fn(&T) -> String,
) -> (Vec<T>, String) {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    if rows.len() <= limit {
        return (rows, String::new());
    }
    rows.truncate(limit);
    let token = rows.last().map(&token_after).unwrap_or_default();
    (rows, token)
}
