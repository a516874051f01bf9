//! The `summary`, `description` and `link` templates of `[[alerts]]`.
//!
//! They look like Prometheus' annotation templates (a small part of Go's `text/template`), so
//! that one text serves weir's notifications and, through [`Template::to_prometheus`], the
//! generated Prometheus rules:
//! ```text
//! {{ $labels.NAME }}       a label of the alert; empty when the alert has no such label
//! {{ $value }}             the rule's current value; {{ $threshold }}, {{ $rule }}, {{ $severity }}
//! {{ $value | printf "%.2f" }}  or  {{ printf "%.2f" $value }}   (also for $threshold)
//! {{ $value | humanizeDuration }}   seconds as Prometheus shows them: 1m 1s, 500ms, 3s
//! ```
//! Anything else between `{{` and `}}` is an error when the pipeline is loaded (with its
//! column), not text in a notification. Rendering never fails.

use std::collections::BTreeMap;

use super::expr::ExprError;
use super::notify::format_value;

/// A parsed template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

/// What a template is rendered with.
pub struct TemplateContext<'a> {
    pub rule: &'a str,
    pub severity: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    pub value: f64,
    pub threshold: f64,
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Action(Var, Format),
}

#[derive(Debug, Clone, PartialEq)]
enum Var {
    Label(String),
    Value,
    Threshold,
    Rule,
    Severity,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Format {
    Plain,
    /// `printf "%.Nf"`.
    Fixed(usize),
    HumanizeDuration,
}

const ACTION: &str = "`$labels.NAME`, `$value`, `$threshold`, `$rule`, `$severity` or `printf`";
const FIXED: &str = "a format \"%.Nf\" with N a digit, such as \"%.2f\"";

/// A position in the template's source while an action is read.
struct Cursor<'s> {
    src: &'s str,
    pos: usize,
}

impl<'s> Cursor<'s> {
    fn rest(&self) -> &'s str {
        &self.src[self.pos..]
    }

    fn skip_ws(&mut self) {
        let rest = self.rest();
        self.pos += rest.len() - rest.trim_start().len();
    }

    fn eat(&mut self, s: &str) -> bool {
        let found = self.rest().starts_with(s);
        if found {
            self.pos += s.len();
        }
        found
    }

    /// `w`, not followed by a character that would make it a longer name.
    fn word(&mut self, w: &str) -> bool {
        let rest = self.rest();
        let found = rest.starts_with(w)
            && !rest[w.len()..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_');
        if found {
            self.pos += w.len();
        }
        found
    }

    fn error(&self, expected: &str) -> ExprError {
        error_at(self.src, self.pos, expected)
    }

    fn var(&mut self) -> Result<Var, ExprError> {
        if self.eat("$labels.") {
            let rest = self.rest();
            let len = rest
                .char_indices()
                .find(|&(i, c)| {
                    !(c.is_ascii_alphabetic() || c == '_' || (i > 0 && c.is_ascii_digit()))
                })
                .map_or(rest.len(), |(i, _)| i);
            if len == 0 {
                return Err(self.error("a label name after `$labels.`"));
            }
            self.pos += len;
            return Ok(Var::Label(rest[..len].to_string()));
        }
        for (w, var) in [
            ("$value", Var::Value),
            ("$threshold", Var::Threshold),
            ("$rule", Var::Rule),
            ("$severity", Var::Severity),
        ] {
            if self.word(w) {
                return Ok(var);
            }
        }
        Err(self.error(ACTION))
    }

    /// `"%.Nf"`: N.
    fn fixed(&mut self) -> Result<usize, ExprError> {
        let digit = self
            .rest()
            .strip_prefix("\"%.")
            .and_then(|r| r.chars().next())
            .and_then(|c| c.to_digit(10));
        match digit {
            Some(n) if self.rest()[4..].starts_with("f\"") => {
                self.pos += 6;
                Ok(n as usize)
            }
            _ => Err(self.error(FIXED)),
        }
    }

    /// After `{{`: the action and its `}}`.
    fn action(&mut self) -> Result<(Var, Format), ExprError> {
        self.skip_ws();
        let (var, format) = if self.word("printf") {
            self.skip_ws();
            let n = self.fixed()?;
            self.skip_ws();
            let at = self.pos;
            match self.var() {
                Ok(v @ (Var::Value | Var::Threshold)) => (v, Format::Fixed(n)),
                _ => return Err(error_at(self.src, at, "`$value` or `$threshold`")),
            }
        } else {
            let var = self.var()?;
            self.skip_ws();
            let pipe = self.pos;
            if self.eat("|") {
                if !matches!(var, Var::Value | Var::Threshold) {
                    return Err(error_at(
                        self.src,
                        pipe,
                        "`}}` (only $value and $threshold take `| printf` or `| humanizeDuration`)",
                    ));
                }
                self.skip_ws();
                if self.word("printf") {
                    self.skip_ws();
                    (var, Format::Fixed(self.fixed()?))
                } else if self.word("humanizeDuration") {
                    (var, Format::HumanizeDuration)
                } else {
                    return Err(self.error("`printf \"%.Nf\"` or `humanizeDuration`"));
                }
            } else {
                (var, Format::Plain)
            }
        };
        self.skip_ws();
        if !self.eat("}}") {
            return Err(self.error("`}}`"));
        }
        Ok((var, format))
    }
}

