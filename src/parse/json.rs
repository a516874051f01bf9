//! Selective JSON reading: capture only the values at the pipeline's field paths.
//!
//! A pipeline refers to a handful of paths (`message`, `metadata.agent_id`, ...). Rather than
//! building a whole `serde_json::Value` tree per line, [`capture`] walks the object with serde and
//! a trie of those paths: values on a path are captured borrowed from the line, everything else is
//! skipped with `IgnoredAny` (still fully validated, so broken JSON is always detected). This is
//! where most of weir's parse speed comes from.
//!
//! Depth: the walker recurses only along the trie (as deep as the longest path of the
//! pipeline); everything else, however deeply nested, serde_json skips or captures raw
//! without recursion (`IgnoredAny`, `RawValue`). A line's nesting never reaches the stack.
//!
//! A JSON key that contains dots (`"log.level"`, as ECS loggers write) matches the path
//! `log.level` just as the nested `{"log":{"level":..}}` does.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::event::Value;

/// A trie of field paths; each path that was added has an id, its index in the captured values.
#[derive(Debug, Clone, Default)]
pub struct PathTrie {
    nodes: Vec<Node>,
    paths: Vec<String>,
}

#[derive(Debug, Clone, Default)]
struct Node {
    id: Option<usize>,
    children: Vec<(Box<str>, usize)>,
    /// Per child, in the same order, its segment's [`Probe`]: a key is compared with a
    /// segment only where length and first bytes agree (a line's keys are looked up at every
    /// object level, and the root has a child per fallback path of every event field).
    probes: Vec<Probe>,
    /// Whether some child has children: only then can a dotted key (`"log.level"`) lead
    /// anywhere from here.
    deep: bool,
}

/// A segment's length and its first 8 bytes (zero-padded), compared before its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Probe {
    len: usize,
    head: u64,
}

impl Probe {
    #[inline]
    fn of(s: &str) -> Probe {
        let b = s.as_bytes();
        let mut head = [0u8; 8];
        let n = b.len().min(8);
        head[..n].copy_from_slice(&b[..n]);
        Probe {
            len: b.len(),
            head: u64::from_le_bytes(head),
        }
    }
}

impl PathTrie {
    pub fn new() -> Self {
        PathTrie {
            nodes: vec![Node::default()],
            paths: Vec::new(),
        }
    }

    /// The id of `path` (dot-separated), added if new.
    pub fn intern(&mut self, path: &str) -> usize {
        let (mut node, mut parent): (usize, Option<usize>) = (0, None);
        for seg in path.split('.') {
            if let Some(p) = parent {
                // `node` gets (or has) a child: its parent can lead further than one step.
                self.nodes[p].deep = true;
            }
            parent = Some(node);
            node = match self.child(node, seg) {
                Some(n) => n,
                None => {
                    self.nodes.push(Node::default());
                    let n = self.nodes.len() - 1;
                    self.nodes[node].children.push((seg.into(), n));
                    self.nodes[node].probes.push(Probe::of(seg));
                    n
                }
            };
        }
        match self.nodes[node].id {
            Some(id) => id,
            None => {
                let id = self.paths.len();
                self.paths.push(path.to_string());
                self.nodes[node].id = Some(id);
                id
            }
        }
    }

    /// Number of interned paths (the length of a captured-values vector).
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// The id of `path`, if it was interned.
    pub fn get(&self, path: &str) -> Option<usize> {
        let node = path.split('.').try_fold(0, |n, seg| self.child(n, seg))?;
        self.nodes[node].id
    }

    /// The path text of an id.
    pub fn path(&self, id: usize) -> &str {
        &self.paths[id]
    }

    #[inline]
    fn child(&self, node: usize, seg: &str) -> Option<usize> {
        let node = &self.nodes[node];
        let probe = Probe::of(seg);
        // Segments of up to 8 bytes are equal when their probes are; longer ones compare
        // the rest only when the first 8 bytes agree.
        let i = node.probes.iter().enumerate().position(|(i, p)| {
            *p == probe
                && (probe.len <= 8 || node.children[i].0.as_bytes()[8..] == seg.as_bytes()[8..])
        })?;
        Some(node.children[i].1)
    }

    /// The node a JSON key leads to from `node`, splitting dotted keys.
    #[inline]
    fn step(&self, node: usize, key: &str) -> Option<usize> {
        if let Some(n) = self.child(node, key) {
            return Some(n);
        }
        if !self.nodes[node].deep || !key.contains('.') {
            return None;
        }
        key.split('.').try_fold(node, |n, seg| self.child(n, seg))
    }
}

