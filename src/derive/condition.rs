//! The condition language of `when = "..."`, parsed with nom.
//!
//! ```text
//! or      := and ( "||" and )*
//! and     := unary ( "&&" unary )*
//! unary   := "!" unary | primary
//! primary := "(" or ")" | "exists(" path ")" | "true" | "false" | path op literal
//! op      := "==" | "!=" | "=~" | "!~" | "<=" | ">=" | "<" | ">"
//! literal := "double-quoted" | 'single-quoted' | number | true | false
//! path    := segment ( "." segment )*      e.g. metadata.status, @timestamp, log.level
//! ```
//! `message`, `level`, `component`, `trace_id` and `timestamp` name the event's normalised fields;
//! any other path is looked up in the line's JSON. In double-quoted strings only `\"` and `\\` are
//! escapes, so a regex keeps its `\d` as written. A missing field makes every comparison false,
//! and `!=` / `!~` (their negations) true. Levels compare by severity: `level >= "warn"`.
//!
//! Parsing happens in two steps: text to [`Ast`] (syntax errors, with the column), then
//! [`Ast::compile`] resolves paths and builds regexes (semantic errors, with the column).
//!
//! Nesting (`(` and `!`) is limited to [`MAX_DEPTH`] levels, counted in the parser's state: a
//! condition also arrives from the network (`GET /tap?filter=`), and 2,000 `(` in a 4 KB URL
//! must be a 400 with a column, not a stack overflow. The tree is therefore at most that deep,
//! so compiling, evaluating and dropping it (all recursive) are bounded too.

use nom::branch::alt;
use nom::bytes::complete::{tag, take_while, take_while1};
use nom::character::complete::{char, multispace0};
use nom::combinator::{opt, recognize};
use nom::error::{ErrorKind, ParseError};
use nom::multi::many0;
use nom::sequence::{pair, preceded};
use nom::{IResult, Parser};
use regex::Regex;
use std::cell::Cell;

use crate::event::{Event, Level};
use crate::parse::level::{level_from_number, level_from_str};
use crate::parse::FieldRef;

/// A condition that did not parse or compile: where, and what was expected there.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("at column {column}: expected {expected}")]
pub struct ConditionError {
    /// 1-based column in the condition text (characters, not bytes).
    pub column: usize,
    pub expected: String,
}

/// How deeply `(` and `!` may nest in a condition.
pub const MAX_DEPTH: usize = 64;

const TOO_DEEP: &str = "at most 64 nested `(` or `!` (the condition nests deeper)";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Match,
    NotMatch,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Str(String),
    Num(f64),
    Bool(bool),
}

/// The syntax tree, paths still as text. `offset` is the byte offset of the literal.
#[derive(Debug, Clone, PartialEq)]
pub enum Ast {
    Or(Vec<Ast>),
    And(Vec<Ast>),
    Not(Box<Ast>),
    Exists(String),
    Const(bool),
    Cmp {
        path: String,
        op: Op,
        literal: Literal,
        offset: usize,
    },
}

/// A compiled condition, evaluated per event without allocation.
#[derive(Debug, Clone)]
pub enum Condition {
    Or(Vec<Condition>),
    And(Vec<Condition>),
    Not(Box<Condition>),
    Exists(FieldRef),
    Const(bool),
    TextEq(FieldRef, String),
    NumCmp(FieldRef, Op, f64),
    BoolEq(FieldRef, bool),
    Regex(FieldRef, Regex),
    /// `=~ "^literal"`: a regex that is an anchored plain prefix, tested without the regex
    /// engine (the default pipeline's `message =~ "^Task completed: "` runs on every event).
    StartsWith(FieldRef, String),
    LevelCmp(Op, Level),
}

/// The literal of a pattern that is `^` followed by characters with no regex meaning.
fn anchored_literal(pattern: &str) -> Option<&str> {
    let rest = pattern.strip_prefix('^')?;
    let plain = |c: char| !"\\.+*?()|[]{}^$#&-~".contains(c) && (c == ' ' || !c.is_whitespace());
    (!rest.is_empty() && rest.chars().all(plain)).then_some(rest)
}

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

