//! The shutdown signal handed to long-running tasks and streams: a
//! `watch` channel that turns true once, when the server starts stopping.

use tokio::sync::watch;

/// The receiving end of the shutdown signal.
pub type Stopping = watch::Receiver<bool>;

/// A new signal: the sender to raise it, and a receiver to hand down.
pub fn signal() -> (watch::Sender<bool>, Stopping) {
    watch::channel(false)
}

/// Resolves once the signal is raised (or its sender is gone).
pub async fn until_stopping(stopping: &mut Stopping) {
    let _ = stopping.wait_for(|stop| *stop).await;
}