/// How a line's JSON turned out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Object,
    NotAnObject,
}

/// Walks `line` and fills `out[id]` for each path of `trie` the line has. On `Err` the line is not
/// valid JSON and `out` may hold partial captures, which the caller must discard.
pub fn capture<'a>(
    trie: &PathTrie,
    line: &'a str,
    out: &mut [Option<Value<'a>>],
) -> Result<Shape, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(line);
    let shape = de.deserialize_any(ObjectVisitor {
        trie,
        node: 0,
        out,
        top: true,
    })?;
    de.end()?;
    Ok(shape)
}

struct ObjectVisitor<'t, 'o, 'a> {
    trie: &'t PathTrie,
    node: usize,
    out: &'o mut [Option<Value<'a>>],
    /// At the top level a non-object is reported; below it, it is skipped.
    top: bool,
}

impl<'a> DeserializeSeed<'a> for ObjectVisitor<'_, '_, 'a> {
    type Value = Shape;
    fn deserialize<D: Deserializer<'a>>(self, d: D) -> Result<Shape, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'a> Visitor<'a> for ObjectVisitor<'_, '_, 'a> {
    type Value = Shape;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'a>>(self, mut map: A) -> Result<Shape, A::Error> {
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let Some(node) = self.trie.step(self.node, &key) else {
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            let n = &self.trie.nodes[node];
            match (n.id, n.children.is_empty()) {
                (Some(id), true) => {
                    let raw: &'a RawValue = map.next_value()?;
                    self.out[id] = Some(value_of(raw.get()));
                }
                (None, _) => {
                    map.next_value_seed(ObjectVisitor {
                        trie: self.trie,
                        node,
                        out: &mut *self.out,
                        top: false,
                    })?;
                }
                (Some(id), false) => {
                    // Both a captured path and a prefix of others: keep the text, then walk it.
                    let raw: &'a RawValue = map.next_value()?;
                    let text = raw.get();
                    self.out[id] = Some(value_of(text));
                    let mut de = serde_json::Deserializer::from_str(text);
                    de.deserialize_any(ObjectVisitor {
                        trie: self.trie,
                        node,
                        out: &mut *self.out,
                        top: false,
                    })
                    .map_err(de::Error::custom)?;
                }
            }
        }
        Ok(Shape::Object)
    }

    fn visit_seq<A: SeqAccess<'a>>(self, mut seq: A) -> Result<Shape, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(self.other())
    }

    fn visit_bool<E>(self, _: bool) -> Result<Shape, E> {
        Ok(self.other())
    }
    fn visit_i64<E>(self, _: i64) -> Result<Shape, E> {
        Ok(self.other())
    }
    fn visit_u64<E>(self, _: u64) -> Result<Shape, E> {
        Ok(self.other())
    }
    fn visit_f64<E>(self, _: f64) -> Result<Shape, E> {
        Ok(self.other())
    }
    fn visit_str<E>(self, _: &str) -> Result<Shape, E> {
        Ok(self.other())
    }
    fn visit_unit<E>(self) -> Result<Shape, E> {
        Ok(self.other())
    }
}

impl ObjectVisitor<'_, '_, '_> {
    fn other(&self) -> Shape {
        if self.top {
            Shape::NotAnObject
        } else {
            Shape::Object
        }
    }
}

/// Object keys, borrowed unless they contain escapes.
struct KeySeed;

impl<'a> DeserializeSeed<'a> for KeySeed {
    type Value = Cow<'a, str>;
    fn deserialize<D: Deserializer<'a>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(KeySeed)
    }
}

impl<'a> Visitor<'a> for KeySeed {
    type Value = Cow<'a, str>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string key")
    }
    fn visit_borrowed_str<E>(self, v: &'a str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
}

