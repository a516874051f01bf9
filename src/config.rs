//! Pipeline files: the TOML schema, loading, and compilation into runnable parts.
//!
//! Loading is two steps, as STYLE.md asks: serde reads the file into plain config types (every
//! struct `deny_unknown_fields`), then [`PipelineConfig::compile`] checks what serde cannot
//! (conditions, regexes, metric and label names, buckets, duplicates) and builds the parser and
//! the deriver. Compilation does no I/O, so `weir validate` is exactly load + compile. Every
//! error names the file, line and column, quotes the line and says what was expected.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use prometheus::Registry;
use serde::Deserialize;

use crate::alert::engine::Rule;
use crate::alert::notify::NotifierConfig;
use crate::alert::rule::AlertConfig;
use crate::alert::window::Feed;
use crate::derive::{CompiledMetric, Deriver, MetricConfig};
use crate::interpolate::{interpolate, Env, Interpolation, ProcessEnv};
use crate::located::with_hint;
pub use crate::located::{closest, locate, CompileError, Located};
use crate::parse::text::ParserConfig;
use crate::parse::{EventConfig, LineParser, PathTrie};
use crate::sink::SinkConfig;
use crate::source::SourceConfig;
use crate::telemetry::SelfMetrics;

/// The default pipeline, compiled in: the agent system's metrics.
pub const DEFAULT_PIPELINE: &str = include_str!("../pipelines/agents.toml");
/// How the default pipeline is named in messages.
pub const DEFAULT_PIPELINE_NAME: &str = "<embedded pipelines/agents.toml>";

/// A pipeline file.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Where the event fields come from (`[event]`).
    #[serde(default)]
    pub event: EventConfig,
    /// How lines are read (`[parser]`): `json` (default), `logfmt` or `regex`, with fallbacks.
    /// A source's own `parser` replaces it for that source's lines.
    #[serde(default)]
    pub parser: ParserConfig,
    /// Inputs (`[[sources]]`). Default: stdin, or the files named on the command line.
    #[serde(default)]
    pub sources: Vec<SourceConfig>,
    /// Multi-line joining for the sources weir makes itself: stdin when the pipeline names no
    /// source, the files and `--tcp` addresses given on the command line (`--multiline`
    /// overrides it; `[[sources]]` carry their own). A top-level key: write it before the
    /// first table. Default: none.
    #[serde(default)]
    pub multiline: Option<crate::source::multiline::MultilineConfig>,
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
    /// Spans derived from events (`[[spans]]`), sent by an `otlp` sink's traces.
    #[serde(default)]
    pub spans: Vec<crate::derive::span::SpanConfig>,
    /// Alert rules (`[[alerts]]`).
    #[serde(default)]
    pub alerts: Vec<AlertConfig>,
    /// Where alerts are sent (`[notifiers.NAME]`).
    #[serde(default)]
    pub notifiers: BTreeMap<String, NotifierConfig>,
    /// Unit tests of the pipeline (`[[tests]]`), run by `weir test`; ignored by `weir run`.
    #[serde(default)]
    pub tests: Vec<crate::pipeline_test::schema::TestConfig>,
    /// The `${VAR}` substitutions made in the file's text (not a key of the file): spans of
    /// the fields above are offsets into the substituted text; this maps them back.
    #[serde(skip)]
    pub interpolation: Interpolation,
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
    /// The top-level `multiline`, for the sources the command line adds.
    pub multiline: Option<crate::source::multiline::MultilineConfig>,
    pub data_dir: Option<PathBuf>,
    pub sinks: Vec<SinkConfig>,
    /// Alert rules, in file order (their windows live in `deriver.feed`).
    pub rules: Vec<Rule>,
    pub notifiers: BTreeMap<String, NotifierConfig>,
}

impl PipelineConfig {
    /// Parses pipeline text as written (its `${VAR}` taken from the process environment);
    /// `path` names it in errors.
    pub fn parse(path: &str, text: &str) -> Result<Self, ConfigError> {
        Self::parse_with_env(path, text, &ProcessEnv)
    }

