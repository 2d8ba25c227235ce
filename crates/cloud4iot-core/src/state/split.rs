//! Cutting a snapshot's text into pieces that parse on their own, in one pass: YAML
//! documents at their `---` lines, and the items of a top-level `items:` sequence at their
//! `- ` lines (where kubectl writes them). Each piece then costs what its own text costs,
//! whatever its place in the file, and pieces parse on every core.
//!
//! Anything unusual (directives, `...`, a `---` line with content, a List whose items are
//! not cut this way) leaves the document whole, or hands the file to the slow path.

use super::At;
use super::item::{Doc, Item, Parsed, is_list_kind};

/// One piece of a YAML snapshot: a whole document, or one item of a List document.
#[derive(Debug)]
pub(crate) struct Piece {
    start: usize,
    end: usize,
    at: At,
    /// For a List item: the byte offset of its `-`, which parsing turns into a space so
    /// the item is a mapping at the same columns.
    dash: Option<usize>,
}

impl Piece {
    /// The objects of this piece; `None` when it does not parse on its own.
    pub(crate) fn parse(&self, text: &str) -> Option<Vec<(At, Parsed)>> {
        match self.dash {
            Some(dash) => {
                let mut own = String::with_capacity(self.end - self.start);
                own.push_str(&text[self.start..dash]);
                own.push(' ');
                own.push_str(&text[dash + 1..self.end]);
                let Item(parsed) = serde_norway::from_str(&own).ok()?;
                Some(vec![(self.at, parsed)])
            }
            None => Some(
                match serde_norway::from_str(&text[self.start..self.end]).ok()? {
                    Doc::Empty => Vec::new(),
                    Doc::Item(p) => vec![(self.at, p)],
                    Doc::List(items) => items
                        .into_iter()
                        .enumerate()
                        .map(|(i, p)| {
                            let at = At {
                                item: Some(i + 1),
                                line: None,
                                ..self.at
                            };
                            (at, p)
                        })
                        .collect(),
                },
            ),
        }
    }
}

/// Lines of `text` with their byte offsets: (offset, line without its end of line).
fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let mut offset = 0;
    text.split_inclusive('\n').map(move |raw| {
        let at = offset;
        offset += raw.len();
        let line = raw.strip_suffix('\n').unwrap_or(raw);
        (at, line.strip_suffix('\r').unwrap_or(line))
    })
}

