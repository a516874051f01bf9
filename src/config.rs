//! Pipeline files: the TOML schema, loading, and compilation into runnable parts.
//!
//! Loading is two steps, as STYLE.md asks: serde reads the file into plain config types (every
//! struct `deny_unknown_fields`), then [`PipelineConfig::compile`] checks what serde cannot
//! (conditions, regexes, metric and label names, buckets, duplicates) and builds the parser and
//! the deriver. Compilation does no I/O, so `weir validate` is exactly load + compile. Every
//! error names the file, line and column, quotes the line and says what was expected.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use prometheus::Registry;
use serde::Deserialize;

use crate::alert::engine::Rule;
use crate::alert::notify::NotifierConfig;
use crate::alert::rule::AlertConfig;
use crate::alert::window::Feed;
use crate::derive::{CompiledMetric, Deriver, MetricConfig};
use crate::parse::{EventConfig, LineParser, PathTrie};
use crate::sink::SinkConfig;
use crate::source::SourceConfig;
use crate::telemetry::SelfMetrics;

/// The default pipeline, compiled in: the agent system's metrics.
pub const DEFAULT_PIPELINE: &str = include_str!("../pipelines/agents.toml");
/// How the default pipeline is named in messages.
pub const DEFAULT_PIPELINE_NAME: &str = "<embedded pipelines/agents.toml>";

/// A pipeline file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Where the event fields come from (`[event]`).
    #[serde(default)]
    pub event: EventConfig,
    /// Inputs (`[[sources]]`). Default: stdin, or the files named on the command line.
    #[serde(default)]
    pub sources: Vec<SourceConfig>,
    /// Directory for weir's state (file checkpoints, disk buffers). Default: none
    /// (`--data-dir` sets it).
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// Outputs besides the metrics (`[[sinks]]`).
    #[serde(default)]
    pub sinks: Vec<SinkConfig>,
    /// Derived metrics (`[[metrics]]`).
    #[serde(default)]
    pub metrics: Vec<MetricConfig>,
    /// Alert rules (`[[alerts]]`).
    #[serde(default)]
    pub alerts: Vec<AlertConfig>,
    /// Where alerts are sent (`[notifiers.NAME]`).
    #[serde(default)]
    pub notifiers: BTreeMap<String, NotifierConfig>,
    /// Unit tests of the pipeline (`[[tests]]`), run by `weir test`; ignored by `weir run`.
    #[serde(default)]
    pub tests: Vec<crate::pipeline_test::TestConfig>,
}

/// An error in a part of the file, located by byte span; [`ConfigError::Invalid`] once placed.
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

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read pipeline file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A located error: syntax, schema (unknown key, wrong type) or a failed check.
    #[error("{}", .0)]
    Invalid(Located),
}

/// A message with its place in a file and the line quoted.
#[derive(Debug)]
pub struct Located {
    pub path: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
    pub source_line: String,
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
            self.message,
            self.source_line,
            " ".repeat(self.column.saturating_sub(1))
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
fn with_hint(message: &str) -> String {
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
pub(crate) fn locate(path: &str, text: &str, offset: usize, message: String) -> Located {
    let offset = offset.min(text.len());
    let offset = (0..=offset)
        .rev()
        .find(|&o| text.is_char_boundary(o))
        .unwrap_or(0);
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    Located {
        path: path.to_string(),
        line: text[..offset].matches('\n').count() + 1,
        column: text[line_start..offset].chars().count() + 1,
        message,
        source_line: text[line_start..line_end]
            .trim_end_matches('\r')
            .to_string(),
    }
}

/// A pipeline compiled and ready to run.
pub struct CompiledPipeline {
    /// Where the pipeline came from, for logs.
    pub origin: String,
    pub parser: LineParser,
    /// `[event]`, for parsers of its own (`weir tap`).
    pub event: EventConfig,
    pub deriver: Deriver,
    /// The registry holding the derived metrics (weir's own are in [`SelfMetrics`]).
    pub registry: Registry,
    pub sources: Vec<SourceConfig>,
    pub data_dir: Option<PathBuf>,
    pub sinks: Vec<SinkConfig>,
    /// Alert rules, in file order (their windows live in `deriver.feed`).
    pub rules: Vec<Rule>,
    pub notifiers: BTreeMap<String, NotifierConfig>,
}

impl PipelineConfig {
    /// Parses pipeline text; `path` names it in errors.
    pub fn parse(path: &str, text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let at = e.span().map_or(0, |s| s.start);
            ConfigError::Invalid(locate(path, text, at, with_hint(e.message().trim())))
        })
    }

