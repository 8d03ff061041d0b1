//! Input rules shared by every entry point. Each check names the proto field
//! it guards, so a client learns exactly what to fix.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use crate::error::{AppError, AppResult};

/// The longest call accepted: 24 hours.
pub const MAX_CALL_SECONDS: i64 = 24 * 60 * 60;
/// How far in the future a call may claim to have started (clock skew).
pub const MAX_FUTURE_SKEW: TimeDelta = TimeDelta::minutes(5);
/// How far ahead AuthorizeCall may be asked about a call.
pub const MAX_AUTHORIZE_AHEAD: TimeDelta = TimeDelta::days(1);
/// The default billing increment in seconds.
pub const DEFAULT_INCREMENT_SECONDS: i32 = 60;
/// The highest per-minute rate: 1,000 currency units a minute. With calls of
/// at most 24 hours, the dearest call costs 1.44 * 10^12 micros.
pub const MAX_PER_MINUTE_MICROS: i64 = 1_000_000_000;
/// The highest monthly fee: 10^6 currency units.
pub const MAX_MONTHLY_FEE_MICROS: i64 = 1_000_000_000_000;
/// The largest single top-up: 10^6 currency units.
pub const MAX_TOP_UP_MICROS: i64 = 1_000_000_000_000;
/// The highest low-balance threshold: 10^9 currency units.
pub const MAX_LOW_BALANCE_THRESHOLD_MICROS: i64 = 1_000_000_000_000_000;
/// How far back a call may have started, by default (`--max-call-age-days`).
pub const DEFAULT_MAX_CALL_AGE_DAYS: u32 = 365;
/// The most characters of an offending value an error message repeats.
pub const MAX_ECHOED_CHARS: usize = 64;
/// The most operators one request may link a customer to.
pub const MAX_OPERATORS_PER_CUSTOMER: usize = 100;
/// The longest idempotency key or name accepted.
pub const MAX_KEY_LEN: usize = 128;
const MAX_NAME_LEN: usize = 200;

/// A required, trimmed, printable name of at most 200 characters.
pub fn name(field: &str, value: &str) -> AppResult<String> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Err(AppError::invalid(field, "is required"));
    }
    if trimmed.chars().count() > MAX_NAME_LEN {
        return Err(AppError::invalid(field, "is longer than 200 characters"));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(AppError::invalid(field, "contains control characters"));
    }
    Ok(trimmed.to_owned())
}

/// Characters of an email address, at most (RFC 5321's path limit).
const MAX_EMAIL_LEN: usize = 254;
/// Characters of an operator's address, at most (all lines).
const MAX_ADDRESS_LEN: usize = 1000;
/// Lines of an operator's address, at most.
const MAX_ADDRESS_LINES: usize = 8;
/// Characters of a tax id, at most.
const MAX_TAX_ID_LEN: usize = 64;

/// An email address (empty: none): one `@` between a non-empty local part
/// and a domain with a dot, no spaces or control characters, at most 254
/// characters. Deliverability is the mail server's to judge.
pub fn email(field: &str, value: &str) -> AppResult<Option<String>> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    if value.chars().count() > MAX_EMAIL_LEN {
        return Err(AppError::invalid(field, "is longer than 254 characters"));
    }
    let well_formed = value.split_once('@').is_some_and(|(local, domain)| {
        !local.is_empty()
            && !domain.contains('@')
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
    }) && !value.chars().any(|c| c.is_whitespace() || c.is_control());
    if !well_formed {
        return Err(AppError::invalid(
            field,
            format!("{} is not an email address", shown(value)),
        ));
    }
    Ok(Some(value.to_owned()))
}

/// A language code: `en` or `de` (empty: `en`).
pub fn language(field: &str, value: &str) -> AppResult<crate::domain::model::Language> {
    if value.is_empty() {
        return Ok(crate::domain::model::Language::default());
    }
    crate::domain::model::Language::parse(value).ok_or_else(|| {
        AppError::invalid(field, format!("must be `en` or `de`, got {}", shown(value)))
    })
}

/// A low-balance threshold (`None`: no alerts): 0 to
/// [`MAX_LOW_BALANCE_THRESHOLD_MICROS`].
pub fn low_balance_threshold(field: &str, value: Option<i64>) -> AppResult<Option<i64>> {
    match value {
        Some(micros) if !(0..=MAX_LOW_BALANCE_THRESHOLD_MICROS).contains(&micros) => {
            Err(AppError::invalid(
                field,
                format!("must be 0 to {MAX_LOW_BALANCE_THRESHOLD_MICROS} micros, got {micros}"),
            ))
        }
        value => Ok(value),
    }
}

