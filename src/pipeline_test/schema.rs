//! The schema of `[[tests]]` in a pipeline file: plain serde data, no checks.
//!
//! Apart from the runner in `pipeline_test.rs` because `config::PipelineConfig` reads these
//! types while the runner reads `config`: keeping the schema here, importing nothing of weir,
//! keeps the module graph free of circles (see ARCHITECTURE.md, "Module order").

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use toml::Spanned;

/// `[[tests]]`: input lines and what they must produce.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestConfig {
    /// What the test shows, in a few words; printed beside its result.
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    /// The input, one log line per string. Give this or `input_file`.
    #[serde(default)]
    #[schemars(with = "Option<Vec<String>>")]
    pub input: Option<Spanned<Vec<String>>>,
    /// A file of input lines, relative to the pipeline file's directory. Give this or `input`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub input_file: Option<Spanned<String>>,
    /// What the input must produce. Default: nothing (the input only has to run).
    #[serde(default)]
    pub expect: ExpectConfig,
}

/// `[tests.expect]`: every part optional.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExpectConfig {
    /// Series to value after the last line: `'name{label="value"}' = 3`. Labels left out match
    /// any value and the matching series are summed (a name alone: the sum of all its series,
    /// 0 when there is none). Histograms: `NAME_count`, `NAME_sum`, `NAME_bucket{le="..."}`.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, f64>")]
    pub metrics: BTreeMap<Spanned<String>, Spanned<f64>>,
    /// `[[tests.expect.events]]`: fields of the event parsed from one input line.
    #[serde(default)]
    pub events: Vec<EventExpect>,
    /// `[[tests.expect.alerts]]`: alerts of the pipeline's rules.
    #[serde(default)]
    pub alerts: Vec<AlertExpect>,
}

/// `[[tests.expect.events]]`: `line` (0-based index into the input), then any number of
/// `field = value`: `timestamp` (compared as instants), `level` (as normalised, so `"warn"`
/// means WARNING), `component`, `message`, `trace_id`, or a path such as `"metadata.agent_id"`
/// (compared as JSON values).
///
/// Read by hand rather than with `#[serde(flatten)]`, which would lose the spans that place
/// errors and cannot be combined with `deny_unknown_fields` anyway.
#[derive(Debug, Clone)]
pub struct EventExpect {
    pub line: Spanned<usize>,
    pub fields: Vec<(Spanned<String>, Spanned<toml::Value>)>,
}

impl<'de> Deserialize<'de> for EventExpect {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = EventExpect;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a table with `line` and the fields to compare")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<EventExpect, A::Error> {
                let mut line = None;
                let mut fields = Vec::new();
                while let Some(key) = map.next_key::<Spanned<String>>()? {
                    if key.get_ref() == "line" {
                        line = Some(map.next_value::<Spanned<usize>>()?);
                    } else {
                        fields.push((key, map.next_value::<Spanned<toml::Value>>()?));
                    }
                }
                let line = line.ok_or_else(|| de::Error::missing_field("line"))?;
                // The table's order is not the file's: sort back into it, for a stable report.
                fields.sort_by_key(|(k, _)| k.span().start);
                Ok(EventExpect { line, fields })
            }
        }
        d.deserialize_map(V)
    }
}

/// `[[tests.expect.alerts]]`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertExpect {
    /// The rule's name (`[[alerts]] name`).
    #[schemars(with = "String")]
    pub rule: Spanned<String>,
    /// The alert's group labels, exactly (the rule's static labels left out). Default: any
    /// alert of the rule.
    #[serde(default)]
    #[schemars(with = "Option<BTreeMap<String, String>>")]
    pub labels: Option<Spanned<BTreeMap<String, String>>>,
    /// fired (at some point), firing (still, after the last line) or not_fired.
    pub state: ExpectedState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExpectedState {
    Fired,
    Firing,
    NotFired,
}

impl ExpectedState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ExpectedState::Fired => "fired",
            ExpectedState::Firing => "firing",
            ExpectedState::NotFired => "not fired",
        }
    }
}
