//! Long-lived and hostile IngestCalls streams: clients that send each
//! record as its own HTTP/2 frame, slowly fed streams, and how many streams
//! one server and one account may hold.

use std::time::Duration;

use billing::grpc::pb::{self, PlanKind};
use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use tonic::Code;

use crate::helpers::{AppOptions, call, spawn_app, spawn_app_with};

/// A gRPC message as it travels in DATA frames: uncompressed flag, length,
/// the encoded message.
fn grpc_frame(message: &impl Message) -> Bytes {
    let body = message.encode_to_vec();
    let mut frame = BytesMut::with_capacity(5 + body.len());
    frame.put_u8(0);
    frame.put_u32(u32::try_from(body.len()).unwrap());
    frame.put_slice(&body);
    frame.freeze()
}

/// Sends `records` on one IngestCalls stream over a raw HTTP/2 connection,
/// each record as its own DATA frame, as fast as flow control allows (as
/// grpcio and grpc-go send them). `stalled` is called once, the first time
/// the server has stopped reading for a second (its window is full).
/// Returns the response or the status.
async fn ingest_frame_by_frame(
    addr: std::net::SocketAddr,
    records: impl Iterator<Item = pb::AddCallRequest>,
    mut stalled: Option<tokio::sync::oneshot::Sender<()>>,
) -> Result<pb::IngestCallsResponse, String> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = http::Request::post(format!("http://{addr}/billing.v1.CallService/IngestCalls"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut send) = client.send_request(request, false).unwrap();
    for record in records {
        let frame = grpc_frame(&record);
        send.reserve_capacity(frame.len());
        while send.capacity() < frame.len() {
            let next = std::future::poll_fn(|cx| send.poll_capacity(cx));
            match tokio::time::timeout(Duration::from_secs(1), next).await {
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(err))) => return Err(format!("sending: {err}")),
                Ok(None) => return Err("the stream was closed".into()),
                Err(_) => {
                    if let Some(stalled) = stalled.take() {
                        let _ = stalled.send(());
                    }
                }
            }
        }
        send.send_data(frame, false)
            .map_err(|err| format!("sending: {err}"))?;
    }
    send.send_data(Bytes::new(), true)
        .map_err(|err| format!("ending: {err}"))?;
    let response = response.await.map_err(|err| format!("response: {err}"))?;
    let mut body = response.into_body();
    let mut bytes = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|err| format!("body: {err}"))?;
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.put_slice(&chunk);
    }
    let trailers = body
        .trailers()
        .await
        .map_err(|err| format!("trailers: {err}"))?
        .unwrap_or_default();
    let status = trailers
        .get("grpc-status")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    drop(client);
    connection.abort();
    if status != "0" {
        return Err(format!("grpc-status {status}: {trailers:?}"));
    }
    assert!(bytes.len() >= 5, "no response message");
    Ok(pb::IngestCallsResponse::decode(&bytes[5..]).unwrap())
}

/// h2 closes a connection whose unread small DATA frames cost more than its
/// budget; a switch framing every record separately while the server's
/// writer waits must still complete its upload with every record counted.
#[tokio::test]
async fn a_client_framing_each_record_separately_completes_while_the_writer_stalls() {
    let app = spawn_app().await;
    let plan = app.plan(PlanKind::Postpaid, 60_000, 1).await;
    let customer = app.long_standing_customer(plan.id, 1, vec![]).await;
    // The writer waits on this lock until the client has filled every
    // window the server gives it.
    let lock = app.hold_lock(customer.id).await;
    let (stalled_tx, stalled_rx) = tokio::sync::oneshot::channel();
    // Released once the client waits on its window; if it never does, the
    // test has not exercised a stalled writer and fails below.
    let release = tokio::spawn(async move {
        let stalled = tokio::time::timeout(Duration::from_secs(30), stalled_rx)
            .await
            .is_ok_and(|signal| signal.is_ok());
        lock.release().await;
        stalled
    });
    // More than the server reads ahead (a batch being written, one and a
    // half read), so that the client fills its window and waits.
    const RECORDS: usize = 40_000;
    let records = (0..RECORDS).map(|n| {
        let mut record = call(customer.id, 60);
        record.call_id = format!("f-{n}");
        record
    });
    let report = ingest_frame_by_frame(app.addr, records, Some(stalled_tx))
        .await
        .expect("the stream completes");
    assert!(
        release.await.unwrap(),
        "the client never waited on its window: send more records"
    );
    assert_eq!(report.accepted, RECORDS as i64, "{report:?}");
    assert_eq!(report.rejected, 0, "{report:?}");
    let count = app.history(customer.id).await.len();
    assert_eq!(count, RECORDS);
}

