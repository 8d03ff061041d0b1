//! Around the service: health, reflection, graceful shutdown, and the
//! `billing` binary's subcommands as a new user runs them.

use std::process::Command;

use billing::grpc::pb;
use billing::grpc::pb::account_service_client::AccountServiceClient;
use billing::grpc::pb::customer_service_client::CustomerServiceClient;
use tokio_stream::StreamExt;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use crate::helpers::{Bearer, history_of, spawn_app};
use crate::process::{billing, serve};

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

#[tokio::test]
async fn the_binary_fills_demo_data_serves_it_and_exits_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("demo.db").display());

    let mut demo = billing(&["demo-data"], &url);
    let mut printed = String::new();
    std::io::Read::read_to_string(&mut demo.child.stdout.take().unwrap(), &mut printed).unwrap();
    let status = demo.child.wait().unwrap();
    assert!(status.success(), "demo-data failed: {status:?}: {printed}");
    assert!(printed.contains("3 plans, 2 operators"), "{printed}");
    let admin_password = printed
        .lines()
        .find(|line| line.contains("username demo-admin"))
        .and_then(|line| line.split_whitespace().last())
        .expect("demo-data prints the admin's password")
        .to_owned();

    let (server, addr) = serve(&url, &[]);
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
    let mut server = server;
    let status = tokio::task::spawn_blocking(move || server.child.wait())
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

#[tokio::test]
async fn a_server_killed_mid_load_loses_no_acknowledged_call() {
    use billing::grpc::pb::call_service_client::CallServiceClient;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("kill.db").display());
    let flags = ["--no-auth", "--no-scheduler"];
    let (mut server, addr) = serve(&url, &flags);
    let mut customers = CustomerServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let plan = customers
        .create_plan(pb::CreatePlanRequest {
            name: "Prepaid".into(),
            kind: pb::PlanKind::Prepaid.into(),
            per_minute_micros: 60_000,
            billing_increment_seconds: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let customer = customers
        .create_customer(pb::CreateCustomerRequest {
            name: "Load".into(),
            phone_number: "+14155550199".into(),
            plan_id: plan.id,
            operator_ids: vec![],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // Eight clients add calls as fast as they can; every acknowledgement is
    // reported. After 400 the server is killed with SIGKILL.
    let (acked, mut acks) = tokio::sync::mpsc::unbounded_channel::<String>();
    let clients: Vec<_> = (0..8)
        .map(|client| {
            let acked = acked.clone();
            let addr = addr.clone();
            tokio::spawn(async move {
                let Ok(mut calls) = CallServiceClient::connect(format!("http://{addr}")).await
                else {
                    return;
                };
                for n in 0.. {
                    let call_id = format!("load-{client}-{n}");
                    let request = pb::AddCallRequest {
                        customer_id: customer.id,
                        duration: Some(pb::add_call_request::Duration::DurationSeconds(30)),
                        call_id: call_id.clone(),
                        ..Default::default()
                    };
                    match calls.add_call(request).await {
                        Ok(_) => {
                            if acked.send(call_id).is_err() {
                                return;
                            }
                        }
                        Err(_) => return,
                    }
                }
            })
        })
        .collect();
    drop(acked);
    let mut acknowledged = std::collections::BTreeSet::new();
    while acknowledged.len() < 400 {
        acknowledged.insert(acks.recv().await.expect("clients are running"));
    }
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    for client in clients {
        client.await.unwrap();
    }
    while let Ok(call_id) = acks.try_recv() {
        acknowledged.insert(call_id);
    }
    // Restarted on the same database: every acknowledged call is there once.
    let (mut restarted, addr) = serve(&url, &flags);
    let calls = CallServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let stored: Vec<String> = history_of(calls, customer.id)
        .await
        .into_iter()
        .map(|c| c.call_id)
        .collect();
    let distinct: std::collections::BTreeSet<_> = stored.iter().cloned().collect();
    assert_eq!(distinct.len(), stored.len(), "a call stored twice");
    let missing: Vec<_> = acknowledged.difference(&distinct).collect();
    assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
    let balance = customers_after(&addr, customer.id).await;
    assert_eq!(balance, -30_000 * i64::try_from(stored.len()).unwrap());
    restarted.child.kill().unwrap();
    restarted.child.wait().unwrap();
}

async fn customers_after(addr: &str, customer_id: i64) -> i64 {
    CustomerServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
        .get_customer(pb::GetCustomerRequest { customer_id })
        .await
        .unwrap()
        .into_inner()
        .balance_micros
}
