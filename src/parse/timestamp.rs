//! Timestamps in the forms logs carry them, to nanoseconds since the epoch (UTC).
//!
//! - RFC 3339 / ISO 8601, with `T` or a space, with or without fraction, with `Z`, an offset, or
//!   none (then UTC): `2024-01-01T12:00:00Z`, `2024-01-01 12:00:00.123+02:00`, `2024-01-01T12:00:00`.
//! - Python logging's `2024-01-01 12:00:00,123` (comma before the milliseconds).
//! - The Common/Combined Log Format of nginx and Apache: `10/Oct/2000:13:55:36 -0700`.
//! - Traditional syslog (RFC 3164, rsyslog's default file format): `Oct 11 22:14:15` and
//!   `Jan  2 03:04:05`. It has neither year nor offset: the time is read as UTC (like every
//!   offset-less form here) in the current year, or the previous one when that would put it more
//!   than a day in the future (a December line read in January), as rsyslog's readers do.
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
    if let Ok(civil) = s.parse::<jiff::civil::DateTime>() {
        let ts = civil.to_zoned(jiff::tz::TimeZone::UTC).ok()?.timestamp();
        return i64::try_from(ts.as_nanosecond()).ok();
    }
    if first.is_ascii_digit() && s.as_bytes().get(2) == Some(&b'/') {
        let ts = jiff::fmt::strtime::parse("%d/%b/%Y:%H:%M:%S %z", s)
            .ok()?
            .to_timestamp()
            .ok()?;
        return i64::try_from(ts.as_nanosecond()).ok();
    }
    if first.is_ascii_uppercase() && (14..=15).contains(&s.len()) {
        return syslog(s, jiff::Timestamp::now());
    }
    None
}

/// `Oct 11 22:14:15` as UTC in the year of `now`, or the year before when that is more than a
/// day after `now`.
fn syslog(s: &str, now: jiff::Timestamp) -> Option<TimestampNs> {
    let mut tm = jiff::fmt::strtime::parse("%b %e %H:%M:%S", s).ok()?;
    let year = now.to_zoned(jiff::tz::TimeZone::UTC).year();
    let at = |tm: &mut jiff::fmt::strtime::BrokenDownTime, year: i16| {
        tm.set_year(Some(year)).ok()?;
        let civil = tm.to_datetime().ok()?;
        civil
            .to_zoned(jiff::tz::TimeZone::UTC)
            .ok()
            .map(|z| z.timestamp())
    };
    let ts = match at(&mut tm, year) {
        Some(ts) if ts <= now + jiff::SignedDuration::from_hours(24) => ts,
        _ => at(&mut tm, year - 1)?,
    };
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
        // Past i64 nanoseconds (year 2262) is no timestamp: checked, not wrapped.
        return secs.checked_mul(1_000_000_000)?.checked_add(nanos);
    }
    if !digits(raw) {
        return None;
    }
    let n: i64 = raw.parse().ok()?;
    Some(match n {
        n if n < 100_000_000_000 => n.checked_mul(1_000_000_000)?,
        n if n < 100_000_000_000_000 => n.checked_mul(1_000_000)?,
        n if n < 100_000_000_000_000_000 => n.checked_mul(1_000)?,
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
    fn access_log_and_syslog_forms() {
        // nginx/Apache `$time_local`.
        assert_eq!(parse_timestamp("01/Jan/2024:07:00:00 -0500"), Some(T0));
        assert_eq!(
            parse_timestamp("10/Oct/2000:13:55:36 -0700"),
            Some(971_211_336_000_000_000)
        );
        assert_eq!(parse_timestamp("01/Jnu/2024:07:00:00 -0500"), None);
        // Syslog: the year comes from `now`.
        let now: jiff::Timestamp = "2024-03-10T00:00:00Z".parse().unwrap();
        let at = |s: &str| syslog(s, now).map(crate::event::format_rfc3339);
        assert_eq!(
            at("Jan  1 12:00:00").as_deref(),
            Some("2024-01-01T12:00:00Z")
        );
        assert_eq!(
            at("Mar 10 23:59:59").as_deref(),
            Some("2024-03-10T23:59:59Z")
        );
        // Later than tomorrow: last year's.
        assert_eq!(
            at("Dec 31 23:00:00").as_deref(),
            Some("2023-12-31T23:00:00Z")
        );
        assert_eq!(
            at("Oct 11 22:14:15").as_deref(),
            Some("2023-10-11T22:14:15Z")
        );
        assert_eq!(at("Foo 11 22:14:15"), None);
        assert_eq!(at("Feb 30 22:14:15"), None);
        // Through the public entry point, with today's year.
        assert!(parse_timestamp("Jan  2 03:04:05").is_some());
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

    /// Found by `fuzz/run.sh text_parsers` (overflow checks on): epoch seconds, milliseconds or
    /// microseconds past year 2262 overflowed i64 nanoseconds (a panic with overflow checks, a
    /// wrapped timestamp without). They are no timestamp now; the line gets its arrival time.
    #[test]
    fn epochs_past_i64_nanoseconds_are_not_timestamps() {
        for raw in [
            "20240078134.1",
            "99999999999.999999999",
            "9223372037",
            "99999999999999",
            "99999999999999999",
        ] {
            assert_eq!(epoch_from_text(raw), None, "{raw}");
        }
        assert_eq!(parse_timestamp("20240078134.1"), None);
        assert_eq!(epoch_from_text("9223372036.854775807"), Some(i64::MAX));
        assert_eq!(
            epoch_from_text("1704110400.25"),
            Some(1_704_110_400_250_000_000)
        );
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
