//! Redaction of URL userinfo (`https://user:password@host`) in text weir shows: `validate
//! --explain`, config errors, logs, reload answers, debug output.
//!
//! An endpoint is configuration, not a secret, so weir prints it; but an operator may write
//! the password into it, and then every output that quotes the URL would leak it. [`urls`]
//! replaces the userinfo of every `scheme://...@host` in a text with `<redacted>`, so a
//! message can quote a URL whole and still be safe. Secrets kept apart (tokens, passwords read
//! from environment variables) are never formatted at all (their `Debug` is `<redacted>`).

use std::borrow::Cow;

/// What replaces the userinfo.
pub const REDACTED: &str = "<redacted>";

/// `text` with the userinfo of every URL in it replaced by `<redacted>`:
/// `http://u:p@h:1/x` becomes `http://<redacted>@h:1/x`. Text without `://` is returned as is.
pub fn urls(text: &str) -> Cow<'_, str> {
    if !text.contains("://") {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        // The authority ends at the path, query or fragment, or where the URL ends in text.
        let end = tail
            .find(|c: char| {
                matches!(c, '/' | '?' | '#' | '"' | '\'' | '`' | '<' | '>' | '\\')
                    || c.is_whitespace()
            })
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(userinfo_end) => {
                out.push_str(REDACTED);
                out.push_str(&authority[userinfo_end..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_is_redacted_wherever_a_url_appears() {
        let cases = [
            ("http://u:hunter2@es:9200", "http://<redacted>@es:9200"),
            (
                "https://user:p%40ss@loki:3100/x?y=http://a:b@c",
                "https://<redacted>@loki:3100/x?y=http://<redacted>@c",
            ),
            (
                "loki endpoint \"ftp://u:pw@h\" must start with http://",
                "loki endpoint \"ftp://<redacted>@h\" must start with http://",
            ),
            ("http://only-user@h/", "http://<redacted>@h/"),
            (
                "http://h:1/path@not-userinfo",
                "http://h:1/path@not-userinfo",
            ),
            ("no url: a@b", "no url: a@b"),
            ("http://[::1]:9200", "http://[::1]:9200"),
            ("odd://", "odd://"),
            (
                "two http://a:b@x and http://c:d@y.",
                "two http://<redacted>@x and http://<redacted>@y.",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(urls(text), want, "{text}");
        }
    }
}
