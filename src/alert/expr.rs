//! The rule expression language of `[[alerts]]` (`expr = "..."`): its syntax tree and parser.
//!
//! # Grammar
//! ```text
//! rule      := value_rule | absent_rule
//! value_rule:= arith [ "by" "(" labels ")" ] [ "over" DURATION ] CMP NUMBER [ "for" DURATION ]
//! absent_rule := "absent" "(" CONDITION ")" [ "by" "(" paths ")" ] "for" DURATION
//! arith     := term { ("+" | "-") term }
//! term      := factor { ("*" | "/") factor }
//! factor    := NUMBER | "(" arith ")" | FUNC "(" METRIC ")" | METRIC
//! FUNC      := count | sum | rate | avg | min | max | last | pNN  (p50, p95, p99, p99.9 …)
//! CMP       := > | >= | < | <= | == | !=
//! DURATION  := NUMBER ("ms" | "s" | "m" | "h" | "d"), also compound: 1h30m
//! ```
//! `by` and `over` belong to the whole arithmetic expression: every metric term is grouped by
//! the same labels and aggregated over the same window, so a ratio reads
//! `count(failures) / (count(successes) + count(failures)) by (agent_id) over 10m > 0.2`.
//! A CONDITION is the pipeline's condition language (see `derive::condition`); its text is
//! kept and compiled by the caller. To find its end, the parser skips nested parentheses and
//! strings the way that language reads them: `\` escapes only inside double quotes.
//!
//! Whitespace may separate any two tokens. `by`, `over` and `for` are keywords, not metrics.
//! A duration is written without spaces, units from largest to smallest, each once (as
//! Prometheus writes them), so [`format_duration`] gives back a text that parses again.
//!
//! Semantics (checked by the caller, which knows the metrics' kinds) live in `alert::rule`.
//!
//! The tree is bounded, so that checking, evaluating and dropping it (all recursive) cannot
//! overflow the stack: parentheses nest at most [`MAX_DEPTH`] deep and an expression has at most
//! [`MAX_OPERATORS`] arithmetic operators (a chain `a + a + ...` is a tree as deep as it is
//! long). Both are counted in the parser's state; past them the error has the column. The
//! condition of `absent(...)` has its own limit (`derive::condition`).

use std::fmt;
use std::time::Duration;

use nom::branch::alt;
use nom::bytes::complete::{tag, take_while, take_while1};
use nom::character::complete::{char, multispace0, one_of, satisfy};
use nom::combinator::{opt, recognize};
use nom::error::{ErrorKind, ParseError};
use nom::sequence::{pair, preceded};
use nom::{IResult, Parser};
use std::cell::Cell;

/// How deeply parentheses may nest in a rule's arithmetic.
pub const MAX_DEPTH: usize = 64;
/// How many `+ - * /` a rule's arithmetic may have.
pub const MAX_OPERATORS: usize = 256;

/// How a metric term is aggregated over the window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Func {
    /// Number of updates (counter increments, histogram observations, gauge sets).
    Count,
    /// Sum of the values (counter increments, observed values, set values).
    Sum,
    /// Sum per second of window.
    Rate,
    /// Sum / count.
    Avg,
    Min,
    Max,
    /// The last value set (gauges); a bare metric name means `last`.
    Last,
    /// A quantile in (0, 1) of the observed values (histograms), from `pNN`: p95 → 0.95.
    Quantile(f64),
}

impl fmt::Display for Func {
    /// The function as written in a rule: `count`, `p95`, `p99.9`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Func::Count => f.write_str("count"),
            Func::Sum => f.write_str("sum"),
            Func::Rate => f.write_str("rate"),
            Func::Avg => f.write_str("avg"),
            Func::Min => f.write_str("min"),
            Func::Max => f.write_str("max"),
            Func::Last => f.write_str("last"),
            Func::Quantile(q) => {
                // 0.999 * 100 is 99.89999999999999 in binary: round the noise away.
                let p = format!("{:.6}", q * 100.0);
                write!(f, "p{}", p.trim_end_matches('0').trim_end_matches('.'))
            }
        }
    }
}

/// A comparison against the threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Gt,
    Ge,
    Lt,
    Le,
    Eq,
    Ne,
}

impl Cmp {
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Cmp::Gt => value > threshold,
            Cmp::Ge => value >= threshold,
            Cmp::Lt => value < threshold,
            Cmp::Le => value <= threshold,
            Cmp::Eq => value == threshold,
            Cmp::Ne => value != threshold,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Cmp::Gt => ">",
            Cmp::Ge => ">=",
            Cmp::Lt => "<",
            Cmp::Le => "<=",
            Cmp::Eq => "==",
            Cmp::Ne => "!=",
        }
    }
}

/// Arithmetic over metric terms.
#[derive(Debug, Clone, PartialEq)]
pub enum Arith {
    Num(f64),
    /// `func(metric)`; `offset` is the byte offset of the metric name in the expression text
    /// (for error columns).
    Term {
        func: Func,
        metric: String,
        offset: usize,
    },
    Add(Box<Arith>, Box<Arith>),
    Sub(Box<Arith>, Box<Arith>),
    Mul(Box<Arith>, Box<Arith>),
    Div(Box<Arith>, Box<Arith>),
}

impl Arith {
    /// The metric terms, left to right: function, metric name, byte offset of the name.
    pub fn terms(&self) -> impl Iterator<Item = (Func, &str, usize)> + '_ {
        let mut out = Vec::new();
        self.collect_terms(&mut out);
        out.into_iter()
    }

    fn collect_terms<'a>(&'a self, out: &mut Vec<(Func, &'a str, usize)>) {
        match self {
            Arith::Num(_) => {}
            Arith::Term {
                func,
                metric,
                offset,
            } => out.push((*func, metric, *offset)),
            Arith::Add(a, b) | Arith::Sub(a, b) | Arith::Mul(a, b) | Arith::Div(a, b) => {
                a.collect_terms(out);
                b.collect_terms(out);
            }
        }
    }
}

