//! Reference docs generated from the code: the pipeline file's JSON Schema and configuration
//! reference, shell completions and the man page.
//!
//! Why generated: a hand-written reference drifts from the config types the day a key is
//! added. Here the config types derive `schemars::JsonSchema`, which reads the same serde
//! attributes (`default`, `rename_all`, `tag`, `deny_unknown_fields`) and the same `///` docs
//! that users already see in `weir validate`'s hints, so the schema says what serde accepts.
//! `docs/weir.schema.json` (for editors: Taplo / Even Better TOML) and `docs/configuration.md`
//! are the output of `weir generate config-reference`; a unit test fails when they are stale.
//!
//! Types whose `Deserialize` is written by hand (`PathList`, `LabelSpec`, `SpanName`,
//! `EventExpect`) get their schema by hand below, describing the shapes their visitors accept.
//! `toml::Spanned<T>` is foreign, so fields holding it carry `#[schemars(with = "T")]`.
//!
//! The Markdown is rendered from the schema (not from the Rust types), so both files always
//! agree. Rendering walks definitions in order of first use from the root and visits each once,
//! so recursive schemas cannot loop.

use std::borrow::Cow;
use std::collections::{BTreeSet, VecDeque};
use std::fmt::Write as _;

use clap::CommandFactory;
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde_json::{Map, Value};

use crate::config::PipelineConfig;
use crate::derive::span::SpanName;
use crate::derive::{LabelSpec, PathList};
use crate::pipeline_test::schema::EventExpect;

/// The command that regenerates the checked-in reference files (named in the staleness test).
pub const REGENERATE: &str = "weir generate config-reference --format json -o docs/weir.schema.json && weir generate config-reference --format markdown -o docs/configuration.md";

impl JsonSchema for PathList {
    fn schema_name() -> Cow<'static, str> {
        "PathList".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "One field path (`\"a.b\"`), or a non-empty list of paths tried in order (`[\"a.b\", \"c\"]`).",
            "anyOf": [
                { "type": "string" },
                { "type": "array", "items": { "type": "string" }, "minItems": 1 }
            ]
        })
    }
}

impl JsonSchema for LabelSpec {
    fn schema_name() -> Cow<'static, str> {
        "LabelSpec".into()
    }
    fn json_schema(g: &mut SchemaGenerator) -> Schema {
        let mut from = g.subschema_for::<PathList>();
        from.insert(
            "description".into(),
            "Field path(s) of the value, tried in order. Required.".into(),
        );
        json_schema!({
            "description": "Where a label's value comes from: a field path (`agent = \"metadata.agent_id\"`), or a table `{ from = \"path\", default = \"value\", remember_by = \"field\" }`.",
            "anyOf": [
                { "type": "string" },
                {
                    "type": "object",
                    "properties": {
                        "from": from,
                        "default": { "type": "string", "description": "Value when the event lacks the field. Default: the empty string." },
                        "remember_by": { "type": "string", "description": "An event lacking the field takes the value last seen on an earlier event with the same value of this field (such as `trace_id`). Default: none." }
                    },
                    "required": ["from"],
                    "additionalProperties": false
                }
            ]
        })
    }
}

impl JsonSchema for SpanName {
    fn schema_name() -> Cow<'static, str> {
        "SpanName".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A span name: a literal (`\"agent.task\"`) or a field (`{ from = \"metadata.task_type\", default = \"task\" }`).",
            "anyOf": [
                { "type": "string" },
                {
                    "type": "object",
                    "properties": {
                        "from": { "type": "string", "description": "Field path holding the name." },
                        "default": { "type": "string", "description": "Name when the event lacks the field. Default: `unnamed`." }
                    },
                    "required": ["from"],
                    "additionalProperties": false
                }
            ]
        })
    }
}

