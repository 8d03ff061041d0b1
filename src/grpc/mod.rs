//! The gRPC layer: tonic services that translate protobuf messages into the
//! domain's types, call the use cases of `service` with the caller's
//! principal, and map errors to statuses. Only this layer touches generated
//! `pb` types.

mod accounts;
pub mod auth;
mod calls;
pub use calls::SOURCE_HEADER;
pub mod codec;
pub(crate) mod convert;
mod customers;
mod invoices;
pub mod limits;
pub mod logging;
mod notifications;
pub mod readiness;
mod slots;
pub mod status;

pub use accounts::AccountApi;
pub use calls::CallApi;
pub use customers::CustomerApi;
pub use invoices::InvoiceApi;
pub use notifications::NotificationApi;

/// Code generated from `proto/`: `billing.v1` and the vendored
/// `google.type` it imports, nested as their packages are so the generated
/// cross-package paths resolve.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    pub mod billing {
        pub mod v1 {
            tonic::include_proto!("billing.v1");

            /// The encoded file descriptor set of the contract, for server
            /// reflection.
            pub const FILE_DESCRIPTOR_SET: &[u8] =
                tonic::include_file_descriptor_set!("billing_descriptor");
        }
    }
    pub mod google {
        pub mod r#type {
            include!(concat!(env!("OUT_DIR"), "/google.r#type.rs"));
        }
    }
}

/// The `billing.v1` contract's generated types, clients and servers.
pub use proto::billing::v1 as pb;
/// `google.type.DayOfWeek`, used by tariffs.
pub use proto::google::r#type::DayOfWeek;

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

/// A page request of a listing ordered by id: the position after which it
/// starts and how many rows it holds.
struct IdPage {
    scope: crate::domain::paging::TokenScope,
    /// The last id of the previous page; 0 for the first page.
    after_id: i64,
    limit: u64,
}

impl IdPage {
    /// Reads `page_size` and `page_token` of `listing` filtered by `filters`.
    fn of(
        listing: &'static str,
        filters: Vec<i64>,
        page_size: i32,
        page_token: &str,
    ) -> crate::error::AppResult<Self> {
        use crate::domain::paging;
        let limit = paging::page_size(page_size)?;
        let scope = paging::TokenScope { listing, filters };
        let after_id = paging::decode_token(&scope, page_token, 1)?.map_or(0, |keys| keys[0]);
        Ok(IdPage {
            scope,
            after_id,
            limit,
        })
    }

    /// How many rows to fetch: one more than the page, to know if another
    /// page follows.
    fn fetch(&self) -> u64 {
        self.limit + 1
    }

    /// The page of `rows` (fetched with [`IdPage::fetch`]) and the token of
    /// the next page.
    fn finish<T>(&self, rows: Vec<T>, id: impl Fn(&T) -> i64) -> (Vec<T>, String) {
        page_of(rows, self.limit, |last| {
            crate::domain::paging::encode_token(&self.scope, &[id(last)])
        })
    }
}