/// Optional one-line text (empty allowed) of at most `max` characters,
/// trimmed, without control characters.
pub fn optional_line(field: &str, value: &str, max: usize) -> AppResult<String> {
    let value = value.trim();
    if value.chars().count() > max {
        return Err(AppError::invalid(
            field,
            format!("is longer than {max} characters"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(AppError::invalid(field, "contains control characters"));
    }
    Ok(value.to_owned())
}

/// An operator's legal name (empty allowed), as [`optional_line`] with 200.
pub fn legal_name(field: &str, value: &str) -> AppResult<String> {
    optional_line(field, value, MAX_NAME_LEN)
}

/// A tax id (empty allowed), as [`optional_line`] with 64.
pub fn tax_id(field: &str, value: &str) -> AppResult<String> {
    optional_line(field, value, MAX_TAX_ID_LEN)
}

/// A postal address (empty allowed): at most 8 lines and 1,000 characters,
/// each line trimmed and without control characters; `\r\n` counts as a
/// line break.
pub fn address(field: &str, value: &str) -> AppResult<String> {
    if value.chars().count() > MAX_ADDRESS_LEN {
        return Err(AppError::invalid(field, "is longer than 1000 characters"));
    }
    let lines: Vec<&str> = value.trim().lines().map(str::trim).collect();
    if lines.len() > MAX_ADDRESS_LINES {
        return Err(AppError::invalid(field, "has more than 8 lines"));
    }
    if lines.iter().any(|line| line.chars().any(char::is_control)) {
        return Err(AppError::invalid(field, "contains control characters"));
    }
    Ok(lines.join("\n"))
}

/// An ISO 4217 code: three ASCII letters, upper-cased; empty means `USD`.
pub fn currency_code(value: &str) -> AppResult<String> {
    if value.is_empty() {
        return Ok("USD".to_owned());
    }
    if value.len() == 3 && value.bytes().all(|b| b.is_ascii_alphabetic()) {
        Ok(value.to_ascii_uppercase())
    } else {
        Err(AppError::invalid(
            "currency_code",
            format!(
                "{} is not an ISO 4217 code (three letters, e.g. USD)",
                shown(value)
            ),
        ))
    }
}

/// A money amount from 0 to `max`.
pub fn non_negative_micros(field: &str, value: i64, max: i64) -> AppResult<i64> {
    if !(0..=max).contains(&value) {
        return Err(AppError::invalid(
            field,
            format!("must be between 0 and {max} micros, got {value}"),
        ));
    }
    Ok(value)
}

/// A strictly positive money amount up to `max`.
pub fn positive_micros(field: &str, value: i64, max: i64) -> AppResult<i64> {
    if !(1..=max).contains(&value) {
        return Err(AppError::invalid(
            field,
            format!("must be more than 0 and at most {max} micros, got {value}"),
        ));
    }
    Ok(value)
}

/// An offending value as an error message may repeat it: at most
/// [`MAX_ECHOED_CHARS`] characters, escaped and quoted, with the length of
/// the whole when it was cut. Messages never echo unbounded input.
pub fn shown(value: &str) -> String {
    let mut chars = value.chars();
    let head: String = chars.by_ref().take(MAX_ECHOED_CHARS).collect();
    let escaped: String = head.chars().flat_map(char::escape_debug).collect();
    if chars.next().is_none() {
        format!("\"{escaped}\"")
    } else {
        format!("\"{escaped}\"... ({} characters)", value.chars().count())
    }
}

/// A billing increment of 1..=3600 seconds; 0 means the default, 60.
pub fn billing_increment_seconds(value: i32) -> AppResult<i32> {
    match value {
        0 => Ok(DEFAULT_INCREMENT_SECONDS),
        1..=3600 => Ok(value),
        _ => Err(AppError::invalid(
            "billing_increment_seconds",
            format!("must be between 1 and 3600 seconds, got {value}"),
        )),
    }
}

/// A resource id: more than zero.
pub fn id(field: &str, value: i64) -> AppResult<i64> {
    if value <= 0 {
        return Err(AppError::invalid(
            field,
            format!("must be a positive id, got {value}"),
        ));
    }
    Ok(value)
}

/// An optional filter id: 0 means "no filter", otherwise a positive id.
pub fn optional_id(field: &str, value: i64) -> AppResult<Option<i64>> {
    match value {
        0 => Ok(None),
        _ => id(field, value).map(Some),
    }
}

/// A subscriber number in E.164 form: `+`, then 1 to 15 digits, the first
/// not 0.
pub fn phone_number(field: &str, value: &str) -> AppResult<String> {
    let digits = value.strip_prefix('+').unwrap_or("");
    let ok = (1..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0');
    if !ok {
        return Err(AppError::invalid(
            field,
            format!(
                "{} is not an E.164 number (+ and up to 15 digits, e.g. +14155550100)",
                shown(value)
            ),
        ));
    }
    Ok(value.to_owned())
}

/// An optional number on a call record: empty, an E.164 number, or a short
/// code of 1 to 15 digits (e.g. `112`).
pub fn dialled_number(field: &str, value: &str) -> AppResult<String> {
    if value.is_empty() || (value.len() <= 15 && value.bytes().all(|b| b.is_ascii_digit())) {
        return Ok(value.to_owned());
    }
    phone_number(field, value)
}

/// An optional idempotency key: empty means none; at most 128 printable
/// ASCII characters.
pub fn optional_key(field: &str, value: &str) -> AppResult<Option<String>> {
    if value.is_empty() {
        return Ok(None);
    }
    required_key(field, value).map(Some)
}

/// A required idempotency key of at most 128 printable ASCII characters
/// (space to `~`): a key is compared byte for byte, and one that looks the
/// same in another encoding, or holds invisible characters, would be
/// another key to the database but not to the person reading it.
pub fn required_key(field: &str, value: &str) -> AppResult<String> {
    if value.is_empty() {
        return Err(AppError::invalid(field, "is required"));
    }
    if value.chars().count() > MAX_KEY_LEN {
        return Err(AppError::invalid(field, "is longer than 128 characters"));
    }
    if let Some((position, c)) = value
        .chars()
        .enumerate()
        .find(|(_, c)| !(' '..='~').contains(c))
    {
        return Err(AppError::invalid(
            field,
            format!(
                "must be printable ASCII (space to ~), but character {} is {}",
                position + 1,
                shown(&c.to_string())
            ),
        ));
    }
    Ok(value.to_owned())
}

/// A call duration in seconds: more than 0, at most 24 hours.
pub fn duration_seconds(field: &str, seconds: i64) -> AppResult<i64> {
    if seconds <= 0 || seconds > MAX_CALL_SECONDS {
        return Err(AppError::invalid(
            field,
            format!("must be more than 0 and at most 24 hours, got {seconds} seconds"),
        ));
    }
    Ok(seconds)
}

/// A call duration given in whole minutes, as seconds.
pub fn duration_minutes(minutes: i64) -> AppResult<i64> {
    if minutes <= 0 || minutes > MAX_CALL_SECONDS / 60 {
        return Err(AppError::invalid(
            "minutes",
            format!("must be more than 0 and at most 1440 (24 hours), got {minutes}"),
        ));
    }
    Ok(minutes * 60)
}

/// When a call of `duration_seconds` started: `started_at` as given (at
/// most five minutes ahead of `now` and at most `max_age` before it), or
/// `now` minus the duration. The age bound
/// stops a switch replaying ancient records from putting one late-usage line
/// per month on the next invoice.
pub fn call_start(
    started_at: Option<DateTime<Utc>>,
    duration_seconds: i64,
    now: DateTime<Utc>,
    max_age: TimeDelta,
) -> AppResult<DateTime<Utc>> {
    match started_at {
        Some(at) => start_within(at, now, MAX_FUTURE_SKEW, max_age),
        None => Ok(now - TimeDelta::seconds(duration_seconds)),
    }
}

/// `at`, the `started_at` of a call, if it lies no more than `ahead` after
/// `now` and no more than `max_age` before it.
pub fn start_within(
    at: DateTime<Utc>,
    now: DateTime<Utc>,
    ahead: TimeDelta,
    max_age: TimeDelta,
) -> AppResult<DateTime<Utc>> {
    if at > now + ahead {
        let ahead = if ahead.num_minutes() % 60 == 0 {
            format!("{} hours", ahead.num_hours())
        } else {
            format!("{} minutes", ahead.num_minutes())
        };
        return Err(AppError::invalid(
            "started_at",
            format!("{} is more than {ahead} in the future", at.to_rfc3339()),
        ));
    }
    if at < now - max_age {
        return Err(AppError::invalid(
            "started_at",
            format!(
                "{} is more than {} days ago (the oldest call accepted)",
                at.to_rfc3339(),
                max_age.num_days()
            ),
        ));
    }
    Ok(at)
}

/// A duration as the command line takes it: a number with a unit `ms`,
/// `s`, `m`, `h` or `d` (none: seconds), between `min` and `max`, which
/// `range` states for the error. Every duration flag and the retry schedule
/// are read by it.
pub fn parse_duration(
    text: &str,
    min: Duration,
    max: Duration,
    range: &str,
) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a number followed by ms, s, m, h or d"))?;
    let millis = match unit {
        "ms" => Some(number),
        "" | "s" => number.checked_mul(1_000),
        "m" => number.checked_mul(60_000),
        "h" => number.checked_mul(3_600_000),
        "d" => number.checked_mul(86_400_000),
        _ => None,
    }
    .ok_or_else(|| format!("`{text}`: the unit must be ms, s, m, h or d"))?;
    let duration = Duration::from_millis(millis);
    if !(min..=max).contains(&duration) {
        return Err(format!("`{text}` must be between {range}"));
    }
    Ok(duration)
}

#[cfg(test)]
mod contact_tests {
    use super::*;

    #[test]
    fn email_addresses_are_checked_for_shape_only() {
        assert_eq!(email("email", "").unwrap(), None);
        assert_eq!(
            email("email", " ada@example.org ").unwrap().as_deref(),
            Some("ada@example.org")
        );
        for bad in [
            "ada",
            "ada@",
            "@example.org",
            "ada@example",
            "a b@example.org",
            "a@b@c.org",
            "ada@.org",
        ] {
            let err = email("email", bad).unwrap_err().to_string();
            assert!(err.starts_with("email"), "{bad}: {err}");
        }
    }

    #[test]
    fn languages_are_en_or_de_and_default_to_en() {
        use crate::domain::model::Language;
        assert_eq!(language("language", "").unwrap(), Language::En);
        assert_eq!(language("language", "de").unwrap(), Language::De);
        assert!(language("language", "fr").is_err());
        assert!(language("language", "DE").is_err());
    }

    #[test]
    fn an_address_keeps_its_lines_and_refuses_control_characters() {
        assert_eq!(
            address("address", " Main St 1 \r\n 10115 Berlin \n").unwrap(),
            "Main St 1\n10115 Berlin"
        );
        assert!(address("address", "a\tb").is_err());
        assert!(address("address", &"line\n".repeat(9)).is_err());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(err: AppError) -> String {
        match err {
            AppError::InvalidArgument { field, .. } => field,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn keys_are_printable_ascii_and_the_error_names_the_first_other_character() {
        assert_eq!(
            required_key("call_id", "sw1 000-123~").unwrap(),
            "sw1 000-123~"
        );
        for bad in ["\u{e9}", "a\u{200b}", "\t", "\u{7f}"] {
            let err = required_key("call_id", bad).unwrap_err();
            assert!(err.to_string().contains("printable ASCII"), "{err}");
            assert_eq!(field_of(err), "call_id");
        }
        let err = optional_key("request_id", "ab\u{e9}").unwrap_err();
        assert!(err.to_string().contains("character 3"), "{err}");
        assert_eq!(optional_key("call_id", "").unwrap(), None);
    }

    #[test]
    fn a_start_must_lie_within_the_window_and_the_error_says_which_bound() {
        let now: DateTime<Utc> = "2026-07-01T00:00:00Z".parse().unwrap();
        let year = TimeDelta::days(365);
        let at = |text: &str| text.parse::<DateTime<Utc>>().unwrap();
        let ahead = at("2026-07-01T00:05:01Z");
        assert!(
            start_within(ahead, now, MAX_FUTURE_SKEW, year).is_err_and(|err| err
                .to_string()
                .contains("more than 5 minutes in the future"))
        );
        assert_eq!(
            start_within(ahead, now, MAX_AUTHORIZE_AHEAD, year).unwrap(),
            ahead
        );
        assert!(
            start_within(at("2026-07-02T00:00:01Z"), now, MAX_AUTHORIZE_AHEAD, year)
                .is_err_and(|err| err.to_string().contains("more than 24 hours in the future"))
        );
        assert!(
            start_within(at("2025-06-30T23:59:59Z"), now, MAX_FUTURE_SKEW, year)
                .is_err_and(|err| err.to_string().contains("more than 365 days ago"))
        );
        assert_eq!(
            field_of(start_within(ahead, now, MAX_FUTURE_SKEW, year).unwrap_err()),
            "started_at"
        );
    }

    #[test]
    fn e164_numbers_are_accepted_and_others_rejected_naming_the_field() {
        assert!(phone_number("phone_number", "+14155550100").is_ok());
        assert!(phone_number("phone_number", "+4930123456789").is_ok());
        for bad in [
            "",
            "14155550100",
            "+",
            "+0123",
            "+1415555010012345",
            "+1 415",
            "+1a",
        ] {
            assert_eq!(
                field_of(phone_number("phone_number", bad).unwrap_err()),
                "phone_number"
            );
        }
    }

    #[test]
    fn dialled_numbers_allow_short_codes() {
        assert_eq!(dialled_number("callee_number", "112").unwrap(), "112");
        assert_eq!(dialled_number("callee_number", "").unwrap(), "");
        assert!(dialled_number("callee_number", "+4912345").is_ok());
        assert!(dialled_number("callee_number", "call me").is_err());
    }

    #[test]
    fn increments_default_to_60_and_must_lie_in_1_to_3600() {
        assert_eq!(billing_increment_seconds(0).unwrap(), 60);
        assert_eq!(billing_increment_seconds(1).unwrap(), 1);
        assert_eq!(billing_increment_seconds(3600).unwrap(), 3600);
        assert!(billing_increment_seconds(3601).is_err());
        assert!(billing_increment_seconds(-6).is_err());
    }

    #[test]
    fn durations_must_be_positive_and_at_most_a_day() {
        assert!(duration_seconds("duration_seconds", 0).is_err());
        assert!(duration_seconds("duration_seconds", -1).is_err());
        assert!(duration_seconds("duration_seconds", 86_401).is_err());
        assert_eq!(
            duration_seconds("duration_seconds", 86_400).unwrap(),
            86_400
        );
        assert_eq!(duration_minutes(3).unwrap(), 180);
        assert_eq!(field_of(duration_minutes(1441).unwrap_err()), "minutes");
    }

    #[test]
    fn currency_codes_default_to_usd_and_are_upper_cased() {
        assert_eq!(currency_code("").unwrap(), "USD");
        assert_eq!(currency_code("eur").unwrap(), "EUR");
        assert!(currency_code("EURO").is_err());
        assert!(currency_code("U$D").is_err());
    }

    #[test]
    fn a_call_start_defaults_to_now_minus_duration_and_rejects_the_far_future() {
        let now = DateTime::parse_from_rfc3339("2026-11-24T12:00:00Z")
            .unwrap()
            .to_utc();
        let mut started_at = None;
        let year = TimeDelta::days(365);
        assert_eq!(
            call_start(started_at, 90, now, year).unwrap(),
            now - TimeDelta::seconds(90)
        );
        started_at = Some(now + TimeDelta::minutes(5));
        assert!(call_start(started_at, 90, now, year).is_ok());
        started_at = Some(now + TimeDelta::minutes(5) + TimeDelta::seconds(1));
        assert_eq!(
            field_of(call_start(started_at, 90, now, year).unwrap_err()),
            "started_at"
        );
        started_at = Some(now - year);
        assert!(call_start(started_at, 90, now, year).is_ok());
        started_at = Some(now - year - TimeDelta::microseconds(1));
        assert_eq!(
            field_of(call_start(started_at, 90, now, year).unwrap_err()),
            "started_at"
        );
    }

    #[test]
    fn echoed_values_are_cut_to_64_characters_and_escaped() {
        assert_eq!(shown("abc"), "\"abc\"");
        assert_eq!(shown("a\nb\"c"), "\"a\\nb\\\"c\"");
        let long = "9".repeat(20_000);
        let echoed = shown(&long);
        assert!(echoed.starts_with(&format!("\"{}\"...", "9".repeat(64))));
        assert!(echoed.ends_with("(20000 characters)"));
        assert!(echoed.len() < 100);
        let control = "\u{1}".repeat(100);
        assert!(shown(&control).len() < 64 * 6 + 40);
    }
}
