//! Invoice documents: GetInvoiceDocument's PDF (its text extracted by
//! poppler's `pdftotext`, as a reader's tools would) and HTML, in both
//! languages, and `billing invoice-document`.

use billing::grpc::pb::{self, PlanKind};
use tonic::Code;

use crate::helpers::{TestApp, assert_status, at, spawn_app_at};
use crate::invoices::{add_call_at, invoice_of, plan_with};

/// The text of a PDF, laid out as on the page.
pub(crate) fn pdf_text(pdf: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("invoice.pdf");
    std::fs::write(&path, pdf).unwrap();
    let output = std::process::Command::new("pdftotext")
        .arg("-layout")
        .arg(&path)
        .arg("-")
        .output()
        .expect("pdftotext runs (Debian package poppler-utils; .ci/run installs it)");
    assert!(
        output.status.success(),
        "pdftotext failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

pub(crate) async fn document(
    app: &TestApp,
    invoice_id: i64,
    format: pb::DocumentFormat,
) -> pb::InvoiceDocument {
    app.invoices
        .clone()
        .get_invoice_document(pb::GetInvoiceDocumentRequest {
            invoice_id,
            format: format.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// An operator with issuer details, a customer of it writing in
/// `language`, three October calls, and its October invoice.
async fn october_invoice(app: &TestApp, language: &str) -> (pb::Customer, pb::Invoice) {
    let mut customers = app.customers.clone();
    let operator = app.operator("acme").await;
    customers
        .update_operator(pb::UpdateOperatorRequest {
            operator: Some(pb::Operator {
                id: operator.id,
                legal_name: "ACME Telecom GmbH".into(),
                address: "Hauptstraße 1\n10115 Berlin".into(),
                tax_id: "DE123456789".into(),
                support_email: "billing@acme.example".into(),
                ..Default::default()
            }),
            update_mask: None,
        })
        .await
        .unwrap();
    // 12.345678 per minute, 1 s increments: amounts with micros to round.
    let plan = plan_with(app, PlanKind::Postpaid, 9_990_000, 12_345_678, 1, 0).await;
    let customer = customers
        .create_customer(pb::CreateCustomerRequest {
            name: "Jürgen <Müller> & Söhne".into(),
            phone_number: "+49301234567".into(),
            plan_id: plan.id,
            operator_ids: vec![operator.id],
            email: "juergen@example.com".into(),
            language: language.into(),
            low_balance_threshold_micros: None,
        })
        .await
        .unwrap()
        .into_inner();
    app.clock.set(at("2026-10-31T23:30:00Z"));
    for (seconds, started) in [
        (61, "2026-10-02T08:00:00Z"),
        (3_599, "2026-10-15T12:00:00Z"),
        (7, "2026-10-31T22:59:00Z"),
    ] {
        add_call_at(app, customer.id, seconds, started).await;
    }
    app.clock.set(at("2026-11-01T00:00:01Z"));
    let invoice = invoice_of(app, customer.id, 2026, 10).await;
    (customer, invoice)
}

#[tokio::test]
async fn a_pdf_invoice_states_its_number_lines_and_total_as_displayed_in_german() {
    let app = spawn_app_at(at("2026-10-01T00:00:00Z")).await;
    let (_, invoice) = october_invoice(&app, "de").await;
    // The usage: three calls of 3,667 s in all at 12.345678/min, each
    // rounded to the micro: 754.526687 EUR; the fee 9.99 EUR. Shown: 754.53
    // and 9.99, adding up to the total 764.516687 shown as 764.52.
    assert_eq!(
        invoice
            .lines
            .iter()
            .map(|l| l.amount_micros)
            .collect::<Vec<_>>(),
        [9_990_000, 754_526_687]
    );
    let pdf = document(&app, invoice.id, pb::DocumentFormat::Pdf).await;
    assert_eq!(pdf.content_type, "application/pdf");
    assert_eq!(pdf.file_name, format!("{}.pdf", invoice.number));
    let text = pdf_text(&pdf.content);
    for expected in [
        "Rechnung",
        invoice.number.as_str(),
        "ACME Telecom GmbH",
        "Hauptstraße 1",
        "USt-IdNr. DE123456789",
        "Jürgen <Müller> & Söhne",
        "Oktober 2026",
        "1. November 2026",
        "Grundgebühr – Postpaid",
        "9,99 EUR",
        "Verbindungen",
        "3 Anrufe, 61:07 min",
        "754,53 EUR",
        "Gesamtbetrag",
        "764,52 EUR",
        "Seite 1 von 1",
    ] {
        assert!(text.contains(expected), "{expected:?} not in:\n{text}");
    }
    // The same invoice gives the same bytes.
    let again = document(&app, invoice.id, pb::DocumentFormat::Pdf).await;
    assert_eq!(again.content, pdf.content);
}

#[tokio::test]
async fn the_document_follows_the_customers_language_in_pdf_and_html() {
    let app = spawn_app_at(at("2026-10-01T00:00:00Z")).await;
    let (customer, invoice) = october_invoice(&app, "en").await;
    let text = pdf_text(
        &document(&app, invoice.id, pb::DocumentFormat::Pdf)
            .await
            .content,
    );
    for expected in [
        "Invoice",
        "Tax ID DE123456789",
        "October 2026",
        "1 November 2026",
        "EUR 9.99",
        "3 calls, 61:07 min",
        "EUR 754.53",
        "Total",
        "EUR 764.52",
        "Page 1 of 1",
    ] {
        assert!(text.contains(expected), "{expected:?} not in:\n{text}");
    }
    let html = document(&app, invoice.id, pb::DocumentFormat::Html).await;
    assert_eq!(html.content_type, "text/html; charset=utf-8");
    assert_eq!(html.file_name, format!("{}.html", invoice.number));
    let html = String::from_utf8(html.content).unwrap();
    for expected in [
        "<html lang=\"en\">",
        invoice.number.as_str(),
        "Jürgen &lt;Müller&gt; &amp; Söhne",
        "EUR 754.53",
        "EUR 764.52",
    ] {
        assert!(html.contains(expected), "{expected:?} not in:\n{html}");
    }
    assert!(!html.contains("<Müller>"), "names are escaped");

    // Switching the customer's language rewrites its documents.
    app.customers
        .clone()
        .update_customer(pb::UpdateCustomerRequest {
            customer: Some(pb::Customer {
                id: customer.id,
                language: "de".into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["language".into()],
            }),
        })
        .await
        .unwrap();
    let html = document(&app, invoice.id, pb::DocumentFormat::Html).await;
    let html = String::from_utf8(html.content).unwrap();
    assert!(html.contains("<html lang=\"de\">") && html.contains("764,52 EUR"));
}

#[tokio::test]
async fn a_prepaid_statement_shows_its_top_ups_and_the_usage_debited() {
    let app = spawn_app_at(at("2026-10-01T00:00:00Z")).await;
    let plan = plan_with(&app, PlanKind::Prepaid, 0, 60_000, 1, 0).await;
    let customer = app.customer(plan.id, 1, Vec::new()).await;
    app.customers
        .clone()
        .top_up(pb::TopUpRequest {
            customer_id: customer.id,
            amount_micros: 20_000_000,
            request_id: "t1".into(),
        })
        .await
        .unwrap();
    app.clock.set(at("2026-10-31T23:30:00Z"));
    add_call_at(&app, customer.id, 90, "2026-10-03T10:00:00Z").await;
    app.clock.set(at("2026-11-01T00:00:01Z"));
    let invoice = invoice_of(&app, customer.id, 2026, 10).await;
    let text = pdf_text(
        &document(&app, invoice.id, pb::DocumentFormat::Pdf)
            .await
            .content,
    );
    for expected in [
        "Prepaid statement",
        "Top-up on 1 October 2026, 00:00",
        "EUR 20.00",
        "Usage debited from the prepaid balance: 1 call, 1:30 min – EUR 0.09",
    ] {
        assert!(text.contains(expected), "{expected:?} not in:\n{text}");
    }
}

#[tokio::test]
async fn a_document_request_names_what_is_wrong() {
    let app = spawn_app_at(at("2026-10-01T00:00:00Z")).await;
    let (_, invoice) = october_invoice(&app, "en").await;
    let mut invoices = app.invoices.clone();
    let request = |invoice_id, format: i32| pb::GetInvoiceDocumentRequest { invoice_id, format };
    assert_status(
        invoices
            .get_invoice_document(request(invoice.id, pb::DocumentFormat::Unspecified.into()))
            .await,
        Code::InvalidArgument,
        "format",
    );
    assert_status(
        invoices.get_invoice_document(request(invoice.id, 99)).await,
        Code::InvalidArgument,
        "format",
    );
    assert_status(
        invoices
            .get_invoice_document(request(0, pb::DocumentFormat::Pdf.into()))
            .await,
        Code::InvalidArgument,
        "invoice_id",
    );
    assert_status(
        invoices
            .get_invoice_document(request(invoice.id + 1, pb::DocumentFormat::Pdf.into()))
            .await,
        Code::NotFound,
        "invoice",
    );
}

#[tokio::test]
async fn invoice_document_on_the_command_line_writes_the_same_document() {
    let app = spawn_app_at(at("2026-10-01T00:00:00Z")).await;
    let (_, invoice) = october_invoice(&app, "de").await;
    let served = document(&app, invoice.id, pb::DocumentFormat::Pdf).await;
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("out.pdf");
    let id = invoice.id.to_string();
    let mut process = crate::process::billing(
        &[
            "invoice-document",
            &id,
            "--format",
            "pdf",
            "--output",
            output.to_str().unwrap(),
        ],
        &app.database.url,
    );
    let status = process.child.wait().unwrap();
    assert!(status.success(), "invoice-document failed");
    assert_eq!(std::fs::read(&output).unwrap(), served.content);

    let mut missing = crate::process::billing(
        &[
            "invoice-document",
            "999999",
            "--output",
            output.to_str().unwrap(),
        ],
        &app.database.url,
    );
    let (status, said) = missing.finish();
    assert!(!status.success());
    assert!(
        said.iter().any(|l| l.contains("invoice 999999 not found")),
        "{said:?}"
    );
}
