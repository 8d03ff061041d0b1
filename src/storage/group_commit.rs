//! Group commit for unary call writes: concurrent `AddCall`s join one
//! transaction.
//!
//! Each request hands its rated call to a writer task through a bounded
//! queue (a full queue makes the request wait: backpressure) and waits for
//! its own outcome. The writer takes whatever is queued, up to a batch
//! limit, stores it with `Store::store_calls_each` (one transaction with
//! the duplicate check and the prepaid debits inside it, or one `INSERT`
//! for a batch without debits or segments; call by call if the batch is
//! refused, so one bad call never fails its neighbours) and
//! answers each request only after the commit. While one batch commits, the
//! next queues up (on PostgreSQL, several writers take turns, so the next
//! batch is written while the last one's commit is flushed), so batches grow
//! with the load without any waiting: the
//! linger (how long the writer waits for a batch to fill before writing
//! it) is 0 by default, and a positive one only trades latency for larger
//! batches under a light load. Durability is unchanged: a request is
//! answered only once its call is committed.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, mpsc, oneshot};

use super::Store;
use crate::domain::model::{NewCall, StoredCall};
use crate::error::{AppError, AppResult};

/// How the writer batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupCommit {
    /// Calls stored per transaction, at most.
    pub max_batch: usize,
    /// Calls waiting for the writer, at most; more wait to be queued.
    pub queue: usize,
    /// How long the writer waits for a batch to fill before writing it.
    pub linger: Duration,
    /// Writer tasks, each writing one batch at a time on a connection of
    /// its own; `None`: [`DEFAULT_POSTGRES_WRITERS`] on PostgreSQL, one on
    /// SQLite (which writes through one connection, so more would only
    /// split the batches).
    pub writers: Option<usize>,
}

/// Writer tasks on PostgreSQL unless configured: while one batch waits for
/// its commit to reach the disk, the next is inserted, and PostgreSQL
/// flushes concurrent commits together. Measured (BENCHMARKS.md): 2 beat 1
/// at 16×64 and matched it at 8×32; 4 was slower than 2, with a worse p99.
pub const DEFAULT_POSTGRES_WRITERS: usize = 2;

impl Default for GroupCommit {
    fn default() -> Self {
        GroupCommit {
            max_batch: 256,
            queue: 4096,
            linger: Duration::ZERO,
            writers: None,
        }
    }
}

/// A call waiting to be stored, and where its outcome goes.
struct Pending {
    call: NewCall,
    reply: oneshot::Sender<AppResult<StoredCall>>,
}

/// The handle requests store their calls through. Cheap to clone; the
/// writer task ends when the last handle is dropped.
#[derive(Debug, Clone)]
pub struct CallWriter {
    queue: mpsc::Sender<Pending>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").field("call", &self.call).finish()
    }
}

impl CallWriter {
    /// Starts the writer tasks over `store`. They take turns at the queue:
    /// each takes what is queued and writes it while the next one gathers
    /// the following batch. Batches written at once on several connections
    /// are as safe as batches of several replicas: `call_id` uniqueness and
    /// the order of row locks are the database's.
    pub fn start(store: Store, config: GroupCommit) -> CallWriter {
        let (queue, pending) = mpsc::channel(config.queue.max(1));
        let writers = match config.writers {
            Some(writers) => writers.max(1),
            None if store.is_sqlite() => 1,
            None => DEFAULT_POSTGRES_WRITERS,
        };
        let pending = Arc::new(Mutex::new(pending));
        for _ in 0..writers {
            tokio::spawn(write_batches(store.clone(), Arc::clone(&pending), config));
        }
        CallWriter { queue }
    }

    /// Stores one call in the next batch and returns its outcome once the
    /// batch has committed.
    pub async fn store(&self, call: NewCall) -> AppResult<StoredCall> {
        let (reply, outcome) = oneshot::channel();
        self.queue
            .send(Pending { call, reply })
            .await
            .map_err(|_| stopped())?;
        outcome.await.map_err(|_| stopped())?
    }
}

fn stopped() -> AppError {
    AppError::Unavailable("the call writer has stopped".into())
}

/// Takes the next batch from the queue shared by the writers: `false` once
/// the queue is closed and empty.
async fn next_batch(
    pending: &Mutex<mpsc::Receiver<Pending>>,
    batch: &mut Vec<Pending>,
    config: GroupCommit,
) -> bool {
    let max_batch = config.max_batch.max(1);
    let mut pending = pending.lock().await;
    if pending.recv_many(batch, max_batch).await == 0 {
        return false;
    }
    if !config.linger.is_zero() {
        let deadline = tokio::time::Instant::now() + config.linger;
        while batch.len() < max_batch {
            let room = max_batch - batch.len();
            match tokio::time::timeout_at(deadline, pending.recv_many(batch, room)).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
    true
}

async fn write_batches(
    store: Store,
    pending: Arc<Mutex<mpsc::Receiver<Pending>>>,
    config: GroupCommit,
) {
    let mut batch: Vec<Pending> = Vec::with_capacity(config.max_batch.max(1));
    while next_batch(&pending, &mut batch, config).await {
        // A request that is gone (cancelled, timed out) before its batch
        // starts is not stored.
        let (calls, mut replies): (Vec<NewCall>, Vec<_>) = batch
            .drain(..)
            .filter(|p| !p.reply.is_closed())
            .map(|p| (p.call, p.reply))
            .unzip();
        if calls.is_empty() {
            continue;
        }
        // If every request of the batch goes away while it is being written,
        // nobody is left to tell: a transaction (a batch with debits or
        // segments) is dropped, so rolled back; an insert-only batch's one
        // statement may already have committed. Either way a request that
        // went away has no answer, and a retry with its call_id is stored
        // once: new if it was not, a duplicate if it was.
        let began = std::time::Instant::now();
        let stored = tokio::select! {
            stored = store.store_calls_each(&calls) => stored,
            _ = futures_util::future::join_all(replies.iter_mut().map(|r| r.closed())) => continue,
        };
        store.metrics().group_commit(calls.len(), began.elapsed());
        tracing::debug!(
            calls = calls.len(),
            micros = began.elapsed().as_micros() as u64,
            "group commit"
        );
        match stored {
            Ok(outcomes) => {
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    let _ = reply.send(outcome);
                }
            }
            Err(err) => {
                let cause = err.detail();
                for reply in replies {
                    let _ = reply.send(Err(AppError::Unavailable(cause.clone().into())));
                }
            }
        }
    }
}
