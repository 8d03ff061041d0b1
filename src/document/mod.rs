//! Invoice documents: what an issued invoice states to the person who reads
//! it, and its two renderings, HTML (`html`) and PDF (`pdf`).
//!
//! [`InvoiceStatement::of`] decides every word and figure once, in the
//! customer's language: amounts are rounded half up to the currency's minor
//! unit only here, for display, and the displayed lines add up to the
//! displayed total (`money::displayed_parts`). The renderers only lay it out.
//! Pure: no I/O, no clock, no randomness, so the same invoice gives the same
//! bytes.

mod html;
mod pdf;

pub(crate) use html::escape as escape_html;

use chrono::{DateTime, Datelike, Utc};
use chrono_tz::Tz;

use crate::domain::invoice::{Invoice, InvoiceLine, InvoiceLineKind, minutes_text};
use crate::domain::model::{Customer, Language, Operator};
use crate::domain::money::{displayed_parts, format_amount, format_count, to_minor_units};
use crate::domain::period::BillingPeriod;
use crate::domain::plan::PlanKind;

/// The file formats an invoice is rendered in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocumentFormat {
    Pdf,
    Html,
}

impl DocumentFormat {
    /// The media type of the rendered bytes.
    pub fn content_type(self) -> &'static str {
        match self {
            DocumentFormat::Pdf => "application/pdf",
            DocumentFormat::Html => "text/html; charset=utf-8",
        }
    }

    fn extension(self) -> &'static str {
        match self {
            DocumentFormat::Pdf => "pdf",
            DocumentFormat::Html => "html",
        }
    }
}

/// A rendered invoice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedDocument {
    pub file_name: String,
    pub content_type: &'static str,
    pub content: Vec<u8>,
}

/// Everything an invoice document is made from.
#[derive(Debug, Clone, Copy)]
pub struct DocumentSource<'a> {
    pub invoice: &'a Invoice,
    pub customer: &'a Customer,
    /// The customer's plan kind when the invoice was rendered: a prepaid
    /// customer's invoice is a statement of its top-ups and usage debited.
    pub plan_kind: PlanKind,
    /// The issuer: the customer's first linked operator, if any.
    pub issuer: Option<&'a Operator>,
    /// The billing time zone, in which dates are shown.
    pub tz: Tz,
}

/// Renders `source` as `format`.
pub fn render(source: DocumentSource<'_>, format: DocumentFormat) -> RenderedDocument {
    let statement = InvoiceStatement::of(source);
    let content = match format {
        DocumentFormat::Pdf => pdf::render(&statement),
        DocumentFormat::Html => html::render(&statement).into_bytes(),
    };
    RenderedDocument {
        file_name: format!("{}.{}", statement.number, format.extension()),
        content_type: format.content_type(),
        content,
    }
}

/// A name and the lines under it (address, contact).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Party {
    pub heading: String,
    pub name: String,
    pub lines: Vec<String>,
}

/// One line of the table, as shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementRow {
    pub description: String,
    pub quantity: String,
    pub amount: String,
}

/// What an invoice document says, in the customer's language.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvoiceStatement {
    pub language: Language,
    /// "Invoice", or "Prepaid statement" for a prepaid customer.
    pub title: String,
    pub number: String,
    /// Labelled facts: number, customer number, period, issue date.
    pub facts: Vec<(String, String)>,
    /// The invoiced month as written, e.g. `Oktober 2026`.
    pub period: String,
    pub issuer: Party,
    pub customer: Party,
    /// Column headings: description, quantity, amount.
    pub columns: [String; 3],
    pub rows: Vec<StatementRow>,
    pub total_label: String,
    pub total: String,
    /// Sentences after the table: usage debited (prepaid), rounding, contact.
    pub notes: Vec<String>,
    /// "Page" as written in the language, for page footers.
    pub page_word: String,
    /// "of" as in "page 1 of 2".
    pub of_word: String,
}

