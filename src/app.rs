//! Startup as a value: [`Application::build`] connects and migrates the
//! database and binds the listener (port 0 in tests); [`Application::run_until_stopped`]
//! serves until a shutdown signal, then drains in-flight RPCs and closes the
//! database. `main` and the tests share this path.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::TimeDelta;
use chrono_tz::Tz;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_rustls::rustls::ServerConfig;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use crate::clock::Clock;
use crate::delivery::background::Background;
use crate::domain::validation::DEFAULT_MAX_CALL_AGE_DAYS;
use crate::grpc::auth::{AuthLayer, Authentication};
use crate::grpc::limits::UnaryTimeoutLayer;
use crate::grpc::logging::RpcLogLayer;
use crate::grpc::pb::account_service_server::AccountServiceServer;
use crate::grpc::pb::call_service_server::CallServiceServer;
use crate::grpc::pb::customer_service_server::CustomerServiceServer;
use crate::grpc::pb::invoice_service_server::InvoiceServiceServer;
use crate::grpc::pb::notification_service_server::NotificationServiceServer;
use crate::grpc::readiness::ReadinessLayer;
use crate::grpc::{AccountApi, CallApi, CustomerApi, InvoiceApi, NotificationApi, pb};
use crate::readiness::Readiness;
use crate::service::{Accounts, Calls, Customers, Deliveries, DeliveryConfig, Invoicing, Numbers};
use crate::shutdown::{self, until_stopping};
use crate::storage::{DatabaseConfig, GroupCommit, Outbox, Store};

/// Everything `serve` needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// The database and its pools.
    pub database: DatabaseConfig,
    /// The service's clock.
    pub clock: Clock,
    /// The billing time zone: periods are calendar months there.
    pub billing_tz: Tz,
    /// How long after its end a month closes for usage and can be
    /// invoiced.
    pub invoice_grace_period: TimeDelta,
    /// Whether to run the billing scheduler.
    pub scheduler: bool,
    /// How often every invoice watcher looks for invoices it was not told
    /// of (another replica's, when a notification was lost).
    pub invoice_feed_catch_up: Duration,
    /// How long in-flight RPCs may run on after a shutdown signal before the
    /// remaining connections are closed (long-lived streams never end alone).
    pub shutdown_grace: Duration,
    /// What one request or connection may cost.
    pub limits: Limits,
    /// Whether RPCs need credentials (`--no-auth` turns this off).
    pub auth: bool,
    /// How long an access token from `Login` is accepted.
    pub token_ttl: TimeDelta,
    /// How long a verified credential is trusted without reading it again
    /// (zero: read on every RPC).
    pub credential_cache: Duration,
    /// Serve gRPC over TLS with these PEM files; `None`: plaintext h2c.
    pub tls: Option<TlsFiles>,
    /// Serve Prometheus metrics at `/metrics` here (never on the gRPC
    /// port); `None`: no metrics endpoint.
    pub metrics_listen: Option<SocketAddr>,
    /// Read call records from NATS JetStream.
    pub nats: Option<crate::nats::NatsIngest>,
    /// How invoices and alerts are delivered (email, webhooks, retries).
    pub delivery: DeliveryConfig,
}

/// The PEM files of the server's TLS setup.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The server's certificate chain.
    pub cert: PathBuf,
    /// The server's private key.
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by this CA.
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    /// Reads the files into the server's TLS configuration.
    fn load(&self) -> Result<Arc<ServerConfig>, StartupError> {
        crate::tls::server_config(&self.cert, &self.key, self.client_ca.as_deref())
            .map_err(StartupError::Tls)
    }
}

/// How often invoice watchers catch up unless
/// `--invoice-feed-catch-up-seconds` says otherwise.
pub const DEFAULT_FEED_CATCH_UP: Duration = Duration::from_secs(10);

/// How long access tokens live unless `--token-ttl` says otherwise.
pub const DEFAULT_TOKEN_TTL: TimeDelta = TimeDelta::hours(12);

