//! Pagination (AIP-158): page sizes and opaque keyset page tokens.
//!
//! A token carries the sort key of the last item of the page (so new rows
//! never shift a listing) and the query it belongs to (so a token replayed
//! against another query is rejected, not silently misread). It is
//! checksummed and hex-encoded: opaque to clients, detectable when forged
//! or mangled.

use crate::error::{AppError, AppResult};

/// Items per page when the client asks for 0.
pub const DEFAULT_PAGE_SIZE: u64 = 100;
/// The largest page; larger requests are coerced down.
pub const MAX_PAGE_SIZE: u64 = 1000;

/// The page size to use for a requested `page_size`.
pub fn page_size(requested: i32) -> AppResult<u64> {
    match requested {
        0 => Ok(DEFAULT_PAGE_SIZE),
        n if n < 0 => Err(AppError::invalid(
            "page_size",
            format!("must not be negative, got {n}"),
        )),
        n => Ok(u64::try_from(n).unwrap_or(MAX_PAGE_SIZE).min(MAX_PAGE_SIZE)),
    }
}

/// Which listing a token pages through, and with which filters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenScope {
    /// The listing, e.g. `"calls"`.
    pub listing: &'static str,
    /// Every filter value of the query, in a fixed order.
    pub filters: Vec<i64>,
}

/// Encodes the position after the item whose sort key is `keys`.
pub fn encode_token(scope: &TokenScope, keys: &[i64]) -> String {
    let payload = payload(scope, keys);
    let sum = checksum(payload.as_bytes());
    let text = format!("{payload}|{sum:016x}");
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

/// Decodes `token` into the sort key it carries; `None` for an empty token
/// (the first page). A token that is not ours, or belongs to another query,
/// is `INVALID_ARGUMENT` on `page_token`.
pub fn decode_token(
    scope: &TokenScope,
    token: &str,
    key_count: usize,
) -> AppResult<Option<Vec<i64>>> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || AppError::invalid("page_token", "is not a token returned by this listing");
    let text = hex_decode(token).ok_or_else(invalid)?;
    let (payload, sum) = text.rsplit_once('|').ok_or_else(invalid)?;
    if u64::from_str_radix(sum, 16).ok() != Some(checksum(payload.as_bytes())) {
        return Err(invalid());
    }
    let mut parts = payload.split('|');
    let (Some(version), Some(listing), Some(filters), Some(keys), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(invalid());
    };
    if version != "v1" || listing != scope.listing {
        return Err(invalid());
    }
    if filters != join(&scope.filters) {
        return Err(AppError::invalid(
            "page_token",
            "belongs to a query with other filters; keep the filters while paging",
        ));
    }
    let keys: Vec<i64> = keys
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .map_err(|_| invalid())?;
    if keys.len() != key_count {
        return Err(invalid());
    }
    Ok(Some(keys))
}

fn payload(scope: &TokenScope, keys: &[i64]) -> String {
    format!(
        "v1|{}|{}|{}",
        scope.listing,
        join(&scope.filters),
        join(keys)
    )
}

fn join(values: &[i64]) -> String {
    values
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// FNV-1a over the payload with a fixed prefix: detects mangled or made-up
/// tokens. It is not a secret; tokens grant nothing the filters do not.
fn checksum(bytes: &[u8]) -> u64 {
    b"billing.v1 page token"
        .iter()
        .chain(bytes)
        .fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
            (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
}

fn hex_decode(token: &str) -> Option<String> {
    if !token.len().is_multiple_of(2) || token.len() > 1024 {
        return None;
    }
    let bytes = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(token.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(filters: Vec<i64>) -> TokenScope {
        TokenScope {
            listing: "calls",
            filters,
        }
    }

    #[test]
    fn page_size_defaults_coerces_and_rejects_negative() {
        assert_eq!(page_size(0).unwrap(), 100);
        assert_eq!(page_size(7).unwrap(), 7);
        assert_eq!(page_size(5000).unwrap(), 1000);
        assert!(page_size(-1).is_err());
    }

    #[test]
    fn a_token_round_trips_its_keys() {
        let s = scope(vec![4, 0]);
        let token = encode_token(&s, &[-1_700_000_000_000_000, 42]);
        assert_eq!(
            decode_token(&s, &token, 2).unwrap(),
            Some(vec![-1_700_000_000_000_000, 42])
        );
        assert_eq!(decode_token(&s, "", 2).unwrap(), None);
    }

    #[test]
    fn foreign_mangled_or_misapplied_tokens_are_rejected() {
        let s = scope(vec![4]);
        let token = encode_token(&s, &[1, 2]);
        assert!(decode_token(&scope(vec![5]), &token, 2).is_err());
        assert!(
            decode_token(
                &TokenScope {
                    listing: "customers",
                    filters: vec![4]
                },
                &token,
                2
            )
            .is_err()
        );
        assert!(decode_token(&s, "not-a-token", 2).is_err());
        assert!(decode_token(&s, &token[..token.len() - 2], 2).is_err());
        let mut flipped = token.clone().into_bytes();
        flipped[10] = if flipped[10] == b'0' { b'1' } else { b'0' };
        assert!(decode_token(&s, &String::from_utf8(flipped).unwrap(), 2).is_err());
        assert!(decode_token(&s, &token, 1).is_err());
    }
}