/// A switch that keeps its stream open and sends a record now and then
/// sees each one stored (and debited) within `--ingest-flush-interval`,
/// not when the stream ends.
#[tokio::test]
async fn a_slowly_fed_stream_commits_within_the_flush_interval() {
    let app = spawn_app_with(AppOptions {
        clock: billing::clock::Clock::starting_at(crate::helpers::at(crate::helpers::TEST_NOW)),
        limits: billing::app::Limits {
            ingest_flush_interval: Duration::from_millis(200),
            ..billing::app::Limits::default()
        },
        ..AppOptions::default()
    })
    .await;
    let plan = app.plan(PlanKind::Prepaid, 60_000, 1).await;
    let customer = app.long_standing_customer(plan.id, 1, vec![]).await;
    let (records, stream) = tokio::sync::mpsc::channel(16);
    let mut client = app.calls.clone();
    let ingest = tokio::spawn(async move {
        client
            .ingest_calls(tokio_stream::wrappers::ReceiverStream::new(stream))
            .await
    });
    for n in 1..=3 {
        let mut record = call(customer.id, 60);
        record.call_id = format!("slow-{n}");
        records.send(record).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while app.history(customer.id).await.len() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "record {n} of an open stream was not stored within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            app.get_customer(customer.id).await.balance_micros,
            -60_000 * i64::try_from(n).unwrap(),
            "debited while the stream is open"
        );
    }
    drop(records);
    let report = ingest.await.unwrap().unwrap().into_inner();
    assert_eq!(report.accepted, 3);
}

/// Beyond `--max-ingest-streams` open IngestCalls streams the next one is
/// refused with RESOURCE_EXHAUSTED (overload, not an outage), and once one
/// ends another is served.
#[tokio::test]
async fn ingest_streams_beyond_the_servers_bound_are_resource_exhausted() {
    let app = spawn_app_with(AppOptions {
        clock: billing::clock::Clock::starting_at(crate::helpers::at(crate::helpers::TEST_NOW)),
        limits: billing::app::Limits {
            max_ingest_streams: 2,
            ingest_flush_interval: Duration::from_millis(50),
            ..billing::app::Limits::default()
        },
        ..AppOptions::default()
    })
    .await;
    let plan = app.plan(PlanKind::Postpaid, 60_000, 1).await;
    let customer = app.long_standing_customer(plan.id, 1, vec![]).await;
    let mut open = Vec::new();
    for n in 0..2 {
        let (records, stream) = tokio::sync::mpsc::channel(16);
        let mut client = app.calls.clone();
        let ingest = tokio::spawn(async move {
            client
                .ingest_calls(tokio_stream::wrappers::ReceiverStream::new(stream))
                .await
        });
        let mut record = call(customer.id, 60);
        record.call_id = format!("open-{n}");
        records.send(record).await.unwrap();
        open.push((records, ingest));
    }
    // Both streams are being served once their first records are stored.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while app.history(customer.id).await.len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the streams were not served"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused = app
        .calls
        .clone()
        .ingest_calls(tokio_stream::iter(vec![call(customer.id, 1)]))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("--max-ingest-streams"),
        "{refused:?}"
    );
    let (records, ingest) = open.pop().unwrap();
    drop(records);
    assert_eq!(ingest.await.unwrap().unwrap().into_inner().accepted, 1);
    let served = app
        .calls
        .clone()
        .ingest_calls(tokio_stream::iter(vec![call(customer.id, 1)]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(served.accepted, 1);
    drop(open);
}

/// A history page never exceeds `--max-message-bytes`, however many
/// segments its calls carry: a full page is cut short, with a token to the
/// rest.
#[tokio::test]
async fn a_history_page_of_calls_with_many_segments_stays_within_the_message_limit() {
    let app = spawn_app().await;
    // Forty one-minute windows spread over the day: a day-long call is cut
    // into about 80 segments.
    let tariffs = (0..40)
        .map(|n| pb::Tariff {
            name: format!("w{n}"),
            start_minute: n * 36,
            end_minute: n * 36 + 1,
            per_minute_micros: 1,
            ..Default::default()
        })
        .collect();
    let plan = app
        .customers
        .clone()
        .create_plan(pb::CreatePlanRequest {
            name: "Windows".into(),
            kind: PlanKind::Postpaid.into(),
            per_minute_micros: 60_000,
            tariffs,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let customer = app.long_standing_customer(plan.id, 1, vec![]).await;
    const CALLS: usize = 600;
    let records = (0..CALLS)
        .map(|n| {
            let mut record = call(customer.id, 86_000);
            record.call_id = format!("day-{n}");
            record.started_at = Some(crate::helpers::ts(&format!(
                "2026-05-{:02}T{:02}:{:02}:00Z",
                1 + n / 40,
                n % 24,
                n % 60
            )));
            record
        })
        .collect();
    let report = app.ingest(records).await;
    assert_eq!(report.accepted, CALLS as i64, "{report:?}");
    let limit = billing::app::Limits::default().max_message_bytes;
    let mut token = String::new();
    let mut seen = 0;
    let mut pages = 0;
    loop {
        let page = app
            .calls
            .clone()
            .get_call_history(pb::GetCallHistoryRequest {
                customer_id: customer.id,
                page_size: 1000,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(
            page.encoded_len() <= limit,
            "a page of {} bytes",
            page.encoded_len()
        );
        assert!(page.calls.iter().all(|c| c.segments.len() > 50));
        seen += page.calls.len();
        pages += 1;
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(seen, CALLS);
    assert!(
        pages > 1,
        "the calls fit one page; the test needs more segments"
    );
}
