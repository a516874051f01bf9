//! Event and alert expectations, and how they compare with what a test's input produced.
//!
//! Events: each input line parsed by the pipeline's parser, as one JSON object
//! (`Event::to_json`); `timestamp` compares as an instant, `level` as normalised, anything else
//! as JSON values (numbers as numbers) at a path walked through nested objects. Alerts: the
//! engine's recorded transitions folded into one track per alert (rule and group labels).

use std::collections::BTreeMap;

use serde_json::Value as Json;

use super::series::series_text;
use super::ExpectedState;
use crate::alert::engine::Transition;
use crate::event::{format_rfc3339, Level, TimestampNs};
use crate::parse::level::level_from_str;
use crate::parse::timestamp::parse_timestamp;

/// What an event field must be.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Expected {
    Timestamp(TimestampNs),
    Level(Level),
    Json(Json),
}

#[derive(Debug, Clone)]
pub(super) struct EventCheck {
    pub(super) line: usize,
    pub(super) field: String,
    pub(super) expected: Expected,
}

/// An input line as parsed: the event as one JSON object (see `Event::to_json`).
#[derive(Debug, Clone)]
pub(super) struct Parsed {
    pub(super) json: Json,
    pub(super) timestamp: TimestampNs,
    pub(super) level: Level,
}

/// The value at `path` of a JSON object: a key as written (ECS's `"log.level"`), else the path
/// walked through nested objects.
pub(super) fn lookup<'v>(v: &'v Json, path: &str) -> Option<&'v Json> {
    let obj = v.as_object()?;
    if let Some(x) = obj.get(path) {
        return Some(x);
    }
    path.match_indices('.').find_map(|(i, _)| {
        obj.get(&path[..i])
            .and_then(|sub| lookup(sub, &path[i + 1..]))
    })
}

