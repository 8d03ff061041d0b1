//! Database URLs carry passwords (`postgres://user:PASSWORD@host/db`, or
//! `?password=…`), and the drivers quote the URL they were handed in their
//! errors. Everything the service prints of a URL, or of an error about
//! one, goes through [`redact`] first.

/// What a password is shown as.
const HIDDEN: &str = "***";

/// `text` with every password of `urls` shown as `***` (as written in the
/// URL and percent-decoded).
pub fn redact(text: &str, urls: &[&str]) -> String {
    let mut secrets: Vec<String> = urls.iter().flat_map(|url| passwords(url)).collect();
    // The longest first, so a password holding another is hidden whole.
    secrets.sort_by_key(|secret| std::cmp::Reverse(secret.len()));
    secrets
        .iter()
        .filter(|secret| !secret.is_empty())
        .fold(text.to_owned(), |text, secret| {
            text.replace(secret.as_str(), HIDDEN)
        })
}

/// The passwords in `url`, each as written and percent-decoded: the
/// user information's (`user:password@`) and any `password=` parameter.
fn passwords(url: &str) -> Vec<String> {
    let mut found = Vec::new();
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    if let Some((user_info, _host)) = authority.rsplit_once('@')
        && let Some((_user, password)) = user_info.split_once(':')
    {
        found.push(password.to_owned());
    }
    if let Some((_, query)) = url.split_once('?') {
        for pair in query.split('&') {
            if let Some((name, value)) = pair.split_once('=')
                && name.eq_ignore_ascii_case("password")
            {
                found.push(value.to_owned());
            }
        }
    }
    let decoded: Vec<String> = found.iter().map(|secret| percent_decoded(secret)).collect();
    found.extend(decoded);
    found
}

/// `text` with its `%XX` escapes decoded (an invalid escape stays as it is).
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escape = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escape {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden_wherever_they_appear() {
        let url = "postgres://u:S3%40CRET@127.0.0.1:99999/x?sslmode=disable&password=other";
        let text = format!("cannot parse '{url}': bad port; password S3@CRET, other");
        let shown = redact(&text, &[url]);
        assert!(!shown.contains("S3%40CRET"), "{shown}");
        assert!(!shown.contains("S3@CRET"), "{shown}");
        assert!(!shown.contains("other"), "{shown}");
        assert!(
            shown.contains("postgres://u:***@127.0.0.1:99999/x"),
            "{shown}"
        );
    }

    #[test]
    fn urls_without_a_password_are_shown_as_they_are() {
        for url in [
            "sqlite://billing.db?mode=rwc",
            "postgres://postgres@127.0.0.1/test",
        ] {
            assert_eq!(redact(&format!("at {url}"), &[url]), format!("at {url}"));
        }
    }

    #[test]
    fn a_password_with_an_at_sign_is_hidden_whole() {
        let url = "mysql://u:p@ss:w@rd@db/x";
        let shown = redact(&format!("no driver for '{url}'"), &[url]);
        assert_eq!(shown, "no driver for 'mysql://u:***@db/x'");
    }
}
