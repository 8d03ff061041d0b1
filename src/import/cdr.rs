//! Call detail records as switches write them, read line by line into
//! `AddCallRequest`s. Each record names its calling number and no customer:
//! the service charges whoever held that number when the call started.
//!
//! - `billing-csv`: the service's own columns, named by a header line:
//!   `call_id` (required: it makes a rerun store nothing twice),
//!   `customer_id` (optional), `caller_number`, `callee_number`,
//!   `started_at` (RFC 3339) and `duration_seconds`.
//! - `asterisk`: `cdr_csv`'s `Master.csv`: `accountcode, src, dst,
//!   dcontext, clid, channel, dstchannel, lastapp, lastdata, start, answer,
//!   end, duration, billsec, disposition, amaflags, uniqueid[, userfield…]`
//!   (`loguniqueid=yes`). Only `ANSWERED` calls with a positive `billsec`
//!   are billed: from `answer`, for `billsec` seconds, `uniqueid` as the
//!   `call_id`.
//! - `freeswitch`: `mod_cdr_csv`'s default template: `caller_id_name,
//!   caller_id_number, destination_number, context, start_stamp,
//!   answer_stamp, end_stamp, duration, billsec, hangup_cause, uuid,
//!   bleg_uuid, accountcode, read_codec, write_codec`. Calls with an
//!   `answer_stamp` and a positive `billsec` are billed from the answer,
//!   `uuid` as the `call_id`.
//!
//! Asterisk and FreeSWITCH write local times without a zone: they are read
//! in the time zone given (`--timezone`, UTC by default).

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;

use crate::grpc::pb;

/// The CDR formats `import-cdr` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CdrFormat {
    BillingCsv,
    Asterisk,
    Freeswitch,
}

/// What one line of a CDR file is.
#[derive(Debug, Clone, PartialEq)]
pub enum Row {
    /// A call to bill.
    Call(pb::AddCallRequest),
    /// A line that bills nothing: a header, a blank line, or a call that
    /// was not answered.
    Skipped,
}

/// Reads the lines of one file in one format.
#[derive(Debug)]
pub struct CdrReader {
    format: CdrFormat,
    tz: Tz,
    /// `billing-csv`: the position of each column, from the header.
    columns: Option<Columns>,
}

#[derive(Debug, Clone, Copy)]
struct Columns {
    call_id: usize,
    customer_id: Option<usize>,
    caller_number: usize,
    callee_number: Option<usize>,
    started_at: usize,
    duration_seconds: usize,
}

impl CdrReader {
    /// A reader for a new file: a `billing-csv` file starts with its header.
    pub fn new(format: CdrFormat, tz: Tz) -> Self {
        CdrReader {
            format,
            tz,
            columns: None,
        }
    }

    /// The record of one line, or why it cannot be billed.
    pub fn read(&mut self, line: &str) -> Result<Row, String> {
        let line = line.trim_end_matches(['\r', '\n']);
        if line.trim().is_empty() {
            return Ok(Row::Skipped);
        }
        let fields = split(line)?;
        match self.format {
            CdrFormat::BillingCsv => match self.columns {
                None => {
                    self.columns = Some(header(&fields)?);
                    Ok(Row::Skipped)
                }
                Some(columns) => billing_csv(&columns, &fields),
            },
            CdrFormat::Asterisk => self.asterisk(&fields),
            CdrFormat::Freeswitch => self.freeswitch(&fields),
        }
    }

    fn asterisk(&self, fields: &[String]) -> Result<Row, String> {
        if fields.len() < 17 {
            return Err(format!(
                "{} columns; Master.csv has at least 17 (accountcode … amaflags, uniqueid: \
                 set loguniqueid=yes in cdr.conf)",
                fields.len()
            ));
        }
        let disposition = fields[14].as_str();
        let billsec = seconds("billsec", &fields[13])?;
        if disposition != "ANSWERED" || billsec == 0 {
            return Ok(Row::Skipped);
        }
        let answered = self.local_time("answer", &fields[10])?;
        Ok(Row::Call(record(
            &fields[16],
            "uniqueid",
            &fields[1],
            &fields[2],
            answered,
            billsec,
        )?))
    }