/// Not blank and not only a comment.
fn is_content(line: &str) -> bool {
    let t = line.trim_start();
    !t.is_empty() && !t.starts_with('#')
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

/// `---`, `--- # comment`: a document marker with nothing else on its line.
fn is_marker(line: &str) -> Option<bool> {
    let rest = line.strip_prefix("---")?;
    if rest.is_empty() {
        return Some(true);
    }
    if !rest.starts_with([' ', '\t']) {
        return None;
    }
    Some(!is_content(rest))
}

/// A document: byte range and 1-based line of its first line.
struct Document {
    start: usize,
    end: usize,
    first_line: usize,
}

/// The documents of a YAML stream, or `None` for a stream this reader leaves to the slow
/// path (directives, end markers, content on a `---` line).
fn documents(text: &str) -> Option<Vec<Document>> {
    let mut docs = Vec::new();
    let mut start = 0;
    let mut first_line = 1;
    for (n, (offset, line)) in lines(text).enumerate() {
        if line.starts_with('%') || line.starts_with("...") {
            return None;
        }
        match is_marker(line) {
            Some(true) => {
                docs.push(Document {
                    start,
                    end: offset,
                    first_line,
                });
                start = offset + line.len() + 1;
                first_line = n + 2;
            }
            Some(false) => return None,
            None => {}
        }
    }
    docs.push(Document {
        start: start.min(text.len()),
        end: text.len(),
        first_line,
    });
    Some(docs)
}

/// The pieces of a YAML snapshot, or `None` to leave it to the slow path.
pub(crate) fn yaml_pieces(text: &str) -> Option<Vec<Piece>> {
    let mut pieces = Vec::new();
    let mut number = 0;
    for doc in documents(text)? {
        let body = &text[doc.start..doc.end];
        let mut content = lines(body).enumerate().filter(|(_, (_, l))| is_content(l));
        let Some((first, _)) = content.next() else {
            continue; // an empty document
        };
        number += 1;
        let whole = Piece {
            start: doc.start,
            end: doc.end,
            at: At {
                document: number,
                item: None,
                line: Some(doc.first_line + first),
            },
            dash: None,
        };
        match list_items(text, &doc, number) {
            Some(items) => pieces.extend(items),
            None => pieces.push(whole),
        }
    }
    Some(pieces)
}

/// The items of a List document cut at their `-` lines, if it is one kubectl-style: a
/// column-0 `items:` whose entries start with `-` at one indentation, and a header that
/// says `kind: ...List`.
fn list_items(text: &str, doc: &Document, number: usize) -> Option<Vec<Piece>> {
    let body = &text[doc.start..doc.end];
    let mut all = lines(body).enumerate();
    let items_at = all.by_ref().find_map(|(_, (offset, line))| {
        let rest = line.strip_prefix("items:")?;
        (!is_content(rest)).then_some(offset)
    })?;
    let mut starts: Vec<(usize, usize, usize)> = Vec::new(); // (line offset, indent, line index)
    let mut dash_indent = None;
    let mut section_end = body.len();
    for (n, (offset, line)) in all {
        if !is_content(line) {
            continue;
        }
        let ind = indent(line);
        let rest = &line[ind..];
        let is_dash = rest == "-" || rest.starts_with("- ");
        let k = *dash_indent.get_or_insert(ind);
        if is_dash && ind == k {
            starts.push((offset, ind, n));
        } else if ind <= k {
            section_end = offset;
            break;
        }
    }
    if starts.is_empty() {
        return None;
    }
    // The header without the items must say this is a List.
    let mut header = String::with_capacity(items_at + body.len() - section_end);
    header.push_str(&body[..items_at]);
    header.push_str(&body[section_end..]);
    let value: serde_json::Value = serde_norway::from_str(&header).ok()?;
    if !value
        .get("kind")
        .and_then(|k| k.as_str())
        .is_some_and(is_list_kind)
    {
        return None;
    }
    let ends = starts.iter().skip(1).map(|s| s.0).chain([section_end]);
    Some(
        starts
            .iter()
            .zip(ends)
            .enumerate()
            .map(|(i, (&(start, ind, n), end))| Piece {
                start: doc.start + start,
                end: doc.start + end,
                at: At {
                    document: number,
                    item: Some(i + 1),
                    line: Some(doc.first_line + n),
                },
                dash: Some(doc.start + start + ind),
            })
            .collect(),
    )
}

/// The documents of a JSON snapshot (one value, or several one after the other), read in
/// one streaming pass; `None` if any does not read.
pub(crate) fn json_documents(text: &str) -> Option<Vec<(At, Parsed)>> {
    let mut out = Vec::new();
    for (di, doc) in serde_json::Deserializer::from_str(text)
        .into_iter::<Doc>()
        .enumerate()
    {
        let at = At {
            document: di + 1,
            item: None,
            line: None,
        };
        match doc.ok()? {
            Doc::Empty => {}
            Doc::Item(p) => out.push((at, p)),
            Doc::List(items) => out.extend(items.into_iter().enumerate().map(|(i, p)| {
                let at = At {
                    item: Some(i + 1),
                    ..at
                };
                (at, p)
            })),
        }
    }
    Some(out)
}

/// Where each document, and each item of its List, starts (1-based lines), for errors.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct DocLines {
    pub start: usize,
    pub items: Vec<usize>,
}

