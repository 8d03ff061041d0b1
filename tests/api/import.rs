//! `billing import-cdr`: the real binary uploading generated Asterisk,
//! FreeSWITCH and billing-csv files to the real server through
//! StreamCalls; answered calls stored by calling number, unanswered ones
//! skipped, malformed rows in the rejects file, a rerun storing nothing
//! twice.

use std::io::Read;
use std::path::Path;

use billing::grpc::pb::PlanKind;

use crate::helpers::{TestApp, spawn_app};

/// Runs `billing import-cdr` against `app` (on a thread of its own: the
/// server runs on the test's): exit success, stdout, and the rejects
/// file's lines.
async fn import(app: &TestApp, file: &Path, format: &str) -> (bool, String, Vec<String>) {
    let (file, format) = (file.to_owned(), format.to_owned());
    let (server, url) = (format!("http://{}", app.addr), app.database.url.clone());
    tokio::task::spawn_blocking(move || run_import(&file, &format, &server, &url))
        .await
        .unwrap()
}

fn run_import(file: &Path, format: &str, server: &str, url: &str) -> (bool, String, Vec<String>) {
    let rejects = file.with_extension("rejects.csv");
    let mut process = crate::process::billing(
        &[
            "import-cdr",
            file.to_str().unwrap(),
            "--format",
            format,
            "--server",
            server,
            "--rejects",
            rejects.to_str().unwrap(),
        ],
        url,
    );
    let mut stdout = String::new();
    process
        .child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let (status, _stderr) = process.finish();
    let rejected = std::fs::read_to_string(&rejects)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect();
    (status.success(), stdout, rejected)
}

/// One line of Asterisk's Master.csv (cdr_csv with loguniqueid).
fn asterisk(src: &str, answer: &str, billsec: u32, disposition: &str, uniqueid: &str) -> String {
    format!(
        "\"\",\"{src}\",\"+12025550123\",\"from-internal\",\"\"\"Caller\"\" <{src}>\",\
         \"SIP/100-0001\",\"SIP/trunk-0002\",\"Dial\",\"SIP/trunk/+12025550123\",\
         \"{answer}\",\"{answer}\",\"{answer}\",{},{billsec},\"{disposition}\",\
         \"DOCUMENTATION\",\"{uniqueid}\",\"\"",
        billsec + 5
    )
}

#[tokio::test]
async fn asterisk_files_store_answered_calls_reject_malformed_rows_and_rerun_as_duplicates() {
    let app = spawn_app().await;
    let plan = app.plan(PlanKind::Postpaid, 60_000, 1).await;
    let alice = app.long_standing_customer(plan.id, 1, vec![]).await;
    let bob = app.long_standing_customer(plan.id, 2, vec![]).await;
    let mut lines = Vec::new();
    for n in 0..50 {
        lines.push(asterisk(
            &alice.phone_number,
            "2026-06-10 09:00:00",
            60 + n,
            "ANSWERED",
            &format!("a.{n}"),
        ));
    }
    for n in 0..30 {
        lines.push(asterisk(
            &bob.phone_number,
            "2026-06-11 09:00:00",
            30,
            "ANSWERED",
            &format!("b.{n}"),
        ));
    }
    for n in 0..10 {
        lines.push(asterisk(
            &bob.phone_number,
            "2026-06-12 09:00:00",
            0,
            "NO ANSWER",
            &format!("n.{n}"),
        ));
    }
    // Line 91: too few columns; 92: not a time; 93: a number nobody holds.
    lines.push("\"\",\"+14155550001\",\"+12025550123\"".into());
    lines.push(asterisk(
        &alice.phone_number,
        "yesterday",
        60,
        "ANSWERED",
        "bad.time",
    ));
    lines.push(asterisk(
        "+4930999999",
        "2026-06-10 09:00:00",
        60,
        "ANSWERED",
        "unknown.1",
    ));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("Master.csv");
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();

    let (ok, stdout, rejected) = import(&app, &file, "asterisk").await;
    assert!(!ok, "a rejected row fails the import: {stdout}");
    assert!(
        stdout.contains("80 accepted, 0 duplicates, 3 rejected, 10 skipped"),
        "{stdout}"
    );
    assert_eq!(rejected.len(), 3, "{rejected:?}");
    assert!(
        rejected[0].contains(",91,") && rejected[0].contains("columns"),
        "{rejected:?}"
    );
    assert!(
        rejected[1].contains(",92,") && rejected[1].contains("answer"),
        "{rejected:?}"
    );
    assert!(
        rejected[2].contains(",93,") && rejected[2].contains("caller_number"),
        "{rejected:?}"
    );
    assert!(
        rejected[2].contains("unknown.1"),
        "the row itself: {rejected:?}"
    );
    let history = app.history(alice.id).await;
    assert_eq!(history.len(), 50);
    assert!(
        history
            .iter()
            .all(|c| c.caller_number == alice.phone_number)
    );
    assert_eq!(history[0].duration_seconds, 60);
    assert_eq!(app.history(bob.id).await.len(), 30);

    let (ok, stdout, rejected) = import(&app, &file, "asterisk").await;
    assert!(!ok);
    assert!(
        stdout.contains("0 accepted, 80 duplicates, 3 rejected"),
        "{stdout}"
    );
    assert_eq!(rejected.len(), 3);
    assert_eq!(app.history(alice.id).await.len(), 50);
    assert_eq!(app.history(bob.id).await.len(), 30);
}