/// JSON equality where numbers compare as numbers (`1` equals `1.0`).
pub(super) fn json_eq(a: &Json, b: &Json) -> bool {
    match (a, b) {
        (Json::Number(x), Json::Number(y)) => x.as_f64() == y.as_f64(),
        (Json::Array(x), Json::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_eq(a, b))
        }
        (Json::Object(x), Json::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

fn toml_to_json(v: &toml::Value) -> Result<Json, String> {
    Ok(match v {
        toml::Value::String(s) => Json::String(s.clone()),
        toml::Value::Integer(i) => Json::from(*i),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(Json::Number)
            .ok_or("a finite number")?,
        toml::Value::Boolean(b) => Json::Bool(*b),
        toml::Value::Datetime(d) => Json::String(d.to_string()),
        toml::Value::Array(a) => Json::Array(a.iter().map(toml_to_json).collect::<Result<_, _>>()?),
        toml::Value::Table(t) => Json::Object(
            t.iter()
                .map(|(k, v)| Ok((k.clone(), toml_to_json(v)?)))
                .collect::<Result<_, String>>()?,
        ),
    })
}

pub(super) fn expected_field(field: &str, v: &toml::Value) -> Result<Expected, String> {
    match field {
        "timestamp" => {
            let text = match v {
                toml::Value::String(s) => s.clone(),
                toml::Value::Datetime(d) => d.to_string(),
                _ => return Err("an RFC 3339 time such as \"2024-01-01T00:00:00Z\"".into()),
            };
            parse_timestamp(&text)
                .map(Expected::Timestamp)
                .ok_or_else(|| "an RFC 3339 time such as \"2024-01-01T00:00:00Z\"".into())
        }
        "level" => {
            let toml::Value::String(s) = v else {
                return Err("a level name such as \"ERROR\"".into());
            };
            match level_from_str(s) {
                Level::Unknown if !s.trim().eq_ignore_ascii_case("unknown") => Err(format!(
                    "a level: one of {}",
                    Level::ALL.map(Level::as_str).join(", ")
                )),
                l => Ok(Expected::Level(l)),
            }
        }
        _ => toml_to_json(v).map(Expected::Json),
    }
}

impl EventCheck {
    pub(super) fn compare(&self, parsed: &[Parsed]) -> Option<String> {
        let p = &parsed[self.line];
        let quote = |s: &str| Json::String(s.into()).to_string();
        let (want, got) = match &self.expected {
            Expected::Timestamp(t) if *t == p.timestamp => return None,
            Expected::Timestamp(t) => (
                quote(&format_rfc3339(*t)),
                quote(&format_rfc3339(p.timestamp)),
            ),
            Expected::Level(l) if *l == p.level => return None,
            Expected::Level(l) => (quote(l.as_str()), quote(p.level.as_str())),
            Expected::Json(want) => match lookup(&p.json, &self.field) {
                Some(got) if json_eq(want, got) => return None,
                Some(got) => (want.to_string(), got.to_string()),
                None => (want.to_string(), "nothing".into()),
            },
        };
        Some(format!(
            "event {} {}: expected {want}, got {got}",
            self.line, self.field
        ))
    }
}

// Alerts.

#[derive(Debug, Clone)]
pub(super) struct AlertCheck {
    pub(super) rule: String,
    pub(super) labels: Option<BTreeMap<String, String>>,
    /// The rule groups by nothing: `labels` left out means the one alert, `Rule{}`.
    pub(super) ungrouped: bool,
    pub(super) state: ExpectedState,
}

/// What happened to one alert (a rule and a group) over the input.
#[derive(Debug, Clone)]
pub(super) struct Track {
    rule: String,
    group: BTreeMap<String, String>,
    pending: bool,
    fired: bool,
    /// Firing after the last line.
    firing: bool,
}

impl Track {
    fn name(&self) -> String {
        series_text(
            &self.rule,
            self.group.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            true,
        )
    }
}

/// Folds the transitions into one track per alert, in order of first transition. Group labels
/// are the transition's labels without the rule's static ones.
pub(super) fn tracks(history: &[Transition], groups: &BTreeMap<String, Vec<String>>) -> Vec<Track> {
    let mut out: Vec<Track> = Vec::new();
    for t in history {
        let names = groups.get(&t.rule).map_or(&[][..], Vec::as_slice);
        let group: BTreeMap<String, String> = t
            .labels
            .iter()
            .filter(|(k, _)| names.contains(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let i = match out
            .iter()
            .position(|a| a.rule == t.rule && a.group == group)
        {
            Some(i) => i,
            None => {
                out.push(Track {
                    rule: t.rule.clone(),
                    group,
                    pending: false,
                    fired: false,
                    firing: false,
                });
                out.len() - 1
            }
        };
        let track = &mut out[i];
        match t.state {
            "pending" => track.pending = true,
            "firing" | "repeat" => {
                track.fired = true;
                track.firing = true;
            }
            _ => track.firing = false,
        }
    }
    out
}

impl AlertCheck {
    fn name(&self) -> String {
        match &self.labels {
            Some(l) => series_text(
                &self.rule,
                l.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                true,
            ),
            None if self.ungrouped => format!("{}{{}}", self.rule),
            None => self.rule.clone(),
        }
    }

    pub(super) fn compare(&self, tracks: &[Track]) -> Option<String> {
        let mine: Vec<&Track> = tracks
            .iter()
            .filter(|t| t.rule == self.rule && self.labels.as_ref().is_none_or(|l| *l == t.group))
            .collect();
        let fired = mine.iter().any(|t| t.fired);
        let got = match self.state {
            ExpectedState::NotFired if !fired => return None,
            ExpectedState::NotFired => "fired",
            ExpectedState::Fired if fired => return None,
            ExpectedState::Firing if mine.iter().any(|t| t.firing) => return None,
            ExpectedState::Firing if fired => "fired, then resolved",
            _ if mine.iter().any(|t| t.pending) => "pending, never fired",
            _ => "not fired",
        };
        let mut line = format!(
            "alert {}: expected {}, got {got}",
            self.name(),
            self.state.as_str()
        );
        let all: Vec<String> = tracks.iter().filter(|t| t.fired).map(Track::name).collect();
        if !all.is_empty() {
            line.push_str(&format!(" (fired: {})", all.join(", ")));
        }
        Some(line)
    }
}
