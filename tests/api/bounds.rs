//! Bounds on money, time and the work one request may cause: the limits of
//! issue 6, each checked through the real server.

use std::time::Duration;

use billing::app::Limits;
use billing::grpc::pb::{self, PlanKind};
use futures_util::StreamExt;
use prost::Message;
use tonic::Code;

use crate::helpers::{AppOptions, TestApp, assert_status, at, call, spawn_app, spawn_app_with, ts};

fn plan_request(per_minute_micros: i64, monthly_fee_micros: i64) -> pb::CreatePlanRequest {
    pb::CreatePlanRequest {
        name: "Bounded".into(),
        kind: PlanKind::Postpaid.into(),
        currency_code: "USD".into(),
        monthly_fee_micros,
        per_minute_micros,
        billing_increment_seconds: 1,
        included_minutes: 0,
        tariffs: Vec::new(),
        included_minutes_tariffs: Vec::new(),
    }
}

#[tokio::test]
async fn money_fields_above_their_bounds_are_rejected_naming_the_field() {
    let app = spawn_app().await;
    let mut client = app.customers.clone();
    assert_status(
        client.create_plan(plan_request(1_000_000_001, 0)).await,
        Code::InvalidArgument,
        "per_minute_micros",
    );
    assert_status(
        client.create_plan(plan_request(0, 1_000_000_000_001)).await,
        Code::InvalidArgument,
        "monthly_fee_micros",
    );
    let prepaid = app.plan(PlanKind::Prepaid, 60_000, 1).await;
    let customer = app.long_standing_customer(prepaid.id, 1, vec![]).await;
    assert_status(
        client
            .top_up(pb::TopUpRequest {
                customer_id: customer.id,
                amount_micros: 1_000_000_000_001,
                request_id: "too-much".into(),
            })
            .await,
        Code::InvalidArgument,
        "amount_micros",
    );
    let top_up = client
        .top_up(pb::TopUpRequest {
            customer_id: customer.id,
            amount_micros: 1_000_000_000_000,
            request_id: "most".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(top_up.balance_micros, 1_000_000_000_000);
    let listed = client
        .list_plans(pb::ListPlansRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.plans.len(), 1, "only the valid plan was stored");
}

#[tokio::test]
async fn the_dearest_call_at_the_highest_rate_is_rated_exactly() {
    let app = spawn_app().await;
    let plan = app
        .customers
        .clone()
        .create_plan(plan_request(1_000_000_000, 1_000_000_000_000))
        .await
        .unwrap()
        .into_inner();
    let customer = app.long_standing_customer(plan.id, 1, vec![]).await;
    let stored = app
        .calls
        .clone()
        .add_call(call(customer.id, 86_400))
        .await
        .unwrap()
        .into_inner()
        .call
        .unwrap();
    assert_eq!(stored.billed_seconds, 86_400);
    assert_eq!(stored.cost_micros, 1_440_000_000_000);
}

#[tokio::test]
async fn a_call_older_than_the_maximum_age_is_rejected_naming_started_at() {
    // spawn_app's clock reads 2026-07-01T00:00:00Z; 365 days earlier is
    // 2025-07-01T00:00:00Z.
    let app = spawn_app().await;
    let plan = app.plan(PlanKind::Postpaid, 60_000, 1).await;
    let customer = app.long_standing_customer(plan.id, 1, vec![]).await;
    let at_start = |start: &str| {
        let mut request = call(customer.id, 60);
        request.started_at = Some(ts(start));
        request
    };
    let mut client = app.calls.clone();
    assert_status(
        client.add_call(at_start("2025-06-30T23:59:59Z")).await,
        Code::InvalidArgument,
        "started_at",
    );
    assert_status(
        client.add_call(at_start("1970-01-01T00:00:00Z")).await,
        Code::InvalidArgument,
        "started_at",
    );
    client
        .add_call(at_start("2025-07-01T00:01:00Z"))
        .await
        .unwrap();
    let report = app
        .ingest(vec![
            at_start("1970-01-01T00:00:00Z"),
            at_start("2026-06-30T00:00:00Z"),
        ])
        .await;
    assert_eq!((report.accepted, report.rejected), (1, 1));
    assert_eq!(report.errors[0].index, 0);
    assert_eq!(report.errors[0].code, Code::InvalidArgument as i32);
    assert!(report.errors[0].message.contains("started_at"));
    assert_eq!(app.history(customer.id).await.len(), 2);
}

#[tokio::test]
async fn the_call_age_bound_is_a_setting() {
    let app = spawn_app_with(AppOptions {
        clock: billing::clock::Clock::starting_at(at("2026-07-01T00:00:00Z")),
        limits: Limits {
            max_call_age_days: 30,
            ..Limits::default()
        },
        ..AppOptions::default()
    })
    .await;
    let plan = app.plan(PlanKind::Postpaid, 60_000, 1).await;
    let customer = app.long_standing_customer(plan.id, 1, vec![]).await;
    let mut request = call(customer.id, 60);
    request.started_at = Some(ts("2026-05-31T00:00:00Z"));
    assert_status(
        app.calls.clone().add_call(request.clone()).await,
        Code::InvalidArgument,
        "30 days",
    );
    request.started_at = Some(ts("2026-06-01T00:01:00Z"));
    app.calls.clone().add_call(request).await.unwrap();
}

#[tokio::test]
async fn error_messages_echo_at_most_64_characters_of_a_value_escaped() {
    let app = spawn_app().await;
    let mut request = plan_request(1, 0);
    request.currency_code = format!("\u{1b}[31m{}", "X".repeat(20_000));
    let status = app
        .customers
        .clone()
        .create_plan(request)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("currency_code"), "{status:?}");
    assert!(status.message().len() < 300, "{}", status.message().len());
    assert!(
        status.message().contains("\\u{1b}[31mXXX"),
        "escaped: {status:?}"
    );
    assert!(!status.message().contains('\u{1b}'));
}

#[tokio::test]
async fn a_flood_of_huge_bad_records_gets_a_report_under_one_mebibyte() {
    let app = spawn_app().await;
    let plan = app.plan(PlanKind::Postpaid, 60_000, 1).await;
    let customer = app.long_standing_customer(plan.id, 1, vec![]).await;
    // 1,500 records with a 20,000-digit number made a 30 MB report before;
    // half of them also carry a 2,000-character call_id.
    let records: Vec<_> = (0..1500)
        .map(|n| {
            let mut request = call(customer.id, 60);
            request.caller_number = "9".repeat(20_000);
            if n % 2 == 1 {
                request.call_id = format!("{n:05}{}", "k".repeat(2_000));
            }
            request
        })
        .collect();
    let report = app.ingest(records).await;
    assert_eq!((report.accepted, report.rejected), (0, 1500));
    assert!(
        report.encoded_len() < 1024 * 1024,
        "{}",
        report.encoded_len()
    );
    assert!(!report.errors.is_empty());
    for error in &report.errors {
        assert!(error.message.len() < 300, "{error:?}");
        if error.index % 2 == 1 {
            assert!(error.message.starts_with("call_id"), "{error:?}");
            assert_eq!(error.call_id.chars().count(), 64);
        } else {
            assert!(error.message.starts_with("caller_number"), "{error:?}");
            assert!(error.call_id.is_empty());
        }
    }
    let described = i64::try_from(report.errors.len()).unwrap();
    assert_eq!(report.errors_truncated, described < report.rejected);
}

#[tokio::test]
async fn the_error_report_is_bounded_by_bytes_as_well_as_by_count() {
    let app = spawn_app().await;
    let plan = app.plan(PlanKind::Postpaid, 60_000, 1).await;
    let customer = app.long_standing_customer(plan.id, 1, vec![]).await;
    // 8,000 bad records with valid 128-character keys: fewer than 10,000, but
    // more than 900 KiB to describe.
    let records: Vec<_> = (0..8000)
        .map(|n| {
            let mut request = call(customer.id, 0);
            request.call_id = format!("{n:0128}");
            request
        })
        .collect();
    let report = app.ingest(records).await;
    assert_eq!(report.rejected, 8000);
    assert!(report.errors_truncated);
    assert!(report.errors.len() < 8000);
    assert!(
        report.encoded_len() < 1024 * 1024,
        "{}",
        report.encoded_len()
    );
    let indexes: Vec<i64> = report.errors.iter().map(|e| e.index).collect();
    let expected: Vec<i64> = (0..i64::try_from(indexes.len()).unwrap()).collect();
    assert_eq!(indexes, expected, "the first errors, in stream order");
    assert_eq!(report.errors[7].call_id, format!("{:0128}", 7));
}

#[tokio::test]
async fn an_oversized_request_is_resource_exhausted_and_writes_nothing() {
    let app = spawn_app().await;
    let plan = app.plan(PlanKind::Postpaid, 60_000, 1).await;
    let customer = app.long_standing_customer(plan.id, 1, vec![]).await;
    let mut huge = call(customer.id, 60);
    huge.callee_number = "1".repeat(2 * 1024 * 1024);
    let status = app.calls.clone().add_call(huge.clone()).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let streamed = app
        .calls
        .clone()
        .ingest_calls(tokio_stream::iter(vec![huge]))
        .await
        .unwrap_err();
    assert_eq!(streamed.code(), Code::ResourceExhausted, "{streamed:?}");
    let mut big_name = plan_request(1, 0);
    big_name.name = "n".repeat(1024 * 1024 + 1);
    assert_status(
        app.customers.clone().create_plan(big_name).await,
        Code::ResourceExhausted,
        "too large",
    );
    assert!(app.history(customer.id).await.is_empty());
}

#[tokio::test]
async fn plans_and_operators_are_listed_a_page_at_a_time() {
    let app = spawn_app().await;
    let mut client = app.customers.clone();
    for n in 0..5 {
        let mut request = plan_request(n, 0);
        request.name = format!("Plan {n}");
        client.create_plan(request).await.unwrap();
        app.operator(&format!("Operator {n}")).await;
    }
    let mut plans = Vec::new();
    let mut page_token = String::new();
    let mut pages = 0;
    loop {
        let page = client
            .list_plans(pb::ListPlansRequest {
                page_size: 2,
                page_token,
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert!(page.plans.len() <= 2);
        plans.extend(page.plans.into_iter().map(|p| p.name));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(pages, 3);
    assert_eq!(
        plans,
        (0..5).map(|n| format!("Plan {n}")).collect::<Vec<_>>()
    );
    let first = client
        .list_operators(pb::ListOperatorsRequest {
            page_size: 3,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.operators.len(), 3);
    let rest = client
        .list_operators(pb::ListOperatorsRequest {
            page_size: 0,
            page_token: first.next_page_token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.operators.len(), 2);
    assert!(rest.next_page_token.is_empty());
    assert_status(
        client
            .list_operators(pb::ListOperatorsRequest {
                page_size: -1,
                page_token: String::new(),
            })
            .await,
        Code::InvalidArgument,
        "page_size",
    );
    assert_status(
        client
            .list_plans(pb::ListPlansRequest {
                page_size: 2,
                page_token: first.next_page_token,
            })
            .await,
        Code::InvalidArgument,
        "page_token",
    );
}

#[tokio::test]
async fn link_operator_keeps_the_cap_of_operators_per_customer_under_concurrency() {
    let app = spawn_app().await;
    let plan = app.plan(PlanKind::Postpaid, 60_000, 1).await;
    let mut operators = Vec::new();
    for n in 0..105 {
        operators.push(app.operator(&format!("Operator {n}")).await.id);
    }
    let customer = app
        .long_standing_customer(plan.id, 1, operators[..98].to_vec())
        .await;
    let mut links = Vec::new();
    for &operator_id in &operators[98..105] {
        let mut client = app.customers.clone();
        let customer_id = customer.id;
        links.push(tokio::spawn(async move {
            client
                .link_operator(pb::LinkOperatorRequest {
                    customer_id,
                    operator_id,
                })
                .await
        }));
    }
    let mut linked = 0;
    for link in links {
        match link.await.unwrap() {
            Ok(_) => linked += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
                assert!(status.message().contains("100 operators"), "{status:?}");
            }
        }
    }
    assert_eq!(linked, 2);
    let stored = app.get_customer(customer.id).await;
    assert_eq!(stored.operator_ids.len(), 100);
    // Linking one already linked stays a no-op at the cap.
    app.customers
        .clone()
        .link_operator(pb::LinkOperatorRequest {
            customer_id: customer.id,
            operator_id: operators[0],
        })
        .await
        .unwrap();
}

/// The application with `limits`.
async fn spawn_with(limits: Limits) -> TestApp {
    spawn_app_with(AppOptions {
        limits,
        ..AppOptions::default()
    })
    .await
}

/// Opens a WatchInvoices stream of every invoice.
async fn watch_all(
    app: &TestApp,
) -> Result<tonic::Response<tonic::Streaming<pb::Invoice>>, tonic::Status> {
    app.invoices
        .clone()
        .watch_invoices(pb::WatchInvoicesRequest {
            after_invoice_id: 0,
        })
        .await
}

#[tokio::test]
async fn invoice_watchers_beyond_the_cap_are_resource_exhausted() {
    let app = spawn_with(Limits {
        max_invoice_watchers: 2,
        ..Limits::default()
    })
    .await;
    let first = watch_all(&app).await.unwrap();
    let _second = watch_all(&app).await.unwrap();
    assert_status(watch_all(&app).await, Code::ResourceExhausted, "watchers");
    // A watcher that leaves frees its place once the server sees it go.
    drop(first);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match watch_all(&app).await {
            Ok(_) => break,
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted);
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the place never came free"
                );
                tokio::task::yield_now().await;
            }
        }
    }
}

#[tokio::test]
async fn a_unary_rpc_that_outlasts_the_timeout_is_deadline_exceeded_and_writes_nothing() {
    let app = spawn_with(Limits {
        unary_timeout: Duration::from_secs(1),
        ..Limits::default()
    })
    .await;
    let plan = app.plan(PlanKind::Prepaid, 60_000, 1).await;
    let customer = app.long_standing_customer(plan.id, 1, vec![]).await;
    let lock = app.hold_lock(customer.id).await;
    let status = app
        .calls
        .clone()
        .add_call(call(customer.id, 60))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    lock.release().await;
    assert!(app.history(customer.id).await.is_empty());
    assert_eq!(app.get_customer(customer.id).await.balance_micros, 0);
}

#[tokio::test]
async fn a_connection_opens_no_more_streams_than_the_limit() {
    let app = spawn_with(Limits {
        max_concurrent_streams: 2,
        ..Limits::default()
    })
    .await;
    let plan = app.plan(PlanKind::Postpaid, 60_000, 1).await;
    let customer = app.long_standing_customer(plan.id, 1, vec![]).await;
    // Two open streams fill the connection (one client channel is one
    // HTTP/2 connection); a third RPC on it waits for a free stream.
    let first = watch_all(&app).await.unwrap();
    let _second = watch_all(&app).await.unwrap();
    let mut customers = app.customers.clone();
    let mut third = tokio::spawn(async move {
        customers
            .get_customer(pb::GetCustomerRequest {
                customer_id: customer.id,
            })
            .await
    });
    // A bound on a negative observation: the call has not completed.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut third)
            .await
            .is_err(),
        "a third stream was opened beyond the limit"
    );
    drop(first);
    let answered = tokio::time::timeout(Duration::from_secs(10), third)
        .await
        .expect("served once a stream is free")
        .unwrap()
        .unwrap()
        .into_inner();
    assert_eq!(answered.id, customer.id);
}