    /// [`PipelineConfig::parse`] with the variables of `env`.
    pub fn parse_with_env(
        path: &str,
        text: &str,
        env: &(impl Env + ?Sized),
    ) -> Result<Self, ConfigError> {
        let interpolation = interpolate(text, env)
            .map_err(|e| ConfigError::Invalid(locate(path, text, e.span.start, e.message)))?;
        let mut cfg: Self = toml::from_str(interpolation.text(text)).map_err(|e| {
            let at = e.span().map_or(0, |s| s.start);
            let message = with_hint(e.message().trim());
            ConfigError::Invalid(interpolation.locate(path, text, at, &message))
        })?;
        cfg.interpolation = interpolation;
        Ok(cfg)
    }

    /// Compiles the pipeline: parse settings and metrics (registered in a new registry). Pure:
    /// no I/O. `path` and `text` are what was parsed (the file as written), to place errors.
    pub fn compile(
        &self,
        path: &str,
        text: &str,
        selfm: &SelfMetrics,
    ) -> Result<CompiledPipeline, ConfigError> {
        // Spans are offsets into the substituted text; errors quote the file as written.
        let (file, text) = (text, self.interpolation.text(text));
        let place = |e: CompileError| {
            ConfigError::Invalid(
                self.interpolation
                    .locate(path, file, e.span.start, &e.message),
            )
        };
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
        if let Some(Err(message)) = self.multiline.as_ref().map(|m| m.compile()) {
            return Err(place(CompileError::at(
                text.find("multiline").unwrap_or(0)..0,
                message,
            )));
        }
        let spans =
            crate::derive::span::Spans::compile(&self.spans, &mut trie, selfm).map_err(place)?;
        let parser = self.compile_parsers(text, &trie).map_err(place)?;
        Ok(CompiledPipeline {
            origin: path.to_string(),
            parser: event_paths
                .into_parser(trie)
                .with_formats(parser.0, parser.1),
            event: self.event.clone(),
            deriver: Deriver::new(metrics).with_feed(feed).with_spans(spans),
            registry,
            sources: self.sources.clone(),
            multiline: self.multiline.clone(),
            data_dir: self.data_dir.clone(),
            sinks: self.sinks.clone(),
            rules,
            notifiers: self.notifiers.clone(),
        })
    }
}

type SourceChains = Vec<(Box<str>, Option<crate::parse::text::Chain>)>;

impl PipelineConfig {
    /// `[parser]` and the sources' own `parser`s, compiled once `trie` holds every path. A
    /// source's lines are told apart by its name (`stdin`, each of a file source's `paths`,
    /// `tcp:ADDRESS`), so two sources with one name cannot have parsers of their own.
    fn compile_parsers(
        &self,
        text: &str,
        trie: &PathTrie,
    ) -> Result<(Option<crate::parse::text::Chain>, SourceChains), CompileError> {
        let header = text.find("[parser]").map_or(0..0, |at| at..at);
        let chain = self.parser.compile(trie, header)?;
        let mut sources: SourceChains = Vec::new();
        for (i, src) in self.sources.iter().enumerate() {
            let (own, names) = match src {
                SourceConfig::Stdin(s) => (&s.parser, vec!["stdin".to_string()]),
                SourceConfig::File(f) => (&f.parser, f.paths.clone()),
                SourceConfig::Tcp(t) => (&t.parser, vec![format!("tcp:{}", t.address)]),
            };
            let Some(own) = own else { continue };
            let at = text
                .match_indices("[[sources]]")
                .nth(i)
                .map_or(0..0, |(at, _)| at..at);
            let own_chain = own
                .placed(at.clone())
                .compile(trie, at.clone())
                .map_err(|e| CompileError {
                    message: format!("sources[{i}]: {}", e.message),
                    ..e
                })?;
            for name in names {
                if sources.iter().any(|(n, _)| **n == *name) {
                    return Err(CompileError::at(
                        at,
                        format!("sources[{i}]: another source named {name:?} has a parser of its own; a source's lines are told apart by its name, so give each path (or address) one parser"),
                    ));
                }
                sources.push((name.into(), own_chain.clone()));
            }
        }
        Ok((chain, sources))
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