impl InvoiceStatement {
    /// What `source`'s document says.
    pub fn of(source: DocumentSource<'_>) -> Self {
        let DocumentSource {
            invoice,
            customer,
            plan_kind,
            issuer,
            tz,
        } = source;
        let language = customer.language;
        let words = Words::of(language);
        let currency = invoice.currency_code.as_str();
        let amounts: Vec<i64> = invoice.lines.iter().map(|l| l.amount_micros).collect();
        let (shown, total) = displayed_parts(&amounts, currency);
        let rows = invoice
            .lines
            .iter()
            .zip(shown)
            .map(|(line, minor)| {
                let (description, quantity) = line_text(line, language, tz);
                StatementRow {
                    description,
                    quantity,
                    amount: format_amount(minor, currency, language),
                }
            })
            .collect();
        let prepaid = plan_kind == PlanKind::Prepaid;
        let mut notes = Vec::new();
        if prepaid {
            let usage = invoice.usage;
            notes.push(format!(
                "{}: {}, {} – {}",
                words.usage_debited,
                calls_text(usage.call_count, language),
                minutes_text(usage.billed_seconds),
                format_amount(
                    to_minor_units(usage.usage_micros, currency),
                    currency,
                    language
                )
            ));
        }
        notes.push(words.rounding.to_owned());
        let issuer_party = issuer_party(issuer, &words);
        if let Some(operator) = issuer
            && !operator.issuer.support_email.is_empty()
        {
            notes.push(format!(
                "{} {}",
                words.questions, operator.issuer.support_email
            ));
        }
        let mut customer_lines = Vec::new();
        if !customer.phone_number.is_empty() {
            customer_lines.push(customer.phone_number.clone());
        }
        if let Some(email) = &customer.email {
            customer_lines.push(email.clone());
        }
        let period = month_text(invoice.period, language);
        InvoiceStatement {
            language,
            title: if prepaid {
                words.statement_title
            } else {
                words.invoice_title
            }
            .to_owned(),
            number: invoice.number.clone(),
            facts: vec![
                (words.number.to_owned(), invoice.number.clone()),
                (
                    words.customer_number.to_owned(),
                    invoice.customer_id.to_string(),
                ),
                (
                    words.period.to_owned(),
                    month_text(invoice.period, language),
                ),
                (
                    words.issued.to_owned(),
                    date_text(invoice.issued_at, tz, language),
                ),
            ],
            period,
            issuer: issuer_party,
            customer: Party {
                heading: words.bill_to.to_owned(),
                name: customer.name.clone(),
                lines: customer_lines,
            },
            columns: [
                words.description.to_owned(),
                words.quantity.to_owned(),
                words.amount.to_owned(),
            ],
            rows,
            total_label: words.total.to_owned(),
            total: format_amount(total, currency, language),
            notes,
            page_word: words.page.to_owned(),
            of_word: words.of.to_owned(),
        }
    }
}

fn issuer_party(issuer: Option<&Operator>, words: &Words) -> Party {
    let Some(operator) = issuer else {
        return Party {
            heading: words.issued_by.to_owned(),
            name: String::new(),
            lines: Vec::new(),
        };
    };
    let details = &operator.issuer;
    let name = if details.legal_name.is_empty() {
        operator.name.clone()
    } else {
        details.legal_name.clone()
    };
    let mut lines: Vec<String> = details
        .address
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    if !details.tax_id.is_empty() {
        lines.push(format!("{} {}", words.tax_id, details.tax_id));
    }
    if !details.support_email.is_empty() {
        lines.push(details.support_email.clone());
    }
    Party {
        heading: words.issued_by.to_owned(),
        name,
        lines,
    }
}

/// A line's description and quantity in `language`. Lines stored before
/// lines carried their subject fall back to their English description.
fn line_text(line: &InvoiceLine, language: Language, tz: Tz) -> (String, String) {
    let de = language == Language::De;
    let minutes = minutes_text(line.quantity);
    let calls_and_minutes = if line.call_count > 0 {
        format!("{}, {minutes}", calls_text(line.call_count, language))
    } else {
        minutes.clone()
    };
    let legacy = line.subject.is_empty() && !de;
    match line.kind {
        InvoiceLineKind::MonthlyFee => {
            let label = if de { "Grundgebühr" } else { "Monthly fee" };
            let description = if line.subject.is_empty() {
                label.to_owned()
            } else {
                format!("{label} – {}", line.subject)
            };
            (
                description,
                if de { "1 Monat" } else { "1 month" }.to_owned(),
            )
        }
        InvoiceLineKind::Usage => {
            let description = match (line.subject.is_empty(), de) {
                (true, _) if legacy => line.description.clone(),
                (true, true) => "Verbindungen".to_owned(),
                (true, false) => "Calls".to_owned(),
                (false, true) => format!("Verbindungen, Tarif {}", line.subject),
                (false, false) => format!("Calls, tariff {}", line.subject),
            };
            (description, calls_and_minutes)
        }
        InvoiceLineKind::ConnectFee => (
            if de {
                "Verbindungsentgelte"
            } else {
                "Connection fees"
            }
            .to_owned(),
            calls_text(line.quantity, language),
        ),
        InvoiceLineKind::IncludedMinutes => (
            if de {
                "Inklusivminuten"
            } else {
                "Included minutes"
            }
            .to_owned(),
            minutes,
        ),
        InvoiceLineKind::LateUsage => {
            let month = line.subject.split_once('-').and_then(|(y, m)| {
                BillingPeriod::new("subject", y.parse().ok()?, m.parse().ok()?).ok()
            });
            let description = match month {
                Some(month) if de => format!("Nachberechnung {}", month_text(month, language)),
                Some(month) => format!("Late usage from {}", month_text(month, language)),
                None if de => "Nachberechnung".to_owned(),
                None => line.description.clone(),
            };
            (description, calls_and_minutes)
        }
        InvoiceLineKind::TopUp => {
            let at = DateTime::parse_from_rfc3339(&line.subject).ok();
            let description = match at {
                Some(at) => {
                    let at = at.with_timezone(&tz);
                    let when = format!(
                        "{}, {}",
                        date_text(at.with_timezone(&Utc), tz, language),
                        at.format("%H:%M")
                    );
                    if de {
                        format!("Aufladung vom {when}")
                    } else {
                        format!("Top-up on {when}")
                    }
                }
                None if de => "Aufladung".to_owned(),
                None => line.description.clone(),
            };
            (description, "1".to_owned())
        }
    }
}