/// Runs `p`; a failure becomes a hard failure saying what was expected at that point.
fn expect<'a, O>(
    what: &'static str,
    mut p: impl Parser<&'a str, Output = O, Error = PErr<'a>>,
) -> impl FnMut(&'a str) -> Res<'a, O> {
    move |i: &'a str| match p.parse(i) {
        Ok(v) => Ok(v),
        Err(nom::Err::Error(e)) | Err(nom::Err::Failure(e)) => Err(nom::Err::Failure(PErr {
            input: e.input,
            expected: if e.expected.is_empty() {
                what
            } else {
                e.expected
            },
        })),
        Err(e) => Err(e),
    }
}

fn ws<'a, O>(
    p: impl Parser<&'a str, Output = O, Error = PErr<'a>>,
) -> impl Parser<&'a str, Output = O, Error = PErr<'a>> {
    preceded(multispace0, p)
}

fn segment(i: &str) -> Res<'_, &str> {
    recognize(pair(
        take_while1(|c: char| c.is_ascii_alphabetic() || c == '_' || c == '@' || c == '$'),
        take_while(|c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '@' | '$' | '-')),
    ))
    .parse(i)
}

fn path(i: &str) -> Res<'_, String> {
    let (rest, p) = recognize(pair(segment, many0(pair(char('.'), segment)))).parse(i)?;
    Ok((rest, p.to_string()))
}

fn op(i: &str) -> Res<'_, Op> {
    alt((
        tag("==").map(|_| Op::Eq),
        tag("!=").map(|_| Op::Ne),
        tag("=~").map(|_| Op::Match),
        tag("!~").map(|_| Op::NotMatch),
        tag("<=").map(|_| Op::Le),
        tag(">=").map(|_| Op::Ge),
        tag("<").map(|_| Op::Lt),
        tag(">").map(|_| Op::Gt),
    ))
    .parse(i)
}

/// A quoted string. Double quotes: `\"` and `\\` are escapes, other backslashes stay as written.
/// Single quotes: taken as written.
fn string(i: &str) -> Res<'_, String> {
    let quote = match i.chars().next() {
        Some(q @ ('"' | '\'')) => q,
        _ => return Err(nom::Err::Error(PErr::from_error_kind(i, ErrorKind::Char))),
    };
    let mut out = String::new();
    let mut chars = i[1..].char_indices();
    while let Some((at, c)) = chars.next() {
        match c {
            c if c == quote => return Ok((&i[1 + at + 1..], out)),
            '\\' if quote == '"' => match chars.next() {
                Some((_, e @ ('"' | '\\'))) => out.push(e),
                Some((_, e)) => {
                    out.push('\\');
                    out.push(e);
                }
                None => break,
            },
            c => out.push(c),
        }
    }
    Err(nom::Err::Failure(PErr {
        input: "",
        expected: "a closing quote",
    }))
}

fn number(i: &str) -> Res<'_, f64> {
    let (rest, text) = recognize((
        opt(char('-')),
        take_while1(|c: char| c.is_ascii_digit()),
        opt(pair(char('.'), take_while1(|c: char| c.is_ascii_digit()))),
        opt((
            alt((char('e'), char('E'))),
            opt(alt((char('+'), char('-')))),
            take_while1(|c: char| c.is_ascii_digit()),
        )),
    ))
    .parse(i)?;
    match text.parse::<f64>() {
        Ok(n) => Ok((rest, n)),
        Err(_) => Err(nom::Err::Error(PErr::from_error_kind(i, ErrorKind::Float))),
    }
}

fn keyword<'a>(word: &'static str) -> impl FnMut(&'a str) -> Res<'a, &'a str> {
    move |i: &'a str| {
        let (rest, w) = tag(word).parse(i)?;
        // `trueish` is a path, not `true` followed by garbage.
        match rest.chars().next() {
            Some(c) if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '@' | '$') => {
                Err(nom::Err::Error(PErr::from_error_kind(i, ErrorKind::Tag)))
            }
            _ => Ok((rest, w)),
        }
    }
}

fn literal(i: &str) -> Res<'_, Literal> {
    alt((
        string.map(Literal::Str),
        number.map(Literal::Num),
        keyword("true").map(|_| Literal::Bool(true)),
        keyword("false").map(|_| Literal::Bool(false)),
    ))
    .parse(i)
}

struct Parser0<'s> {
    src: &'s str,
    /// Levels of `(` and `!` entered and not yet left.
    depth: Cell<usize>,
}