fn error_at(src: &str, byte_offset: usize, expected: &str) -> ExprError {
    ExprError {
        column: src[..byte_offset.min(src.len())].chars().count() + 1,
        expected: expected.to_string(),
    }
}

impl Template {
    /// Parses `src`; the error's column is in `src` (1-based, characters).
    pub fn parse(src: &str) -> Result<Template, ExprError> {
        let mut parts = Vec::new();
        let mut pos = 0;
        while let Some(found) = src[pos..].find("{{") {
            let open = pos + found;
            if open > pos {
                parts.push(Part::Text(src[pos..open].to_string()));
            }
            if !src[open + 2..].contains("}}") {
                return Err(error_at(src, open, "`}}` to close this `{{`"));
            }
            let mut cursor = Cursor { src, pos: open + 2 };
            let (var, format) = cursor.action()?;
            parts.push(Part::Action(var, format));
            pos = cursor.pos;
        }
        if pos < src.len() {
            parts.push(Part::Text(src[pos..].to_string()));
        }
        Ok(Template {
            source: src.to_string(),
            parts,
        })
    }

    /// The text the template was parsed from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The labels the template refers to, each once, in order; for checking that the alert
    /// has them.
    pub fn label_names(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for part in &self.parts {
            if let Part::Action(Var::Label(name), _) = part {
                if !out.contains(&name.as_str()) {
                    out.push(name);
                }
            }
        }
        out
    }

    /// The text for one alert.
    pub fn render(&self, cx: &TemplateContext<'_>) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Action(var, format) => match var {
                    Var::Label(name) => {
                        out.push_str(cx.labels.get(name).map_or("", String::as_str))
                    }
                    Var::Value => out.push_str(&format_number(cx.value, *format)),
                    Var::Threshold => out.push_str(&format_number(cx.threshold, *format)),
                    Var::Rule => out.push_str(cx.rule),
                    Var::Severity => out.push_str(cx.severity),
                },
            }
        }
        out
    }

    /// The template as Go template text for a Prometheus rule's annotations. `$labels.X` and
    /// `$value` stay template actions; the threshold, fixed per rule, is written as a number;
    /// `$rule` and `$severity` read the `alertname` and `severity` labels Prometheus attaches.
    pub fn to_prometheus(&self, threshold: f64) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                // Text never holds `{{` (it would have started an action), so it stays literal.
                Part::Text(t) => out.push_str(t),
                Part::Action(var, format) => match var {
                    Var::Label(name) => out.push_str(&format!("{{{{ $labels.{name} }}}}")),
                    Var::Value => out.push_str(&match format {
                        Format::Plain => "{{ $value }}".to_string(),
                        Format::Fixed(n) => format!("{{{{ $value | printf \"%.{n}f\" }}}}"),
                        Format::HumanizeDuration => "{{ $value | humanizeDuration }}".to_string(),
                    }),
                    Var::Threshold => out.push_str(&format_number(threshold, *format)),
                    Var::Rule => out.push_str("{{ $labels.alertname }}"),
                    Var::Severity => out.push_str("{{ $labels.severity }}"),
                },
            }
        }
        out
    }
}