#[tokio::test]
async fn a_connection_has_no_more_requests_served_at_once_than_the_limit() {
    let app = spawn_with(Limits {
        max_requests_per_connection: 1,
        ..Limits::default()
    })
    .await;
    let plan = app.plan(PlanKind::Prepaid, 60_000, 1).await;
    let customer = app.long_standing_customer(plan.id, 1, vec![]).await;
    // The first request is served and waits on a lock the test holds; the
    // second, a read that needs no lock, waits for the first's place.
    let lock = app.hold_lock(customer.id).await;
    let mut calls = app.calls.clone();
    let first = tokio::spawn(async move { calls.add_call(call(customer.id, 60)).await });
    let mut customers = app.customers.clone();
    let mut second = tokio::spawn(async move {
        customers
            .get_customer(pb::GetCustomerRequest {
                customer_id: customer.id,
            })
            .await
    });
    // A bound on a negative observation: the read has not completed.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut second)
            .await
            .is_err(),
        "a second request was served beyond the limit"
    );
    lock.release().await;
    let stored = first.await.unwrap().unwrap().into_inner();
    assert!(!stored.duplicate);
    let read = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .expect("served once the first request ended")
        .unwrap()
        .unwrap()
        .into_inner();
    assert_eq!(read.balance_micros, -60_000);
}