impl<'s> Parser0<'s> {
    /// Runs `f` one nesting level deeper; past [`MAX_DEPTH`] a failure located at `at`.
    fn nested<O>(&self, at: &'s str, f: impl FnOnce() -> Res<'s, O>) -> Res<'s, O> {
        let depth = self.depth.get();
        if depth >= MAX_DEPTH {
            return Err(nom::Err::Failure(PErr {
                input: at,
                expected: TOO_DEEP,
            }));
        }
        self.depth.set(depth + 1);
        let out = f();
        self.depth.set(depth);
        out
    }

    fn or(&self, i: &'s str) -> Res<'s, Ast> {
        let (mut i, first) = self.and(i)?;
        let mut items = vec![first];
        while let Ok((rest, _)) = ws(tag::<_, _, PErr>("||")).parse(i) {
            let (rest, next) = self.and(rest)?;
            items.push(next);
            i = rest;
        }
        Ok((
            i,
            if items.len() == 1 {
                items.remove(0)
            } else {
                Ast::Or(items)
            },
        ))
    }

    fn and(&self, i: &'s str) -> Res<'s, Ast> {
        let (mut i, first) = self.unary(i)?;
        let mut items = vec![first];
        while let Ok((rest, _)) = ws(tag::<_, _, PErr>("&&")).parse(i) {
            let (rest, next) = self.unary(rest)?;
            items.push(next);
            i = rest;
        }
        Ok((
            i,
            if items.len() == 1 {
                items.remove(0)
            } else {
                Ast::And(items)
            },
        ))
    }

    fn unary(&self, i: &'s str) -> Res<'s, Ast> {
        let (i, _) = multispace0(i)?;
        // `!` but not `!=`/`!~`, which cannot start a condition anyway.
        if let Some(rest) = i.strip_prefix('!') {
            let (rest, inner) = self.nested(i, || self.unary(rest))?;
            return Ok((rest, Ast::Not(Box::new(inner))));
        }
        self.primary(i)
    }

    fn primary(&self, i: &'s str) -> Res<'s, Ast> {
        if let Some(rest) = i.strip_prefix('(') {
            return self.nested(i, || {
                let (rest, inner) = self.or(rest)?;
                let (rest, _) = expect("`)`, `&&` or `||`", ws(char(')'))).parse(rest)?;
                Ok((rest, inner))
            });
        }
        if let Ok((rest, _)) = (keyword("exists"), multispace0, char::<_, PErr>('(')).parse(i) {
            let (rest, p) = expect("a field path", ws(path)).parse(rest)?;
            let (rest, _) = expect("`)`", ws(char(')'))).parse(rest)?;
            return Ok((rest, Ast::Exists(p)));
        }
        if let Ok((rest, _)) = keyword("true")(i) {
            return Ok((rest, Ast::Const(true)));
        }
        if let Ok((rest, _)) = keyword("false")(i) {
            return Ok((rest, Ast::Const(false)));
        }
        let (rest, p) = expect("a field path, `exists(...)`, `!` or `(`", path).parse(i)?;
        let (rest, o) = expect("an operator (==, !=, =~, !~, <, <=, >, >=)", ws(op)).parse(rest)?;
        let (rest, _) = multispace0(rest)?;
        let offset = self.src.len() - rest.len();
        let (rest, lit) = expect("a string, number, true or false", literal).parse(rest)?;
        Ok((
            rest,
            Ast::Cmp {
                path: p,
                op: o,
                literal: lit,
                offset,
            },
        ))
    }
}

fn column(src: &str, byte_offset: usize) -> usize {
    src[..byte_offset.min(src.len())].chars().count() + 1
}

impl Ast {
    /// Parses condition text.
    pub fn parse(src: &str) -> Result<Ast, ConditionError> {
        let p = Parser0 {
            src,
            depth: Cell::new(0),
        };
        match p.or(src) {
            Ok((rest, ast)) => {
                let (rest, _) = multispace0::<_, PErr>(rest).unwrap_or((rest, ""));
                if rest.is_empty() {
                    Ok(ast)
                } else {
                    Err(ConditionError {
                        column: column(src, src.len() - rest.len()),
                        expected: "`&&`, `||` or the end of the condition".into(),
                    })
                }
            }
            Err(nom::Err::Error(e)) | Err(nom::Err::Failure(e)) => Err(ConditionError {
                column: column(src, src.len() - e.input.len()),
                expected: if e.expected.is_empty() {
                    "a condition".into()
                } else {
                    e.expected.into()
                },
            }),
            Err(nom::Err::Incomplete(_)) => Err(ConditionError {
                column: column(src, src.len()),
                expected: "more input".into(),
            }),
        }
    }

    /// Every field path the condition refers to.
    pub fn paths(&self) -> Vec<&str> {
        let mut out = Vec::new();
        self.collect_paths(&mut out);
        out
    }

    fn collect_paths<'a>(&'a self, out: &mut Vec<&'a str>) {
        match self {
            Ast::Or(v) | Ast::And(v) => v.iter().for_each(|a| a.collect_paths(out)),
            Ast::Not(a) => a.collect_paths(out),
            Ast::Exists(p) | Ast::Cmp { path: p, .. } => out.push(p),
            Ast::Const(_) => {}
        }
    }

    /// Resolves paths with `resolve` and builds regexes. `src` is the text parsed, for columns.
    pub fn compile(
        &self,
        src: &str,
        resolve: &mut dyn FnMut(&str) -> FieldRef,
    ) -> Result<Condition, ConditionError> {
        Ok(match self {
            Ast::Or(v) => Condition::Or(
                v.iter()
                    .map(|a| a.compile(src, resolve))
                    .collect::<Result<_, _>>()?,
            ),
            Ast::And(v) => Condition::And(
                v.iter()
                    .map(|a| a.compile(src, resolve))
                    .collect::<Result<_, _>>()?,
            ),
            Ast::Not(a) => Condition::Not(Box::new(a.compile(src, resolve)?)),
            Ast::Exists(p) => Condition::Exists(resolve(p)),
            Ast::Const(b) => Condition::Const(*b),
            Ast::Cmp {
                path,
                op,
                literal,
                offset,
            } => {
                let err = |expected: String| ConditionError {
                    column: column(src, *offset),
                    expected,
                };
                let field = resolve(path);
                match (op, literal) {
                    (Op::Match | Op::NotMatch, Literal::Str(s)) => {
                        let re = Regex::new(s).map_err(|e| {
                            // regex's message draws its own caret over several lines; keep
                            // only the last line, which says what is wrong.
                            let text = e.to_string();
                            let why = text
                                .lines()
                                .rev()
                                .find(|l| !l.trim().is_empty())
                                .unwrap_or("")
                                .trim()
                                .trim_start_matches("error: ");
                            err(format!("a valid regular expression ({why})"))
                        })?;
                        let m = match anchored_literal(s) {
                            Some(lit) => Condition::StartsWith(field, lit.to_string()),
                            None => Condition::Regex(field, re),
                        };
                        if *op == Op::NotMatch {
                            Condition::Not(Box::new(m))
                        } else {
                            m
                        }
                    }
                    (Op::Match | Op::NotMatch, _) => {
                        return Err(err("a quoted regular expression after =~ or !~".into()))
                    }
                    (_, lit) if field == FieldRef::Level => {
                        let level = match lit {
                            Literal::Str(s) => match level_from_str(s) {
                                Level::Unknown if !s.eq_ignore_ascii_case("unknown") => {
                                    return Err(err(format!(
                                        "a level name (TRACE, DEBUG, INFO, NOTICE, WARNING, ERROR, CRITICAL, UNKNOWN), not {s:?}"
                                    )))
                                }
                                l => l,
                            },
                            Literal::Num(n) => level_from_number(*n),
                            Literal::Bool(_) => return Err(err("a level name".into())),
                        };
                        Condition::LevelCmp(*op, level)
                    }
                    (Op::Eq | Op::Ne, Literal::Str(s)) => {
                        negate_if(*op == Op::Ne, Condition::TextEq(field, s.clone()))
                    }
                    (Op::Eq | Op::Ne, Literal::Bool(b)) => {
                        negate_if(*op == Op::Ne, Condition::BoolEq(field, *b))
                    }
                    (Op::Ne, Literal::Num(n)) => {
                        Condition::Not(Box::new(Condition::NumCmp(field, Op::Eq, *n)))
                    }
                    (o, Literal::Num(n)) => Condition::NumCmp(field, *o, *n),
                    (_, _) => {
                        return Err(err(
                            "a number after <, <=, > or >= (strings and booleans compare with == and != only)".into(),
                        ))
                    }
                }
            }
        })
    }
}

fn negate_if(negate: bool, c: Condition) -> Condition {
    if negate {
        Condition::Not(Box::new(c))
    } else {
        c
    }
}

fn cmp(op: Op, a: f64, b: f64) -> bool {
    match op {
        Op::Eq => a == b,
        Op::Ne => a != b,
        Op::Lt => a < b,
        Op::Le => a <= b,
        Op::Gt => a > b,
        Op::Ge => a >= b,
        Op::Match | Op::NotMatch => false,
    }
}

impl Condition {
    /// Parses and compiles in one step.
    pub fn new(
        src: &str,
        resolve: &mut dyn FnMut(&str) -> FieldRef,
    ) -> Result<Condition, ConditionError> {
        Ast::parse(src)?.compile(src, resolve)
    }

    pub fn matches(&self, ev: &Event<'_>) -> bool {
        match self {
            Condition::Or(v) => v.iter().any(|c| c.matches(ev)),
            Condition::And(v) => v.iter().all(|c| c.matches(ev)),
            Condition::Not(c) => !c.matches(ev),
            Condition::Const(b) => *b,
            Condition::Exists(f) => f.exists(ev),
            Condition::TextEq(f, s) => f.text(ev).is_some_and(|t| t == s.as_str()),
            Condition::Regex(f, re) => f.text(ev).is_some_and(|t| re.is_match(&t)),
            Condition::StartsWith(f, p) => f.text(ev).is_some_and(|t| t.starts_with(p.as_str())),
            Condition::NumCmp(f, op, n) => f.number(ev).is_some_and(|v| cmp(*op, v, *n)),
            Condition::BoolEq(f, b) => f.boolean(ev) == Some(*b),
            Condition::LevelCmp(op, level) => {
                let (a, b) = (ev.level as u8 as f64, *level as u8 as f64);
                cmp(*op, a, b)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_anchored_plain_prefix_needs_no_regex_engine() {
        use super::anchored_literal;
        assert_eq!(
            anchored_literal("^Task completed: "),
            Some("Task completed: ")
        );
        for p in [
            "Task",
            "^",
            "^a.b",
            "^a|b",
            "^(?i)task",
            "^a\\d",
            "^a$",
            "^a\tb",
        ] {
            assert_eq!(anchored_literal(p), None, "{p}");
        }
    }

    use super::*;

    fn ast(s: &str) -> Ast {
        Ast::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn cmp_ast(path: &str, op: Op, literal: Literal, offset: usize) -> Ast {
        Ast::Cmp {
            path: path.into(),
            op,
            literal,
            offset,
        }
    }

    #[test]
    fn every_operator_parses() {
        let cases = [
            ("a == \"x\"", Op::Eq),
            ("a != \"x\"", Op::Ne),
            ("a =~ \"x\"", Op::Match),
            ("a !~ \"x\"", Op::NotMatch),
            ("a < \"x\"", Op::Lt),
            ("a <= \"x\"", Op::Le),
            ("a > \"x\"", Op::Gt),
            ("a >= \"x\"", Op::Ge),
        ];
        for (src, op) in cases {
            let offset = src.find('"').unwrap();
            assert_eq!(
                ast(src),
                cmp_ast("a", op, Literal::Str("x".into()), offset),
                "{src}"
            );
        }
    }

    #[test]
    fn precedence_and_grouping() {
        let a = || cmp_ast("a", Op::Eq, Literal::Num(1.0), 5);
        assert_eq!(
            ast("a == 1 || b == 2 && !c == 3"),
            Ast::Or(vec![
                a(),
                Ast::And(vec![
                    cmp_ast("b", Op::Eq, Literal::Num(2.0), 15),
                    Ast::Not(Box::new(cmp_ast("c", Op::Eq, Literal::Num(3.0), 26))),
                ]),
            ])
        );
        assert_eq!(
            ast("(a == 1 || b == true) && exists( metadata.x )"),
            Ast::And(vec![
                Ast::Or(vec![
                    cmp_ast("a", Op::Eq, Literal::Num(1.0), 6),
                    cmp_ast("b", Op::Eq, Literal::Bool(true), 16),
                ]),
                Ast::Exists("metadata.x".into()),
            ])
        );
        assert_eq!(
            ast("@timestamp >= -1.5e3"),
            cmp_ast("@timestamp", Op::Ge, Literal::Num(-1500.0), 14)
        );
        assert_eq!(ast("true"), Ast::Const(true));
        assert_eq!(
            ast("trueish == 'it'"),
            Ast::Cmp {
                path: "trueish".into(),
                op: Op::Eq,
                literal: Literal::Str("it".into()),
                offset: 11
            }
        );
    }

    #[test]
    fn string_escapes() {
        assert_eq!(
            ast(r#"m =~ "^a\d+ \"q\" \\""#),
            cmp_ast("m", Op::Match, Literal::Str(r#"^a\d+ "q" \"#.into()), 5)
        );
        assert_eq!(
            ast(r"m == 'a\d'"),
            cmp_ast("m", Op::Eq, Literal::Str(r"a\d".into()), 5)
        );
    }

    #[test]
    fn syntax_errors_point_at_the_column() {
        let cases = [
            ("", 1, "a field path, `exists(...)`, `!` or `(`"),
            ("message", 8, "an operator (==, !=, =~, !~, <, <=, >, >=)"),
            ("message ==", 11, "a string, number, true or false"),
            ("message == \"x", 14, "a closing quote"),
            ("a == 1 &&", 10, "a field path, `exists(...)`, `!` or `(`"),
            ("(a == 1", 8, "`)`, `&&` or `||`"),
            ("a == 1 b == 2", 8, "`&&`, `||` or the end of the condition"),
            ("exists(", 8, "a field path"),
            ("exists(a", 9, "`)`"),
            ("a = 1", 3, "an operator (==, !=, =~, !~, <, <=, >, >=)"),
            ("é == 1", 1, "a field path, `exists(...)`, `!` or `(`"),
        ];
        for (src, column, expected) in cases {
            let e = Ast::parse(src).unwrap_err();
            assert_eq!(
                e,
                ConditionError {
                    column,
                    expected: expected.into()
                },
                "{src:?}"
            );
        }
    }

    /// The attacker's inputs: 2,000 and 20,000 nested `(`, 5,000 `!`. Each is refused at the
    /// column of the first level too many, without touching the stack's limit.
    #[test]
    fn nesting_past_the_limit_is_a_located_error() {
        for (open, n) in [("(", 2_000), ("(", 20_000), ("!", 5_000), ("!(", 3_000)] {
            let src = format!("{}a == 1{}", open.repeat(n), ")".repeat(n));
            let e = Ast::parse(&src).unwrap_err();
            assert_eq!(e.expected, TOO_DEEP, "{open} x {n}");
            // Every `(` and `!` is a level: the one past the limit is character 65.
            assert_eq!(e.column, MAX_DEPTH + 1, "{open} x {n}");
        }
        // The limit itself parses.
        let ok = format!("{}a == 1{}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
        assert!(Ast::parse(&ok).is_ok());
        let ok = format!("{}true", "!".repeat(MAX_DEPTH));
        assert_eq!(ast(&ok), {
            let mut a = Ast::Const(true);
            for _ in 0..MAX_DEPTH {
                a = Ast::Not(Box::new(a));
            }
            a
        });
        // Sequences are not nesting: a long `||` chain is fine.
        let long = vec!["a == 1"; 10_000].join(" || ");
        assert!(matches!(ast(&long), Ast::Or(v) if v.len() == 10_000));
    }

    #[test]
    fn semantic_errors_point_at_the_literal() {
        let mut resolve = |p: &str| FieldRef::resolve_builtin(p).unwrap_or(FieldRef::Path(0));
        let e = Condition::new("message =~ \"(\"", &mut resolve).unwrap_err();
        assert_eq!(e.column, 12);
        assert!(e.expected.starts_with("a valid regular expression"), "{e}");
        let e = Condition::new("a > \"x\"", &mut resolve).unwrap_err();
        assert_eq!(e.column, 5);
        let e = Condition::new("a == 1 && level == \"loud\"", &mut resolve).unwrap_err();
        assert_eq!(e.column, 20);
        assert!(e.expected.starts_with("a level name"), "{e}");
        let e = Condition::new("a =~ 5", &mut resolve).unwrap_err();
        assert_eq!(e.column, 6);
    }
}
