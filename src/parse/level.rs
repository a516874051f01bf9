//! Level normalisation: the usual spellings of severity, in any case, to one [`Level`].
//!
//! Strings: `TRACE`, `DEBUG`/`dbg`/`D`, `INFO`/`information`/`I`, `NOTICE`/`N`, `WARNING`/`warn`/`W`,
//! `ERROR`/`err`/`E`, `CRITICAL`/`crit`/`fatal`/`panic`/`alert`/`emerg`/`C`/`F`. Numbers (or strings
//! of digits): 0–7 are syslog severities (0 emergency … 7 debug); 10 and above are Bunyan/Pino
//! levels (10 trace, 20 debug, 30 info, 40 warn, 50 error, 60 fatal).

use crate::event::{Level, Value};

/// The level a captured value names; [`Level::Unknown`] when it names none.
pub fn level_of(value: &Value<'_>) -> Level {
    match value {
        Value::Num(n, _) => level_from_number(*n),
        Value::Str(s) => level_from_str(s),
        _ => Level::Unknown,
    }
}

/// Parses a level name or number. Case does not matter; surrounding spaces are ignored.
pub fn level_from_str(s: &str) -> Level {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse::<f64>().map_or(Level::Unknown, level_from_number);
    }
    // Longest names are 13 bytes ("informational"); anything longer is not a level.
    if s.len() > 16 {
        return Level::Unknown;
    }
    let mut buf = [0u8; 16];
    let lower = &mut buf[..s.len()];
    lower.copy_from_slice(s.as_bytes());
    lower.make_ascii_lowercase();
    match &*lower {
        b"trace" | b"trc" | b"t" | b"verbose" => Level::Trace,
        b"debug" | b"dbg" | b"d" => Level::Debug,
        b"info" | b"inf" | b"i" | b"information" | b"informational" => Level::Info,
        b"notice" | b"n" => Level::Notice,
        b"warning" | b"warn" | b"wrn" | b"w" => Level::Warning,
        b"error" | b"err" | b"eror" | b"e" => Level::Error,
        b"critical" | b"crit" | b"c" | b"fatal" | b"ftl" | b"f" | b"panic" | b"dpanic"
        | b"alert" | b"emerg" | b"emergency" => Level::Critical,
        _ => Level::Unknown,
    }
}

/// Numeric levels: syslog (0–7) or Bunyan/Pino (10–60).
pub fn level_from_number(n: f64) -> Level {
    if !n.is_finite() || n < 0.0 {
        return Level::Unknown;
    }
    if n < 8.0 {
        return match n as u8 {
            0..=2 => Level::Critical,
            3 => Level::Error,
            4 => Level::Warning,
            5 => Level::Notice,
            6 => Level::Info,
            _ => Level::Debug,
        };
    }
    match n {
        n if n >= 60.0 => Level::Critical,
        n if n >= 50.0 => Level::Error,
        n if n >= 40.0 => Level::Warning,
        n if n >= 30.0 => Level::Info,
        n if n >= 20.0 => Level::Debug,
        n if n >= 10.0 => Level::Trace,
        _ => Level::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_spellings() {
        let cases = [
            ("TRACE", Level::Trace),
            ("trace", Level::Trace),
            ("DEBUG", Level::Debug),
            ("dbg", Level::Debug),
            ("D", Level::Debug),
            ("INFO", Level::Info),
            ("Information", Level::Info),
            ("i", Level::Info),
            ("notice", Level::Notice),
            ("WARNING", Level::Warning),
            ("warn", Level::Warning),
            ("W", Level::Warning),
            ("ERROR", Level::Error),
            ("err", Level::Error),
            ("E", Level::Error),
            ("fatal", Level::Critical),
            ("CRITICAL", Level::Critical),
            ("crit", Level::Critical),
            ("panic", Level::Critical),
            ("emerg", Level::Critical),
            (" info ", Level::Info),
            ("loud", Level::Unknown),
            ("", Level::Unknown),
            ("a-very-long-string-that-is-not-a-level", Level::Unknown),
        ];
        for (s, want) in cases {
            assert_eq!(level_from_str(s), want, "{s:?}");
        }
    }

    #[test]
    fn numeric_bunyan_pino_and_syslog() {
        let cases = [
            (10.0, Level::Trace),
            (20.0, Level::Debug),
            (30.0, Level::Info),
            (40.0, Level::Warning),
            (50.0, Level::Error),
            (60.0, Level::Critical),
            (0.0, Level::Critical),
            (2.0, Level::Critical),
            (3.0, Level::Error),
            (4.0, Level::Warning),
            (5.0, Level::Notice),
            (6.0, Level::Info),
            (7.0, Level::Debug),
            (-1.0, Level::Unknown),
            (9.0, Level::Unknown),
            (f64::NAN, Level::Unknown),
        ];
        for (n, want) in cases {
            assert_eq!(level_from_number(n), want, "{n}");
        }
        assert_eq!(level_from_str("30"), Level::Info);
        assert_eq!(level_from_str("3"), Level::Error);
        assert_eq!(level_of(&Value::Num(50.0, "50")), Level::Error);
        assert_eq!(level_of(&Value::Bool(true)), Level::Unknown);
    }
}
