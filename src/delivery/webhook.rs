//! One webhook POST per attempt, on its own connection, within
//! [`WEBHOOK_TIMEOUT`]. The host is resolved here and every address it
//! resolves to is checked (`domain::delivery::is_public`) before one of
//! them is connected to, so a name cannot point a webhook at the service's
//! own network however its DNS answers change.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{self, RootCertStore};

use crate::domain::delivery::is_public;

/// How long one attempt may take, connection and answer included.
pub const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes of a receiver's answer read (and kept for the error) at most.
const ANSWER_BYTES: usize = 512;

/// Posts webhook events.
#[derive(Clone)]
pub struct WebhookClient {
    tls: TlsConnector,
    allow_insecure: bool,
}

impl std::fmt::Debug for WebhookClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookClient")
            .field("allow_insecure", &self.allow_insecure)
            .finish_non_exhaustive()
    }
}

/// A webhook POST.
#[derive(Debug, Clone)]
pub struct WebhookPost<'a> {
    pub url: &'a str,
    pub delivery_id: &'a str,
    pub event: &'a str,
    pub signature: &'a str,
    pub body: Bytes,
}

impl WebhookClient {
    /// A client trusting the Web PKI's roots (Mozilla's, built in);
    /// `allow_insecure` also allows `http://` and non-public addresses.
    pub fn new(allow_insecure: bool) -> Self {
        let roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map(|builder| builder.with_root_certificates(roots).with_no_client_auth());
        // The ring provider supports the default versions; should it ever
        // not, https webhooks fail with that reason and nothing else does.
        let config = config.unwrap_or_else(|_| {
            rustls::ClientConfig::builder()
                .with_root_certificates(RootCertStore::empty())
                .with_no_client_auth()
        });
        WebhookClient {
            tls: TlsConnector::from(Arc::new(config)),
            allow_insecure,
        }
    }

    /// Posts `post`; `Ok` on a 2xx answer, else why not.
    pub async fn post(&self, post: WebhookPost<'_>) -> Result<(), String> {
        match tokio::time::timeout(WEBHOOK_TIMEOUT, self.attempt(post)).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {} s", WEBHOOK_TIMEOUT.as_secs())),
        }
    }

    async fn attempt(&self, post: WebhookPost<'_>) -> Result<(), String> {
        let uri: http::Uri = post.url.parse().map_err(|_| "invalid URL".to_owned())?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") if self.allow_insecure => false,
            _ => return Err("the URL must be https://".to_owned()),
        };
        let host = uri.host().ok_or("the URL has no host")?.to_owned();
        let bare_host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let addresses: Vec<SocketAddr> = tokio::net::lookup_host((bare_host.as_str(), port))
            .await
            .map_err(|err| format!("cannot resolve {bare_host}: {err}"))?
            .collect();
        if addresses.is_empty() {
            return Err(format!("{bare_host} resolves to no address"));
        }
        if !self.allow_insecure
            && let Some(private) = addresses.iter().find(|a| !is_public(a.ip()))
        {
            return Err(format!(
                "{bare_host} resolves to {}, which is not a public address",
                private.ip()
            ));
        }
        let stream = connect(&addresses).await?;
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
        let authority = uri
            .authority()
            .map_or(host.clone(), |a| a.as_str().to_owned());
        let request = http::Request::post(path)
            .header(http::header::HOST, authority)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::USER_AGENT, "billing-webhooks/1")
            .header("Billing-Delivery-Id", post.delivery_id)
            .header("Billing-Event", post.event)
            .header("Billing-Signature", post.signature)
            .body(Full::new(post.body))
            .map_err(|err| format!("cannot build the request: {err}"))?;
        let status_and_answer = if https {
            let name = ServerName::try_from(bare_host.clone())
                .map_err(|_| format!("{bare_host} is not a valid TLS server name"))?;
            let stream = self
                .tls
                .connect(name, stream)
                .await
                .map_err(|err| format!("TLS: {err}"))?;
            exchange(TokioIo::new(stream), request).await?
        } else {
            exchange(TokioIo::new(stream), request).await?
        };
        let (status, answer) = status_and_answer;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("HTTP {}: {answer}", status.as_u16()))
        }
    }
}

async fn connect(addresses: &[SocketAddr]) -> Result<TcpStream, String> {
    let mut last_error = String::from("no address");
    for address in addresses {
        match TcpStream::connect(address).await {
            Ok(stream) => return Ok(stream),
            Err(err) => last_error = format!("cannot connect to {address}: {err}"),
        }
    }
    Err(last_error)
}

/// Sends `request` over one HTTP/1.1 connection; the status and the start
/// of the answer's body.
async fn exchange<I>(
    io: I,
    request: http::Request<Full<Bytes>>,
) -> Result<(http::StatusCode, String), String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|err| format!("HTTP: {err}"))?;
    let driver = tokio::spawn(connection);
    let response = sender
        .send_request(request)
        .await
        .map_err(|err| format!("HTTP: {err}"));
    let result = match response {
        Ok(response) => {
            let status = response.status();
            let mut body = response.into_body();
            let mut answer = Vec::new();
            while answer.len() < ANSWER_BYTES {
                match body.frame().await {
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            answer.extend_from_slice(&data);
                        }
                    }
                    _ => break,
                }
            }
            answer.truncate(ANSWER_BYTES);
            Ok((status, String::from_utf8_lossy(&answer).trim().to_owned()))
        }
        Err(err) => Err(err),
    };
    driver.abort();
    result
}