/// [`DocLines`] of a YAML stream, in one pass: documents start at their first content line
/// after a `---`; items are the `- ` lines of a column-0 `items:` sequence.
pub(crate) fn yaml_item_lines(text: &str) -> Vec<DocLines> {
    let mut docs: Vec<DocLines> = Vec::new();
    let mut waiting = true;
    let mut in_items = false;
    for (i, (_, line)) in lines(text).enumerate() {
        let l = line.trim_end();
        if l == "---" || l.starts_with("--- ") {
            waiting = true;
            in_items = false;
            continue;
        }
        if waiting && is_content(l) {
            docs.push(DocLines {
                start: i + 1,
                items: Vec::new(),
            });
            waiting = false;
        }
        if line.starts_with("items:") {
            in_items = true;
            continue;
        }
        if in_items {
            if line.starts_with("- ") || line == "-" || line.starts_with("  - ") {
                if let Some(d) = docs.last_mut() {
                    d.items.push(i + 1);
                }
            } else if !line.starts_with(' ') && is_content(line) {
                in_items = false;
            }
        }
    }
    docs
}

/// [`DocLines`] of a stream of JSON values, in one pass: the line of each top-level value
/// and of each element of its top-level `"items"` array.
pub(crate) fn json_item_lines(text: &str) -> Vec<DocLines> {
    let b = text.as_bytes();
    let mut docs: Vec<DocLines> = Vec::new();
    let mut line = 1;
    let mut depth = 0usize;
    let mut items_depth = None;
    let mut expect_item = false;
    let mut key_is_items = false;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'\n' {
            line += 1;
            i += 1;
            continue;
        }
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if depth == 0 {
            docs.push(DocLines {
                start: line,
                items: Vec::new(),
            });
        }
        if expect_item && Some(depth) == items_depth && c != b']' {
            if let Some(d) = docs.last_mut() {
                d.items.push(line);
            }
            expect_item = false;
        }
        match c {
            b'"' => {
                let start = i + 1;
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' {
                        i += 1;
                    } else if b[i] == b'\n' {
                        line += 1;
                    }
                    i += 1;
                }
                key_is_items = depth == 1 && b.get(start..i) == Some(&b"items"[..]);
            }
            b':' => {}
            b'[' | b'{' => {
                depth += 1;
                if c == b'[' && depth == 2 && key_is_items {
                    items_depth = Some(depth);
                    expect_item = true;
                }
                key_is_items = false;
            }
            b'}' | b']' => {
                if Some(depth) == items_depth {
                    items_depth = None;
                }
                depth = depth.saturating_sub(1);
                key_is_items = false;
            }
            b',' => {
                expect_item = Some(depth) == items_depth;
                key_is_items = false;
            }
            _ => key_is_items = false,
        }
        i += 1;
    }
    docs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_item_lines_finds_documents_and_items() {
        let text = "{\n  \"apiVersion\": \"v1\",\n  \"items\": [\n    {\"kind\": \"Node\"},\n    {\n      \"kind\": \"Node\", \"x\": [1, 2]\n    }\n  ],\n  \"kind\": \"List\"\n}\n{\"kind\": \"Node\"}\n";
        assert_eq!(
            json_item_lines(text),
            vec![
                DocLines {
                    start: 1,
                    items: vec![4, 5]
                },
                DocLines {
                    start: 11,
                    items: vec![]
                }
            ]
        );
    }

    #[test]
    fn yaml_lists_are_cut_at_their_items() {
        let text = "apiVersion: v1\nitems:\n- kind: Node\n  metadata: {name: a}\n# between\n- kind: Node\n  metadata:\n    name: b\nkind: List\n---\nkind: Node\nmetadata: {name: c}\n";
        let pieces = yaml_pieces(text).unwrap();
        let ats: Vec<At> = pieces.iter().map(|p| p.at).collect();
        assert_eq!(
            ats,
            [
                At {
                    document: 1,
                    item: Some(1),
                    line: Some(3)
                },
                At {
                    document: 1,
                    item: Some(2),
                    line: Some(6)
                },
                At {
                    document: 2,
                    item: None,
                    line: Some(11)
                },
            ]
        );
        let names: Vec<String> = pieces
            .iter()
            .flat_map(|p| p.parse(text).unwrap())
            .map(|(_, p)| match p {
                Parsed::Node(n) => n.metadata.name.unwrap(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(names, ["a", "b", "c"]);
    }
}
