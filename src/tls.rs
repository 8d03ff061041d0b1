//! gRPC over TLS, with the handshakes done here rather than inside tonic,
//! so that every refused handshake is logged with its reason and the
//! peer's address (tonic drops them at debug level): a switch whose
//! certificate the server refuses otherwise sees only a broken pipe, and
//! the operator nothing at all. The log is rate-limited, so a scan or a
//! flood of bad handshakes cannot flood it.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

/// How long a client may take to complete its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once, at most; a connection beyond them is
/// closed at once (and logged as refused).
const MAX_PENDING_HANDSHAKES: usize = 1024;
/// Refused handshakes logged per window, at most; the next line logged
/// after a window says how many were left out.
const REFUSALS_LOGGED_PER_WINDOW: u32 = 10;
const REFUSAL_LOG_WINDOW: Duration = Duration::from_secs(60);

/// The server's TLS configuration from PEM files: its certificate chain
/// and key, and, when `client_ca` is given, the CA every client's
/// certificate must be signed by. ALPN offers HTTP/2 only.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>, String> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|err| format!("cannot read TLS file {}: {err}", path.display()))
    };
    let chain = CertificateDer::pem_slice_iter(&read(cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| format!("{}: not a PEM certificate chain: {err}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate in it", cert.display()));
    }
    let private_key = PrivateKeyDer::from_pem_slice(&read(key)?)
        .map_err(|err| format!("{}: not a PEM private key: {err}", key.display()))?;
    let builder = ServerConfig::builder();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&read(ca)?) {
                let cert =
                    cert.map_err(|err| format!("{}: not a PEM certificate: {err}", ca.display()))?;
                roots
                    .add(cert)
                    .map_err(|err| format!("{}: {err}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
                .build()
                .map_err(|err| format!("{}: {err}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, private_key)
        .map_err(|err| format!("{} and {}: {err}", cert.display(), key.display()))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The TLS connections of `listener`: each accepted TCP connection's
/// handshake runs on a task of its own (a slow client delays no other);
/// those that complete are yielded, those refused are logged.
pub fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
) -> ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let pending = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
    let log = Arc::new(RefusalLog::default());
    tokio::spawn(async move {
        let mut accepted = crate::app::accepted_connections(listener);
        loop {
            let next = tokio::select! {
                next = accepted.next() => next,
                () = tx.closed() => return,
            };
            let tcp = match next {
                Some(Ok(tcp)) => tcp,
                Some(Err(err)) => {
                    tracing::debug!(error = %err, "accepting a connection failed");
                    continue;
                }
                None => return,
            };
            let peer = tcp.peer_addr().ok();
            let Ok(permit) = pending.clone().try_acquire_owned() else {
                log.refused(peer, "too many handshakes in progress");
                continue;
            };
            let (acceptor, tx, log) = (acceptor.clone(), tx.clone(), log.clone());
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(err)) => log.refused(peer, &err.to_string()),
                    Err(_) => log.refused(peer, "the handshake was not completed in time"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// Logs refused handshakes, at most [`REFUSALS_LOGGED_PER_WINDOW`] per
/// [`REFUSAL_LOG_WINDOW`].
#[derive(Debug, Default)]
struct RefusalLog {
    state: Mutex<RefusalWindow>,
}

#[derive(Debug, Default)]
struct RefusalWindow {
    started: Option<Instant>,
    logged: u32,
    left_out: u64,
}

impl RefusalLog {
    fn refused(&self, peer: Option<SocketAddr>, reason: &str) {
        let Ok(mut window) = self.state.lock() else {
            return;
        };
        let now = Instant::now();
        if window
            .started
            .is_none_or(|started| now.duration_since(started) >= REFUSAL_LOG_WINDOW)
        {
            window.started = Some(now);
            window.logged = 0;
        }
        if window.logged >= REFUSALS_LOGGED_PER_WINDOW {
            window.left_out += 1;
            return;
        }
        window.logged += 1;
        let left_out = std::mem::take(&mut window.left_out);
        drop(window);
        let peer = peer.map_or_else(|| "unknown".to_owned(), |peer| peer.to_string());
        tracing::warn!(
            %peer,
            reason,
            earlier_refusals_not_logged = left_out,
            "TLS handshake refused"
        );
    }
}
