//! `/metrics`: scraped over HTTP from its own port, parsed as the
//! Prometheus text format, counters moving as calls arrive.

use std::collections::HashMap;
use std::net::SocketAddr;

use billing::grpc::pb::PlanKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{AppOptions, call, spawn_app_with};

/// `GET path` on `addr`: the status line and the body.
async fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (
        head.lines().next().unwrap_or("").to_owned(),
        body.to_owned(),
    )
}

/// Every sample of a scrape by its series (`name{labels}`), checking that
/// each line is a comment or a sample with a numeric value, and that each
/// metric is declared before its samples.
fn parse(text: &str) -> HashMap<String, f64> {
    let mut declared = std::collections::HashSet::new();
    let mut samples = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let name = parts.next().unwrap();
            let kind = parts.next().unwrap();
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            declared.insert(name.to_owned());
            continue;
        }
        if line.starts_with("# HELP ") || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{line}"
        );
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix).filter(|f| declared.contains(*f)))
            .unwrap_or(name);
        assert!(
            declared.contains(family),
            "{name} sampled before its # TYPE"
        );
        samples.insert(series.to_owned(), value);
    }
    samples
}

/// A server with a metrics listener, and that listener's address.
async fn app_with_metrics() -> (crate::helpers::TestApp, SocketAddr) {
    let app = spawn_app_with(AppOptions {
        clock: billing::clock::Clock::starting_at(crate::helpers::at(crate::helpers::TEST_NOW)),
        metrics: true,
        ..AppOptions::default()
    })
    .await;
    let metrics = app.metrics_addr.expect("a metrics listener");
    (app, metrics)
}

#[tokio::test]
async fn metrics_are_served_on_their_own_port_and_count_calls_as_they_arrive() {
    let (app, metrics) = app_with_metrics().await;
    assert_ne!(metrics.port(), app.addr.port());
    let (status, body) = get(metrics, "/metrics").await;
    assert!(status.contains(" 200 "), "{status}");
    let before = parse(&body);
    assert_eq!(
        before.get("billing_build_info{version=\"0.1.0\"}"),
        Some(&1.0)
    );
    let stored = |samples: &HashMap<String, f64>, source: &str, result: &str| {
        samples
            .get(&format!(
                "billing_calls_stored_total{{source=\"{source}\",result=\"{result}\"}}"
            ))
            .copied()
            .unwrap_or_else(|| panic!("no {source}/{result} in the scrape"))
    };
    assert_eq!(stored(&before, "unary", "accepted"), 0.0);
    assert!(before.contains_key("billing_db_connections{pool=\"primary\",state=\"in_use\"}"));
    assert!(before.contains_key("billing_open_streams{kind=\"ingest\"}"));

    let plan = app.plan(PlanKind::Postpaid, 60_000, 1).await;
    let customer = app.long_standing_customer(plan.id, 1, vec![]).await;
    let mut calls = app.calls.clone();
    for n in 0..3 {
        let mut record = call(customer.id, 60);
        record.call_id = format!("m-{n}");
        calls.add_call(record).await.unwrap();
    }
    let mut repeat = call(customer.id, 60);
    repeat.call_id = "m-0".into();
    calls.add_call(repeat).await.unwrap();
    calls.add_call(call(customer.id, -1)).await.unwrap_err();
    let mut streamed = call(customer.id, 60);
    streamed.call_id = "m-stream".into();
    app.ingest(vec![streamed, call(999, 60)]).await;

    let (_, body) = get(metrics, "/metrics").await;
    let after = parse(&body);
    assert_eq!(stored(&after, "unary", "accepted"), 3.0);
    assert_eq!(stored(&after, "unary", "duplicate"), 1.0);
    assert_eq!(stored(&after, "unary", "rejected"), 1.0);
    assert_eq!(stored(&after, "stream", "accepted"), 1.0);
    assert_eq!(stored(&after, "stream", "rejected"), 1.0);
    let add_call = "method=\"billing.v1.CallService/AddCall\"";
    assert_eq!(
        after.get(&format!(
            "billing_rpc_requests_total{{{add_call},code=\"ok\"}}"
        )),
        Some(&4.0)
    );
    assert_eq!(
        after.get(&format!(
            "billing_rpc_requests_total{{{add_call},code=\"invalid_argument\"}}"
        )),
        Some(&1.0)
    );
    assert_eq!(
        after.get(&format!("billing_rpc_duration_seconds_count{{{add_call}}}")),
        Some(&5.0)
    );
    assert_eq!(
        after.get(&format!(
            "billing_rpc_duration_seconds_bucket{{{add_call},le=\"+Inf\"}}"
        )),
        Some(&5.0)
    );
    assert!(after["billing_group_commit_batch_size_count"] >= 1.0);

    let (status, _) = get(metrics, "/other").await;
    assert!(status.contains(" 404 "), "{status}");
}

#[tokio::test]
async fn without_the_flag_no_metrics_are_served() {
    let app = spawn_app_with(AppOptions::default()).await;
    assert!(app.metrics_addr.is_none());
}

#[tokio::test]
async fn an_rpc_counts_as_in_progress_until_it_is_answered() {
    let (app, metrics) = app_with_metrics().await;
    let in_progress =
        || async move { parse(&get(metrics, "/metrics").await.1)["billing_rpcs_in_progress"] };
    assert_eq!(in_progress().await, 0.0);
    let plan = app.plan(PlanKind::Postpaid, 60_000, 1).await;
    let customer = app.long_standing_customer(plan.id, 1, vec![]).await;

    // An upload is being handled until its stream ends and it is answered.
    let (records, stream) = tokio::sync::mpsc::channel(4);
    let mut calls = app.calls.clone();
    let upload = tokio::spawn(async move {
        calls
            .ingest_calls(tokio_stream::wrappers::ReceiverStream::new(stream))
            .await
    });
    records.send(call(customer.id, 60)).await.unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while in_progress().await != 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the open upload was never counted"
        );
        tokio::task::yield_now().await;
    }
    drop(records);
    let report = upload.await.unwrap().unwrap().into_inner();
    assert_eq!(report.accepted, 1);
    assert_eq!(in_progress().await, 0.0);
}
