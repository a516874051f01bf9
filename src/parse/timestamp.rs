//! Timestamps in the forms logs carry them, to nanoseconds since the epoch (UTC).
//!
//! - RFC 3339 / ISO 8601, with `T` or a space, with or without fraction, with `Z`, an offset, or
//!   none (then UTC): `2024-01-01T12:00:00Z`, `2024-01-01 12:00:00.123+02:00`, `2024-01-01T12:00:00`.
//! - Python logging's `2024-01-01 12:00:00,123` (comma before the milliseconds).
//! - Epoch numbers, as JSON numbers or strings of digits: the unit follows the magnitude, the way
//!   Vector and Fluent Bit guess it: below 1e11 seconds (fractions allowed), below 1e14
//!   milliseconds, below 1e17 microseconds, else nanoseconds.
//!
//! Parsing of calendar forms is jiff's; this module only chooses the form.

use crate::event::{TimestampNs, Value};

/// Reads a timestamp from a captured value. `None` when the value is not a timestamp.
pub fn timestamp_of(value: &Value<'_>) -> Option<TimestampNs> {
    match value {
        Value::Num(n, raw) => epoch_from_text(raw).or_else(|| epoch_from_f64(*n)),
        Value::Str(s) => parse_timestamp(s),
        _ => None,
    }
}

/// Parses a timestamp string in any of the supported forms.
pub fn parse_timestamp(s: &str) -> Option<TimestampNs> {
    let s = s.trim();
    let first = *s.as_bytes().first()?;
    if first.is_ascii_digit() && s.len() <= 20 && !s.contains(['-', ':']) {
        return epoch_from_text(s).or_else(|| epoch_from_f64(s.parse().ok()?));
    }
    if let Ok(ts) = s.parse::<jiff::Timestamp>() {
        return i64::try_from(ts.as_nanosecond()).ok();
    }
    // No offset: read as civil time in UTC.
    let civil = s.parse::<jiff::civil::DateTime>().ok()?;
    let ts = civil.to_zoned(jiff::tz::TimeZone::UTC).ok()?.timestamp();
    i64::try_from(ts.as_nanosecond()).ok()
}

/// Epoch text, exact at every unit: digits, or seconds with a decimal fraction
/// (`1704110400.25`). `None` for any other text.
fn epoch_from_text(raw: &str) -> Option<TimestampNs> {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if let Some((int, frac)) = raw.split_once('.') {
        if !digits(int) || !digits(frac) || int.len() > 11 {
            return None;
        }
        let secs: i64 = int.parse().ok()?;
        if secs >= 100_000_000_000 {
            return None;
        }
        let mut nanos = 0i64;
        for (i, b) in frac.bytes().take(9).enumerate() {
            nanos += i64::from(b - b'0') * 10i64.pow(8 - i as u32);
        }
        return Some(secs * 1_000_000_000 + nanos);
    }
    if !digits(raw) {
        return None;
    }
    let n: i64 = raw.parse().ok()?;
    Some(match n {
        n if n < 100_000_000_000 => n.checked_mul(1_000_000_000)?,
        n if n < 100_000_000_000_000 => n * 1_000_000,
        n if n < 100_000_000_000_000_000 => n * 1_000,
        n => n,
    })
}

fn epoch_from_f64(n: f64) -> Option<TimestampNs> {
    if !n.is_finite() || n < 0.0 {
        return None;
    }
    let ns = match n {
        n if n < 1e11 => n * 1e9,
        n if n < 1e14 => n * 1e6,
        n if n < 1e17 => n * 1e3,
        n => n,
    };
    (ns < i64::MAX as f64).then(|| ns.round() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T0: i64 = 1_704_110_400_000_000_000; // 2024-01-01T12:00:00Z

    #[test]
    fn calendar_forms() {
        let cases = [
            ("2024-01-01T12:00:00Z", T0),
            ("2024-01-01T12:00:00.123Z", T0 + 123_000_000),
            ("2024-01-01T12:00:00.123456789Z", T0 + 123_456_789),
            ("2024-01-01T14:00:00+02:00", T0),
            ("2024-01-01T07:00:00.5-05:00", T0 + 500_000_000),
            ("2024-01-01 12:00:00Z", T0),
            ("2024-01-01T12:00:00", T0),
            ("2024-01-01 12:00:00.250", T0 + 250_000_000),
            ("2024-01-01 12:00:00,123", T0 + 123_000_000),
            ("2024-01-01t12:00:00z", T0),
        ];
        for (s, want) in cases {
            assert_eq!(parse_timestamp(s), Some(want), "{s}");
        }
    }

    #[test]
    fn epoch_forms() {
        let cases = [
            ("1704110400", T0),
            ("1704110400.25", T0 + 250_000_000),
            ("1704110400123", T0 + 123_000_000),
            ("1704110400123456", T0 + 123_456_000),
            ("1704110400123456789", T0 + 123_456_789),
        ];
        for (s, want) in cases {
            assert_eq!(parse_timestamp(s), Some(want), "string {s}");
            let n: f64 = s.parse().unwrap();
            let got = timestamp_of(&Value::Num(n, s)).unwrap();
            // Integers are exact; a float with a fraction is exact to the microsecond.
            assert!((got - want).abs() < 1_000, "number {s}: {got} vs {want}");
        }
        assert_eq!(
            timestamp_of(&Value::Num(1704110400123456789.0, "1704110400123456789")),
            Some(T0 + 123_456_789)
        );
    }

    #[test]
    fn rejects_what_is_not_a_time() {
        for s in [
            "",
            "yesterday",
            "2024-13-01T00:00:00Z",
            "12:00",
            "-5",
            "1e400",
        ] {
            assert_eq!(parse_timestamp(s), None, "{s}");
        }
        assert_eq!(timestamp_of(&Value::Bool(true)), None);
        assert_eq!(timestamp_of(&Value::Null), None);
    }

    proptest! {
        #[test]
        fn never_panics(s in ".{0,40}") {
            let _ = parse_timestamp(&s);
        }

        #[test]
        fn rfc3339_round_trips(secs in 0i64..4_000_000_000, nanos in 0i64..1_000_000_000) {
            let ts = secs * 1_000_000_000 + nanos;
            let text = crate::event::format_rfc3339(ts);
            prop_assert_eq!(parse_timestamp(&text), Some(ts));
        }
    }
}
