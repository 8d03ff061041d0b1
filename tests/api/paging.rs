//! Pagination: sizes, tokens and completeness while calls keep arriving.

use std::collections::BTreeSet;

use billing::grpc::pb::{self, PlanKind};
use tonic::Code;

use crate::helpers::{assert_status, call, spawn_app, ts};

fn call_at(customer_id: i64, seconds_after_2026: i64) -> pb::AddCallRequest {
    let mut request = call(customer_id, 30);
    request.started_at = Some(prost_types::Timestamp {
        seconds: ts("2026-01-01T00:00:00Z").seconds + seconds_after_2026,
        nanos: 0,
    });
    request
}

#[tokio::test]
async fn page_size_above_1000_is_coerced_to_1000() {
    let app = spawn_app().await;
    let plan = app.plan(PlanKind::Postpaid, 60_000, 1).await;
    let customer = app.long_standing_customer(plan.id, 1, vec![]).await;
    let records: Vec<_> = (0..1005).map(|n| call_at(customer.id, n)).collect();
    let ingested = app.ingest(records).await;
    assert_eq!(ingested.accepted, 1005);
    let page = app
        .calls
        .clone()
        .list_calls(pb::ListCallsRequest {
            page_size: 5000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.calls.len(), 1000);
    assert!(!page.next_page_token.is_empty());
    let rest = app
        .calls
        .clone()
        .list_calls(pb::ListCallsRequest {
            page_size: 5000,
            page_token: page.next_page_token,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.calls.len(), 5);
    assert!(rest.next_page_token.is_empty());
    let default_page = app
        .calls
        .clone()
        .list_calls(pb::ListCallsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(default_page.calls.len(), 100);
}

#[tokio::test]
async fn tokens_are_bound_to_their_query_and_negative_sizes_rejected() {
    let app = spawn_app().await;
    let plan = app.plan(PlanKind::Postpaid, 60_000, 1).await;
    let ada = app.long_standing_customer(plan.id, 1, vec![]).await;
    let bob = app.long_standing_customer(plan.id, 2, vec![]).await;
    let mut client = app.calls.clone();
    for n in 0..3 {
        client.add_call(call_at(ada.id, n)).await.unwrap();
    }
    let page = client
        .get_call_history(pb::GetCallHistoryRequest {
            customer_id: ada.id,
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_status(
        client
            .get_call_history(pb::GetCallHistoryRequest {
                customer_id: bob.id,
                page_token: page.next_page_token.clone(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "page_token",
    );
    assert_status(
        client
            .list_calls(pb::ListCallsRequest {
                page_token: page.next_page_token,
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "page_token",
    );
    assert_status(
        client
            .get_call_history(pb::GetCallHistoryRequest {
                customer_id: ada.id,
                page_size: -1,
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "page_size",
    );
}

/// Pages through a customer's history while a writer keeps adding calls,
/// some older and some newer than the page being read: every call stored
/// before paging began is returned exactly once, and no call twice.
#[tokio::test]
async fn paging_returns_every_older_call_exactly_once_under_concurrent_inserts() {
    let app = spawn_app().await;
    let plan = app.plan(PlanKind::Postpaid, 60_000, 1).await;
    let customer = app.long_standing_customer(plan.id, 1, vec![]).await;
    // 300 calls, several sharing a start instant so the id tie-break matters.
    let existing: Vec<_> = (0..300)
        .map(|n| call_at(customer.id, (n / 3) * 60))
        .collect();
    app.ingest(existing).await;
    let before: BTreeSet<i64> = app
        .history(customer.id)
        .await
        .iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(before.len(), 300);

    let mut writer_client = app.calls.clone();
    let writer = tokio::spawn(async move {
        for n in 0..200 {
            // Alternately before everything, interleaved, and after everything.
            let offset = match n % 3 {
                0 => -3600 - n,
                1 => n * 37 % 6000,
                _ => 100_000 + n,
            };
            writer_client
                .add_call(call_at(customer.id, offset))
                .await
                .unwrap();
        }
    });

    let mut client = app.calls.clone();
    let mut seen = Vec::new();
    let mut page_token = String::new();
    let mut last_key = None;
    loop {
        let page = client
            .get_call_history(pb::GetCallHistoryRequest {
                customer_id: customer.id,
                page_size: 7,
                page_token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        for c in &page.calls {
            let key = (c.started_at.unwrap().seconds, c.id);
            assert!(last_key < Some(key), "pages are in (started_at, id) order");
            last_key = Some(key);
            seen.push(c.id);
        }
        // Between pages, add calls on both sides of the cursor as well.
        client.add_call(call_at(customer.id, -7200)).await.unwrap();
        client
            .add_call(call_at(customer.id, 200_000))
            .await
            .unwrap();
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
        if seen.len() > 5000 {
            panic!("paging does not terminate");
        }
    }
    writer.await.unwrap();
    let unique: BTreeSet<i64> = seen.iter().copied().collect();
    assert_eq!(unique.len(), seen.len(), "no call returned twice");
    assert!(
        before.is_subset(&unique),
        "every call stored before paging began is returned"
    );
}