/// How long a verified credential is trusted without reading it again,
/// unless `--credential-cache-seconds` says otherwise: also how long a key
/// revoked through one replica may still be accepted by another.
pub const DEFAULT_CREDENTIAL_CACHE: Duration = Duration::from_secs(5);

/// Bounds on the work one request, stream or connection may cause. Each is
/// a `serve` flag; the defaults are documented in the README.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A call may not have started more than this many days ago.
    pub max_call_age_days: u32,
    /// The largest request message accepted, in bytes (decoded); larger is
    /// `RESOURCE_EXHAUSTED`.
    pub max_message_bytes: usize,
    /// HTTP/2 streams one connection may have open at once.
    pub max_concurrent_streams: u32,
    /// Requests of one connection served at once; more wait their turn.
    pub max_requests_per_connection: usize,
    /// How long a unary RPC (and the start of a server stream) may take
    /// before it ends with `DEADLINE_EXCEEDED`.
    pub unary_timeout: Duration,
    /// Open `WatchInvoices` streams per server; more are `RESOURCE_EXHAUSTED`.
    pub max_invoice_watchers: usize,
    /// Open `WatchInvoices` streams per account and server.
    pub max_invoice_watchers_per_account: usize,
    /// Open `IngestCalls` streams per server; more are `RESOURCE_EXHAUSTED`.
    pub max_ingest_streams: usize,
    /// Open `IngestCalls` streams per account and server.
    pub max_ingest_streams_per_account: usize,
    /// How long a streamed record may wait before its batch is written.
    pub ingest_flush_interval: Duration,
    /// Passwords hashed or verified at once (`service::PasswordHashing`).
    pub password_hash_concurrency: usize,
    /// How unary call writes are batched into group commits.
    pub group_commit: GroupCommit,
}

impl Limits {
    /// The call-age bound as a duration.
    pub fn max_call_age(&self) -> TimeDelta {
        TimeDelta::days(i64::from(self.max_call_age_days))
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_call_age_days: DEFAULT_MAX_CALL_AGE_DAYS,
            max_message_bytes: 1024 * 1024,
            max_concurrent_streams: 256,
            max_requests_per_connection: 128,
            unary_timeout: Duration::from_secs(30),
            max_invoice_watchers: 1024,
            max_invoice_watchers_per_account: 16,
            max_ingest_streams: 64,
            max_ingest_streams_per_account: 8,
            ingest_flush_interval: Duration::from_secs(1),
            password_hash_concurrency: crate::service::default_password_hash_concurrency(),
            group_commit: GroupCommit::default(),
        }
    }
}

