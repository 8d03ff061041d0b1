//! The invoice feed across replicas on PostgreSQL: every transaction that
//! issues invoices sends `NOTIFY` on [`INVOICE_CHANNEL`] with the largest id
//! it issued (delivered only if it commits), and each replica keeps one
//! connection listening ([`InvoiceListener`]) that wakes its own watchers.
//! SQLite has no such channel; one process writes its file.

use sea_orm::sqlx::postgres::PgListener;
use sea_orm::{ConnectionTrait, DatabaseBackend, DatabaseTransaction, Statement};

use super::{Store, redact};
use crate::error::{AppError, AppResult};

/// The channel issuing transactions notify.
const INVOICE_CHANNEL: &str = "billing_invoices";

/// Announces, on PostgreSQL, that `txn` issued invoices up to id `newest`;
/// listeners hear of it when (and only if) `txn` commits.
pub(super) async fn announce(txn: &DatabaseTransaction, newest: i64) -> AppResult<()> {
    if txn.get_database_backend() != DatabaseBackend::Postgres {
        return Ok(());
    }
    txn.execute_raw(Statement::from_sql_and_values(
        DatabaseBackend::Postgres,
        "SELECT pg_notify($1, $2)",
        [INVOICE_CHANNEL.into(), newest.to_string().into()],
    ))
    .await?;
    Ok(())
}

/// What the invoice listener heard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedEvent {
    /// Invoices up to this id were committed, by any replica.
    Issued(i64),
    /// Notifications may have been missed (the connection was lost and has
    /// been reopened, or a payload was unreadable): watchers should look.
    Missed,
}

/// A connection of its own listening for issued invoices.
#[derive(Debug)]
pub struct InvoiceListener {
    listener: PgListener,
}

impl Store {
    /// Whether [`Store::invoice_listener`] has a channel to listen on.
    pub fn listens_for_invoices(&self) -> bool {
        self.listen_url.is_some()
    }

    /// A listener for invoices issued by any replica; `None` on SQLite.
    pub async fn invoice_listener(&self) -> AppResult<Option<InvoiceListener>> {
        let Some(url) = &self.listen_url else {
            return Ok(None);
        };
        let mut listener = PgListener::connect(url).await.map_err(|err| {
            // The driver may quote the URL.
            AppError::Unavailable(redact(&err.to_string(), &[url]).into())
        })?;
        listener
            .listen(INVOICE_CHANNEL)
            .await
            .map_err(unavailable)?;
        Ok(Some(InvoiceListener { listener }))
    }
}

impl InvoiceListener {
    /// The next event. An error means the connection is down and could not
    /// be reopened yet; call again (after a pause) to retry.
    pub async fn next(&mut self) -> AppResult<FeedEvent> {
        match self.listener.try_recv().await.map_err(unavailable)? {
            Some(notification) => Ok(notification
                .payload()
                .parse()
                .map_or(FeedEvent::Missed, FeedEvent::Issued)),
            // The connection was lost and reopened (listening again).
            None => Ok(FeedEvent::Missed),
        }
    }
}

fn unavailable(err: sea_orm::sqlx::Error) -> AppError {
    AppError::Unavailable(Box::new(err))
}