fn format_number(v: f64, format: Format) -> String {
    match format {
        Format::Plain => format_value(v),
        Format::Fixed(n) => go_fixed(v, n),
        Format::HumanizeDuration => humanize_duration(v),
    }
}

/// Go's `%.Nf`, whose infinities read `+Inf` and `-Inf`.
fn go_fixed(v: f64, decimals: usize) -> String {
    match v {
        v if v.is_nan() => "NaN".into(),
        f64::INFINITY => "+Inf".into(),
        f64::NEG_INFINITY => "-Inf".into(),
        v => format!("{v:.decimals$}"),
    }
}

/// Go's `%.4g`: four significant digits, trailing zeros dropped, an exponent only for very
/// small or large numbers (`1e-06`, `1.235e+04`).
fn go_g4(v: f64) -> String {
    const PREC: i32 = 4;
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "+Inf" } else { "-Inf" }.into();
    }
    if v == 0.0 {
        return if v.is_sign_negative() { "-0" } else { "0" }.into();
    }
    // Rust rounds to the significant digits exactly as Go does; only the layout differs.
    let sci = format!("{:.*e}", (PREC - 1) as usize, v.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let all: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let digits = all.trim_end_matches('0');
    let digits = if digits.is_empty() { "0" } else { digits };
    let nd = digits.len() as i32;
    let dp = exp + 1;
    let mut eprec = PREC;
    if eprec > nd && nd >= dp {
        eprec = nd;
    }
    let mut out = String::new();
    if v < 0.0 {
        out.push('-');
    }
    if exp < -4 || exp >= eprec {
        out.push_str(&digits[..1]);
        if nd > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        out.push_str(&format!(
            "e{}{:02}",
            if exp < 0 { '-' } else { '+' },
            exp.abs()
        ));
    } else if dp <= 0 {
        out.push_str("0.");
        out.push_str(&"0".repeat((-dp) as usize));
        out.push_str(digits);
    } else if dp >= nd {
        out.push_str(digits);
        out.push_str(&"0".repeat((dp - nd) as usize));
    } else {
        out.push_str(&digits[..dp as usize]);
        out.push('.');
        out.push_str(&digits[dp as usize..]);
    }
    out
}