    /// Compiles the pipeline: parse settings and metrics (registered in a new registry). Pure:
    /// no I/O. `path` and `text` are what was parsed, to place errors.
    pub fn compile(
        &self,
        path: &str,
        text: &str,
        selfm: &SelfMetrics,
    ) -> Result<CompiledPipeline, ConfigError> {
        let place =
            |e: CompileError| ConfigError::Invalid(locate(path, text, e.span.start, e.message));
        let registry = Registry::new();
        let mut trie = PathTrie::new();
        let event_paths = self.event.intern(&mut trie);
        let mut metrics: Vec<CompiledMetric> = Vec::with_capacity(self.metrics.len());
        for (i, m) in self.metrics.iter().enumerate() {
            if let Some(first) = self.metrics[..i]
                .iter()
                .find(|o| o.name.get_ref() == m.name.get_ref())
            {
                let first_line = locate(path, text, first.name.span().start, String::new()).line;
                return Err(place(CompileError::at(
                    m.name.span(),
                    format!(
                        "duplicate metric name {:?} (first defined on line {first_line}); each metric needs its own name",
                        m.name.get_ref(),
                    ),
                )));
            }
            if let Some((first, series)) = self.metrics[..i].iter().find_map(|o| {
                let theirs = exposed_names(o.name.get_ref(), o.kind);
                exposed_names(m.name.get_ref(), m.kind)
                    .into_iter()
                    .find(|n| theirs.contains(n))
                    .map(|n| (o, n))
            }) {
                let first_line = locate(path, text, first.name.span().start, String::new()).line;
                return Err(place(CompileError::at(
                    m.name.span(),
                    format!(
                        "metric {:?} collides with the {} {:?} (line {first_line}): both would write the series {series:?}; rename one",
                        m.name.get_ref(),
                        format!("{:?}", first.kind).to_lowercase(),
                        first.name.get_ref(),
                    ),
                )));
            }
            metrics.push(m.compile(&mut trie, &registry, selfm).map_err(place)?);
        }
        let mut feed = Feed::default();
        let mut rules = Vec::with_capacity(self.alerts.len());
        for (i, a) in self.alerts.iter().enumerate() {
            if let Some(first) = self.alerts[..i]
                .iter()
                .find(|o| o.name.get_ref() == a.name.get_ref())
            {
                let first_line = locate(path, text, first.name.span().start, String::new()).line;
                return Err(place(CompileError::at(
                    a.name.span(),
                    format!(
                        "duplicate alert name {:?} (first defined on line {first_line})",
                        a.name.get_ref(),
                    ),
                )));
            }
            rules.push(
                a.compile(&mut metrics, &self.notifiers, &mut trie, &mut feed, selfm)
                    .map_err(place)?,
            );
        }
        for (i, src) in self.sources.iter().enumerate() {
            if let Err(message) = src.check() {
                // Point at the source's `[[sources]]` header.
                let at = text
                    .match_indices("[[sources]]")
                    .nth(i)
                    .map_or(0, |(at, _)| at);
                return Err(place(CompileError::at(
                    at..at,
                    format!("sources[{i}]: {message}"),
                )));
            }
        }
        for (i, sink) in self.sinks.iter().enumerate() {
            let twice = sink
                .name()
                .filter(|n| self.sinks[..i].iter().any(|o| o.name() == Some(n)));
            let check = match twice {
                Some(n) => Err(format!("name {n:?}: another sink has this name already")),
                None => sink.check(),
            };
            if let Err(message) = check {
                let at = text
                    .match_indices("[[sinks]]")
                    .nth(i)
                    .map_or(0, |(at, _)| at);
                return Err(place(CompileError::at(
                    at..at,
                    format!("sinks[{i}]: {message}"),
                )));
            }
        }
        if self.event.max_line_bytes == 0 {
            return Err(place(CompileError::at(
                text.find("max_line_bytes").unwrap_or(0)..0,
                "event.max_line_bytes must be at least 1",
            )));
        }
        Ok(CompiledPipeline {
            origin: path.to_string(),
            parser: event_paths.into_parser(trie),
            event: self.event.clone(),
            deriver: Deriver::new(metrics).with_feed(feed),
            registry,
            sources: self.sources.clone(),
            data_dir: self.data_dir.clone(),
            sinks: self.sinks.clone(),
            rules,
            notifiers: self.notifiers.clone(),
        })
    }
}

/// The sample names a metric writes in the exposition: a histogram `x` also writes `x_bucket`,
/// `x_sum` and `x_count`, so a counter named `x_bucket` beside it would make an exposition
/// that Prometheus rejects.
fn exposed_names(name: &str, kind: crate::derive::MetricKind) -> Vec<String> {
    match kind {
        crate::derive::MetricKind::Histogram => ["", "_bucket", "_sum", "_count"]
            .iter()
            .map(|s| format!("{name}{s}"))
            .collect(),
        _ => vec![name.to_string()],
    }
}