/// A parsed rule expression.
#[derive(Debug, Clone, PartialEq)]
pub enum RuleExpr {
    /// `arith [by (...)] [over D] CMP N [for D]`.
    Value {
        arith: Arith,
        /// `None`: no `by`, each series of the metric is its own alert (like PromQL without an
        /// aggregation); `Some(vec![])`: `by ()`, one alert over all series.
        by: Option<Vec<String>>,
        over: Option<Duration>,
        cmp: Cmp,
        threshold: f64,
        for_: Option<Duration>,
    },
    /// `absent(CONDITION) [by (paths)] for D`.
    Absent {
        /// The condition's text, as written between the parentheses.
        condition: String,
        /// Byte offset of the condition's text in the expression (for error columns).
        condition_offset: usize,
        /// Event field paths whose values make the groups (`component`, `metadata.agent_id`).
        by: Vec<String>,
        for_: Duration,
    },
}

impl RuleExpr {
    /// The metrics a value rule names, each once, in order of appearance (none for `absent`).
    pub fn metrics(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        if let RuleExpr::Value { arith, .. } = self {
            for (_, m, _) in arith.terms() {
                if !out.contains(&m) {
                    out.push(m);
                }
            }
        }
        out
    }

    /// How long the condition must hold before the alert fires (`None`: at once).
    pub fn for_duration(&self) -> Option<Duration> {
        match self {
            RuleExpr::Value { for_, .. } => *for_,
            RuleExpr::Absent { for_, .. } => Some(*for_),
        }
    }
}

/// A syntax error: the 1-based column (in characters) and what was expected there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at column {column}: expected {expected}")]
pub struct ExprError {
    pub column: usize,
    pub expected: String,
}

const DURATION: &str = "a duration such as 30s, 5m or 1h";
const COMPARISON: &str = "a comparison (>, >=, <, <=, ==, !=) and a threshold";
const FUNCTION: &str = "a function: count, sum, rate, avg, min, max, last or pNN";
const FACTOR: &str = "a metric, a function such as count(metric), a number or `(`";

#[derive(Debug)]
struct PErr<'a> {
    input: &'a str,
    expected: &'static str,
}

impl<'a> ParseError<&'a str> for PErr<'a> {
    fn from_error_kind(input: &'a str, _kind: ErrorKind) -> Self {
        PErr {
            input,
            expected: "",
        }
    }
    fn append(_input: &'a str, _kind: ErrorKind, other: Self) -> Self {
        other
    }
}

type Res<'a, O> = IResult<&'a str, O, PErr<'a>>;

fn fail<'a>(input: &'a str, expected: &'static str) -> nom::Err<PErr<'a>> {
    nom::Err::Failure(PErr { input, expected })
}

/// Runs `p`; a failure becomes a hard failure saying what was expected at that point.
fn expect<'a, O>(
    what: &'static str,
    mut p: impl Parser<&'a str, Output = O, Error = PErr<'a>>,
) -> impl FnMut(&'a str) -> Res<'a, O> {
    move |i: &'a str| match p.parse(i) {
        Ok(v) => Ok(v),
        Err(nom::Err::Error(e)) | Err(nom::Err::Failure(e)) => Err(fail(
            e.input,
            if e.expected.is_empty() {
                what
            } else {
                e.expected
            },
        )),
        Err(e) => Err(e),
    }
}

fn ws<'a, O>(
    p: impl Parser<&'a str, Output = O, Error = PErr<'a>>,
) -> impl Parser<&'a str, Output = O, Error = PErr<'a>> {
    preceded(multispace0, p)
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// `word`, not followed by a character that would make it a longer name (`format` is not
/// `for`).
fn keyword<'a>(word: &'static str) -> impl FnMut(&'a str) -> Res<'a, &'a str> {
    move |i: &'a str| {
        let (rest, w) = tag(word).parse(i)?;
        match rest.chars().next() {
            Some(c) if is_name_char(c) => {
                Err(nom::Err::Error(PErr::from_error_kind(i, ErrorKind::Tag)))
            }
            _ => Ok((rest, w)),
        }
    }
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`, Prometheus' metric names.
fn metric_name(i: &str) -> Res<'_, &str> {
    recognize(pair(
        satisfy(|c: char| c.is_ascii_alphabetic() || c == '_' || c == ':'),
        take_while(is_name_char),
    ))
    .parse(i)
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`, Prometheus' label names.
fn label_name(i: &str) -> Res<'_, &str> {
    recognize(pair(
        satisfy(|c: char| c.is_ascii_alphabetic() || c == '_'),
        take_while(|c: char| c.is_ascii_alphanumeric() || c == '_'),
    ))
    .parse(i)
}

/// An event field path: `component`, `metadata.agent_id`, `@timestamp`, `x-request-id`.
fn field_path(i: &str) -> Res<'_, &str> {
    take_while1(|c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '@' | '-')).parse(i)
}

fn digits0(i: &str) -> Res<'_, &str> {
    take_while(|c: char| c.is_ascii_digit()).parse(i)
}

fn digits1(i: &str) -> Res<'_, &str> {
    take_while1(|c: char| c.is_ascii_digit()).parse(i)
}