/// Seconds as Prometheus' `humanizeDuration` writes them: `1d 2h 3m 4s`, `1m 1s`, `12.5s`,
/// `500ms`, `1.5us`.
pub fn humanize_duration(v: f64) -> String {
    if !v.is_finite() {
        return go_g4(v);
    }
    if v == 0.0 {
        return format!("{}s", go_g4(v));
    }
    if v.abs() >= 1.0 {
        let sign = if v < 0.0 { "-" } else { "" };
        let v = v.abs();
        // Go's int64(v): whole seconds (saturating here, where Go's result is undefined).
        let whole = v as i64;
        let (days, hours, minutes, seconds) = (
            whole / 86_400,
            whole / 3_600 % 24,
            whole / 60 % 60,
            whole % 60,
        );
        return if days != 0 {
            format!("{sign}{days}d {hours}h {minutes}m {seconds}s")
        } else if hours != 0 {
            format!("{sign}{hours}h {minutes}m {seconds}s")
        } else if minutes != 0 {
            format!("{sign}{minutes}m {seconds}s")
        } else {
            format!("{sign}{}s", go_g4(v))
        };
    }
    let mut v = v;
    let mut prefix = "";
    for p in ["m", "u", "n", "p", "f", "a", "z", "y"] {
        if v.abs() >= 1.0 {
            break;
        }
        prefix = p;
        v *= 1000.0;
    }
    format!("{}{prefix}s", go_g4(v))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn labels() -> BTreeMap<String, String> {
        BTreeMap::from([
            ("agent_id".to_string(), "agent-07".to_string()),
            ("team".to_string(), "agents".to_string()),
        ])
    }

    fn render(src: &str, value: f64) -> String {
        let labels = labels();
        Template::parse(src).expect(src).render(&TemplateContext {
            rule: "AgentTaskFailures",
            severity: "critical",
            labels: &labels,
            value,
            threshold: 0.2,
        })
    }

    #[test]
    fn renders_labels_value_and_the_rule() {
        assert_eq!(
            render(
                "{{ $labels.agent_id }} failed {{ $value }} tasks (more than {{$threshold}}) — {{ $rule }}/{{ $severity }}",
                7.0
            ),
            "agent-07 failed 7 tasks (more than 0.2) — AgentTaskFailures/critical"
        );
        assert_eq!(render("[{{ $labels.missing }}]", 1.0), "[]");
        assert_eq!(render("no actions }} here", 1.0), "no actions }} here");
        assert_eq!(render("", 1.0), "");
        assert_eq!(render("{{$value}}{{$value}}", 0.25), "0.250.25");
    }

    #[test]
    fn printf_in_both_orders() {
        assert_eq!(render("{{ $value | printf \"%.2f\" }}", 0.123456), "0.12");
        assert_eq!(render("{{ printf \"%.1f\" $value }}", 2.25), "2.2");
        assert_eq!(render("{{printf \"%.0f\" $threshold}}", 0.0), "0");
        assert_eq!(render("{{ $threshold|printf \"%.3f\" }}", 0.0), "0.200");
        assert_eq!(render("{{ $value | printf \"%.1f\" }}", f64::NAN), "NaN");
        assert_eq!(
            render("{{ $value | printf \"%.1f\" }}", f64::INFINITY),
            "+Inf"
        );
    }

    #[test]
    fn humanize_duration_matches_prometheus() {
        for (v, text) in [
            (61.5, "1m 1s"),
            (0.5, "500ms"),
            (3.0, "3s"),
            (0.0, "0s"),
            (12.5, "12.5s"),
            (1.23456, "1.235s"),
            (59.99999, "60s"),
            (3661.0, "1h 1m 1s"),
            (90061.0, "1d 1h 1m 1s"),
            (86400.0, "1d 0h 0m 0s"),
            (-61.0, "-1m 1s"),
            (-0.5, "-500ms"),
            (0.00125, "1.25ms"),
            (0.0000015, "1.5us"),
            (0.9999999, "1000ms"),
            (1e-30, "1e-06ys"),
            (f64::NAN, "NaN"),
            (f64::NEG_INFINITY, "-Inf"),
        ] {
            assert_eq!(humanize_duration(v), text, "{v}");
        }
        assert_eq!(render("{{ $value | humanizeDuration }}", 61.5), "1m 1s");
    }

    #[test]
    fn go_g4_layout() {
        for (v, text) in [
            (1234.4, "1234"),
            (12346.0, "1.235e+04"),
            (0.0001, "0.0001"),
            (0.00001234, "1.234e-05"),
            (100.0, "100"),
            (-2.5, "-2.5"),
        ] {
            assert_eq!(go_g4(v), text, "{v}");
        }
    }

    #[test]
    fn label_names_each_once() {
        let t = Template::parse("{{ $labels.a }} {{ $labels.b_2 }} {{ $labels.a }} {{ $value }}")
            .unwrap();
        assert_eq!(t.label_names(), ["a", "b_2"]);
        assert_eq!(
            t.source(),
            "{{ $labels.a }} {{ $labels.b_2 }} {{ $labels.a }} {{ $value }}"
        );
    }

    #[test]
    fn errors_say_where_and_what() {
        for (src, column, expected) in [
            ("x {{ $value", 3, "`}}` to close this `{{`"),
            ("{{ $value }} {{", 14, "`}}` to close this `{{`"),
            ("{{ $value  x }}", 12, "`}}`"),
            ("{{ value }}", 4, ACTION),
            ("{{ $values }}", 4, ACTION),
            ("{{ .Labels.x }}", 4, ACTION),
            ("{{- $value }}", 3, ACTION),
            ("{{ $labels }}", 4, ACTION),
            ("{{ $labels. }}", 12, "a label name after `$labels.`"),
            ("{{ $labels.1a }}", 12, "a label name after `$labels.`"),
            ("{{ $labels.a-b }}", 13, "`}}`"),
            (
                "{{ $labels.a | printf \"%.2f\" }}",
                14,
                "`}}` (only $value and $threshold take `| printf` or `| humanizeDuration`)",
            ),
            (
                "{{ $rule | humanizeDuration }}",
                10,
                "`}}` (only $value and $threshold take `| printf` or `| humanizeDuration`)",
            ),
            (
                "{{ $value | toUpper }}",
                13,
                "`printf \"%.Nf\"` or `humanizeDuration`",
            ),
            ("{{ $value | printf \"%d\" }}", 20, FIXED),
            ("{{ $value | printf \"%.10f\" }}", 20, FIXED),
            ("{{ $value | printf }}", 20, FIXED),
            ("{{ printf \"%.2f\" }}", 18, "`$value` or `$threshold`"),
            (
                "{{ printf \"%.2f\" $rule }}",
                18,
                "`$value` or `$threshold`",
            ),
            (
                "{{ $value | humanizeDuration | printf \"%.2f\" }}",
                30,
                "`}}`",
            ),
            ("é {{ nope }}", 6, ACTION),
        ] {
            let e = Template::parse(src).expect_err(src);
            assert_eq!((e.column, e.expected.as_str()), (column, expected), "{src}");
        }
    }

    #[test]
    fn to_prometheus_keeps_go_syntax_and_fixes_the_threshold() {
        let t = Template::parse(
            "{{ $rule }} ({{ $severity }}): {{ $labels.agent_id }} at {{$value}}, {{ printf \"%.1f\" $value }}, {{ $value | humanizeDuration }} over {{ $threshold }} / {{ $threshold | printf \"%.2f\" }} / {{ $threshold | humanizeDuration }}",
        )
        .unwrap();
        assert_eq!(
            t.to_prometheus(90.0),
            "{{ $labels.alertname }} ({{ $labels.severity }}): {{ $labels.agent_id }} at {{ $value }}, {{ $value | printf \"%.1f\" }}, {{ $value | humanizeDuration }} over 90 / 90.00 / 1m 30s"
        );
        assert_eq!(
            Template::parse("plain }}").unwrap().to_prometheus(1.0),
            "plain }}"
        );
    }

    proptest! {
        #[test]
        fn never_panics(
            p in proptest::collection::vec(
                prop_oneof![
                    Just("{{"), Just("}}"), Just(" "), Just("$labels."), Just("$value"),
                    Just("$threshold"), Just("|"), Just("printf"), Just("\"%.2f\""),
                    Just("\"%."), Just("humanizeDuration"), Just("a"), Just("é"),
                ],
                0..12,
            ),
            v in proptest::num::f64::ANY,
        ) {
            let src = p.concat();
            match Template::parse(&src) {
                Ok(t) => {
                    let labels = BTreeMap::new();
                    let cx = TemplateContext { rule: "r", severity: "info", labels: &labels, value: v, threshold: v };
                    let _ = t.render(&cx);
                    let _ = t.to_prometheus(v);
                }
                Err(e) => prop_assert!(e.column >= 1 && e.column <= src.chars().count() + 1),
            }
        }
    }
}