/// A captured value from its (already validated) JSON text.
fn value_of(text: &str) -> Value<'_> {
    match text.as_bytes().first() {
        Some(b'"') => {
            let inner = &text[1..text.len() - 1];
            if inner.contains('\\') {
                // Escapes: let serde_json decode them.
                serde_json::from_str::<String>(text).map_or(Value::Str(Cow::Borrowed(inner)), |s| {
                    Value::Str(Cow::Owned(s))
                })
            } else {
                Value::Str(Cow::Borrowed(inner))
            }
        }
        Some(b't') => Value::Bool(true),
        Some(b'f') => Value::Bool(false),
        Some(b'n') => Value::Null,
        Some(b'{' | b'[') => Value::Composite(text),
        _ => text
            .parse::<f64>()
            .map_or(Value::Null, |n| Value::Num(n, text)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trie(paths: &[&str]) -> PathTrie {
        let mut t = PathTrie::new();
        for p in paths {
            t.intern(p);
        }
        t
    }

    fn run<'a>(t: &PathTrie, line: &'a str) -> (Result<Shape, String>, Vec<Option<Value<'a>>>) {
        let mut out = vec![None; t.len()];
        let r = capture(t, line, &mut out).map_err(|e| e.to_string());
        (r, out)
    }

    #[test]
    fn captures_nested_dotted_and_escaped() {
        let t = trie(&[
            "message",
            "metadata.agent_id",
            "metadata.depth",
            "log.level",
            "a",
        ]);
        let line = r#"{"message":"hi \"you\"","metadata":{"agent_id":"agent-01","depth":17,"x":[1,{"y":2}]},"log.level":"warn","a":{"b":1},"z":null}"#;
        let (r, out) = run(&t, line);
        assert_eq!(r, Ok(Shape::Object));
        assert_eq!(out[0], Some(Value::Str(Cow::Owned("hi \"you\"".into()))));
        assert_eq!(out[1], Some(Value::Str(Cow::Borrowed("agent-01"))));
        assert_eq!(out[2], Some(Value::Num(17.0, "17")));
        assert_eq!(out[3], Some(Value::Str(Cow::Borrowed("warn"))));
        assert_eq!(out[4], Some(Value::Composite(r#"{"b":1}"#)));
    }

    #[test]
    fn a_path_that_is_also_a_prefix() {
        let t = trie(&["metadata", "metadata.agent_id"]);
        let (r, out) = run(&t, r#"{"metadata":{"agent_id":"a"}}"#);
        assert_eq!(r, Ok(Shape::Object));
        assert_eq!(out[0], Some(Value::Composite(r#"{"agent_id":"a"}"#)));
        assert_eq!(out[1], Some(Value::Str(Cow::Borrowed("a"))));
    }

    #[test]
    fn prefix_that_is_not_an_object_is_skipped() {
        let t = trie(&["metadata.agent_id"]);
        let (r, out) = run(&t, r#"{"metadata":"flat","other":true}"#);
        assert_eq!(r, Ok(Shape::Object));
        assert_eq!(out[0], None);
    }

    #[test]
    fn broken_and_non_object_lines() {
        let t = trie(&["message"]);
        for line in [
            r#"{"message":"cut"#,
            r#"{"message":"x"} trailing"#,
            "Traceback (most recent call last):",
            "",
            r#"{"message":"x","#,
        ] {
            assert!(run(&t, line).0.is_err(), "{line:?}");
        }
        for line in [r#""just a string""#, "[1,2]", "42", "null"] {
            assert_eq!(run(&t, line).0, Ok(Shape::NotAnObject), "{line:?}");
        }
    }

    /// A million nested brackets, skipped, captured and along the trie's own path: read
    /// without recursion (serde_json skips and captures raw values iteratively), so no stack
    /// overflow, and captured as usual.
    #[test]
    fn deep_nesting_is_read_without_recursion() {
        let t = trie(&["message", "a", "a.a", "b.b.b"]);
        let deep = |open: &str, close: &str| {
            format!("{}1{}", open.repeat(1_000_000), close.repeat(1_000_000))
        };
        for line in [
            format!(r#"{{"x":{}}}"#, deep("[", "]")),
            format!(r#"{{"a":{}}}"#, deep("[", "]")),
            format!(r#"{{"a":{}}}"#, deep(r#"{"a":"#, "}")),
            format!(r#"{{"b":{}}}"#, deep(r#"{"b":"#, "}")),
        ] {
            let (r, out) = run(&t, &line);
            assert_eq!(r, Ok(Shape::Object));
            if line.starts_with(r#"{"a""#) {
                assert!(matches!(out[1], Some(Value::Composite(_))), "{:?}", out[1]);
            }
        }
        assert_eq!(run(&t, &deep("[", "]")).0, Ok(Shape::NotAnObject));
        // Cut short, it is broken JSON like any other.
        let cut = format!(r#"{{"a":{}"#, "[".repeat(1_000_000));
        assert!(run(&t, &cut).0.is_err());
    }
}
