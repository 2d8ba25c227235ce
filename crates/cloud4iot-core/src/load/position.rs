//! Where every node of a YAML document is: a map from JSON pointer (`/spec/tiers/0`) to the
//! line and column of the node's value and, for mapping entries, of its key.
//!
//! serde gives values without positions, and a field that parsed fine can still fail a
//! schema or semantic check later; this index is how such a diagnostic finds its line.
//! Built from the events of `granit-parser` (the YAML parser kube's own YAML support uses).

use std::collections::HashMap;

use granit_parser::{Event, Options, Parser};

/// A 1-based line and column.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

#[derive(Clone, Copy, Debug)]
struct Marks {
    key: Option<Pos>,
    value: Pos,
}

/// Positions of the nodes of one document.
#[derive(Clone, Debug, Default)]
pub struct DocIndex {
    /// Where the document starts (its root node, or its `---`).
    pub start: Pos,
    nodes: HashMap<String, Marks>,
}

impl DocIndex {
    /// Position of the value at `pointer`, or of its nearest indexed ancestor (a missing
    /// field is reported where its parent is).
    pub fn value(&self, pointer: &str) -> Pos {
        self.nearest(pointer).map(|m| m.value).unwrap_or(self.start)
    }

    /// Position of the key of the mapping entry at `pointer` (for "unknown field"), else of
    /// its value, else of the nearest ancestor.
    pub fn key(&self, pointer: &str) -> Pos {
        self.nearest(pointer)
            .map(|m| m.key.unwrap_or(m.value))
            .unwrap_or(self.start)
    }

    /// Whether the document has a node at exactly `pointer`.
    pub fn contains(&self, pointer: &str) -> bool {
        self.nodes.contains_key(pointer)
    }

    fn nearest(&self, pointer: &str) -> Option<&Marks> {
        let mut p = pointer;
        loop {
            if let Some(m) = self.nodes.get(p) {
                return Some(m);
            }
            match p.rfind('/') {
                Some(i) => p = &p[..i],
                None => return None,
            }
        }
    }
}

/// Escapes one JSON pointer segment (RFC 6901).
pub fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

enum Frame {
    Map {
        pointer: String,
        key: Option<(String, Pos)>,
    },
    Seq {
        pointer: String,
        next: usize,
    },
    /// A complex (non-scalar) mapping key: its nodes are not addressable by a pointer.
    Skip,
}

/// Indexes every document of `text`. Stops at the first syntax error, keeping the
/// documents before it (the error itself is reported by the loader).
pub fn index(text: &str) -> Vec<DocIndex> {
    let mut options = Options::default();
    options.emit_comments = false;
    let mut docs = Vec::new();
    let mut doc: Option<DocIndex> = None;
    let mut stack: Vec<Frame> = Vec::new();
    for item in Parser::new_from_str_with_options(text, options) {
        let Ok((event, span)) = item else { break };
        let pos = Pos {
            line: span.start.line(),
            column: span.start.col() + 1,
        };
        match event {
            Event::DocumentStart(..) => {
                doc = Some(DocIndex {
                    start: pos,
                    nodes: HashMap::new(),
                });
                stack.clear();
            }
            Event::DocumentEnd => docs.extend(doc.take()),
            Event::Scalar(ref value, ..) => {
                if let Some(d) = doc.as_mut() {
                    node(d, &mut stack, pos, Some(value.as_ref()), None);
                }
            }
            Event::Alias(_) => {
                if let Some(d) = doc.as_mut() {
                    node(d, &mut stack, pos, None, None);
                }
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let is_map = matches!(event, Event::MappingStart(..));
                if let Some(d) = doc.as_mut() {
                    node(d, &mut stack, pos, None, Some(is_map));
                }
            }
            Event::MappingEnd | Event::SequenceEnd => {
                stack.pop();
            }
            _ => {}
        }
    }
    docs
}

