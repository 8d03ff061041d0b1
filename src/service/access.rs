//! Applying the access policy of `domain::access` where it needs the
//! database: whether a customer is linked to the caller's operator.
//! [`CustomerPass`] is the proof that the check happened; only
//! [`Access::customer`] makes one, and the use cases that act on one
//! customer's data take it.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use crate::domain::access::{self, Action, CustomerScope, Principal};
use crate::error::{AppError, AppResult};
use crate::storage::Store;

/// Proof that the caller may act on this customer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CustomerPass {
    customer_id: i64,
}

impl CustomerPass {
    /// The customer the pass is for.
    pub fn customer_id(self) -> i64 {
        self.customer_id
    }
}

/// Operator–customer links one process remembers, at most; past it the
/// cache starts over. 16 bytes each, plus the set's overhead.
pub const LINK_CACHE_ENTRIES: usize = 100_000;

/// The policy with the database it needs. Cheap to clone (clones share
/// what they remember).
#[derive(Debug, Clone)]
pub struct Access {
    store: Store,
    /// `(operator_id, customer_id)` links read from the database. A link
    /// is never removed, so one seen once holds on every replica for good;
    /// an absent link may be added later, so absences are not remembered.
    links: Arc<Mutex<HashSet<(i64, i64)>>>,
}

impl Access {
    pub fn new(store: Store) -> Self {
        Access {
            store,
            links: Arc::default(),
        }
    }

    /// A pass for `principal` to perform `action` on customer
    /// `customer_id`: `PERMISSION_DENIED` if its role may not perform the
    /// action at all, `NOT_FOUND` if the customer is outside what it may
    /// see (exactly as if the customer did not exist).
    pub async fn customer(
        &self,
        principal: &Principal,
        action: Action,
        customer_id: i64,
    ) -> AppResult<CustomerPass> {
        access::permits(principal, action)?;
        if self.sees(principal, customer_id).await? {
            Ok(CustomerPass { customer_id })
        } else {
            Err(AppError::not_found("customer", customer_id))
        }
    }

    /// Whether `customer_id` is within what `principal` may see (for an
    /// admin: always; whether the customer exists is the caller's question).
    pub async fn sees(&self, principal: &Principal, customer_id: i64) -> AppResult<bool> {
        Ok(match access::customer_scope(principal) {
            CustomerScope::All => true,
            CustomerScope::Customer(own) => own == customer_id,
            CustomerScope::Operator(operator_id) => {
                self.is_linked(operator_id, customer_id).await?
            }
        })
    }

    /// Whether `customer_id` is linked to `operator_id`: a switch pushes
    /// calls of the same customers all day, so a link is read once.
    async fn is_linked(&self, operator_id: i64, customer_id: i64) -> AppResult<bool> {
        let link = (operator_id, customer_id);
        if self.links.lock().is_ok_and(|links| links.contains(&link)) {
            return Ok(true);
        }
        let linked = self.store.is_linked(operator_id, customer_id).await?;
        if linked && let Ok(mut links) = self.links.lock() {
            if links.len() >= LINK_CACHE_ENTRIES {
                links.clear();
            }
            links.insert(link);
        }
        Ok(linked)
    }
}
