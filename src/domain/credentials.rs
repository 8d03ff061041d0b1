//! Secrets: password hashes (argon2id), and the access tokens and API keys
//! the service hands out.
//!
//! A token is `<kind>_<selector>_<secret>`: the selector (16 random bytes,
//! hex) is the public key it is looked up by; the secret (32 random bytes,
//! hex) is stored only as its SHA-256 hash and compared in constant time.
//! So a leaked table grants nothing, and a lookup by selector leaks nothing
//! about the secret through timing.

use std::sync::LazyLock;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::{AppError, AppResult};

/// Passwords shorter than this are refused.
pub const MIN_PASSWORD_CHARS: usize = 12;
/// Passwords longer than this are refused (hashing cost stays bounded).
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// Usernames are 1 to this many characters.
pub const MAX_USERNAME_CHARS: usize = 64;

/// A valid username: 1 to 64 characters, no control characters, no
/// surrounding spaces.
pub fn valid_username(username: String) -> AppResult<String> {
    let chars = username.chars().count();
    if chars == 0 || chars > MAX_USERNAME_CHARS {
        return Err(AppError::invalid(
            "username",
            format!("must have 1 to {MAX_USERNAME_CHARS} characters, got {chars}"),
        ));
    }
    if username.chars().any(char::is_control) || username.trim() != username {
        return Err(AppError::invalid(
            "username",
            "must not hold control characters or surrounding spaces",
        ));
    }
    Ok(username)
}

/// Whether `password` may be set: at least 12 characters, at most 1 KiB.
pub fn valid_new_password(password: &str) -> AppResult<()> {
    let chars = password.chars().count();
    if chars < MIN_PASSWORD_CHARS {
        return Err(AppError::invalid(
            "password",
            format!("must have at least {MIN_PASSWORD_CHARS} characters, got {chars}"),
        ));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(AppError::invalid(
            "password",
            format!("must have at most {MAX_PASSWORD_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// Which kind of credential a token is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenKind {
    /// A sign-in token from `Login`; expires.
    Access,
    /// A long-lived API key; lives until revoked.
    ApiKey,
}

impl TokenKind {
    fn prefix(self) -> &'static str {
        match self {
            TokenKind::Access => "bat",
            TokenKind::ApiKey => "bak",
        }
    }
}

/// A freshly made token: what the client is given once, and what is stored.
#[derive(Debug)]
pub struct IssuedToken {
    /// The whole token, for the client only.
    pub presented: String,
    pub selector: String,
    /// SHA-256 of the secret part, hex.
    pub secret_hash: String,
}

/// A token as presented by a client, split into its parts.
#[derive(Debug, PartialEq, Eq)]
pub struct PresentedToken {
    pub kind: TokenKind,
    pub selector: String,
    secret_hash: [u8; 32],
}

impl PresentedToken {
    /// Whether the secret matches `stored_hash` (hex), in constant time.
    pub fn matches(&self, stored_hash: &str) -> bool {
        let Ok(stored) = hex::decode(stored_hash) else {
            return false;
        };
        stored.ct_eq(&self.secret_hash).into()
    }
}

const SELECTOR_BYTES: usize = 16;
const SECRET_BYTES: usize = 32;

/// A new random token of `kind`.
pub fn issue_token(kind: TokenKind) -> AppResult<IssuedToken> {
    let selector = hex::encode(random_bytes::<SELECTOR_BYTES>()?);
    let secret = random_bytes::<SECRET_BYTES>()?;
    Ok(IssuedToken {
        presented: format!("{}_{selector}_{}", kind.prefix(), hex::encode(secret)),
        selector,
        secret_hash: hex::encode(Sha256::digest(secret)),
    })
}

/// Splits a presented token; `None` if it is not one of ours.
pub fn parse_token(presented: &str) -> Option<PresentedToken> {
    let mut parts = presented.split('_');
    let kind = match parts.next()? {
        "bat" => TokenKind::Access,
        "bak" => TokenKind::ApiKey,
        _ => return None,
    };
    let selector = parts.next()?;
    let secret = parts.next()?;
    if parts.next().is_some()
        || selector.len() != 2 * SELECTOR_BYTES
        || !selector
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        return None;
    }
    let secret: [u8; SECRET_BYTES] = hex::decode(secret).ok()?.try_into().ok()?;
    Some(PresentedToken {
        kind,
        selector: selector.to_owned(),
        secret_hash: Sha256::digest(secret).into(),
    })
}

/// argon2id with the parameters OWASP recommends (19 MiB, 2 passes).
fn argon2() -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, Params::default())
}

/// The PHC string of `password`, with a random salt. CPU-heavy: call it off
/// the async runtime's worker threads.
pub fn hash_password(password: &str) -> AppResult<String> {
    let salt = SaltString::encode_b64(&random_bytes::<16>()?)
        .map_err(|err| AppError::internal(err.to_string()))?;
    argon2()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|err| AppError::internal(err.to_string()))
}

/// Whether `password` matches the PHC string `stored`. CPU-heavy.
pub fn verify_password(password: &str, stored: &str) -> bool {
    PasswordHash::new(stored)
        .is_ok_and(|hash| argon2().verify_password(password.as_bytes(), &hash).is_ok())
}

/// A hash no password matches, verified against for unknown usernames so
/// that a wrong username takes as long as a wrong password.
pub fn decoy_hash() -> &'static str {
    static DECOY: LazyLock<String> = LazyLock::new(|| {
        // The password is random and dropped: nothing ever matches.
        let password = random_bytes::<32>().map(hex::encode).unwrap_or_default();
        hash_password(&password).unwrap_or_default()
    });
    &DECOY
}

/// A random password of 24 hex characters (96 bits), for generated
/// accounts.
pub fn random_password() -> AppResult<String> {
    random_bytes::<12>().map(hex::encode)
}

/// `N` bytes from the operating system's random source.
pub fn random_bytes<const N: usize>() -> AppResult<[u8; N]> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|err| AppError::internal(err.to_string()))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_issued_token_parses_back_and_matches_only_its_own_hash() {
        let issued = issue_token(TokenKind::ApiKey).unwrap();
        let parsed = parse_token(&issued.presented).unwrap();
        assert_eq!(parsed.kind, TokenKind::ApiKey);
        assert_eq!(parsed.selector, issued.selector);
        assert!(parsed.matches(&issued.secret_hash));
        let other = issue_token(TokenKind::ApiKey).unwrap();
        assert!(!parsed.matches(&other.secret_hash));
        assert!(!parsed.matches("not hex"));
    }

    #[test]
    fn malformed_tokens_are_not_parsed() {
        let issued = issue_token(TokenKind::Access).unwrap().presented;
        for bad in [
            "",
            "bat",
            "xyz_00_00",
            &issued[..issued.len() - 2],
            &format!("{issued}_x"),
            &issued.replace("bat_", "bat_Z"),
        ] {
            assert_eq!(parse_token(bad), None, "{bad}");
        }
    }

    #[test]
    fn passwords_verify_against_their_hash_only() {
        let hash = hash_password("correct horse battery").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password("correct horse battery", &hash));
        assert!(!verify_password("correct horse batterx", &hash));
        assert!(PasswordHash::new(decoy_hash()).is_ok());
        assert!(!verify_password("correct horse battery", decoy_hash()));
    }
}
