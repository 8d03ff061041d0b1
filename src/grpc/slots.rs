//! Bounds on the long-lived streams one server holds open: at most so many
//! in all, and at most so many for one account, so that one tenant cannot
//! take every slot. The counts are this server's own (in-process), like the
//! streams they count; each replica applies its bounds to the streams it
//! serves.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;

use crate::domain::access::Principal;

/// The open streams of one kind (e.g. invoice watchers) and their bounds.
#[derive(Debug, Clone)]
pub struct StreamSlots {
    /// What the streams are, for messages ("invoice watchers").
    what: &'static str,
    /// The flags setting the bounds, for messages.
    flags: (&'static str, &'static str),
    total: Arc<Semaphore>,
    max_total: usize,
    per_account: Arc<Mutex<HashMap<i64, usize>>>,
    max_per_account: usize,
}

/// One open stream's slot; given back when dropped, however the stream ends.
#[derive(Debug)]
pub struct StreamSlot {
    _total: OwnedSemaphorePermit,
    _account: Option<AccountSlot>,
}

impl StreamSlots {
    /// At most `max_total` streams, `max_per_account` of them for one
    /// account; `flags` name the two bounds in messages.
    pub fn new(
        what: &'static str,
        flags: (&'static str, &'static str),
        max_total: usize,
        max_per_account: usize,
    ) -> Self {
        StreamSlots {
            what,
            flags,
            total: Arc::new(Semaphore::new(max_total)),
            max_total,
            per_account: Arc::default(),
            max_per_account,
        }
    }

    /// How many of these streams are open.
    pub fn open(&self) -> usize {
        self.max_total
            .saturating_sub(self.total.available_permits())
    }

    /// A slot for a stream of `principal`, or `RESOURCE_EXHAUSTED` naming
    /// the bound reached. The service itself (a server run with
    /// authentication off) is one caller with no account, bound only by the
    /// server's limit.
    pub fn take(&self, principal: &Principal) -> Result<StreamSlot, Status> {
        let account = self.account_slot(principal)?;
        let Ok(total) = self.total.clone().try_acquire_owned() else {
            return Err(Status::resource_exhausted(format!(
                "this server already serves {} {} ({}); retry later",
                self.max_total, self.what, self.flags.0
            )));
        };
        Ok(StreamSlot {
            _total: total,
            _account: account,
        })
    }

    fn account_slot(&self, principal: &Principal) -> Result<Option<AccountSlot>, Status> {
        let Some(account_id) = principal.account_id() else {
            return Ok(None);
        };
        let mut open = self
            .per_account
            .lock()
            .map_err(|_| Status::internal("stream counts poisoned"))?;
        let count = open.entry(account_id).or_default();
        if *count >= self.max_per_account {
            return Err(Status::resource_exhausted(format!(
                "this account already has {} {} open on this server ({}); \
                 close one or retry later",
                self.max_per_account, self.what, self.flags.1
            )));
        }
        *count += 1;
        Ok(Some(AccountSlot {
            account_id,
            open: self.per_account.clone(),
        }))
    }
}

/// One open stream of an account; given back when dropped.
#[derive(Debug)]
struct AccountSlot {
    account_id: i64,
    open: Arc<Mutex<HashMap<i64, usize>>>,
}

impl Drop for AccountSlot {
    fn drop(&mut self) {
        if let Ok(mut open) = self.open.lock()
            && let Some(count) = open.get_mut(&self.account_id)
        {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.account_id);
            }
        }
    }
}
