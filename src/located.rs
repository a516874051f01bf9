//! Located errors: a message placed at file:line:column with the line quoted, and the helpers
//! every compiler shares to build one ("did you mean", serde-message hints).
//!
//! Why a module of its own: the config loader composes the compilers (`derive`, `alert::rule`,
//! `pipeline_test`), and each compiler returns errors the loader places in the file. When these
//! types lived in `config.rs`, the compilers imported the module that imports them — a circle.
//! This module is a leaf: it imports nothing of weir, so any compiler can use it and `config`
//! stays the one place that composes them.
//!
//! Invariant: a [`Located`] quotes the line as it is written in the file (before any `${VAR}`
//! interpolation), so an error never shows a substituted value, which may be a secret.

use std::fmt;
use std::ops::Range;

/// An error in a part of the file, located by byte span; placed with [`locate`] once the file
/// text is known.
#[derive(Debug, Clone, PartialEq)]
pub struct CompileError {
    pub span: Range<usize>,
    pub message: String,
}

impl CompileError {
    pub fn at(span: Range<usize>, message: impl Into<String>) -> Self {
        CompileError {
            span,
            message: message.into(),
        }
    }
}

/// A message with its place in a file and the line quoted.
#[derive(Debug)]
pub struct Located {
    pub path: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
    /// The line, its URLs' userinfo redacted.
    pub source_line: String,
    /// Column of the caret in `source_line` (differs from `column` after a redaction).
    pub caret: usize,
}

impl fmt::Display for Located {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let num = self.line.to_string();
        let pad = " ".repeat(num.len());
        write!(
            f,
            "{}:{}:{}: {}\n{pad} |\n{num} | {}\n{pad} | {}^",
            self.path,
            self.line,
            self.column,
            crate::redact::urls(&self.message),
            self.source_line,
            " ".repeat(self.caret.saturating_sub(1))
        )
    }
}

/// The closest of `names` to `wanted` (a misspelling), for "did you mean".
pub fn closest<'a>(wanted: &str, names: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    names
        .map(|n| (strsim::levenshtein(wanted, n), n))
        .filter(|(d, n)| *d > 0 && *d <= (n.len().max(wanted.len()) / 3).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, n)| n)
}

/// Adds "did you mean" to serde's "unknown field `whenn`, expected one of `when`, ..." and
/// "unknown variant `countr`, expected one of `counter`, ...".
pub fn with_hint(message: &str) -> String {
    let hint = ["unknown field `", "unknown variant `"]
        .iter()
        .find_map(|p| {
            let rest = message.split_once(p)?.1;
            let (wanted, rest) = rest.split_once('`')?;
            let expected = rest.split_once("expected")?.1;
            let names = expected.split('`').skip(1).step_by(2);
            closest(wanted, names).map(|c| format!("; did you mean `{c}`?"))
        });
    format!("{message}{}", hint.unwrap_or_default())
}

/// Places a byte offset of `text` as 1-based line and column (in characters).
pub fn locate(path: &str, text: &str, offset: usize, message: String) -> Located {
    let offset = offset.min(text.len());
    let offset = (0..=offset)
        .rev()
        .find(|&o| text.is_char_boundary(o))
        .unwrap_or(0);
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    // The quoted line may hold a URL with a password in it (`endpoint = "http://u:pw@h"`):
    // errors reach logs and the reload answer, so its userinfo is redacted, and the column
    // counted in the redacted line.
    let line = text[line_start..line_end].trim_end_matches('\r');
    let before = &text[line_start..offset.min(line_start + line.len())];
    Located {
        path: path.to_string(),
        line: text[..offset].matches('\n').count() + 1,
        column: text[line_start..offset].chars().count() + 1,
        caret: crate::redact::urls(before).chars().count()
            + text[line_start..offset].chars().count()
            - before.chars().count()
            + 1,
        message,
        source_line: crate::redact::urls(line).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_counts_characters_and_quotes_the_line() {
        let text = "a = 1\nname = \"é\" bad\n";
        let at = text.find("bad").expect("fixture has `bad`");
        let l = locate("p.toml", text, at, "oops".into());
        assert_eq!(
            l.to_string(),
            "p.toml:2:12: oops\n  |\n2 | name = \"é\" bad\n  |            ^"
        );
    }

    /// A refused reload logs its error and answers it over the admin endpoint: a password
    /// written into an endpoint URL on the quoted line must not go with it.
    #[test]
    fn the_quoted_line_has_its_urls_userinfo_redacted() {
        let text = "[[sinks]]\nendpoint = \"http://u:hunter2@loki:3100\" x\n";
        let at = text.find(" x").expect("fixture has ` x`") + 1;
        let l = locate("p.toml", text, at, "unexpected key".into());
        assert_eq!(
            l.to_string(),
            "p.toml:2:41: unexpected key\n  |\n2 | endpoint = \"http://<redacted>@loki:3100\" x\n  |                                          ^"
        );
    }

    #[test]
    fn closest_suggests_only_near_names() {
        let names = ["when", "labels", "name"];
        assert_eq!(closest("whenn", names.iter().copied()), Some("when"));
        assert_eq!(closest("zzzzzz", names.iter().copied()), None);
    }
}
