//! Numbers held by customers over time, and which customer a call is
//! charged to when its record names only its calling number.
//!
//! 1. A customer holds a number from `valid_from` (inclusive) until
//!    `valid_until` (exclusive; open while held). A number belongs to at
//!    most one customer at any instant (the database enforces it).
//! 2. A customer's `phone_number` is its first number, held from its
//!    creation.
//! 3. A call is charged to the customer who held its `caller_number` at the
//!    instant the call started; no holder then: `NOT_FOUND` naming
//!    `caller_number`.
//! 4. A record that names both a customer and a calling number is refused
//!    when another customer held that number when the call started (a
//!    number nobody held then, or a short code, leaves the named customer
//!    as it is: switches report calling numbers the service does not
//!    manage).
//! 5. A release ends the open holding: `valid_until` after its
//!    `valid_from`. A change never moves a call already stored: a release
//!    is refused while the holder has calls from the number at or after
//!    `valid_until` (crediting and rerating them is a later feature).

use chrono::{DateTime, Utc};

use crate::error::{AppError, AppResult};

/// One period during which a customer held a number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumberAssignment {
    pub customer_id: i64,
    pub number: String,
    pub valid_from: DateTime<Utc>,
    /// `None` while the customer holds it.
    pub valid_until: Option<DateTime<Utc>>,
}

impl NumberAssignment {
    /// Whether the number was held under this assignment at `at` (rule 1).
    pub fn holds_at(&self, at: DateTime<Utc>) -> bool {
        self.valid_from <= at && self.valid_until.is_none_or(|until| at < until)
    }
}

/// The customer who held a number at `at`, among that number's
/// assignments (rule 3).
pub fn holder_at(assignments: &[NumberAssignment], at: DateTime<Utc>) -> Option<i64> {
    assignments
        .iter()
        .find(|assignment| assignment.holds_at(at))
        .map(|assignment| assignment.customer_id)
}

/// The customer a record is charged to: `named` when the record names one
/// (`Some`), the holder of its calling number otherwise; `holder` is who
/// held `caller_number` when the call started (rules 3 and 4). An empty
/// `caller_number` leaves the named customer unchecked.
pub fn charged_customer(
    named: Option<i64>,
    caller_number: &str,
    holder: Option<i64>,
) -> AppResult<i64> {
    match (named, holder) {
        (Some(named), Some(holder)) if holder != named => Err(AppError::invalid(
            "caller_number",
            format!(
                "{caller_number} was held by another customer than {named} when the call started"
            ),
        )),
        (Some(named), _) => Ok(named),
        (None, Some(holder)) => Ok(holder),
        (None, None) if caller_number.is_empty() => Err(AppError::invalid(
            "customer_id",
            "required unless caller_number names the customer",
        )),
        (None, None) => Err(no_holder(caller_number)),
    }
}

/// `NOT_FOUND` naming `caller_number`: no customer (that the caller may
/// see) held it when the call started.
pub fn no_holder(caller_number: &str) -> AppError {
    AppError::NotFound(format!(
        "caller_number: no customer held {caller_number} when the call started"
    ))
}

/// Checks the end of a holding that began at `valid_from` (rule 5).
pub fn check_release(valid_from: DateTime<Utc>, valid_until: DateTime<Utc>) -> AppResult<()> {
    if valid_until <= valid_from {
        return Err(AppError::invalid(
            "valid_until",
            format!(
                "{} is not after the number's assignment began ({})",
                valid_until.to_rfc3339(),
                valid_from.to_rfc3339()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    fn held(customer_id: i64, from: &str, until: Option<&str>) -> NumberAssignment {
        NumberAssignment {
            customer_id,
            number: "+14155550100".into(),
            valid_from: at(from),
            valid_until: until.map(at),
        }
    }

    #[test]
    fn the_holder_is_who_held_the_number_when_the_call_started() {
        let history = [
            held(1, "2026-01-01T00:00:00Z", Some("2026-06-15T00:00:00Z")),
            held(2, "2026-06-15T00:00:00Z", None),
        ];
        assert_eq!(holder_at(&history, at("2025-12-31T23:59:59Z")), None);
        assert_eq!(holder_at(&history, at("2026-01-01T00:00:00Z")), Some(1));
        assert_eq!(holder_at(&history, at("2026-06-14T23:59:59Z")), Some(1));
        // The end is exclusive: the instant of a handover is the new holder's.
        assert_eq!(holder_at(&history, at("2026-06-15T00:00:00Z")), Some(2));
        assert_eq!(holder_at(&history, at("2030-01-01T00:00:00Z")), Some(2));
    }

    #[test]
    fn a_gap_between_holders_has_none() {
        let history = [
            held(1, "2026-01-01T00:00:00Z", Some("2026-02-01T00:00:00Z")),
            held(2, "2026-03-01T00:00:00Z", None),
        ];
        assert_eq!(holder_at(&history, at("2026-02-10T00:00:00Z")), None);
    }

    #[test]
    fn a_record_is_charged_to_the_holder_or_to_the_customer_it_names_if_they_agree() {
        assert_eq!(charged_customer(None, "+1555", Some(4)).unwrap(), 4);
        assert_eq!(charged_customer(Some(4), "+1555", Some(4)).unwrap(), 4);
        assert_eq!(charged_customer(Some(4), "", None).unwrap(), 4);
        let field = |err: AppError| match err {
            AppError::InvalidArgument { field, .. } => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            field(charged_customer(Some(4), "+1555", Some(5)).unwrap_err()),
            "caller_number"
        );
        assert_eq!(charged_customer(Some(4), "+1555", None).unwrap(), 4);
        assert_eq!(
            field(charged_customer(None, "", None).unwrap_err()),
            "customer_id"
        );
        assert!(matches!(
            charged_customer(None, "+1555", None),
            Err(AppError::NotFound(text)) if text.starts_with("caller_number")
        ));
    }

    #[test]
    fn a_release_ends_after_the_holding_began() {
        let from = at("2026-01-01T00:00:00Z");
        assert!(check_release(from, at("2026-01-01T00:00:01Z")).is_ok());
        assert!(check_release(from, from).is_err());
    }
}