    fn freeswitch(&self, fields: &[String]) -> Result<Row, String> {
        if fields.len() < 11 {
            return Err(format!(
                "{} columns; the default template has 15 (caller_id_name … uuid …)",
                fields.len()
            ));
        }
        let billsec = seconds("billsec", &fields[8])?;
        if fields[5].is_empty() || billsec == 0 {
            return Ok(Row::Skipped);
        }
        let answered = self.local_time("answer_stamp", &fields[5])?;
        Ok(Row::Call(record(
            &fields[10],
            "uuid",
            &fields[1],
            &fields[2],
            answered,
            billsec,
        )?))
    }

    fn local_time(&self, column: &str, text: &str) -> Result<DateTime<Utc>, String> {
        let naive = NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S")
            .map_err(|_| format!("{column}: {text:?} is not a time like 2026-06-01 10:00:00"))?;
        // In the hour a clock is set back, the earlier of the two instants.
        self.tz
            .from_local_datetime(&naive)
            .earliest()
            .map(|at| at.with_timezone(&Utc))
            .ok_or_else(|| format!("{column}: {text} does not exist in {}", self.tz))
    }
}

/// A call record charged by its calling number.
fn record(
    call_id: &str,
    call_id_column: &str,
    caller: &str,
    callee: &str,
    started_at: DateTime<Utc>,
    seconds: i64,
) -> Result<pb::AddCallRequest, String> {
    if call_id.is_empty() {
        return Err(format!(
            "{call_id_column} is empty: without it a rerun could bill the call twice"
        ));
    }
    Ok(pb::AddCallRequest {
        customer_id: 0,
        duration: Some(pb::add_call_request::Duration::DurationSeconds(seconds)),
        started_at: Some(crate::grpc::convert::timestamp(started_at)),
        call_id: call_id.to_owned(),
        caller_number: caller.to_owned(),
        callee_number: callee.to_owned(),
    })
}

fn seconds(column: &str, text: &str) -> Result<i64, String> {
    text.trim()
        .parse::<i64>()
        .ok()
        .filter(|s| *s >= 0)
        .ok_or_else(|| format!("{column}: {text:?} is not a number of seconds"))
}

fn header(fields: &[String]) -> Result<Columns, String> {
    let find = |name: &str| fields.iter().position(|f| f.trim() == name);
    let need = |name: &str| {
        find(name).ok_or_else(|| {
            format!(
                "the header has no {name} column (billing-csv needs call_id, caller_number, \
                 started_at and duration_seconds; customer_id and callee_number are optional)"
            )
        })
    };
    Ok(Columns {
        call_id: need("call_id")?,
        customer_id: find("customer_id"),
        caller_number: need("caller_number")?,
        callee_number: find("callee_number"),
        started_at: need("started_at")?,
        duration_seconds: need("duration_seconds")?,
    })
}

fn billing_csv(columns: &Columns, fields: &[String]) -> Result<Row, String> {
    let field = |at: usize| fields.get(at).map_or("", String::as_str);
    let started_at = DateTime::parse_from_rfc3339(field(columns.started_at))
        .map_err(|_| {
            format!(
                "started_at: {:?} is not an RFC 3339 time",
                field(columns.started_at)
            )
        })?
        .with_timezone(&Utc);
    let seconds = seconds("duration_seconds", field(columns.duration_seconds))?;
    let mut call = record(
        field(columns.call_id),
        "call_id",
        field(columns.caller_number),
        columns.callee_number.map_or("", field),
        started_at,
        seconds,
    )?;
    if let Some(at) = columns.customer_id {
        let text = field(at).trim();
        if !text.is_empty() {
            call.customer_id = text
                .parse()
                .map_err(|_| format!("customer_id: {text:?} is not a customer id"))?;
        }
    }
    Ok(Row::Call(call))
}