fn calls_text(count: i64, language: Language) -> String {
    let word = match (language, count) {
        (Language::En, 1) => "call",
        (Language::En, _) => "calls",
        (Language::De, 1) => "Anruf",
        (Language::De, _) => "Anrufe",
    };
    format!("{} {word}", format_count(count, language))
}

const MONTHS_EN: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const MONTHS_DE: [&str; 12] = [
    "Januar",
    "Februar",
    "März",
    "April",
    "Mai",
    "Juni",
    "Juli",
    "August",
    "September",
    "Oktober",
    "November",
    "Dezember",
];

fn month_name(month: u32, language: Language) -> &'static str {
    let index = month.clamp(1, 12) as usize - 1;
    match language {
        Language::En => MONTHS_EN[index],
        Language::De => MONTHS_DE[index],
    }
}

fn month_text(period: BillingPeriod, language: Language) -> String {
    format!("{} {}", month_name(period.month(), language), period.year())
}

/// A date in the billing time zone: `2 December 2026`, `2. Dezember 2026`.
fn date_text(instant: DateTime<Utc>, tz: Tz, language: Language) -> String {
    let local = instant.with_timezone(&tz);
    let month = month_name(local.month(), language);
    match language {
        Language::En => format!("{} {month} {}", local.day(), local.year()),
        Language::De => format!("{}. {month} {}", local.day(), local.year()),
    }
}

/// The fixed words of a document in one language.
struct Words {
    invoice_title: &'static str,
    statement_title: &'static str,
    number: &'static str,
    customer_number: &'static str,
    period: &'static str,
    issued: &'static str,
    issued_by: &'static str,
    bill_to: &'static str,
    tax_id: &'static str,
    description: &'static str,
    quantity: &'static str,
    amount: &'static str,
    total: &'static str,
    usage_debited: &'static str,
    rounding: &'static str,
    questions: &'static str,
    page: &'static str,
    of: &'static str,
}