/// A decimal number: optional sign, fraction, exponent (`-1.5e3`). Never infinite.
fn number(i: &str) -> Res<'_, f64> {
    // take_while rather than digit0/digit1: under `recognize`, nom 8.0.0 measures
    // `char('.')` + `digit0` at the end of the input one character short.
    let (rest, text) = recognize((
        opt(one_of("+-")),
        alt((
            recognize(pair(digits1, opt(pair(char('.'), digits0)))),
            recognize(pair(char('.'), digits1)),
        )),
        opt((one_of("eE"), opt(one_of("+-")), digits1)),
    ))
    .parse(i)?;
    match text.parse::<f64>() {
        Ok(n) if n.is_finite() => Ok((rest, n)),
        Ok(_) => Err(fail(i, "a number of at most about 1.8e308")),
        Err(_) => Err(nom::Err::Error(PErr::from_error_kind(i, ErrorKind::Float))),
    }
}

fn comparison(i: &str) -> Res<'_, Cmp> {
    alt((
        tag(">=").map(|_| Cmp::Ge),
        tag("<=").map(|_| Cmp::Le),
        tag("==").map(|_| Cmp::Eq),
        tag("!=").map(|_| Cmp::Ne),
        tag(">").map(|_| Cmp::Gt),
        tag("<").map(|_| Cmp::Lt),
    ))
    .parse(i)
}

/// The longest duration at the start of `i`, or what was expected instead.
fn duration_prefix(i: &str) -> Result<(&str, Duration), &'static str> {
    // (unit, milliseconds), matched in this order so `ms` is not read as `m`.
    const UNITS: [(&str, u64); 5] = [
        ("ms", 1),
        ("s", 1_000),
        ("m", 60_000),
        ("h", 3_600_000),
        ("d", 86_400_000),
    ];
    let mut rest = i;
    let mut total: u64 = 0;
    let mut last_unit: Option<u64> = None;
    loop {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            if last_unit.is_none() {
                return Err(DURATION);
            }
            break;
        }
        let Some(&(unit, ms)) = UNITS.iter().find(|(u, _)| rest[digits..].starts_with(u)) else {
            return Err(DURATION);
        };
        if last_unit.is_some_and(|prev| ms >= prev) {
            return Err("a duration with its units from largest to smallest, each once (1h30m)");
        }
        let n: u64 = rest[..digits].parse().map_err(|_| "a shorter duration")?;
        total = n
            .checked_mul(ms)
            .and_then(|x| total.checked_add(x))
            .ok_or("a shorter duration")?;
        last_unit = Some(ms);
        rest = &rest[digits + unit.len()..];
    }
    if rest.starts_with(|c: char| is_name_char(c) || c == '.') {
        return Err(DURATION);
    }
    if total == 0 {
        return Err("a duration above zero");
    }
    Ok((rest, Duration::from_millis(total)))
}

fn duration(i: &str) -> Res<'_, Duration> {
    duration_prefix(i).map_err(|e| fail(i, e))
}

/// Parses a duration such as `30s`, `5m`, `1h30m`, `500ms`, `2d`.
pub fn parse_duration(src: &str) -> Result<Duration, String> {
    let text = src.trim();
    match duration_prefix(text) {
        Ok(("", d)) => Ok(d),
        Ok(_) => Err(format!("expected {DURATION}, found {src:?}")),
        Err(e) => Err(format!("expected {e}, found {src:?}")),
    }
}

/// Writes `d` as a duration [`parse_duration`] reads and Prometheus accepts (`1h30m`, `90s` is
/// `1m30s`), at millisecond resolution; below a millisecond, `0ms`.
pub fn format_duration(d: Duration) -> String {
    let mut ms = d.as_millis();
    if ms == 0 {
        return "0ms".into();
    }
    let mut out = String::new();
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ] {
        if ms >= size {
            out.push_str(&format!("{}{unit}", ms / size));
            ms %= size;
        }
    }
    out
}

struct Rules<'s> {
    src: &'s str,
    /// Parentheses entered and not yet left.
    depth: Cell<usize>,
    /// Arithmetic operators read so far.
    operators: Cell<usize>,
}

