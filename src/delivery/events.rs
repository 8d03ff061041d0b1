//! What a delivery says: the JSON body of each webhook event, and each
//! email's subject and parts in the customer's language. The invoice in an
//! `invoice.issued` event is written as the API's JSON (the proto3 JSON
//! mapping of `billing.v1.Invoice`: lowerCamelCase names, 64-bit integers
//! as strings, enums by name, timestamps in RFC 3339).

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};

use crate::document::{DocumentSource, InvoiceStatement, escape_html};
use crate::domain::delivery::{BalanceAlert, Event};
use crate::domain::invoice::Invoice;
use crate::domain::model::{Customer, Language};
use crate::domain::money::{format_amount, to_minor_units};

fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// `invoice` as the API's JSON.
pub fn invoice_json(invoice: &Invoice) -> Value {
    json!({
        "id": invoice.id.to_string(),
        "number": invoice.number,
        "customerId": invoice.customer_id.to_string(),
        "period": {"year": invoice.period.year(), "month": invoice.period.month()},
        "periodStart": timestamp(invoice.period_start),
        "periodEnd": timestamp(invoice.period_end),
        "issuedAt": timestamp(invoice.issued_at),
        "currencyCode": invoice.currency_code,
        "lines": invoice.lines.iter().map(|line| json!({
            "kind": format!("INVOICE_LINE_KIND_{}", line.kind.as_str().to_ascii_uppercase()),
            "description": line.description,
            "quantity": line.quantity.to_string(),
            "amountMicros": line.amount_micros.to_string(),
        })).collect::<Vec<_>>(),
        "callCount": invoice.usage.call_count.to_string(),
        "billedSeconds": invoice.usage.billed_seconds.to_string(),
        "usageMicros": invoice.usage.usage_micros.to_string(),
        "totalMicros": invoice.total_micros.to_string(),
    })
}

/// The body of a webhook event: its delivery id, type, when it happened
/// and what it is about.
pub fn event_body(
    delivery_id: &str,
    event: Event,
    created_at: DateTime<Utc>,
    data: Value,
) -> Vec<u8> {
    json!({
        "id": delivery_id,
        "type": event.as_str(),
        "createdAt": timestamp(created_at),
        "data": data,
    })
    .to_string()
    .into_bytes()
}

/// The data of `invoice.issued`: the invoice, and how to fetch its
/// document (no link: documents are fetched through the API with a
/// credential, never from a URL anyone holding it could open).
pub fn invoice_issued_data(invoice: &Invoice) -> Value {
    json!({
        "invoice": invoice_json(invoice),
        "document": {
            "rpc": "billing.v1.InvoiceService/GetInvoiceDocument",
            "invoiceId": invoice.id.to_string(),
            "formats": ["DOCUMENT_FORMAT_PDF", "DOCUMENT_FORMAT_HTML"],
        },
    })
}

/// An email's subject, plain text and HTML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailText {
    pub subject: String,
    pub text: String,
    pub html: String,
}

fn html_of(paragraphs: &[String], language: Language) -> String {
    let body: String = paragraphs
        .iter()
        .map(|p| format!("<p>{}</p>\n", escape_html(p).replace('\n', "<br>\n")))
        .collect();
    format!(
        "<!DOCTYPE html>\n<html lang=\"{}\">\n<head><meta charset=\"utf-8\"></head>\n\
         <body style=\"font-family: sans-serif\">\n{body}</body>\n</html>\n",
        language.code()
    )
}

/// The email that carries an invoice (its PDF attached).
pub fn invoice_email(source: DocumentSource<'_>) -> EmailText {
    let statement = InvoiceStatement::of(source);
    let customer = source.customer;
    let issuer = if statement.issuer.name.is_empty() {
        String::from("billing")
    } else {
        statement.issuer.name.clone()
    };
    let period = &statement.period;
    let (subject, paragraphs) = match customer.language {
        Language::En => (
            format!("{} {} from {issuer}", statement.title, statement.number),
            vec![
                format!("Hello {},", customer.name),
                format!(
                    "Your {} {} for {period} is attached. Total: {}.",
                    statement.title.to_lowercase(),
                    statement.number,
                    statement.total
                ),
                format!("Kind regards,\n{issuer}"),
            ],
        ),
        Language::De => (
            format!("{} {} von {issuer}", statement.title, statement.number),
            vec![
                format!("Guten Tag {},", customer.name),
                format!(
                    "anbei Ihre {} {} für {period}. Gesamtbetrag: {}.",
                    statement.title, statement.number, statement.total
                ),
                format!("Mit freundlichen Grüßen\n{issuer}"),
            ],
        ),
    };
    EmailText {
        subject,
        text: paragraphs.join("\n\n") + "\n",
        html: html_of(&paragraphs, customer.language),
    }
}

/// The email of a balance alert.
pub fn balance_email(event: Event, customer: &Customer, alert: &BalanceAlert) -> EmailText {
    let language = customer.language;
    let currency_code = alert.currency_code.as_str();
    let amount = |micros| {
        format_amount(
            to_minor_units(micros, currency_code),
            currency_code,
            language,
        )
    };
    let (balance, threshold) = (amount(alert.balance_micros), amount(alert.threshold_micros));
    let recovered = event == Event::BalanceRecovered;
    let (subject, paragraphs) = match (language, recovered) {
        (Language::En, false) => (
            format!("Your balance is low: {balance}"),
            vec![
                format!("Hello {},", customer.name),
                format!(
                    "Your prepaid balance is {balance}, below {threshold}. Top up to keep calling."
                ),
            ],
        ),
        (Language::En, true) => (
            format!("Your balance is back above {threshold}"),
            vec![
                format!("Hello {},", customer.name),
                format!("Your prepaid balance is {balance} again, at or above {threshold}."),
            ],
        ),
        (Language::De, false) => (
            format!("Ihr Guthaben ist niedrig: {balance}"),
            vec![
                format!("Guten Tag {},", customer.name),
                format!(
                    "Ihr Prepaid-Guthaben beträgt {balance} und liegt unter {threshold}. Bitte laden Sie es auf."
                ),
            ],
        ),
        (Language::De, true) => (
            format!("Ihr Guthaben liegt wieder über {threshold}"),
            vec![
                format!("Guten Tag {},", customer.name),
                format!(
                    "Ihr Prepaid-Guthaben beträgt wieder {balance} und liegt damit bei mindestens {threshold}."
                ),
            ],
        ),
    };
    EmailText {
        subject,
        text: paragraphs.join("\n\n") + "\n",
        html: html_of(&paragraphs, language),
    }
}
