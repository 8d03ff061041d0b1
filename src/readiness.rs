//! Readiness: whether this replica can serve right now. A background task
//! probes the database every [`CHECK_INTERVAL`] on a connection of its own
//! (not per RPC, and never behind a busy pool). The gRPC health service
//! reports `SERVING` only while the database answers and the server is not
//! shutting down, so a load balancer stops sending to a replica that lost
//! its database; and [`Readiness::database_up`] lets the gRPC layer fail
//! RPCs at once with `UNAVAILABLE` meanwhile instead of letting each wait
//! for a connection.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, watch};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::shutdown::{Stopping, until_stopping};
use crate::storage::Store;

/// How often the database is probed. A lost database is noticed within this
/// plus [`crate::storage::PROBE_TIMEOUT`]; so is its return.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The health this replica reports, from the database's state and the
/// shutdown. Cheap to clone.
#[derive(Clone)]
pub struct Readiness {
    inner: Arc<Inner>,
}

struct Inner {
    reporter: HealthReporter,
    /// The names health reports on: "" (the server) and each service.
    services: Vec<&'static str>,
    state: Mutex<State>,
    database_up: watch::Sender<bool>,
}

#[derive(Debug, Clone, Copy)]
struct State {
    stopping: bool,
    database_up: bool,
    reported: Option<ServingStatus>,
}

impl Readiness {
    /// Readiness reported through `reporter` for `services`, starting with
    /// the database up (the server has just connected and migrated it).
    pub fn new(reporter: HealthReporter, services: Vec<&'static str>) -> Self {
        Readiness {
            inner: Arc::new(Inner {
                reporter,
                services,
                state: Mutex::new(State {
                    stopping: false,
                    database_up: true,
                    reported: None,
                }),
                database_up: watch::Sender::new(true),
            }),
        }
    }

    /// Whether the last probe reached the database.
    pub fn database_up(&self) -> watch::Receiver<bool> {
        self.inner.database_up.subscribe()
    }

    /// Records the outcome of a probe and reports the resulting health.
    pub async fn set_database_up(&self, up: bool) {
        let mut state = self.inner.state.lock().await;
        state.database_up = up;
        self.inner.database_up.send_if_modified(|was| {
            let changed = *was != up;
            *was = up;
            changed
        });
        self.publish(&mut state).await;
    }

    /// The server is shutting down: `NOT_SERVING` from now on.
    pub async fn set_stopping(&self) {
        let mut state = self.inner.state.lock().await;
        state.stopping = true;
        self.publish(&mut state).await;
    }

    /// Reports the health `state` implies, if it changed.
    async fn publish(&self, state: &mut State) {
        let status = if state.database_up && !state.stopping {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        if state.reported == Some(status) {
            return;
        }
        state.reported = Some(status);
        for service in &self.inner.services {
            self.inner
                .reporter
                .set_service_status(service, status)
                .await;
        }
    }
}

/// Probes the database of `store` every [`CHECK_INTERVAL`] and reports the
/// outcome to `readiness`, until `stopping` turns true. Changes are logged.
pub async fn monitor(store: Store, readiness: Readiness, mut stopping: Stopping) {
    let mut was_up = true;
    loop {
        let probed = tokio::select! {
            probed = store.probe() => probed,
            () = until_stopping(&mut stopping) => return,
        };
        match (&probed, was_up) {
            (Err(err), true) => {
                tracing::error!(error = %err, "database unreachable: health NOT_SERVING, RPCs fail with UNAVAILABLE");
            }
            (Ok(()), false) => tracing::info!("database reachable again: health SERVING"),
            _ => {}
        }
        was_up = probed.is_ok();
        readiness.set_database_up(was_up).await;
        tokio::select! {
            () = tokio::time::sleep(CHECK_INTERVAL) => {}
            () = until_stopping(&mut stopping) => return,
        }
    }
}