impl Words {
    fn of(language: Language) -> Self {
        match language {
            Language::En => Words {
                invoice_title: "Invoice",
                statement_title: "Prepaid statement",
                number: "Invoice number",
                customer_number: "Customer number",
                period: "Period",
                issued: "Issue date",
                issued_by: "From",
                bill_to: "Bill to",
                tax_id: "Tax ID",
                description: "Description",
                quantity: "Quantity",
                amount: "Amount",
                total: "Total",
                usage_debited: "Usage debited from the prepaid balance",
                rounding: "Amounts are rounded to the currency's smallest unit for display; \
                           the lines add up to the total as shown.",
                questions: "Questions about this invoice:",
                page: "Page",
                of: "of",
            },
            Language::De => Words {
                invoice_title: "Rechnung",
                statement_title: "Prepaid-Abrechnung",
                number: "Rechnungsnummer",
                customer_number: "Kundennummer",
                period: "Zeitraum",
                issued: "Rechnungsdatum",
                issued_by: "Von",
                bill_to: "Rechnungsempfänger",
                tax_id: "USt-IdNr.",
                description: "Beschreibung",
                quantity: "Menge",
                amount: "Betrag",
                total: "Gesamtbetrag",
                usage_debited: "Vom Prepaid-Guthaben abgebuchte Nutzung",
                rounding: "Beträge sind für die Anzeige auf die kleinste Währungseinheit \
                           gerundet; die Positionen ergeben die angezeigte Summe.",
                questions: "Fragen zu dieser Rechnung:",
                page: "Seite",
                of: "von",
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::domain::invoice::UsageTotals;
    use crate::domain::model::Issuer;

    fn invoice(lines: Vec<InvoiceLine>) -> Invoice {
        let period = BillingPeriod::new("period", 2026, 11).unwrap();
        let tz = chrono_tz::Europe::Berlin;
        Invoice {
            id: 42,
            number: "INV-2026-11-000042".into(),
            customer_id: 7,
            period,
            period_start: period.start(tz),
            period_end: period.end(tz),
            issued_at: Utc.with_ymd_and_hms(2026, 11, 30, 23, 30, 0).unwrap(),
            currency_code: "USD".into(),
            total_micros: lines.iter().map(|l| l.amount_micros).sum(),
            lines,
            usage: UsageTotals {
                call_count: 3,
                billed_seconds: 185,
                usage_micros: 1_234_567,
            },
            monthly_fee_micros: 0,
        }
    }

    fn line(kind: InvoiceLineKind, amount_micros: i64, subject: &str) -> InvoiceLine {
        InvoiceLine {
            kind,
            description: format!("{} line", kind.as_str()),
            quantity: 125,
            amount_micros,
            call_count: 2,
            subject: subject.into(),
        }
    }

    fn customer(language: Language) -> Customer {
        Customer {
            id: 7,
            name: "Jürgen Müller & Söhne".into(),
            phone_number: "+49301234567".into(),
            plan_id: 1,
            operator_ids: vec![1],
            balance_micros: 0,
            created_at: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
            email: Some("juergen@example.com".into()),
            language,
            low_balance_threshold_micros: None,
            numbers: Vec::new(),
        }
    }

    fn operator() -> Operator {
        Operator {
            id: 1,
            name: "acme".into(),
            issuer: Issuer {
                legal_name: "ACME Telecom GmbH".into(),
                address: "Hauptstraße 1\n10115 Berlin".into(),
                tax_id: "DE123456789".into(),
                support_email: "billing@acme.example".into(),
            },
        }
    }

    fn statement(
        lines: Vec<InvoiceLine>,
        language: Language,
        plan_kind: PlanKind,
    ) -> InvoiceStatement {
        let invoice = invoice(lines);
        let customer = customer(language);
        let operator = operator();
        InvoiceStatement::of(DocumentSource {
            invoice: &invoice,
            customer: &customer,
            plan_kind,
            issuer: Some(&operator),
            tz: chrono_tz::Europe::Berlin,
        })
    }

    #[test]
    fn amounts_shown_add_up_to_the_total_shown_in_each_language() {
        let lines = vec![
            line(InvoiceLineKind::MonthlyFee, 1_004_000, "Basic"),
            line(InvoiceLineKind::Usage, 1_004_000, ""),
            line(InvoiceLineKind::LateUsage, 1_004_000, "2026-10"),
        ];
        let en = statement(lines.clone(), Language::En, PlanKind::Postpaid);
        assert_eq!(
            en.rows
                .iter()
                .map(|r| r.amount.as_str())
                .collect::<Vec<_>>(),
            ["USD 1.01", "USD 1.00", "USD 1.00"]
        );
        assert_eq!(en.total, "USD 3.01");
        assert_eq!(en.rows[2].description, "Late usage from October 2026");
        assert_eq!(en.rows[1].quantity, "2 calls, 2:05 min");
        let de = statement(lines, Language::De, PlanKind::Postpaid);
        assert_eq!(de.total, "3,01 USD");
        assert_eq!(de.rows[2].description, "Nachberechnung Oktober 2026");
        assert_eq!(de.rows[0].description, "Grundgebühr – Basic");
        assert!(
            de.facts
                .contains(&("Rechnungsdatum".into(), "1. Dezember 2026".into()))
        );
    }

    #[test]
    fn a_prepaid_statement_states_its_top_ups_and_the_usage_debited() {
        let lines = vec![line(
            InvoiceLineKind::TopUp,
            10_000_000,
            "2026-11-03T09:15:00Z",
        )];
        let en = statement(lines, Language::En, PlanKind::Prepaid);
        assert_eq!(en.title, "Prepaid statement");
        assert_eq!(en.rows[0].description, "Top-up on 3 November 2026, 10:15");
        assert!(
            en.notes[0].contains("3 calls, 3:05 min – USD 1.23"),
            "{:?}",
            en.notes
        );
    }

    #[test]
    fn the_same_invoice_renders_the_same_bytes() {
        let lines: Vec<InvoiceLine> = (0..300)
            .map(|i| line(InvoiceLineKind::Usage, 1_000 * i, &format!("tariff-{i}")))
            .collect();
        let invoice = invoice(lines);
        let customer = customer(Language::En);
        let operator = operator();
        let source = DocumentSource {
            invoice: &invoice,
            customer: &customer,
            plan_kind: PlanKind::Postpaid,
            issuer: Some(&operator),
            tz: chrono_tz::Europe::Berlin,
        };
        for format in [DocumentFormat::Pdf, DocumentFormat::Html] {
            let first = render(source, format);
            assert_eq!(first, render(source, format));
            assert_eq!(
                first.file_name,
                format!("INV-2026-11-000042.{}", format.extension())
            );
        }
        assert!(
            render(source, DocumentFormat::Pdf)
                .content
                .starts_with(b"%PDF-")
        );
    }
}