impl JsonSchema for EventExpect {
    fn schema_name() -> Cow<'static, str> {
        "EventExpect".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "`[[tests.expect.events]]`: `line` (0-based index into the input), then any number of `field = value`: `timestamp`, `level`, `component`, `message`, `trace_id`, or a path such as `\"metadata.agent_id\"`.",
            "type": "object",
            "properties": {
                "line": { "type": "integer", "minimum": 0, "description": "0-based index of the input line. Required." }
            },
            "required": ["line"],
            "additionalProperties": true
        })
    }
}

/// The pipeline file's JSON Schema (draft 2020-12), as pretty JSON ending in a newline.
pub fn schema_json() -> String {
    let mut schema = schemars::schema_for!(PipelineConfig);
    schema.insert("title".into(), Value::String("weir pipeline file".into()));
    let mut s = serde_json::to_string_pretty(&schema)
        .unwrap_or_else(|e| format!("{{\"error\": \"cannot serialise the schema: {e}\"}}"));
    s.push('\n');
    s
}

/// The configuration reference in Markdown, rendered from [`schema_json`]'s schema.
pub fn markdown() -> String {
    let schema = schemars::schema_for!(PipelineConfig).to_value();
    let defs = schema
        .get("$defs")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let mut out = String::new();
    out.push_str(
        "# Configuration reference\n\n\
         <!-- Generated by `weir generate config-reference --format markdown`; do not edit. -->\n\n\
         Every key of a pipeline file, generated from the config types (their `///` docs and serde \
         attributes). Editors can validate pipeline files against [`weir.schema.json`](weir.schema.json): \
         put `#:schema ./docs/weir.schema.json` (a path relative to the file) on its first line for \
         Taplo / Even Better TOML. `weir validate` checks the rest (conditions, regexes, names).\n\n\
         A key marked *required* must be given; every other key may be left out.\n\n",
    );
    let mut queue: VecDeque<String> = VecDeque::new();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    out.push_str("## Top level\n\n");
    render_object(&mut out, &schema, "", &defs, &mut queue, &mut seen);
    while let Some(name) = queue.pop_front() {
        let Some(def) = defs.get(&name) else { continue };
        let _ = write!(out, "## {name}\n\n");
        if let Some(d) = def.get("description").and_then(Value::as_str) {
            let _ = write!(out, "{}\n\n", unlink(d.trim()));
        }
        render_object(&mut out, def, "", &defs, &mut queue, &mut seen);
    }
    out
}

/// Renders one schema's keys: a table for an object, one subsection per variant for a tagged
/// enum, the accepted values for a plain enum.
fn render_object(
    out: &mut String,
    schema: &Value,
    heading: &str,
    defs: &Map<String, Value>,
    queue: &mut VecDeque<String>,
    seen: &mut BTreeSet<String>,
) {
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        let required: BTreeSet<&str> = schema
            .get("required")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        out.push_str("| Key | Type | Default | Description | Example |\n|---|---|---|---|---|\n");
        for (key, p) in props {
            let description = p
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or("")
                .trim();
            let default = if required.contains(key.as_str()) {
                "*required*".to_string()
            } else {
                default_of(p, description)
            };
            let _ = writeln!(
                out,
                "| `{key}` | {} | {} | {} | {} |",
                cell(&type_of(p, queue, seen)),
                cell(&default),
                cell(description),
                cell(&example_of(key, resolve(p, defs), &default)),
            );
        }
        out.push('\n');
    }
    if let Some(props) = schema.get("additionalProperties").filter(|v| v.is_object()) {
        if schema.get("properties").is_none() {
            let _ = write!(
                out,
                "A table of `NAME = {}`.\n\n",
                type_of(props, queue, seen)
            );
        }
    }
    for key in ["oneOf", "anyOf"] {
        let Some(variants) = schema.get(key).and_then(Value::as_array) else {
            continue;
        };
        let tagged = variants.iter().all(|v| tag_of(v).is_some());
        if tagged {
            for v in variants {
                let Some((tag, value)) = tag_of(v) else {
                    continue;
                };
                let _ = write!(out, "###{heading} `{tag} = \"{value}\"`\n\n");
                if let Some(d) = v.get("description").and_then(Value::as_str) {
                    let _ = write!(out, "{}\n\n", unlink(d.trim()));
                }
                render_object(out, v, heading, defs, queue, seen);
                if let Some(r) = v.get("$ref").and_then(Value::as_str) {
                    let name = ref_name(r);
                    let _ = write!(out, "The other keys: see [{name}](#{}).\n\n", anchor(name));
                    enqueue(name, queue, seen);
                }
            }
        } else {
            out.push_str("One of:\n\n");
            let mut tables = Vec::new();
            for v in variants {
                let text = if v.get("properties").is_some() {
                    tables.push(v);
                    "a table (keys below)".to_string()
                } else {
                    type_of(v, queue, seen)
                };
                match v.get("description").and_then(Value::as_str) {
                    Some(d) => {
                        let _ = writeln!(out, "- {text}: {}", cell(d.trim()));
                    }
                    None => {
                        let _ = writeln!(out, "- {text}");
                    }
                }
            }
            out.push('\n');
            for t in tables {
                render_object(out, t, heading, defs, queue, seen);
            }
        }
    }
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        let _ = write!(out, "One of: {}.\n\n", literal_list(values));
    }
}