/// Records one node. `container` is `Some(is_map)` for a collection start.
fn node(
    doc: &mut DocIndex,
    stack: &mut Vec<Frame>,
    pos: Pos,
    scalar: Option<&str>,
    container: Option<bool>,
) {
    // Where does this node sit: as a mapping key, as a value at a pointer, or unaddressable?
    let pointer = match stack.last_mut() {
        None => Some((String::new(), None)),
        Some(Frame::Skip) => None,
        Some(Frame::Seq { pointer, next }) => {
            let p = format!("{pointer}/{next}");
            *next += 1;
            Some((p, None))
        }
        Some(Frame::Map { pointer, key }) => match key.take() {
            Some((k, key_pos)) => Some((format!("{pointer}/{}", escape(&k)), Some(key_pos))),
            None => {
                // This node is a key.
                match scalar {
                    Some(k) => *key = Some((k.to_string(), pos)),
                    // A complex key: its value gets no pointer either.
                    None => *key = Some(("\u{0}complex".to_string(), pos)),
                }
                if container.is_some() {
                    stack.push(Frame::Skip);
                }
                return;
            }
        },
    };
    let frame = match pointer {
        Some((p, key)) => {
            if doc.nodes.is_empty() && p.is_empty() {
                doc.start = pos;
            }
            doc.nodes.insert(p.clone(), Marks { key, value: pos });
            match container {
                Some(true) => Frame::Map {
                    pointer: p,
                    key: None,
                },
                Some(false) => Frame::Seq {
                    pointer: p,
                    next: 0,
                },
                None => return,
            }
        }
        None => Frame::Skip,
    };
    if container.is_some() {
        stack.push(frame);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_of_keys_values_and_items() {
        let text = "a: 1\nb:\n  c: [x, y]\n  d:\n    - e: f\n";
        let docs = index(text);
        assert_eq!(docs.len(), 1);
        let d = &docs[0];
        assert_eq!(d.value("/a"), Pos { line: 1, column: 4 });
        assert_eq!(d.key("/a"), Pos { line: 1, column: 1 });
        assert_eq!(
            d.value("/b/c/1"),
            Pos {
                line: 3,
                column: 10
            }
        );
        assert_eq!(d.key("/b/d/0/e"), Pos { line: 5, column: 7 });
        assert_eq!(
            d.value("/b/d/0/e"),
            Pos {
                line: 5,
                column: 10
            }
        );
        // Missing: nearest ancestor.
        assert_eq!(d.value("/b/c/7"), Pos { line: 3, column: 6 });
        assert!(d.contains("/b/d/0") && !d.contains("/b/x"));
    }

    #[test]
    fn documents_keep_absolute_lines() {
        let text = "# head\na: 1\n---\nb: 2\n---\n---\nc:\n  ? [complex]\n  : v\n  k/x: 3\n";
        let docs = index(text);
        assert_eq!(docs.len(), 4);
        assert_eq!(docs[1].value("/b"), Pos { line: 4, column: 4 });
        assert_eq!(
            docs[3].value("/c/k~1x"),
            Pos {
                line: 10,
                column: 8
            }
        );
    }

    use proptest::prelude::*;
    use serde_json::Value;

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            "[a-z][a-z0-9 ]{0,8}".prop_map(Value::from),
            any::<i32>().prop_map(Value::from),
            any::<bool>().prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 40, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 1..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-z][a-zA-Z0-9/~.]{0,6}", inner, 1..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Every mapping entry of `v` with its pointer, key and the position the index gives.
    fn check_keys(doc: &DocIndex, lines: &[&str], v: &Value, pointer: &str) {
        match v {
            Value::Object(m) => {
                for (k, child) in m {
                    let p = format!("{pointer}/{}", escape(k));
                    assert!(doc.contains(&p), "{p} not indexed");
                    let pos = doc.key(&p);
                    let line = lines[pos.line - 1];
                    let at: String = line.chars().skip(pos.column - 1).collect();
                    // serde_norway quotes some keys; the key text starts at the column.
                    assert!(
                        at.starts_with(k.as_str())
                            || at.starts_with(&format!("'{k}'"))
                            || at.starts_with(&format!("\"{k}\"")),
                        "{p}: line {} col {} is {at:?}",
                        pos.line,
                        pos.column
                    );
                    check_keys(doc, lines, child, &p);
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    let p = format!("{pointer}/{i}");
                    assert!(doc.contains(&p), "{p} not indexed");
                    check_keys(doc, lines, child, &p);
                }
            }
            _ => {}
        }
    }

    /// Every leaf value of `v` starts where the index says (plain, single- or double-quoted),
    /// and so does every collection when `flow` (a `{` or `[` there).
    fn check_values(doc: &DocIndex, lines: &[&str], v: &Value, pointer: &str, flow: bool) {
        let pos = doc.value(pointer);
        let line = lines[pos.line - 1];
        let at: String = line.chars().skip(pos.column - 1).collect();
        let starts = |text: &str| {
            at.starts_with(text)
                || at.starts_with(&format!("'{text}'"))
                || at.starts_with(&format!("\"{text}\""))
        };
        let here = format!("{pointer}: line {} col {} is {at:?}", pos.line, pos.column);
        match v {
            Value::Object(m) => {
                assert!(!flow || pointer.is_empty() || at.starts_with('{'), "{here}");
                for (k, child) in m {
                    check_values(doc, lines, child, &format!("{pointer}/{}", escape(k)), flow);
                }
            }
            Value::Array(items) => {
                assert!(!flow || at.starts_with('['), "{here}");
                for (i, child) in items.iter().enumerate() {
                    check_values(doc, lines, child, &format!("{pointer}/{i}"), flow);
                }
            }
            Value::String(text) => assert!(starts(text), "{here}, not {text:?}"),
            other => assert!(starts(&other.to_string()), "{here}, not {other}"),
        }
    }

    /// Flow style without quotes, as people write it: `{a: [x, 1], b: {c: true}}`.
    fn plain_flow(v: &Value) -> String {
        match v {
            Value::Object(m) => {
                let entries: Vec<String> = m
                    .iter()
                    .map(|(k, v)| format!("{k}: {}", plain_flow(v)))
                    .collect();
                format!("{{{}}}", entries.join(", "))
            }
            Value::Array(a) => {
                format!(
                    "[{}]",
                    a.iter().map(plain_flow).collect::<Vec<_>>().join(", ")
                )
            }
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    }

    /// One document in `style`: 0 block (serde_norway), 1 flow on one line, 2 flow over
    /// lines (JSON, quoted keys), 3 block keys with flow values, 4 flow with plain keys.
    fn styled(v: &Value, style: u8) -> String {
        match style {
            0 => serde_norway::to_string(v).unwrap(),
            1 => serde_json::to_string(v).unwrap() + "\n",
            2 => serde_json::to_string_pretty(v).unwrap() + "\n",
            3 => v
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| format!("{k}: {}\n", plain_flow(v)))
                .collect(),
            _ => plain_flow(v) + "\n",
        }
    }

    proptest! {
        /// Keys and values are where the index says in block style, flow style (plain and
        /// quoted, on one line or many) and block style with flow values.
        #[test]
        fn index_finds_keys_and_values_in_every_style(
            docs in prop::collection::vec(
                (prop::collection::btree_map("[a-z]{1,5}", value(), 1..4), 0u8..5),
                1..4,
            )
        ) {
            let docs: Vec<(Value, u8)> = docs
                .into_iter()
                .map(|(m, style)| (Value::Object(m.into_iter().collect()), style))
                .collect();
            let text = docs
                .iter()
                .map(|(d, style)| styled(d, *style))
                .collect::<Vec<_>>()
                .join("---\n");
            let lines: Vec<&str> = text.lines().collect();
            let index = index(&text);
            prop_assert_eq!(index.len(), docs.len(), "{}", text);
            for (d, (v, style)) in index.iter().zip(&docs) {
                check_keys(d, &lines, v, "");
                check_values(d, &lines, v, "", *style != 0);
            }
        }

        /// The index agrees with serde_norway's own output, in every document of a stream.
        #[test]
        fn index_finds_every_key_of_what_serde_writes(
            docs in prop::collection::vec(prop::collection::btree_map("[a-z]{1,5}", value(), 1..4), 1..4)
        ) {
            let docs: Vec<Value> = docs.into_iter().map(|m| Value::Object(m.into_iter().collect())).collect();
            let text = docs.iter().map(|d| serde_norway::to_string(d).unwrap()).collect::<Vec<_>>().join("---\n");
            let lines: Vec<&str> = text.lines().collect();
            let index = index(&text);
            prop_assert_eq!(index.len(), docs.len());
            for (d, v) in index.iter().zip(&docs) {
                check_keys(d, &lines, v, "");
            }
        }
    }
}