#[tokio::test]
async fn accepted_connections_have_tcp_nodelay_set() {
    // The server's own accept path: what `run_until_stopped` serves from.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut incoming = billing::app::accepted_connections(listener);
    let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
    let accepted = tokio::time::timeout(Duration::from_secs(10), incoming.next())
        .await
        .expect("a connection is accepted")
        .expect("the listener is open")
        .expect("accepted without error");
    assert!(accepted.nodelay().unwrap(), "TCP_NODELAY is not set");
}

#[tokio::test]
async fn a_rapid_reset_flood_gets_the_connection_closed_and_the_server_serves_on() {
    let app = spawn_app().await;
    let tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let (mut client, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    // Open streams and cancel each at once (CVE-2023-44487), as fast as the
    // client can; the server must end the connection rather than serve on.
    let mut sent = 0;
    for _ in 0..100_000 {
        let Ok(ready) = client.ready().await else {
            break;
        };
        client = ready;
        let request =
            http::Request::post(format!("http://{}/grpc.health.v1.Health/Check", app.addr))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(())
                .unwrap();
        let Ok((_response, mut stream)) = client.send_request(request, false) else {
            break;
        };
        stream.send_reset(h2::Reason::CANCEL);
        sent += 1;
        if sent % 64 == 0 {
            // Let the connection task write the frames and read replies.
            tokio::task::yield_now().await;
        }
    }
    let ended = tokio::time::timeout(Duration::from_secs(10), connection)
        .await
        .expect("the server closes the flooding connection")
        .unwrap();
    let err = ended.expect_err("the connection ends with an error");
    // The server sends GOAWAY and closes its socket. A client still writing
    // then may meet the closed socket (and the kernel drops the unread
    // GOAWAY with the connection's reset) before it reads the frame, so a
    // broken or reset connection is the same outcome seen a moment later.
    let closed_by_server = err.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM)
        || err.get_io().is_some_and(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            )
        });
    assert!(closed_by_server, "after {sent} resets: {err}");
    assert!(sent < 100_000, "every reset was accepted");
    // Other clients are still served.
    let plan = app.plan(PlanKind::Postpaid, 60_000, 1).await;
    assert!(plan.id > 0);
}