/// The fields of one CSV line: separated by commas, each optionally in
/// double quotes (a quote within doubled).
fn split(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::with_capacity(18);
    let mut chars = line.chars().peekable();
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                    None => return Err("a quoted field is not closed".into()),
                }
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => fields.push(field),
                Some(c) => return Err(format!("{c:?} after a quoted field")),
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field);
                        return Ok(fields);
                    }
                    Some(',') => break,
                    Some(c) => field.push(c),
                }
            }
            fields.push(field);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(row: Result<Row, String>) -> pb::AddCallRequest {
        match row {
            Ok(Row::Call(call)) => call,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn csv_fields_may_be_quoted_with_commas_and_doubled_quotes_inside() {
        assert_eq!(
            split(r#"a,"b,c","d""e",,"""#).unwrap(),
            ["a", "b,c", "d\"e", "", ""]
        );
        assert!(split(r#""open"#).is_err());
        assert!(split(r#""a"b"#).is_err());
    }

    #[test]
    fn an_answered_asterisk_call_is_billed_from_its_answer_for_its_billsec() {
        let mut reader = CdrReader::new(CdrFormat::Asterisk, chrono_tz::Europe::Berlin);
        let line = r#""acct","+14155550100","+12025550123","default","""Alice"" <+14155550100>","SIP/a-1","SIP/b-2","Dial","SIP/b","2026-06-01 10:00:00","2026-06-01 10:00:05","2026-06-01 10:01:35",95,90,"ANSWERED","DOCUMENTATION","1748764800.42","""#;
        let call = call(reader.read(line));
        assert_eq!(call.call_id, "1748764800.42");
        assert_eq!(call.caller_number, "+14155550100");
        assert_eq!(call.callee_number, "+12025550123");
        assert_eq!(call.customer_id, 0);
        assert_eq!(
            call.duration,
            Some(pb::add_call_request::Duration::DurationSeconds(90))
        );
        // 10:00:05 in Berlin (summer time) is 08:00:05 UTC.
        assert_eq!(call.started_at.unwrap().seconds, 1_780_300_805);
        let unanswered = line.replace("\"ANSWERED\"", "\"NO ANSWER\"");
        assert_eq!(reader.read(&unanswered), Ok(Row::Skipped));
        assert!(
            reader
                .read(r#""acct","+1","+2""#)
                .unwrap_err()
                .contains("columns")
        );
        let bad_time = line.replace("2026-06-01 10:00:05", "yesterday");
        assert!(reader.read(&bad_time).unwrap_err().starts_with("answer"));
    }

    #[test]
    fn a_freeswitch_call_with_an_answer_is_billed_and_one_without_skipped() {
        let mut reader = CdrReader::new(CdrFormat::Freeswitch, chrono_tz::UTC);
        let line = r#""Alice","+14155550100","+12025550123","default","2026-06-01 10:00:00","2026-06-01 10:00:03","2026-06-01 10:02:03","123","120","NORMAL_CLEARING","a1b2c3d4-0000-4000-8000-000000000001","","acct","PCMU","PCMU""#;
        let call = call(reader.read(line));
        assert_eq!(call.call_id, "a1b2c3d4-0000-4000-8000-000000000001");
        assert_eq!(
            call.duration,
            Some(pb::add_call_request::Duration::DurationSeconds(120))
        );
        let missed = line
            .replace("\"2026-06-01 10:00:03\"", "\"\"")
            .replace("\"120\"", "\"0\"");
        assert_eq!(reader.read(&missed), Ok(Row::Skipped));
    }

    #[test]
    fn billing_csv_columns_come_from_its_header() {
        let mut reader = CdrReader::new(CdrFormat::BillingCsv, chrono_tz::UTC);
        assert_eq!(
            reader.read("duration_seconds,caller_number,call_id,started_at,customer_id"),
            Ok(Row::Skipped)
        );
        let call = call(reader.read("60,+14155550100,c-1,2026-06-01T10:00:00Z,7"));
        assert_eq!((call.customer_id, call.call_id.as_str()), (7, "c-1"));
        assert!(
            reader
                .read("60,+14155550100,,2026-06-01T10:00:00Z,")
                .unwrap_err()
                .contains("call_id")
        );
        assert!(
            reader
                .read("x,+1,c-2,2026-06-01T10:00:00Z,")
                .unwrap_err()
                .starts_with("duration_seconds")
        );
        let mut headless = CdrReader::new(CdrFormat::BillingCsv, chrono_tz::UTC);
        assert!(headless.read("60,+1,c-1").unwrap_err().contains("header"));
    }
}