/// A startup failure, with what was being attempted.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot open database: {0}")]
    Database(#[source] sea_orm::DbErr),
    #[error("cannot migrate database: {0}")]
    Migration(#[source] sea_orm::DbErr),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the invoice feed's position: {}", .0.detail())]
    FeedPosition(#[source] crate::error::AppError),
    #[error("cannot build reflection service: {0}")]
    Reflection(#[source] tonic_reflection::server::Error),
    #[error("invalid TLS setup: {0}")]
    Tls(String),
    #[error("server failed: {0}")]
    Serve(#[source] tonic::transport::Error),
    #[error("cannot start the delivery thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// The gauges `/metrics` reads at each scrape.
fn gauges(store: &Store, calls: &CallApi, invoices: &InvoiceApi) -> Vec<crate::metrics::Gauge> {
    use crate::metrics::Gauge;
    let mut gauges = Vec::new();
    let pools = store.pool_usage();
    for &(pool, in_use, idle, _) in &pools {
        for (state, value) in [("in_use", in_use), ("idle", idle)] {
            gauges.push(Gauge {
                name: "billing_db_connections",
                help: "Database connections by pool and state.",
                labels: format!("pool=\"{pool}\",state=\"{state}\""),
                value: i64::from(value),
            });
        }
    }
    for &(pool, _, _, max) in &pools {
        gauges.push(Gauge {
            name: "billing_db_connections_max",
            help: "The most connections each pool opens.",
            labels: format!("pool=\"{pool}\""),
            value: i64::from(max),
        });
    }
    for (kind, open) in [
        ("ingest", calls.open_streams()),
        ("watch", invoices.open_watchers()),
    ] {
        gauges.push(Gauge {
            name: "billing_open_streams",
            help: "Open call ingestion streams and invoice watchers.",
            labels: format!("kind=\"{kind}\""),
            value: i64::try_from(open).unwrap_or(i64::MAX),
        });
    }
    gauges
}

/// A migrated database and a bound listener, ready to serve.
pub struct Application {
    listener: TcpListener,
    store: Store,
    clock: Clock,
    billing_tz: Tz,
    invoice_grace_period: TimeDelta,
    scheduler: bool,
    invoice_feed_catch_up: Duration,
    shutdown_grace: Duration,
    limits: Limits,
    auth: bool,
    token_ttl: TimeDelta,
    credential_cache: Duration,
    tls: Option<Arc<ServerConfig>>,
    delivery: DeliveryConfig,
    metrics_listener: Option<TcpListener>,
    nats: Option<crate::nats::NatsIngest>,
}

impl Application {
    /// Connects to and migrates the database, then binds the listener.
    pub async fn build(config: Config) -> Result<Self, StartupError> {
        let tls = config.tls.as_ref().map(TlsFiles::load).transpose()?;
        let store = Store::connect_with(&config.database)
            .await
            .map_err(StartupError::Database)?;
        store.migrate().await.map_err(StartupError::Migration)?;
        store
            .place_rows_in_billing_months(config.billing_tz)
            .await
            .map_err(StartupError::Migration)?;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| StartupError::Listen {
                    addr: config.listen,
                    source,
                })?;
        let metrics_listener = match config.metrics_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartupError::Listen { addr, source })?,
            ),
            None => None,
        };
        Ok(Application {
            metrics_listener,
            nats: config.nats,
            listener,
            store,
            clock: config.clock,
            billing_tz: config.billing_tz,
            invoice_grace_period: config.invoice_grace_period,
            scheduler: config.scheduler,
            invoice_feed_catch_up: config.invoice_feed_catch_up,
            shutdown_grace: config.shutdown_grace,
            limits: config.limits,
            auth: config.auth,
            token_ttl: config.token_ttl,
            credential_cache: config.credential_cache,
            tls,
            delivery: config.delivery,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Where `/metrics` is served, if it is.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|listener| listener.local_addr().ok())
    }

    /// The port actually bound.
    pub fn port(&self) -> u16 {
        self.local_addr().port()
    }

    /// The application's database (tests use it to check stored state).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Serves until `shutdown` resolves; then reports `NOT_SERVING`, stops
    /// accepting, lets in-flight RPCs finish (for at most the shutdown grace)
    /// and closes the database.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartupError> {
        let Application {
            listener,
            store,
            clock,
            billing_tz,
            invoice_grace_period,
            scheduler,
            invoice_feed_catch_up,
            shutdown_grace,
            limits,
            auth,
            token_ttl,
            credential_cache,
            tls,
            delivery,
            metrics_listener,
            nats,
        } = self;
        let store = store.with_outbox(Outbox {
            email_on: delivery.mailer.is_some(),
            clock: clock.clone(),
            wake: Arc::new(Notify::new()),
        });
        let background = Background::start().map_err(StartupError::Thread)?;
        let numbers = Numbers::new(store.clone());
        let deliveries = Deliveries::new(store.clone(), clock.clone(), billing_tz, delivery)
            .with_background(background);
        let invoicing = Invoicing::new(
            store.clone(),
            clock.clone(),
            billing_tz,
            invoice_grace_period,
        );
        let accounts = Accounts::new(store.clone(), clock.clone(), token_ttl)
            .trusting_verified_credentials_for(credential_cache)
            .hashing_at_most(limits.password_hash_concurrency);
        let authentication = if auth {
            Authentication::On(std::sync::Arc::new(accounts.clone()))
        } else {
            tracing::warn!("authentication is OFF (--no-auth): every caller has full access");
            Authentication::Off
        };
        let (stopping, stopping_rx) = shutdown::signal();
        let scheduler_task = scheduler.then(|| {
            tokio::spawn(crate::scheduler::run(
                invoicing.clone(),
                stopping_rx.clone(),
            ))
        });
        let max_bytes = limits.max_message_bytes;
        let calls = Calls::new(
            store.clone(),
            clock.clone(),
            limits.max_call_age(),
            billing_tz,
            limits.group_commit,
            numbers.clone(),
        );
        let call_api = CallApi::new(calls.clone(), &limits, stopping_rx.clone());
        let invoice_api = InvoiceApi::new(
            invoicing.clone(),
            stopping_rx.clone(),
            limits.max_invoice_watchers,
            limits.max_invoice_watchers_per_account,
        );
        let nats_task =
            nats.map(|config| tokio::spawn(crate::nats::run(calls, config, stopping_rx.clone())));
        let metrics_task = metrics_listener.map(|listener| {
            let (pools, calls, invoices) = (store.clone(), call_api.clone(), invoice_api.clone());
            let gauges = Arc::new(move || gauges(&pools, &calls, &invoices));
            let metrics = Arc::clone(store.metrics());
            tokio::spawn(crate::metrics::serve(
                listener,
                metrics,
                gauges,
                stopping_rx.clone(),
            ))
        });
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        let health_service = health_service.max_decoding_message_size(max_bytes);
        let readiness = Readiness::new(health_reporter, health_names());
        readiness.set_database_up(true).await;
        let relay_task = tokio::spawn(
            invoicing
                .clone()
                .relay_invoices(invoice_feed_catch_up, stopping_rx.clone()),
        );
        // Read before serving, so that no watcher can subscribe before the
        // feed knows where it starts.
        let feed_position = invoicing
            .feed_position()
            .await
            .map_err(StartupError::FeedPosition)?;
        let feed_task = tokio::spawn(
            invoicing
                .clone()
                .serve_feed(feed_position, stopping_rx.clone()),
        );
        let monitor_task = tokio::spawn(crate::readiness::monitor(
            store.clone(),
            readiness.clone(),
            stopping_rx.clone(),
        ));
        let checkpoint_task = tokio::spawn(checkpoint_wal(store.clone(), stopping_rx.clone()));
        let delivery_task = tokio::spawn(deliveries.clone().run(stopping_rx.clone()));
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(StartupError::Reflection)?
            .max_decoding_message_size(max_bytes);
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .map_err(StartupError::Reflection)?
            .max_decoding_message_size(max_bytes);
        if let Ok(addr) = listener.local_addr() {
            if tls.is_some() {
                tracing::info!("gRPC over TLS");
            }
            tracing::info!(%addr, "serving");
        }
        let database_up = readiness.database_up();
        let mut draining = stopping_rx.clone();
        let drain = async move {
            shutdown.await;
            tracing::info!("shutting down: finishing in-flight RPCs");
            readiness.set_stopping().await;
            stopping.send_replace(true);
        };
        // The flow-control windows keep streaming clients that send each
        // message as its own small frame from being cut off (see
        // `flow_control_windows`). Keepalive pings find dead peers of long-lived streams (invoice
        // watchers) instead of holding their tasks forever. The reset-stream
        // limits keep hyper's protection against rapid-reset floods on, at
        // its defaults, explicitly.
        let (stream_window, connection_window) =
            crate::grpc::limits::flow_control_windows(limits.max_concurrent_streams);
        let router = Server::builder()
            .initial_stream_window_size(stream_window)
            .initial_connection_window_size(connection_window)
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .max_concurrent_streams(limits.max_concurrent_streams)
            .concurrency_limit_per_connection(limits.max_requests_per_connection)
            .http2_max_pending_accept_reset_streams(Some(20))
            .http2_max_local_error_reset_streams(Some(1024))
            .layer(RpcLogLayer {
                metrics: Arc::clone(store.metrics()),
            })
            .layer(UnaryTimeoutLayer::new(limits.unary_timeout))
            .layer(ReadinessLayer::new(database_up))
            .layer(AuthLayer::new(authentication))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(
                AccountServiceServer::new(AccountApi::new(accounts))
                    .max_decoding_message_size(max_bytes),
            )
            .add_service(
                CustomerServiceServer::new(CustomerApi::new(Customers::new(
                    store.clone(),
                    clock.clone(),
                    billing_tz,
                    numbers.clone(),
                )))
                .max_decoding_message_size(max_bytes),
            )
            .add_service(CallServiceServer::new(call_api).max_decoding_message_size(max_bytes))
            .add_service(
                NotificationServiceServer::new(NotificationApi::new(deliveries))
                    .max_decoding_message_size(max_bytes),
            )
            .add_service(
                InvoiceServiceServer::new(invoice_api).max_decoding_message_size(max_bytes),
            );
        // TLS handshakes are done by `crate::tls`, which logs refusals.
        let server: std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<(), tonic::transport::Error>> + Send>,
        > = match tls {
            Some(config) => Box::pin(
                router.serve_with_incoming_shutdown(crate::tls::incoming(listener, config), drain),
            ),
            None => {
                Box::pin(router.serve_with_incoming_shutdown(accepted_connections(listener), drain))
            }
        };
        let grace_over = async {
            until_stopping(&mut draining).await;
            tokio::time::sleep(shutdown_grace).await;
        };
        let served = tokio::select! {
            served = server => served,
            () = grace_over => {
                tracing::warn!(?shutdown_grace, "closing RPCs still running after the shutdown grace");
                Ok(())
            }
        };
        for task in scheduler_task
            .into_iter()
            .chain(metrics_task)
            .chain(nats_task)
            .chain([
                monitor_task,
                relay_task,
                feed_task,
                checkpoint_task,
                delivery_task,
            ])
        {
            task.abort();
            let _ = task.await;
        }
        if let Err(err) = store.close().await {
            tracing::warn!(error = %err, "closing the database failed");
        }
        tracing::info!("stopped");
        served.map_err(StartupError::Serve)
    }
}

/// Checkpoints a SQLite WAL every [`Store::checkpoint_interval`] until the
/// server stops (returns at once when there is nothing to checkpoint). A
/// failed checkpoint is logged and tried again at the next tick; commits
/// still checkpoint by themselves if the WAL grows past a backstop.
async fn checkpoint_wal(store: Store, mut stopping: shutdown::Stopping) {
    let Some(interval) = store.checkpoint_interval() else {
        return;
    };
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = until_stopping(&mut stopping) => return,
        }
        if let Err(err) = store.checkpoint_wal().await {
            tracing::warn!(error = %err, "checkpointing the WAL failed");
        }
    }
}

/// The connections the server accepts on `listener`, with TCP_NODELAY set
/// on each: it is a property of the accepted sockets, so it belongs to the
/// incoming stream (the builder's `tcp_nodelay` applies only to `serve`).
pub fn accepted_connections(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// The names health reports on: "" (the whole server) and each service.
fn health_names() -> Vec<&'static str> {
    vec![
        "",
        <AccountServiceServer<AccountApi> as tonic::server::NamedService>::NAME,
        <CustomerServiceServer<CustomerApi> as tonic::server::NamedService>::NAME,
        <CallServiceServer<CallApi> as tonic::server::NamedService>::NAME,
        <InvoiceServiceServer<InvoiceApi> as tonic::server::NamedService>::NAME,
        <NotificationServiceServer<NotificationApi> as tonic::server::NamedService>::NAME,
    ]
}
