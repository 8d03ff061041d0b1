//! Who held a number when: a per-process cache of each number's
//! assignments, so that charging a call by its calling number costs no
//! query once the number has been looked up.
//!
//! The cache is as new as the version of the numbers it was read at (see
//! the migration's `number_versions`). Every lookup answers that version
//! too; a call charged through it carries it to the transaction that
//! stores it, which checks it against the database's (holding it on
//! PostgreSQL, so no change commits in between). A call whose version is
//! behind is refused with `Aborted`; the use case then refreshes the cache
//! and charges the call again. So a number reassigned on another replica
//! never bills its previous holder for a call after the change, and the
//! cache needs no messages between replicas.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};

use crate::domain::numbers::{NumberAssignment, holder_at};
use crate::error::AppResult;
use crate::storage::Store;

/// Numbers whose assignments a process keeps, at most; the cache starts
/// over when full.
pub const NUMBER_CACHE_ENTRIES: usize = 200_000;

/// The holders of numbers over time. Cheap to clone; clones share the
/// cache.
#[derive(Debug, Clone)]
pub struct Numbers {
    store: Store,
    cache: Arc<Mutex<NumberCache>>,
}

#[derive(Debug, Default)]
struct NumberCache {
    /// The version every cached history was read at; `None` before the
    /// first read.
    version: Option<i64>,
    histories: HashMap<String, Arc<[NumberAssignment]>>,
}

/// Who held a number at an instant, and the version that says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holder {
    pub customer_id: Option<i64>,
    pub version: i64,
}

impl Numbers {
    pub fn new(store: Store) -> Self {
        Numbers {
            store,
            cache: Arc::default(),
        }
    }

    /// Who held `number` at `at`.
    pub async fn holder_at(&self, number: &str, at: DateTime<Utc>) -> AppResult<Holder> {
        if let Ok(cache) = self.cache.lock()
            && let Some(version) = cache.version
            && let Some(history) = cache.histories.get(number)
        {
            return Ok(Holder {
                customer_id: holder_at(history, at),
                version,
            });
        }
        let (version, history) = self.store.number_history(number).await?;
        let customer_id = holder_at(&history, at);
        self.remember(number, version, history);
        Ok(Holder {
            customer_id,
            version,
        })
    }

    /// Brings the cache up to the database's version (forgetting every
    /// history read before a change).
    pub async fn refresh(&self) -> AppResult<()> {
        let version = self.store.number_version().await?;
        if let Ok(mut cache) = self.cache.lock() {
            cache.advance_to(version);
        }
        Ok(())
    }

    fn remember(&self, number: &str, version: i64, history: Vec<NumberAssignment>) {
        let Ok(mut cache) = self.cache.lock() else {
            return;
        };
        cache.advance_to(version);
        // A history read before a change the cache has already seen is not
        // kept.
        if cache.version != Some(version) {
            return;
        }
        if cache.histories.len() >= NUMBER_CACHE_ENTRIES {
            cache.histories.clear();
        }
        cache.histories.insert(number.to_owned(), history.into());
    }
}

impl NumberCache {
    fn advance_to(&mut self, version: i64) {
        if self.version.is_none_or(|known| known < version) {
            self.version = Some(version);
            self.histories.clear();
        }
    }
}