impl<'s> Rules<'s> {
    /// Counts one more operator (at `at`); past [`MAX_OPERATORS`] a located failure.
    fn operator(&self, at: &'s str) -> Result<(), nom::Err<PErr<'s>>> {
        let n = self.operators.get() + 1;
        if n > MAX_OPERATORS {
            return Err(fail(
                at,
                "at most 256 arithmetic operators (the expression has more)",
            ));
        }
        self.operators.set(n);
        Ok(())
    }

    fn offset(&self, i: &'s str) -> usize {
        self.src.len() - i.len()
    }

    fn rule(&self, i: &'s str) -> Res<'s, RuleExpr> {
        let (i, _) = multispace0(i)?;
        let absent = (keyword("absent"), multispace0, char::<_, PErr>('(')).parse(i);
        let (i, rule) = match absent {
            Ok((rest, _)) => self.absent(rest)?,
            Err(_) => self.value(i)?,
        };
        let (i, _) = multispace0(i)?;
        if !i.is_empty() {
            return Err(fail(i, "the end of the expression"));
        }
        Ok((i, rule))
    }

    fn value(&self, start: &'s str) -> Res<'s, RuleExpr> {
        let (i, arith) = self.arith(start)?;
        if arith.terms().next().is_none() {
            return Err(fail(start, "a metric"));
        }
        let (i, by) = match ws(keyword("by")).parse(i) {
            Ok((rest, _)) => {
                let (rest, labels) = self.list(rest, label_name, "a label name or `)`")?;
                (rest, Some(labels))
            }
            Err(_) => (i, None),
        };
        let (i, over) = match ws(keyword("over")).parse(i) {
            Ok((rest, _)) => {
                let (rest, d) = ws(duration).parse(rest)?;
                if by.is_none() && ws(keyword("by")).parse(rest).is_ok() {
                    let (at, _) = multispace0(rest)?;
                    return Err(fail(
                        at,
                        "a comparison (>, >=, <, <=, ==, !=) and a threshold; `by (...)` goes before `over`",
                    ));
                }
                (rest, Some(d))
            }
            Err(_) => (i, None),
        };
        let (i, cmp) = expect(COMPARISON, ws(comparison)).parse(i)?;
        let (i, threshold) = expect("a number (the threshold)", ws(number)).parse(i)?;
        let (i, for_) = match ws(keyword("for")).parse(i) {
            Ok((rest, _)) => {
                let (rest, d) = ws(duration).parse(rest)?;
                (rest, Some(d))
            }
            Err(_) => (i, None),
        };
        Ok((
            i,
            RuleExpr::Value {
                arith,
                by,
                over,
                cmp,
                threshold,
                for_,
            },
        ))
    }

    /// After `absent(`: the condition's text up to the matching `)`, then `by` and `for`.
    fn absent(&self, i: &'s str) -> Res<'s, RuleExpr> {
        let mut depth = 0usize;
        let mut quote: Option<char> = None;
        let mut escaped = false;
        let mut end = None;
        for (at, c) in i.char_indices() {
            if let Some(q) = quote {
                if escaped {
                    escaped = false;
                } else if c == '\\' && q == '"' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                }
                continue;
            }
            match c {
                '"' | '\'' => quote = Some(c),
                '(' => depth += 1,
                ')' if depth == 0 => {
                    end = Some(at);
                    break;
                }
                ')' => depth -= 1,
                _ => {}
            }
        }
        let Some(end) = end else {
            let at = &i[i.len()..];
            return Err(fail(
                at,
                if quote.is_some() {
                    "a closing quote"
                } else {
                    "`)` to close `absent(`"
                },
            ));
        };
        let text = &i[..end];
        let condition = text.trim();
        if condition.is_empty() {
            return Err(fail(
                &i[end..],
                "a condition, such as component == \"Scheduler\"",
            ));
        }
        let condition_offset = self.offset(i) + (text.len() - text.trim_start().len());
        let i = &i[end + 1..];
        let (i, by) = match ws(keyword("by")).parse(i) {
            Ok((rest, _)) => self.list(rest, field_path, "a field path or `)`")?,
            Err(_) => (i, Vec::new()),
        };
        let (i, _) = expect(
            "`for` and a duration: absent(...) needs how long",
            ws(keyword("for")),
        )
        .parse(i)?;
        let (i, for_) = ws(duration).parse(i)?;
        Ok((
            i,
            RuleExpr::Absent {
                condition: condition.to_string(),
                condition_offset,
                by,
                for_,
            },
        ))
    }

    /// `( item, item, ... )`, possibly empty, a trailing comma allowed; each item once.
    fn list(
        &self,
        i: &'s str,
        item: fn(&'s str) -> Res<'s, &'s str>,
        expected: &'static str,
    ) -> Res<'s, Vec<String>> {
        let (mut i, _) = expect("`(`", ws(char('('))).parse(i)?;
        let mut out: Vec<String> = Vec::new();
        loop {
            let (rest, _) = multispace0(i)?;
            if let Some(rest) = rest.strip_prefix(')') {
                return Ok((rest, out));
            }
            let (after, name) = expect(expected, item).parse(rest)?;
            if out.iter().any(|n| n == name) {
                return Err(fail(rest, "a name not listed yet"));
            }
            out.push(name.to_string());
            let (after, _) = multispace0(after)?;
            if let Some(after) = after.strip_prefix(',') {
                i = after;
            } else if let Some(after) = after.strip_prefix(')') {
                return Ok((after, out));
            } else {
                return Err(fail(after, "`,` or `)`"));
            }
        }
    }

    fn arith(&self, i: &'s str) -> Res<'s, Arith> {
        let (mut i, mut acc) = self.term(i)?;
        loop {
            let (rest, _) = multispace0(i)?;
            let op = match rest.chars().next() {
                Some(c @ ('+' | '-')) => c,
                _ => return Ok((i, acc)),
            };
            self.operator(rest)?;
            let (rest, rhs) = self.term(&rest[1..])?;
            acc = if op == '+' {
                Arith::Add(Box::new(acc), Box::new(rhs))
            } else {
                Arith::Sub(Box::new(acc), Box::new(rhs))
            };
            i = rest;
        }
    }

    fn term(&self, i: &'s str) -> Res<'s, Arith> {
        let (mut i, mut acc) = self.factor(i)?;
        loop {
            let (rest, _) = multispace0(i)?;
            let op = match rest.chars().next() {
                Some(c @ ('*' | '/')) => c,
                _ => return Ok((i, acc)),
            };
            self.operator(rest)?;
            let (rest, rhs) = self.factor(&rest[1..])?;
            acc = if op == '*' {
                Arith::Mul(Box::new(acc), Box::new(rhs))
            } else {
                Arith::Div(Box::new(acc), Box::new(rhs))
            };
            i = rest;
        }
    }

    fn factor(&self, i: &'s str) -> Res<'s, Arith> {
        let (i, _) = multispace0(i)?;
        if let Some(rest) = i.strip_prefix('(') {
            let depth = self.depth.get();
            if depth >= MAX_DEPTH {
                return Err(fail(
                    i,
                    "at most 64 nested `(` (the expression nests deeper)",
                ));
            }
            self.depth.set(depth + 1);
            let (rest, inner) = self.arith(rest)?;
            self.depth.set(depth);
            let (rest, _) = expect("`)` or an operator (+, -, *, /)", ws(char(')'))).parse(rest)?;
            return Ok((rest, inner));
        }
        match number(i) {
            Ok((rest, n)) => return Ok((rest, Arith::Num(n))),
            Err(e @ nom::Err::Failure(_)) => return Err(e),
            Err(_) => {}
        }
        if let Some((rest, q)) = self.quantile(i)? {
            return self.call(rest, Func::Quantile(q));
        }
        let (after, name) = expect(FACTOR, metric_name).parse(i)?;
        let (paren, _) = multispace0(after)?;
        if let Some(rest) = paren.strip_prefix('(') {
            let func = match name {
                "count" => Func::Count,
                "sum" => Func::Sum,
                "rate" => Func::Rate,
                "avg" => Func::Avg,
                "min" => Func::Min,
                "max" => Func::Max,
                "last" => Func::Last,
                _ => return Err(fail(i, FUNCTION)),
            };
            return self.call(rest, func);
        }
        if matches!(name, "by" | "over" | "for") {
            return Err(fail(i, FACTOR));
        }
        Ok((
            after,
            Arith::Term {
                func: Func::Last,
                metric: name.to_string(),
                offset: self.offset(i),
            },
        ))
    }

    /// `pNN (`, the quantile and what follows the `(`; `None` when `i` is not a quantile
    /// call (`p95` alone may be a metric).
    fn quantile(&self, i: &'s str) -> Result<Option<(&'s str, f64)>, nom::Err<PErr<'s>>> {
        let Ok((rest, digits)) = preceded(
            char::<_, PErr>('p'),
            recognize(pair(digits1, opt(pair(char('.'), digits1)))),
        )
        .parse(i) else {
            return Ok(None);
        };
        let Ok((rest, _)) = (multispace0, char::<_, PErr>('(')).parse(rest) else {
            return Ok(None);
        };
        // `99.9e-2` is read as the decimal 0.999, where `99.9 / 100` would be off by an ulp.
        let q: f64 = format!("{digits}e-2")
            .parse()
            .map_err(|_| fail(i, FUNCTION))?;
        if !(q > 0.0 && q < 1.0) {
            return Err(fail(
                i,
                "a quantile strictly between p0 and p100, such as p50, p95 or p99.9",
            ));
        }
        Ok(Some((rest, q)))
    }

    /// After `func(`: the metric and `)`.
    fn call(&self, i: &'s str, func: Func) -> Res<'s, Arith> {
        let (i, _) = multispace0(i)?;
        let offset = self.offset(i);
        let (i, metric) = expect("a metric name", metric_name).parse(i)?;
        let (i, _) = expect("`)`", ws(char(')'))).parse(i)?;
        Ok((
            i,
            Arith::Term {
                func,
                metric: metric.to_string(),
                offset,
            },
        ))
    }
}

fn column(src: &str, byte_offset: usize) -> usize {
    src[..byte_offset.min(src.len())].chars().count() + 1
}

/// Parses a rule expression.
pub fn parse(src: &str) -> Result<RuleExpr, ExprError> {
    let rules = Rules {
        src,
        depth: Cell::new(0),
        operators: Cell::new(0),
    };
    match rules.rule(src) {
        Ok((_, rule)) => Ok(rule),
        Err(nom::Err::Error(e)) | Err(nom::Err::Failure(e)) => Err(ExprError {
            column: column(src, src.len() - e.input.len()),
            expected: if e.expected.is_empty() {
                "a rule expression".into()
            } else {
                e.expected.into()
            },
        }),
        Err(nom::Err::Incomplete(_)) => Err(ExprError {
            column: column(src, src.len()),
            expected: "more input".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn term(func: Func, metric: &str, offset: usize) -> Arith {
        Arith::Term {
            func,
            metric: metric.into(),
            offset,
        }
    }

    fn b(a: Arith) -> Box<Arith> {
        Box::new(a)
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn err(src: &str) -> (usize, String) {
        let e = parse(src).expect_err(src);
        (e.column, e.expected)
    }

    #[test]
    fn seed_rules() {
        assert_eq!(
            parse("count(agent_task_failure_total) by (agent_id) over 5m > 5").unwrap(),
            RuleExpr::Value {
                arith: term(Func::Count, "agent_task_failure_total", 6),
                by: Some(vec!["agent_id".into()]),
                over: Some(secs(300)),
                cmp: Cmp::Gt,
                threshold: 5.0,
                for_: None,
            }
        );
        assert_eq!(
            parse("agent_queue_depth > 100 for 2m").unwrap(),
            RuleExpr::Value {
                arith: term(Func::Last, "agent_queue_depth", 0),
                by: None,
                over: None,
                cmp: Cmp::Gt,
                threshold: 100.0,
                for_: Some(secs(120)),
            }
        );
        assert_eq!(
            parse("p95(agent_task_duration_seconds) over 10m > 60 for 10m").unwrap(),
            RuleExpr::Value {
                arith: term(Func::Quantile(0.95), "agent_task_duration_seconds", 4),
                by: None,
                over: Some(secs(600)),
                cmp: Cmp::Gt,
                threshold: 60.0,
                for_: Some(secs(600)),
            }
        );
        assert_eq!(
            parse(r#"absent(component == "Scheduler") for 5m"#).unwrap(),
            RuleExpr::Absent {
                condition: r#"component == "Scheduler""#.into(),
                condition_offset: 7,
                by: vec![],
                for_: secs(300),
            }
        );
    }

    #[test]
    fn ratio_groups_every_term() {
        let src = "count(agent_task_failure_total) / (count(agent_task_success_total) + count(agent_task_failure_total)) by (agent_id) over 10m > 0.2";
        let rule = parse(src).unwrap();
        assert_eq!(
            rule,
            RuleExpr::Value {
                arith: Arith::Div(
                    b(term(Func::Count, "agent_task_failure_total", 6)),
                    b(Arith::Add(
                        b(term(Func::Count, "agent_task_success_total", 41)),
                        b(term(Func::Count, "agent_task_failure_total", 75)),
                    )),
                ),
                by: Some(vec!["agent_id".into()]),
                over: Some(secs(600)),
                cmp: Cmp::Gt,
                threshold: 0.2,
                for_: None,
            }
        );
        assert_eq!(
            rule.metrics(),
            ["agent_task_failure_total", "agent_task_success_total"]
        );
        let RuleExpr::Value { arith, .. } = &rule else {
            unreachable!()
        };
        for (_, metric, offset) in arith.terms() {
            assert_eq!(&src[offset..offset + metric.len()], metric);
        }
    }

    #[test]
    fn absent_by_field_paths() {
        assert_eq!(
            parse(r#"absent(level != "DEBUG") by (component) for 2m"#).unwrap(),
            RuleExpr::Absent {
                condition: r#"level != "DEBUG""#.into(),
                condition_offset: 7,
                by: vec!["component".into()],
                for_: secs(120),
            }
        );
        assert_eq!(
            parse(r#"absent( message == "heartbeat" ) by (metadata.agent_id, @host, x-id) for 1m"#)
                .unwrap(),
            RuleExpr::Absent {
                condition: r#"message == "heartbeat""#.into(),
                condition_offset: 8,
                by: vec!["metadata.agent_id".into(), "@host".into(), "x-id".into()],
                for_: secs(60),
            }
        );
    }

    #[test]
    fn absent_condition_skips_parentheses_and_strings() {
        let src = r#"absent((a == ")" || b == 'x)') && (c =~ "\"(" || exists(d))) for 30s"#;
        let RuleExpr::Absent {
            condition,
            condition_offset,
            ..
        } = parse(src).unwrap()
        else {
            panic!("not absent")
        };
        assert_eq!(
            condition,
            r#"(a == ")" || b == 'x)') && (c =~ "\"(" || exists(d))"#
        );
        assert_eq!(&src[condition_offset..condition_offset + 2], "(a");
        // Single quotes have no escapes in the condition language: `'a\'` is a whole string.
        let RuleExpr::Absent { condition, .. } = parse(r"absent(p == 'a\') for 1m").unwrap() else {
            panic!("not absent")
        };
        assert_eq!(condition, r"p == 'a\'");
        // Offsets count bytes, columns characters.
        let RuleExpr::Absent {
            condition_offset, ..
        } = parse("absent(  é == 'x') for 1m").unwrap()
        else {
            panic!("not absent")
        };
        assert_eq!(condition_offset, 9);
    }

    #[test]
    fn grammar_doc_examples() {
        for (src, func) in [
            ("count(x) over 1m > 1", Func::Count),
            ("sum(x) over 1m > 1", Func::Sum),
            ("rate(x) over 1m > 1", Func::Rate),
            ("avg(x) over 1m > 1", Func::Avg),
            ("min(x) over 1m > 1", Func::Min),
            ("max(x) over 1m > 1", Func::Max),
            ("last(x) over 1m > 1", Func::Last),
            ("x > 1", Func::Last),
            ("p50(x) over 1m > 1", Func::Quantile(0.5)),
            ("p95(x) over 1m > 1", Func::Quantile(0.95)),
            ("p99(x) over 1m > 1", Func::Quantile(0.99)),
            ("p99.9(x) over 1m > 1", Func::Quantile(0.999)),
        ] {
            let Ok(RuleExpr::Value { arith, .. }) = parse(src) else {
                panic!("{src}")
            };
            assert_eq!(arith.terms().next().map(|t| t.0), Some(func), "{src}");
        }
        for (src, cmp) in [
            ("x > 1", Cmp::Gt),
            ("x >= 1", Cmp::Ge),
            ("x < 1", Cmp::Lt),
            ("x <= 1", Cmp::Le),
            ("x == 1", Cmp::Eq),
            ("x != 1", Cmp::Ne),
        ] {
            let Ok(RuleExpr::Value { cmp: got, .. }) = parse(src) else {
                panic!("{src}")
            };
            assert_eq!(got, cmp, "{src}");
        }
        for (src, over) in [
            ("count(x) over 30s > 1", 30_000),
            ("count(x) over 500ms > 1", 500),
            ("count(x) over 1h30m > 1", 5_400_000),
            ("count(x) over 2d > 1", 172_800_000),
        ] {
            let Ok(RuleExpr::Value { over: got, .. }) = parse(src) else {
                panic!("{src}")
            };
            assert_eq!(got, Some(Duration::from_millis(over)), "{src}");
        }
    }

    #[test]
    fn precedence_and_numbers() {
        let arith = |src: &str| match parse(src).unwrap() {
            RuleExpr::Value { arith, .. } => arith,
            other => panic!("{other:?}"),
        };
        // * binds tighter than +, both associate to the left.
        assert_eq!(
            arith("a + b * 2 - c / d / 4 > 0"),
            Arith::Sub(
                b(Arith::Add(
                    b(term(Func::Last, "a", 0)),
                    b(Arith::Mul(b(term(Func::Last, "b", 4)), b(Arith::Num(2.0)))),
                )),
                b(Arith::Div(
                    b(Arith::Div(
                        b(term(Func::Last, "c", 12)),
                        b(term(Func::Last, "d", 16)),
                    )),
                    b(Arith::Num(4.0)),
                )),
            )
        );
        assert_eq!(
            arith("(a+b)*2>0"),
            Arith::Mul(
                b(Arith::Add(
                    b(term(Func::Last, "a", 1)),
                    b(term(Func::Last, "b", 3))
                )),
                b(Arith::Num(2.0)),
            )
        );
        assert_eq!(
            arith("a - -1.5e3 > 0"),
            Arith::Sub(b(term(Func::Last, "a", 0)), b(Arith::Num(-1500.0)))
        );
        let threshold = |src: &str| match parse(src).unwrap() {
            RuleExpr::Value { threshold, .. } => threshold,
            other => panic!("{other:?}"),
        };
        assert_eq!(threshold("a > -2"), -2.0);
        assert_eq!(threshold("a > +2.5"), 2.5);
        assert_eq!(threshold("a > .5"), 0.5);
        assert_eq!(threshold("a > 1e3"), 1000.0);
        assert_eq!(threshold("a > 2E-1"), 0.2);
        assert_eq!(threshold("a > 2."), 2.0);
        assert_eq!(threshold("a > 0.25"), 0.25);
        assert_eq!(threshold("a > 0.25 "), 0.25);
        assert_eq!(threshold("a>1.5e+2"), 150.0);
    }

    #[test]
    fn whitespace_anywhere_and_names() {
        assert_eq!(
            parse("  count ( ns:x_y ) by ( a , b , ) over 5m>=1 for 1h30m  ").unwrap(),
            RuleExpr::Value {
                arith: term(Func::Count, "ns:x_y", 10),
                by: Some(vec!["a".into(), "b".into()]),
                over: Some(secs(300)),
                cmp: Cmp::Ge,
                threshold: 1.0,
                for_: Some(secs(5400)),
            }
        );
        let Ok(RuleExpr::Value { by, .. }) = parse("sum(x) by () over 1m > 1") else {
            panic!()
        };
        assert_eq!(by, Some(vec![]));
        // Keywords end at a name boundary: `format` and `byte` are metrics.
        assert!(matches!(
            parse("format + byte > 1").unwrap(),
            RuleExpr::Value { by: None, .. }
        ));
        // A metric named `count` (no parenthesis) is a gauge read with `last`.
        assert_eq!(parse("count > 1").unwrap().metrics(), ["count"]);
        assert_eq!(parse("p95 > 1").unwrap().metrics(), ["p95"]);
    }

    #[test]
    fn errors_say_where_and_what() {
        let cases: &[(&str, usize, &str)] = &[
            ("count(x) over 5 > 1", 15, DURATION),
            ("count(x) over 5x > 1", 15, DURATION),
            ("count(x) over 0s > 1", 15, "a duration above zero"),
            ("count(x) over > 1", 15, DURATION),
            (
                "count(x) over 30m1h > 1",
                15,
                "a duration with its units from largest to smallest, each once (1h30m)",
            ),
            ("count(x) over 5m", 17, COMPARISON),
            ("count(x) over 5m 5", 18, COMPARISON),
            ("count(x) = 5", 10, COMPARISON),
            ("count(x) > ", 12, "a number (the threshold)"),
            ("count(x) > five", 12, "a number (the threshold)"),
            ("count(x) > 5 for", 17, DURATION),
            ("count(x) > 5 for 2", 18, DURATION),
            ("count(x) > 5 garbage", 14, "the end of the expression"),
            ("count(x) > 5 for 1m 5m", 21, "the end of the expression"),
            ("x > 5m", 6, "the end of the expression"),
            ("cnt(x) over 5m > 1", 1, FUNCTION),
            ("a + foo(x) > 1", 5, FUNCTION),
            ("absent + absent(x) > 1", 10, FUNCTION),
            ("p0(x) over 1m > 1", 1, "a quantile strictly between p0 and p100, such as p50, p95 or p99.9"),
            ("p100(x) over 1m > 1", 1, "a quantile strictly between p0 and p100, such as p50, p95 or p99.9"),
            ("count() > 1", 7, "a metric name"),
            ("count(x > 1", 9, "`)`"),
            ("(a + b > 1", 8, "`)` or an operator (+, -, *, /)"),
            ("a + > 1", 5, FACTOR),
            ("", 1, FACTOR),
            ("   ", 4, FACTOR),
            ("> 1", 1, FACTOR),
            ("by > 1", 1, FACTOR),
            ("1 + 2 > 3", 1, "a metric"),
            ("(2) > 3", 1, "a metric"),
            ("x by agent_id > 1", 6, "`(`"),
            ("x by (agent_id > 1", 16, "`,` or `)`"),
            ("x by (1a) > 1", 7, "a label name or `)`"),
            ("x by (a.b) > 1", 8, "`,` or `)`"),
            ("x by (a, a) > 1", 10, "a name not listed yet"),
            ("x over 1m by (a) > 1", 11, "a comparison (>, >=, <, <=, ==, !=) and a threshold; `by (...)` goes before `over`"),
            ("x > 1e999", 5, "a number of at most about 1.8e308"),
            ("absent(x == 1)", 15, "`for` and a duration: absent(...) needs how long"),
            ("absent(x == 1) over 5m", 16, "`for` and a duration: absent(...) needs how long"),
            ("absent(x == 1) for", 19, DURATION),
            ("absent(x == 1) by (a b) for 1m", 22, "`,` or `)`"),
            ("absent(x == 1) by (a,) for 1m trailing", 31, "the end of the expression"),
            ("absent(x == (1) for 5m", 23, "`)` to close `absent(`"),
            (r#"absent(x == "a) for 5m"#, 23, "a closing quote"),
            (r#"absent(x == "a\") for 5m"#, 25, "a closing quote"),
            ("absent(  ) for 5m", 10, "a condition, such as component == \"Scheduler\""),
            // Columns count characters, not bytes.
            ("é > 1", 1, FACTOR),
            ("x > 1 é", 7, "the end of the expression"),
        ];
        for (src, column, expected) in cases {
            assert_eq!(err(src), (*column, expected.to_string()), "{src}");
        }
    }

    /// The attacker's inputs: 20,000 nested `(`, and a 200,000-term chain, which builds a tree
    /// as deep as it is long. Both are refused with the column, the stack untouched.
    #[test]
    fn nesting_and_length_past_the_limits_are_located_errors() {
        let deep = format!("{}count(x){} > 1", "(".repeat(20_000), ")".repeat(20_000));
        assert_eq!(
            err(&deep),
            (
                MAX_DEPTH + 1,
                "at most 64 nested `(` (the expression nests deeper)".into()
            )
        );
        let chain = format!("count(x){} > 1", " + 1".repeat(200_000));
        // The 257th `+`: after `count(x)` (8 characters), 256 × ` + 1` (4 each) and a space.
        assert_eq!(
            err(&chain),
            (
                8 + 4 * MAX_OPERATORS + 2,
                "at most 256 arithmetic operators (the expression has more)".into()
            )
        );
        let at_limit = format!(
            "{}count(x){}{} > 1",
            "(".repeat(MAX_DEPTH),
            ")".repeat(MAX_DEPTH),
            " * 2".repeat(MAX_OPERATORS)
        );
        assert!(parse(&at_limit).is_ok(), "{:?}", parse(&at_limit));
        // absent(...) hands its condition to the condition parser, which has its own limit;
        // finding the condition's end is a loop, whatever the nesting.
        let absent = format!(
            "absent({}a == 1{}) for 1m",
            "(".repeat(20_000),
            ")".repeat(20_000)
        );
        assert!(parse(&absent).is_ok());
    }

    #[test]
    fn error_display() {
        assert_eq!(
            parse("x >").unwrap_err().to_string(),
            "at column 4: expected a number (the threshold)"
        );
    }

    #[test]
    fn durations() {
        for (text, ms) in [
            ("500ms", 500),
            ("90s", 90_000),
            ("5m", 300_000),
            ("1h30m", 5_400_000),
            ("2d", 172_800_000),
            ("1d2h3m4s5ms", 93_784_005),
            (" 30s ", 30_000),
            ("0h5m", 300_000),
        ] {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_millis(ms)),
                "{text}"
            );
        }
        for (text, message) in [
            ("", r#"expected a duration such as 30s, 5m or 1h, found """#),
            (
                "5",
                r#"expected a duration such as 30s, 5m or 1h, found "5""#,
            ),
            (
                "5x",
                r#"expected a duration such as 30s, 5m or 1h, found "5x""#,
            ),
            (
                "5min",
                r#"expected a duration such as 30s, 5m or 1h, found "5min""#,
            ),
            (
                "1.5h",
                r#"expected a duration such as 30s, 5m or 1h, found "1.5h""#,
            ),
            (
                "1h 30m",
                r#"expected a duration such as 30s, 5m or 1h, found "1h 30m""#,
            ),
            (
                "-5m",
                r#"expected a duration such as 30s, 5m or 1h, found "-5m""#,
            ),
            ("0s", r#"expected a duration above zero, found "0s""#),
            (
                "30m1h",
                r#"expected a duration with its units from largest to smallest, each once (1h30m), found "30m1h""#,
            ),
            (
                "5m5m",
                r#"expected a duration with its units from largest to smallest, each once (1h30m), found "5m5m""#,
            ),
            (
                "99999999999999999999s",
                r#"expected a shorter duration, found "99999999999999999999s""#,
            ),
            (
                "9999999999999999d",
                r#"expected a shorter duration, found "9999999999999999d""#,
            ),
        ] {
            assert_eq!(parse_duration(text), Err(message.to_string()), "{text}");
        }
    }

    #[test]
    fn durations_format_as_prometheus_does() {
        for (ms, text) in [
            (500, "500ms"),
            (90_000, "1m30s"),
            (300_000, "5m"),
            (5_400_000, "1h30m"),
            (172_800_000, "2d"),
            (93_784_005, "1d2h3m4s5ms"),
            (0, "0ms"),
        ] {
            assert_eq!(format_duration(Duration::from_millis(ms)), text);
        }
    }

    #[test]
    fn func_display() {
        let names: Vec<String> = [
            Func::Count,
            Func::Sum,
            Func::Rate,
            Func::Avg,
            Func::Min,
            Func::Max,
            Func::Last,
            Func::Quantile(0.5),
            Func::Quantile(0.999),
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        assert_eq!(
            names,
            ["count", "sum", "rate", "avg", "min", "max", "last", "p50", "p99.9"]
        );
    }

    /// Pieces of rules, so random inputs get past the first token.
    fn piece() -> impl Strategy<Value = &'static str> {
        prop_oneof![
            Just("count("),
            Just("p99.9("),
            Just("p0("),
            Just("absent("),
            Just("x"),
            Just(")"),
            Just("("),
            Just(" by "),
            Just(" over "),
            Just(" for "),
            Just("5m"),
            Just("1h30m"),
            Just("0s"),
            Just(" > "),
            Just("=="),
            Just("1e3"),
            Just("-"),
            Just("/"),
            Just(","),
            Just("\""),
            Just("'"),
            Just("\\"),
            Just("é"),
            Just(" "),
        ]
    }

    proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,60}") {
            if let Err(e) = parse(&s) {
                prop_assert!(e.column >= 1 && e.column <= s.chars().count() + 1);
            }
            let _ = parse_duration(&s);
        }

        #[test]
        fn never_panics_on_rule_pieces(p in proptest::collection::vec(piece(), 0..16)) {
            let s = p.concat();
            match parse(&s) {
                Ok(RuleExpr::Absent { condition, condition_offset, .. }) => {
                    prop_assert!(s[condition_offset..].starts_with(&condition));
                }
                Ok(RuleExpr::Value { arith, .. }) => {
                    for (_, metric, offset) in arith.terms() {
                        prop_assert_eq!(&s[offset..offset + metric.len()], metric);
                    }
                }
                Err(e) => prop_assert!(e.column >= 1 && e.column <= s.chars().count() + 1),
            }
        }

        #[test]
        fn durations_round_trip(ms in 1u64..10_000_000_000_000) {
            let d = Duration::from_millis(ms);
            prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
    }
}
