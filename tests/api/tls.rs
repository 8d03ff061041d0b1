//! TLS (issue 7): the server speaks gRPC over TLS with `--tls-cert` and
//! `--tls-key`, and with `--tls-client-ca` admits only clients whose
//! certificate that CA signed. Certificates are made in the test.

use std::path::Path;

use billing::app::TlsFiles;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::helpers::{AppOptions, TestApp, spawn_app_with};

/// A CA, a server certificate for `localhost` and a client certificate,
/// both signed by the CA, as PEM files in `dir`.
struct Pki {
    ca_pem: String,
    client_cert: String,
    client_key: String,
    files: TlsFiles,
}

fn make_pki(dir: &Path, require_client_certificates: bool) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let ca = Issuer::new(ca_params, ca_key);
    let leaf = |names: Vec<String>| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf(vec!["localhost".into()]);
    let (client_cert, client_key) = leaf(vec!["switch-1".into()]);
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let files = TlsFiles {
        cert: write("server.pem", &server_cert),
        key: write("server.key", &server_key),
        client_ca: require_client_certificates.then(|| write("ca.pem", &ca_cert.pem())),
    };
    Pki {
        ca_pem: ca_cert.pem(),
        client_cert,
        client_key,
        files,
    }
}

async fn serve_tls(files: TlsFiles) -> TestApp {
    spawn_app_with(AppOptions {
        tls: Some(files),
        ..AppOptions::default()
    })
    .await
}

/// A health check over TLS, trusting `ca`, optionally with a client
/// identity; the status, or the error.
async fn check(app: &TestApp, ca: &str, identity: Option<Identity>) -> Result<i32, String> {
    check_at(app.addr.port(), ca, identity).await
}

/// [`check`] against the server on `port`.
async fn check_at(port: u16, ca: &str, identity: Option<Identity>) -> Result<i32, String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some(identity) = identity {
        tls = tls.identity(identity);
    }
    let channel = Channel::from_shared(format!("https://localhost:{port}"))
        .unwrap()
        .tls_config(tls)
        .map_err(|err| err.to_string())?
        .connect()
        .await
        .map_err(|err| format!("{err:?}"))?;
    HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .map(|response| response.into_inner().status)
        .map_err(|status| format!("{status:?}"))
}

#[tokio::test]
async fn the_server_speaks_grpc_over_tls_and_not_in_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), false);
    let app = serve_tls(pki.files.clone()).await;
    let status = check(&app, &pki.ca_pem, None)
        .await
        .expect("served over TLS");
    assert_eq!(status, 1, "SERVING");
    let plaintext = HealthClient::new(app.channel.clone())
        .check(HealthCheckRequest::default())
        .await;
    assert!(
        plaintext.is_err(),
        "plaintext h2c must not be served: {plaintext:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn with_a_client_ca_only_clients_with_a_certificate_it_signed_get_in() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), true);
    let app = serve_tls(pki.files.clone()).await;
    let without = check(&app, &pki.ca_pem, None).await;
    assert!(
        without.is_err(),
        "admitted without a client certificate: {without:?}"
    );
    let stranger_dir = tempfile::tempdir().unwrap();
    let stranger = make_pki(stranger_dir.path(), false);
    let foreign = check(
        &app,
        &pki.ca_pem,
        Some(Identity::from_pem(
            &stranger.client_cert,
            &stranger.client_key,
        )),
    )
    .await;
    assert!(
        foreign.is_err(),
        "admitted a certificate of another CA: {foreign:?}"
    );
    let with = check(
        &app,
        &pki.ca_pem,
        Some(Identity::from_pem(&pki.client_cert, &pki.client_key)),
    )
    .await
    .expect("admitted with a certificate the CA signed");
    assert_eq!(with, 1, "SERVING");
    app.stop().await;
}

/// A refused handshake is not silent: the server logs it with the peer's
/// address and the reason (here a client without a certificate, where one
/// is required), and serves the next client.
#[tokio::test]
async fn a_refused_handshake_is_logged_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), true);
    let files = &pki.files;
    let url = format!("sqlite://{}/billing.db", dir.path().display());
    let (server, addr) = crate::process::serve(
        &url,
        &[
            "--no-auth",
            "--tls-cert",
            files.cert.to_str().unwrap(),
            "--tls-key",
            files.key.to_str().unwrap(),
            "--tls-client-ca",
            files.client_ca.as_ref().unwrap().to_str().unwrap(),
        ],
    );
    let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
    let refused = check_at(port, &pki.ca_pem, None).await;
    assert!(
        refused.is_err(),
        "admitted without a certificate: {refused:?}"
    );
    let logged = loop {
        let line = server
            .lines
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("the refusal is logged");
        if line.contains("TLS handshake refused") {
            break line;
        }
    };
    assert!(logged.contains("peer=127.0.0.1:"), "{logged}");
    assert!(logged.to_lowercase().contains("certificate"), "{logged}");
    let admitted = check_at(
        port,
        &pki.ca_pem,
        Some(Identity::from_pem(&pki.client_cert, &pki.client_key)),
    )
    .await;
    assert_eq!(admitted, Ok(1), "SERVING");
    let mut server = server;
    server.child.kill().unwrap();
    server.child.wait().unwrap();
}
