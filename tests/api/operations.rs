//! Around the service: health, reflection, graceful shutdown, and the
//! `billing` binary's subcommands as a new user runs them.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;

use billing::grpc::pb;
use billing::grpc::pb::account_service_client::AccountServiceClient;
use billing::grpc::pb::customer_service_client::CustomerServiceClient;
use tokio_stream::StreamExt;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use crate::helpers::{Bearer, spawn_app};

#[tokio::test]
async fn health_reports_serving_for_the_server_and_each_service() {
    let app = spawn_app().await;
    let mut health = HealthClient::new(app.channel.clone());
    for service in [
        "",
        "billing.v1.CustomerService",
        "billing.v1.CallService",
        "billing.v1.InvoiceService",
    ] {
        let response = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            response.status(),
            ServingStatus::Serving,
            "service {service:?}"
        );
    }
}

#[tokio::test]
async fn health_turns_not_serving_when_shutdown_begins() {
    let mut app = spawn_app().await;
    let mut health = HealthClient::new(app.channel.clone());
    let mut watch = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let first: HealthCheckResponse = watch.next().await.unwrap().unwrap();
    assert_eq!(first.status(), ServingStatus::Serving);
    app.begin_shutdown();
    let next: HealthCheckResponse = watch.next().await.unwrap().unwrap();
    assert_eq!(next.status(), ServingStatus::NotServing);
    drop(watch);
    app.stop().await;
}

async fn reflected_services_v1(channel: tonic::transport::Channel) -> Vec<String> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    match responses.next().await.unwrap().unwrap().message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection response {other:?}"),
    }
}

#[tokio::test]
async fn reflection_v1_and_v1alpha_list_and_describe_the_services() {
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    let app = spawn_app().await;
    let services = reflected_services_v1(app.channel.clone()).await;
    for expected in [
        "billing.v1.CustomerService",
        "billing.v1.CallService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            services.iter().any(|s| s == expected),
            "{expected} missing from {services:?}"
        );
    }
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(
            "billing.v1.CallService".into(),
        )),
    };
    let mut responses = ServerReflectionClient::new(app.channel.clone())
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    match responses.next().await.unwrap().unwrap().message_response {
        Some(MessageResponse::FileDescriptorResponse(files)) => {
            use prost::Message;
            let names: Vec<String> = files
                .file_descriptor_proto
                .iter()
                .map(|bytes| {
                    prost_types::FileDescriptorProto::decode(bytes.as_slice())
                        .unwrap()
                        .name()
                        .to_owned()
                })
                .collect();
            assert!(
                names.iter().any(|n| n == "billing/v1/billing.proto"),
                "{names:?}"
            );
        }
        other => panic!("unexpected reflection response {other:?}"),
    }
}

/// A `billing` process; stderr lines are forwarded to a channel.
struct Process {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
}

fn billing(args: &[&str], database_url: &str) -> Process {
    let mut child = Command::new(env!("CARGO_BIN_EXE_billing"))
        .args(args)
        .env("DATABASE_URL", database_url)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("billing starts");
    let (tx, lines) = mpsc::channel();
    let stderr = child.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Process { child, lines }
}

#[tokio::test]
async fn the_binary_fills_demo_data_serves_it_and_exits_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("demo.db").display());

    let demo = billing(&["demo-data"], &url)
        .child
        .wait_with_output()
        .unwrap();
    assert!(demo.status.success(), "demo-data failed: {demo:?}");
    let printed = String::from_utf8_lossy(&demo.stdout);
    assert!(printed.contains("3 plans, 2 operators"), "{printed}");
    let admin_password = printed
        .lines()
        .find(|line| line.contains("username demo-admin"))
        .and_then(|line| line.split_whitespace().last())
        .expect("demo-data prints the admin's password")
        .to_owned();

    let server = billing(&["serve", "--listen", "127.0.0.1:0"], &url);
    let addr = loop {
        let line = server
            .lines
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("server logs its address");
        if let Some((_, rest)) = line.split_once("serving addr=") {
            break rest.trim().to_owned();
        }
    };
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let session = AccountServiceClient::new(channel.clone())
        .login(pb::LoginRequest {
            username: "demo-admin".into(),
            password: admin_password,
        })
        .await
        .unwrap()
        .into_inner();
    let admin_id = session.account.as_ref().unwrap().id;
    let mut client =
        CustomerServiceClient::with_interceptor(channel, Bearer::new(&session.access_token));
    let plans = client
        .list_plans(pb::ListPlansRequest::default())
        .await
        .unwrap()
        .into_inner()
        .plans;
    assert_eq!(plans.len(), 3);
    let customers = client
        .list_customers(pb::ListCustomersRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(customers.customers.len(), 5);

    let log_line = loop {
        let line = server
            .lines
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("rpc log line");
        if line.contains("ListPlans") {
            break line;
        }
    };
    assert!(
        log_line.contains("code=Ok")
            && log_line.contains("latency=")
            && log_line.contains(&format!("account={admin_id}")),
        "{log_line}"
    );

    let killed = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    // Wait off the runtime so the client's connection can see the GOAWAY.
    let mut child = server.child;
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "exit status after SIGTERM: {status:?}");
}

#[tokio::test]
async fn demo_data_refuses_a_database_that_already_holds_data() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("demo.db").display());
    assert!(
        billing(&["demo-data"], &url)
            .child
            .wait()
            .unwrap()
            .success()
    );
    let mut again = billing(&["demo-data"], &url);
    assert!(!again.child.wait().unwrap().success());
    let stderr: Vec<String> = again.lines.iter().collect();
    assert!(
        stderr.iter().any(|l| l.contains("already holds data")),
        "{stderr:?}"
    );
}

#[test]
fn help_never_prints_the_database_url() {
    for args in [&["--help"][..], &["serve", "--help"][..]] {
        let output = Command::new(env!("CARGO_BIN_EXE_billing"))
            .args(args)
            .env(
                "DATABASE_URL",
                "postgres://billing:s3cret-pw@db.internal/billing",
            )
            .output()
            .expect("billing runs");
        assert!(output.status.success());
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(text.contains("--database-url"), "{text}");
        assert!(!text.contains("s3cret"), "{text}");
    }
}