/// Reads and compiles a pipeline file, or the embedded default when `path` is `None`.
pub fn load(path: Option<&Path>, selfm: &SelfMetrics) -> Result<CompiledPipeline, ConfigError> {
    let (name, text) = match path {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.to_path_buf(),
                source,
            })?;
            (p.display().to_string(), text)
        }
        None => (
            DEFAULT_PIPELINE_NAME.to_string(),
            DEFAULT_PIPELINE.to_string(),
        ),
    };
    PipelineConfig::parse(&name, &text)?.compile(&name, &text, selfm)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        let selfm = SelfMetrics::new();
        match PipelineConfig::parse("p.toml", text).and_then(|c| c.compile("p.toml", text, &selfm))
        {
            Ok(_) => panic!("expected an error for:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn the_default_pipeline_compiles() {
        let p = load(None, &SelfMetrics::new()).unwrap();
        let names: Vec<_> = p
            .deriver
            .metrics()
            .iter()
            .map(|m| m.name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "agent_task_duration_seconds",
                "agent_task_success_total",
                "agent_task_failure_total",
                "agent_queue_depth"
            ]
        );
    }

    #[test]
    fn unknown_key_names_file_line_column_and_the_expected_keys() {
        let e = err("[[metrics]]\nname = \"a_total\"\nkind = \"counter\"\nwhn = \"true\"\n");
        assert!(
            e.starts_with("p.toml:4:1: unknown field `whn`, expected one of"),
            "{e}"
        );
        assert!(e.contains("`when`"), "{e}");
        assert!(e.contains("4 | whn = \"true\"\n  | ^"), "{e}");
    }

    #[test]
    fn bad_kind_and_syntax() {
        let e = err("[[metrics]]\nname = \"a\"\nkind = \"countr\"\n");
        assert!(e.starts_with("p.toml:3:8: unknown variant `countr`, expected one of `counter`, `gauge`, `histogram`; did you mean `counter`?"), "{e}");
        let e =
            err("[[metrics]]\nname = \"a\"\nkind = \"counter\"\nwhenn = 'level == \"ERROR\"'\n");
        assert!(
            e.starts_with("p.toml:4:1: unknown field `whenn`, expected one of `name`, `kind`"),
            "{e}"
        );
        assert!(e.contains("; did you mean `when`?"), "{e}");
        // Nothing close: no guess.
        let e = err("[[metrics]]\nname = \"a\"\nkind = \"counter\"\nzzzzzzzz = 1\n");
        assert!(!e.contains("did you mean"), "{e}");
        let e = err("[[sinks]]\ntype = \"lokii\"\n");
        assert!(e.contains("did you mean `loki`?"), "{e}");
        let e = err("[[metrics]\n");
        assert!(e.starts_with("p.toml:1:"), "{e}");
    }

    #[test]
    fn sink_names_are_checked_and_unique() {
        let two = |a: &str, b: &str| {
            format!("[[sinks]]\ntype = \"stdout\"\nname = \"{a}\"\n\n[[sinks]]\ntype = \"file\"\npath = \"x\"\nname = \"{b}\"\n")
        };
        let e = err(&two("out", "out"));
        assert!(
            e.starts_with("p.toml:5:1: sinks[1]: name \"out\": another sink has this name already"),
            "{e}"
        );
        let e = err(&two("out", "a/b"));
        assert!(
            e.contains("sinks[1]: name \"a/b\": expected letters, digits, `_` and `-` only"),
            "{e}"
        );
        let text = two("out", "archive");
        let c = PipelineConfig::parse("p.toml", &text).unwrap();
        assert_eq!(c.sinks[1].name(), Some("archive"));
    }

    #[test]
    fn bad_condition_points_into_the_string() {
        let e = err(
            "[[metrics]]\nname = \"a_total\"\nkind = \"counter\"\nwhen = 'message == \"x\" &&'\n",
        );
        assert_eq!(
            e,
            "p.toml:4:26: invalid condition: expected a field path, `exists(...)`, `!` or `(`\n  |\n4 | when = 'message == \"x\" &&'\n  |                          ^"
        );
    }

    #[test]
    fn bad_regex() {
        let e = err("[[metrics]]\nname = \"a_total\"\nkind = \"counter\"\nwhen = 'message =~ \"(unclosed\"'\n");
        assert!(
            e.starts_with("p.toml:4:20: invalid condition: expected a valid regular expression"),
            "{e}"
        );
    }

    #[test]
    fn bad_sources_point_at_their_table() {
        let e = err("[[sources]]\ntype = \"stdin\"\n\n[[sources]]\ntype = \"tcp\"\naddress = \"localhost\"\n");
        assert!(
            e.starts_with("p.toml:4:1: sources[1]: invalid address \"localhost\""),
            "{e}"
        );
        let e = err("[[sources]]\ntype = \"file\"\npaths = [\"/a/[\"]\n");
        assert!(e.starts_with("p.toml:1:1: sources[0]: invalid glob"), "{e}");
        let e = err("[[sources]]\ntype = \"tcp\"\nmax_connections = 0\n");
        assert!(e.contains("max_connections must be at least 1"), "{e}");
        let e = err("[[sources]]\ntype = \"fil\"\n");
        assert!(
            e.starts_with(
                "p.toml:2:8: unknown variant `fil`, expected one of `stdin`, `file`, `tcp`"
            ),
            "{e}"
        );
    }

    #[test]
    fn duplicate_metric_names() {
        let e = err("[[metrics]]\nname = \"a_total\"\nkind = \"counter\"\n\n[[metrics]]\nname = \"a_total\"\nkind = \"counter\"\n");
        assert!(
            e.starts_with(
                "p.toml:6:8: duplicate metric name \"a_total\" (first defined on line 2)"
            ),
            "{e}"
        );
    }

    /// A counter `x_bucket` beside a histogram `x` validated, and promtool rejected the
    /// exposition. Every suffix, in both orders, is a located error.
    #[test]
    fn names_colliding_with_histogram_series() {
        let e = err("[[metrics]]\nname = \"x\"\nkind = \"histogram\"\nvalue = \"d\"\n\n[[metrics]]\nname = \"x_bucket\"\nkind = \"counter\"\n");
        assert!(
            e.starts_with("p.toml:7:8: metric \"x_bucket\" collides with the histogram \"x\" (line 2): both would write the series \"x_bucket\"; rename one"),
            "{e}"
        );
        for (first, second, series) in [
            (
                "x_sum\"\nkind = \"gauge\"\nvalue = \"v",
                "x\"\nkind = \"histogram\"\nvalue = \"d",
                "x_sum",
            ),
            (
                "x_count\"\nkind = \"counter",
                "x\"\nkind = \"histogram\"\nvalue = \"d",
                "x_count",
            ),
            (
                "x\"\nkind = \"histogram\"\nvalue = \"d",
                "x_count\"\nkind = \"histogram\"\nvalue = \"d",
                "x_count",
            ),
        ] {
            let e = err(&format!(
                "[[metrics]]\nname = \"{first}\"\n\n[[metrics]]\nname = \"{second}\"\n"
            ));
            assert!(
                e.contains(&format!("both would write the series {series:?}")),
                "{e}"
            );
        }
        // Near misses are fine.
        let text = "[[metrics]]\nname = \"x\"\nkind = \"histogram\"\nvalue = \"d\"\n\n[[metrics]]\nname = \"x_buckets\"\nkind = \"counter\"\n";
        let selfm = SelfMetrics::new();
        assert!(PipelineConfig::parse("p.toml", text)
            .unwrap()
            .compile("p.toml", text, &selfm)
            .is_ok());
    }

    /// A `when` nested 20,000 deep aborted `weir validate` (rc 134); it is a located error.
    #[test]
    fn deeply_nested_conditions_are_located_errors() {
        let when = format!("{}a == 1{}", "(".repeat(20_000), ")".repeat(20_000));
        let e = err(&format!(
            "[[metrics]]\nname = \"x_total\"\nkind = \"counter\"\nwhen = '{when}'\n"
        ));
        assert!(
            e.starts_with("p.toml:4:73: invalid condition: expected at most 64 nested `(` or `!`"),
            "{e}"
        );
    }

    #[test]
    fn label_and_value_checks() {
        let e = err("[[metrics]]\nname = \"h\"\nkind = \"histogram\"\nvalue = \"d\"\nlabels = { le = \"x\" }\n");
        assert!(e.contains("invalid label name \"le\""), "{e}");
        let e = err("[[metrics]]\nname = \"h\"\nkind = \"counter\"\nlabels = { __x = \"x\" }\n");
        assert!(e.contains("reserved by Prometheus"), "{e}");
        let e = err("[[metrics]]\nname = \"g\"\nkind = \"gauge\"\n");
        assert!(
            e.starts_with("p.toml:2:8: metric \"g\": a gauge needs `value"),
            "{e}"
        );
        let e = err(
            "[[metrics]]\nname = \"h\"\nkind = \"histogram\"\nvalue = \"d\"\nbuckets = [1, 0.5]\n",
        );
        assert!(e.contains("strictly increasing"), "{e}");
        let e = err("[[metrics]]\nname = \"weir_x\"\nkind = \"counter\"\n");
        assert!(e.contains("reserved for weir's own metrics"), "{e}");
        let e = err("[[metrics]]\nname = \"9x\"\nkind = \"counter\"\n");
        assert!(e.contains("invalid metric name"), "{e}");
        let e = err("[[metrics]]\nname = \"c\"\nkind = \"counter\"\nlabels = { a = { from = \"x\", dflt = \"u\" } }\n");
        assert!(e.contains("unknown field `dflt`"), "{e}");
    }
}
