//! Each customer's plan, cached for the whole process: rating a call needs
//! its customer's plan, and a switch pushes calls of the same customers all
//! day. A customer new to the cache costs a lookup of its plan's id, and
//! the lookups of concurrent requests are coalesced: one task takes every
//! lookup queued and answers them all with one query (at most
//! [`PLAN_LOOKUPS_PER_QUERY`] customers each), so a server that starts
//! cold under a switch's load of many customers runs one query per batch
//! of them, not one per customer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot};

use crate::domain::plan::Plan;
use crate::error::{AppError, AppResult};
use crate::storage::Store;

/// Customers whose plan one process remembers, at most; past it the cache
/// starts over. About 100 bytes each, plus one copy of each plan.
pub const PLAN_CACHE_CUSTOMERS: usize = 100_000;

/// Customers whose plan ids one lookup query reads, at most.
pub const PLAN_LOOKUPS_PER_QUERY: usize = 1000;

/// Lookups waiting for the lookup task, at most; more wait to be queued.
const PLAN_LOOKUP_QUEUE: usize = 4096;

/// A plan and a customer's plan never change and customers are never
/// deleted, so an entry never goes stale, on this replica or because of
/// another.
#[derive(Debug, Default)]
struct PlanCache {
    /// A customer's plan id and when the customer was created.
    plan_of: HashMap<i64, CustomerTerms>,
    plans: HashMap<i64, Arc<Plan>>,
}

impl PlanCache {
    /// Records that `customer_id` is on `plan_id`; a full cache starts over
    /// first (so the plan itself may have to be read again).
    fn remember(&mut self, customer_id: i64, terms: CustomerTerms) {
        if self.plan_of.len() >= PLAN_CACHE_CUSTOMERS {
            *self = PlanCache::default();
        }
        self.plan_of.insert(customer_id, terms);
    }
}

/// What never changes of a customer: its plan's id and when it was created.
type CustomerTerms = (i64, DateTime<Utc>);

/// One customer's plan id wanted, and where the answer goes.
#[derive(Debug)]
struct Lookup {
    customer_id: i64,
    reply: oneshot::Sender<AppResult<CustomerTerms>>,
}

/// The plans of customers. Cheap to clone; the lookup task ends when the
/// last clone is dropped.
#[derive(Debug, Clone)]
pub struct Plans {
    store: Store,
    cache: Arc<Mutex<PlanCache>>,
    lookups: mpsc::Sender<Lookup>,
}

impl Plans {
    /// The plans of `store`'s customers; starts the lookup task.
    pub fn new(store: Store) -> Plans {
        let (lookups, queue) = mpsc::channel(PLAN_LOOKUP_QUEUE);
        tokio::spawn(look_up_plan_ids(store.clone(), queue));
        Plans {
            store,
            cache: Arc::default(),
            lookups,
        }
    }

    /// The plan of `customer_id` (`NOT_FOUND` for an unknown customer),
    /// from the cache when this process has read it before. Checks no
    /// access: the caller's use case has.
    pub async fn of_customer(&self, customer_id: i64) -> AppResult<Arc<Plan>> {
        Ok(self.of_customer_since(customer_id).await?.0)
    }

    /// The plan of `customer_id` and when the customer was created, like
    /// [`Plans::of_customer`].
    pub async fn of_customer_since(
        &self,
        customer_id: i64,
    ) -> AppResult<(Arc<Plan>, DateTime<Utc>)> {
        if let Ok(cache) = self.cache.lock()
            && let Some(&(plan_id, created_at)) = cache.plan_of.get(&customer_id)
            && let Some(plan) = cache.plans.get(&plan_id)
        {
            return Ok((Arc::clone(plan), created_at));
        }
        // A customer new to the cache is most often on a plan it holds:
        // then its plan's id is all there is to read.
        let terms = self.plan_id_of(customer_id).await?;
        if let Some(plan) = self.cached_plan(customer_id, terms) {
            return Ok((plan, terms.1));
        }
        let plan = self.store.plan(terms.0).await?;
        Ok((self.remember(customer_id, plan, terms.1), terms.1))
    }

    /// The id of `customer_id`'s plan, read with the lookups of other
    /// requests waiting at the same time.
    async fn plan_id_of(&self, customer_id: i64) -> AppResult<CustomerTerms> {
        let (reply, answer) = oneshot::channel();
        self.lookups
            .send(Lookup { customer_id, reply })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// The plan `plan_id` if the cache holds it, then also recorded as
    /// `customer_id`'s.
    fn cached_plan(&self, customer_id: i64, terms: CustomerTerms) -> Option<Arc<Plan>> {
        let mut cache = self.cache.lock().ok()?;
        let plan = Arc::clone(cache.plans.get(&terms.0)?);
        cache.remember(customer_id, terms);
        Some(plan)
    }

    /// Caches `plan` as `customer_id`'s plan.
    fn remember(&self, customer_id: i64, plan: Plan, created_at: DateTime<Utc>) -> Arc<Plan> {
        let Ok(mut cache) = self.cache.lock() else {
            return Arc::new(plan);
        };
        let plan_id = plan.id;
        cache.remember(customer_id, (plan_id, created_at));
        Arc::clone(cache.plans.entry(plan_id).or_insert_with(|| Arc::new(plan)))
    }
}

fn stopped() -> AppError {
    AppError::Unavailable("the plan lookup task has stopped".into())
}

/// Answers the lookups queued, each batch with one query.
async fn look_up_plan_ids(store: Store, mut queue: mpsc::Receiver<Lookup>) {
    let mut batch = Vec::with_capacity(PLAN_LOOKUPS_PER_QUERY);
    while queue.recv_many(&mut batch, PLAN_LOOKUPS_PER_QUERY).await > 0 {
        // A request that went away before its lookup needs no answer.
        batch.retain(|lookup: &Lookup| !lookup.reply.is_closed());
        let mut customer_ids: Vec<i64> = batch.iter().map(|lookup| lookup.customer_id).collect();
        customer_ids.sort_unstable();
        customer_ids.dedup();
        let found = if customer_ids.is_empty() {
            Ok(HashMap::new())
        } else {
            store.plan_ids_of_customers(&customer_ids).await
        };
        for Lookup { customer_id, reply } in batch.drain(..) {
            let answer = match &found {
                Ok(plan_ids) => plan_ids
                    .get(&customer_id)
                    .copied()
                    .ok_or_else(|| AppError::not_found("customer", customer_id)),
                Err(err) => Err(err.shared()),
            };
            let _ = reply.send(answer);
        }
    }
}