#[tokio::test]
async fn freeswitch_and_billing_csv_files_import_cleanly_with_a_zero_exit() {
    let app = spawn_app().await;
    let plan = app.plan(PlanKind::Postpaid, 60_000, 1).await;
    let carol = app.long_standing_customer(plan.id, 3, vec![]).await;
    let dir = tempfile::tempdir().unwrap();
    let freeswitch = dir.path().join("Master-fs.csv");
    let mut lines = Vec::new();
    for n in 0..20 {
        lines.push(format!(
            "\"Carol\",\"{}\",\"+12025550123\",\"default\",\"2026-06-15 10:00:00\",\
             \"2026-06-15 10:00:02\",\"2026-06-15 10:01:02\",\"62\",\"60\",\"NORMAL_CLEARING\",\
             \"fs-{n:04}\",\"\",\"\",\"PCMU\",\"PCMU\"",
            carol.phone_number
        ));
    }
    lines.push(format!(
        "\"Carol\",\"{}\",\"+12025550123\",\"default\",\"2026-06-15 10:00:00\",\"\",\
         \"2026-06-15 10:00:30\",\"30\",\"0\",\"NO_ANSWER\",\"fs-missed\",\"\",\"\",\"PCMU\",\"PCMU\"",
        carol.phone_number
    ));
    std::fs::write(&freeswitch, lines.join("\n")).unwrap();
    let (ok, stdout, rejected) = import(&app, &freeswitch, "freeswitch").await;
    assert!(ok, "{stdout} {rejected:?}");
    assert!(
        stdout.contains("20 accepted, 0 duplicates, 0 rejected, 1 skipped"),
        "{stdout}"
    );

    let own = dir.path().join("calls.csv");
    std::fs::write(
        &own,
        format!(
            "call_id,caller_number,callee_number,started_at,duration_seconds\n\
             own-1,{0},+12025550123,2026-06-16T08:00:00Z,61\n\
             own-2,{0},+12025550123,2026-06-16T09:00:00Z,120\n",
            carol.phone_number
        ),
    )
    .unwrap();
    let (ok, stdout, _) = import(&app, &own, "billing-csv").await;
    assert!(ok, "{stdout}");
    assert!(stdout.contains("2 accepted"), "{stdout}");
    let history = app.history(carol.id).await;
    assert_eq!(history.len(), 22);
    assert!(
        history
            .iter()
            .any(|c| c.call_id == "own-1" && c.duration_seconds == 61)
    );
}