/// The definition a `$ref` points to (for examples), or the schema itself.
fn resolve<'a>(p: &'a Value, defs: &'a Map<String, Value>) -> &'a Value {
    p.get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| defs.get(ref_name(r)))
        .unwrap_or(p)
}

/// `(tag key, tag value)` of an internally tagged enum variant (`type = "loki"`).
fn tag_of(v: &Value) -> Option<(String, String)> {
    let props = v.get("properties")?.as_object()?;
    props.iter().find_map(|(k, p)| {
        let c = p.get("const").and_then(Value::as_str).or_else(|| {
            p.get("enum")
                .and_then(Value::as_array)
                .filter(|a| a.len() == 1)
                .and_then(|a| a[0].as_str())
        })?;
        Some((k.clone(), c.to_string()))
    })
}

fn ref_name(r: &str) -> &str {
    r.rsplit('/').next().unwrap_or(r)
}

fn anchor(name: &str) -> String {
    name.to_ascii_lowercase()
}

fn enqueue(name: &str, queue: &mut VecDeque<String>, seen: &mut BTreeSet<String>) {
    if seen.insert(name.to_string()) {
        queue.push_back(name.to_string());
    }
}

fn literal_list(values: &[Value]) -> String {
    values
        .iter()
        .map(|v| format!("`{v}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A short type text: `string`, `integer`, `[string]`, `table of string`, a link to a
/// definition, or the accepted literals.
fn type_of(p: &Value, queue: &mut VecDeque<String>, seen: &mut BTreeSet<String>) -> String {
    if let Some(r) = p.get("$ref").and_then(Value::as_str) {
        let name = ref_name(r);
        enqueue(name, queue, seen);
        return format!("[{name}](#{})", anchor(name));
    }
    if let Some(c) = p.get("const") {
        return format!("`{c}`");
    }
    if let Some(values) = p.get("enum").and_then(Value::as_array) {
        return literal_list(values);
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(alts) = p.get(key).and_then(Value::as_array) {
            let alts: Vec<String> = alts
                .iter()
                .filter(|a| a.get("type").and_then(Value::as_str) != Some("null"))
                .map(|a| type_of(a, queue, seen))
                .collect();
            return alts.join(" or ");
        }
    }
    let types: Vec<&str> = match p.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .filter(|t| *t != "null")
            .collect(),
        _ => vec![],
    };
    let text: Vec<String> = types
        .iter()
        .map(|t| match *t {
            "array" => match p.get("items") {
                Some(items) => format!("[{}]", type_of(items, queue, seen)),
                None => "array".to_string(),
            },
            "object" => match p.get("additionalProperties").filter(|v| v.is_object()) {
                Some(v) => format!("table of {}", type_of(v, queue, seen)),
                None => "table".to_string(),
            },
            other => other.to_string(),
        })
        .collect();
    if text.is_empty() {
        "any".to_string()
    } else {
        text.join(" or ")
    }
}

/// The default: the schema's `default`, else the "Default: ..." sentence of the doc.
fn default_of(p: &Value, description: &str) -> String {
    match p.get("default") {
        Some(Value::Null) => return "none".to_string(),
        Some(d) => return format!("`{d}`"),
        None => {}
    }
    match description.find("Default: ") {
        Some(i) => {
            let rest = &description[i + "Default: ".len()..];
            let end = rest
                .char_indices()
                .find(|&(j, c)| {
                    c == '.' && rest[j + 1..].chars().next().is_none_or(char::is_whitespace)
                })
                .map_or(rest.len(), |(j, _)| j);
            rest[..end].trim().to_string()
        }
        None if p.get("$ref").is_some() => "its keys' defaults".to_string(),
        None => match p.get("type").and_then(Value::as_str) {
            Some("array") => "`[]`".to_string(),
            Some("object") => "`{}`".to_string(),
            _ => "none".to_string(),
        },
    }
}

/// A TOML line for the key: from the default when it is a plain literal, else a placeholder
/// of the key's type.
fn example_of(key: &str, p: &Value, default: &str) -> String {
    let literal = default.trim_matches('`');
    let plain = literal.parse::<f64>().is_ok()
        || matches!(literal, "true" | "false")
        || (literal.starts_with('"') && literal.ends_with('"') && literal.len() > 1);
    let is_string = p.get("type").and_then(Value::as_str) == Some("string");
    let value = if let Some(c) = p.get("const") {
        c.to_string()
    } else if plain && !default.contains(' ') {
        literal.to_string()
    } else if let Some(e) = p
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
    {
        e.to_string()
    } else if let Some(c) = p
        .get("oneOf")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(|v| v.get("const"))
    {
        c.to_string()
    } else if let Some(t) = p.get("type").and_then(Value::as_str) {
        match t {
            "string" => "\"...\"".to_string(),
            "integer" => "1".to_string(),
            "number" => "1.0".to_string(),
            "boolean" => "true".to_string(),
            "array" => "[...]".to_string(),
            _ => "{ ... }".to_string(),
        }
    } else if is_string {
        "\"...\"".to_string()
    } else {
        return String::new();
    };
    format!("`{key} = {value}`")
}

/// Makes text safe for one Markdown table cell.
fn cell(s: &str) -> String {
    unlink(s).replace('|', "\\|").replace('\n', " ")
}

/// Drops rustdoc's intra-doc link brackets (`` [`repair`] `` becomes `` `repair` ``), which
/// mean nothing outside rustdoc; Markdown links (`[text](url)`) are kept.
fn unlink(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("[`") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        match after.find("`]") {
            Some(j) if !after[j + 2..].starts_with('(') && !after[..j + 1].contains('\n') => {
                out.push_str(&after[..j + 1]);
                rest = &after[j + 2..];
            }
            _ => {
                out.push('[');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// `weir generate config-reference`'s arguments.
#[derive(Debug, clap::Args)]
pub struct ConfigReferenceArgs {
    /// `json`: the JSON Schema (docs/weir.schema.json); `markdown`: the reference
    /// (docs/configuration.md).
    #[arg(long, value_enum, default_value_t = ReferenceFormat::Markdown)]
    pub format: ReferenceFormat,
    /// Output file. Default: stdout.
    #[arg(long, short)]
    pub output: Option<std::path::PathBuf>,
}

/// What `weir generate config-reference` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReferenceFormat {
    Json,
    Markdown,
}

/// The reference in `format`.
pub fn config_reference(format: ReferenceFormat) -> String {
    match format {
        ReferenceFormat::Json => schema_json(),
        ReferenceFormat::Markdown => markdown(),
    }
}

/// `weir completions`'s arguments.
#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell: bash, zsh, fish (also elvish, powershell).
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Shell completions for `shell`. Generated into memory: clap_complete panics when its
/// writer fails, and stdout may be a closed pipe.
pub fn completions(shell: clap_complete::Shell) -> Vec<u8> {
    let mut cmd = crate::cli::Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "weir", &mut out);
    out
}

/// The man page, in roff: `weir(1)`, with the subcommands listed (their options are in
/// `weir help SUBCOMMAND`; clap_mangen renders one command per page).
pub fn man() -> std::io::Result<Vec<u8>> {
    let mut page = Vec::new();
    clap_mangen::Man::new(crate::cli::Cli::command()).render(&mut page)?;
    // clap_mangen opens with the `Aq` string definitions; put `.TH` first, where man(7) and
    // tools that sniff a page expect it (the definitions still precede every use).
    let text = String::from_utf8_lossy(&page);
    let mut lines: Vec<&str> = text.lines().collect();
    if let Some(i) = lines.iter().position(|l| l.starts_with(".TH")) {
        let th = lines.remove(i);
        lines.insert(0, th);
    }
    let mut out = lines.join("\n");
    out.push('\n');
    Ok(out.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checked_in(name: &str) -> String {
        let path = format!("{}/docs/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
    }

    #[test]
    fn config_reference_schema_is_fresh() {
        assert!(
            checked_in("weir.schema.json") == schema_json(),
            "docs/weir.schema.json is stale: regenerate it with `cargo run -- {}`",
            REGENERATE.trim_start_matches("weir ")
        );
    }

    #[test]
    fn config_reference_markdown_is_fresh() {
        assert!(
            checked_in("configuration.md") == markdown(),
            "docs/configuration.md is stale: regenerate it with `cargo run -- {}`",
            REGENERATE.trim_start_matches("weir ")
        );
    }

    #[test]
    fn config_reference_covers_every_section_and_component() {
        let md = markdown();
        for key in [
            "`event`",
            "`parser`",
            "`sources`",
            "`sinks`",
            "`metrics`",
            "`alerts`",
            "`notifiers`",
            "`tests`",
            "`spans`",
            "`multiline`",
        ] {
            assert!(
                md.contains(&format!("| {key} |")),
                "top-level key {key} missing"
            );
        }
        for variant in [
            "`type = \"stdin\"`",
            "`type = \"file\"`",
            "`type = \"tcp\"`",
            "`type = \"loki\"`",
            "`type = \"elasticsearch\"`",
            "`type = \"otlp\"`",
            "`type = \"slack\"`",
        ] {
            assert!(md.contains(variant), "variant {variant} missing");
        }
        assert!(md.contains("## LabelSpec"), "hand-written schema missing");
    }

    #[test]
    fn config_reference_schema_accepts_the_shipped_pipeline() {
        // Structural check without a validator crate: every top-level key of the shipped
        // pipeline is a property of the schema, and unknown keys are refused.
        let schema: Value = serde_json::from_str(&schema_json()).expect("schema is JSON");
        let props = schema["properties"]
            .as_object()
            .expect("root has properties");
        let shipped: toml::Table =
            toml::from_str(crate::config::DEFAULT_PIPELINE).expect("shipped pipeline is TOML");
        for key in shipped.keys() {
            assert!(props.contains_key(key), "schema lacks top-level key {key}");
        }
        assert_eq!(schema["additionalProperties"], Value::Bool(false));
        assert!(
            !props.contains_key("interpolation"),
            "a skipped field leaked"
        );
    }

    #[test]
    fn config_reference_defaults_come_from_docs() {
        let p = serde_json::json!({"type": "integer"});
        assert_eq!(
            default_of(&p, "Bytes per line. Default: 1048576 (1 MiB)."),
            "1048576 (1 MiB)"
        );
        assert_eq!(default_of(&p, "Scale. Default: 0.001. More."), "0.001");
        assert_eq!(default_of(&p, "No default here."), "none");
    }
}
