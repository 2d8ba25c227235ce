//! No import cycle among the modules of the core, nor among those of the `cloud4iot`
//! binary: each step of the pipeline depends only on the ones before it, each command only
//! on the shared flags and helpers below it, so a module can be read, tested and moved alone.
//!
//! Reads every `.rs` file under `src/`, finds each `crate::…` and `super::…` path in the
//! code (comments and string literals left out; `use` groups `{a, b}` opened), resolves it
//! to a module, and records an edge between the two sibling modules it connects: between
//! `plan` and `model` for `crate::model::Tier` written in `plan/engine.rs`, between
//! `load::validate` and `load::schema` for `super::schema::x` in `load/validate.rs`. A
//! parent using its child, or a child its parent, is not an edge (that is how a module
//! re-exports its parts). Fails if sibling modules form a cycle (`a` uses `b` and `b` uses
//! `a`, or `a` -> `b` -> `c` -> `a`), naming the place of each edge.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;

/// A reference from one module to another: where it is written and the path as written.
#[derive(Clone, Debug)]
struct Use {
    file: String,
    line: usize,
    path: String,
}

/// Edges between sibling modules: (from, to) -> the first place that makes it.
type Edges = BTreeMap<(Vec<String>, Vec<String>), Use>;

/// The module a file defines: `plan/engine.rs` -> [plan, engine], `plan/mod.rs` -> [plan],
/// `lib.rs` -> [].
fn module_of(rel: &str) -> Vec<String> {
    let rel = rel.strip_suffix(".rs").expect("a .rs file");
    let mut parts: Vec<String> = rel.split('/').map(str::to_owned).collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// The code of `text` with comments, string and char literals blanked out (line breaks
/// kept, so line numbers still hold): a doc link or a message naming `crate::x` is not an
/// import.
fn code_only(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let blank = |out: &mut String, c: u8| out.push(if c == b'\n' { '\n' } else { ' ' });
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            let mut depth = 0;
            while i < b.len() {
                if b[i..].starts_with(b"/*") {
                    depth += 1;
                    i += 2;
                    out.push_str("  ");
                } else if b[i..].starts_with(b"*/") {
                    depth -= 1;
                    i += 2;
                    out.push_str("  ");
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, b[i]);
                    i += 1;
                }
            }
        } else if b[i] == b'r' && (b[i..].starts_with(b"r\"") || b[i..].starts_with(b"r#")) {
            // Raw string: r"…", r#"…"#, …
            let hashes = b[i + 1..].iter().take_while(|&&c| c == b'#').count();
            if b.get(i + 1 + hashes) != Some(&b'"') {
                out.push('r');
                i += 1;
                continue;
            }
            let end: Vec<u8> = std::iter::once(b'"')
                .chain(std::iter::repeat_n(b'#', hashes))
                .collect();
            i += 2 + hashes;
            while i < b.len() && !b[i..].starts_with(&end) {
                blank(&mut out, b[i]);
                i += 1;
            }
            i += end.len();
            out.push_str("\"\"");
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    blank(&mut out, b[i]);
                    i += 1;
                }
                if i < b.len() {
                    blank(&mut out, b[i]);
                    i += 1;
                }
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == b'\'' && (b.get(i + 2) == Some(&b'\'') || b.get(i + 1) == Some(&b'\\')) {
            // A char literal ('x', '\n', '\''), not a lifetime ('a).
            i += 1;
            while i < b.len() && b[i] != b'\'' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("' '");
        } else {
            // Whole UTF-8 sequences: copy up to the next ASCII byte.
            let start = i;
            i += 1;
            while i < b.len() && !b[i].is_ascii() {
                i += 1;
            }
            out.push_str(&text[start..i]);
        }
    }
    out
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    Colons,
    Open,
    Close,
    Comma,
    Other(char),
}

/// Identifiers, `::`, braces and commas with their line numbers; everything else as one
/// character.
fn tokens(code: &str) -> Vec<(Tok, usize)> {
    let mut out = Vec::new();
    let mut line = 1;
    let mut chars = code.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '\n' => line += 1,
            c if c.is_whitespace() => {}
            c if c.is_alphabetic() || c == '_' => {
                let mut end = i + c.len_utf8();
                while let Some(&(j, d)) = chars.peek() {
                    if d.is_alphanumeric() || d == '_' {
                        end = j + d.len_utf8();
                        chars.next();
                    } else {
                        break;
                    }
                }
                out.push((Tok::Ident(code[i..end].to_owned()), line));
            }
            ':' if chars.peek().map(|x| x.1) == Some(':') => {
                chars.next();
                out.push((Tok::Colons, line));
            }
            '{' => out.push((Tok::Open, line)),
            '}' => out.push((Tok::Close, line)),
            ',' => out.push((Tok::Comma, line)),
            c => out.push((Tok::Other(c), line)),
        }
    }
    out
}

/// The leading module names of the path starting at `toks[at]`: for `crate::model::Tier`
/// the names after `crate`; for a group `crate::{a, b::c}` each branch's. Returns each
/// branch as its list of identifiers.
fn branches(toks: &[(Tok, usize)], mut at: usize) -> Vec<Vec<String>> {
    let mut prefix = Vec::new();
    loop {
        match toks.get(at).map(|t| &t.0) {
            Some(Tok::Ident(name)) => {
                prefix.push(name.clone());
                at += 1;
                if toks.get(at).map(|t| &t.0) == Some(&Tok::Colons) {
                    at += 1;
                } else {
                    return vec![prefix];
                }
            }
            Some(Tok::Open) => {
                // A group: split its top level at commas.
                let mut out = Vec::new();
                let mut depth = 0;
                let mut start = at + 1;
                let mut i = at + 1;
                while i < toks.len() {
                    match toks[i].0 {
                        Tok::Open => depth += 1,
                        Tok::Close if depth == 0 => {
                            if start < i {
                                for b in branches(toks, start) {
                                    out.push([prefix.clone(), b].concat());
                                }
                            }
                            return out;
                        }
                        Tok::Close => depth -= 1,
                        Tok::Comma if depth == 0 => {
                            for b in branches(toks, start) {
                                out.push([prefix.clone(), b].concat());
                            }
                            start = i + 1;
                        }
                        _ => {}
                    }
                    i += 1;
                }
                return out;
            }
            _ => return vec![prefix],
        }
    }
}

/// References from one module to another in one file (`rel`, relative to src/), resolved
/// to absolute module paths: (the module where it is written, the path it names).
type Refs = Vec<(Vec<String>, Vec<String>, Use)>;

/// The references in one file, and the inline modules (`mod tests { … }`) it defines.
fn references(rel: &str, text: &str) -> (Refs, Vec<Vec<String>>) {
    let file_module = module_of(rel);
    let toks = tokens(&code_only(text));
    let mut out = Vec::new();
    let mut defined = Vec::new();
    // Inline modules (`mod tests { … }`) open below the file's module.
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < toks.len() {
        let here = |inline: &[(String, usize)]| {
            let mut m = file_module.clone();
            m.extend(inline.iter().map(|x| x.0.clone()));
            m
        };
        match &toks[i].0 {
            Tok::Open => depth += 1,
            Tok::Close => {
                depth = depth.saturating_sub(1);
                if inline.last().is_some_and(|x| x.1 == depth) {
                    inline.pop();
                }
            }
            Tok::Ident(kw) if kw == "mod" => {
                if let (Some((Tok::Ident(name), _)), Some((Tok::Open, _))) =
                    (toks.get(i + 1), toks.get(i + 2))
                {
                    inline.push((name.clone(), depth));
                    defined.push(here(&inline));
                }
            }
            Tok::Ident(kw)
                if (kw == "crate" || kw == "super")
                    && toks.get(i + 1).map(|t| &t.0) == Some(&Tok::Colons)
                    // `a::crate` does not occur; `x::super` only as `super::super`.
                    && !(i > 0 && toks[i - 1].0 == Tok::Colons) =>
            {
                let line = toks[i].1;
                let from = here(&inline);
                let mut base = if kw == "crate" {
                    Vec::new()
                } else {
                    from.clone()
                };
                let mut at = i;
                if kw == "super" {
                    while toks.get(at).map(|t| &t.0) == Some(&Tok::Ident("super".into()))
                        && toks.get(at + 1).map(|t| &t.0) == Some(&Tok::Colons)
                    {
                        base.pop();
                        at += 2;
                    }
                } else {
                    at += 2;
                }
                for branch in branches(&toks, at) {
                    let shown = format!("{kw}::{}", branch.join("::"));
                    let mut to = base.clone();
                    to.extend(branch);
                    out.push((
                        from.clone(),
                        to,
                        Use {
                            file: format!("src/{rel}"),
                            line,
                            path: shown,
                        },
                    ));
                }
                i = at;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    (out, defined)
}

/// The edge a reference makes: between the two siblings under the modules' common parent,
/// as far as `known` (the crate's module paths) tells modules from items. None when one is
/// the other, or an ancestor of the other.
fn edge(
    from: &[String],
    to: &[String],
    known: &[Vec<String>],
) -> Option<(Vec<String>, Vec<String>)> {
    // The longest prefix of `to` that is a module (the rest names items).
    let to_module = (0..=to.len())
        .rev()
        .map(|n| &to[..n])
        .find(|p| known.iter().any(|k| k.as_slice() == *p))?;
    let common = from
        .iter()
        .zip(to_module)
        .take_while(|(a, b)| a == b)
        .count();
    if common == from.len() || common == to_module.len() {
        return None;
    }
    Some((from[..=common].to_vec(), to_module[..=common].to_vec()))
}

/// Import cycles among sibling modules, each as the places that make its edges, in order
/// (`a` -> `b` -> `a` is two places). Each module is reported in one cycle at most.
fn cycles(files: &[(String, String)]) -> Vec<Vec<Use>> {
    let mut known: Vec<Vec<String>> = files.iter().map(|(rel, _)| module_of(rel)).collect();
    let mut refs = Vec::new();
    for (rel, text) in files {
        let (found, inline) = references(rel, text);
        refs.extend(found);
        known.extend(inline);
    }
    let mut edges = Edges::new();
    for (from, to, at) in refs {
        if let Some(e) = edge(&from, &to, &known) {
            edges.entry(e).or_insert(at);
        }
    }
    let mut reported = BTreeSet::new();
    let mut out = Vec::new();
    for (start, _) in edges.keys() {
        if reported.contains(start) {
            continue;
        }
        if let Some(path) = shortest_cycle(&edges, start) {
            reported.extend(path.iter().cloned());
            let places = path
                .iter()
                .zip(path.iter().cycle().skip(1))
                .map(|(a, b)| edges[&(a.clone(), b.clone())].clone())
                .collect();
            out.push(places);
        }
    }
    out
}

/// The modules of the shortest cycle through `start` (breadth first), `start` first.
fn shortest_cycle(edges: &Edges, start: &[String]) -> Option<Vec<Vec<String>>> {
    let mut came_from: BTreeMap<&[String], &[String]> = BTreeMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(at) = queue.pop_front() {
        for (from, to) in edges.keys().filter(|(from, _)| from.as_slice() == at) {
            if to.as_slice() == start {
                let mut path = vec![from.clone()];
                while path.last().map(Vec::as_slice) != Some(start) {
                    let before = came_from[path.last().unwrap().as_slice()];
                    path.push(before.to_vec());
                }
                path.reverse();
                return Some(path);
            }
            if !came_from.contains_key(to.as_slice()) {
                came_from.insert(to, from);
                queue.push_back(to);
            }
        }
    }
    None
}

fn read_tree(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            read_tree(root, &path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            out.push((rel, std::fs::read_to_string(&path).unwrap()));
        }
    }
}

/// The cycles among the modules under `src`, one line each; `what` names the crate.
fn cycles_in(src: &Path, what: &str) -> Vec<String> {
    let mut files = Vec::new();
    read_tree(src, src, &mut files);
    files.sort();
    assert!(files.len() > 10, "read {} files under {src:?}", files.len());
    cycles(&files)
        .iter()
        .map(|places| {
            let steps: Vec<String> = places
                .iter()
                .map(|u| {
                    format!(
                        "{} uses {} ({}:{})",
                        module_of(&u.file["src/".len()..]).join("::"),
                        u.path,
                        u.file,
                        u.line
                    )
                })
                .collect();
            format!("{what}: {}", steps.join(", and "))
        })
        .collect()
}

#[test]
fn no_import_cycle_among_the_modules_of_the_core() {
    let found = cycles_in(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        "cloud4iot-core",
    );
    assert!(
        found.is_empty(),
        "modules of cloud4iot-core import each other (move the shared part to a module \
         all of them can depend on):\n{}",
        found.join("\n")
    );
}

/// The binary's sources (`src/` at the repository root) are checked from here, so the check
/// builds in seconds rather than with the binary's whole dependency tree.
#[test]
fn no_import_cycle_among_the_modules_of_the_binary() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../src");
    let found = cycles_in(&src, "cloud4iot");
    assert!(
        found.is_empty(),
        "modules of the cloud4iot binary import each other (shared flags go in `flags`, \
         shared output in `output`; only `cli` lists the commands):\n{}",
        found.join("\n")
    );
}

/// The check itself finds a cycle, through a `use` group, `super::` and an inline path;
/// and passes over comments, strings and a parent using its child.
#[test]
fn the_check_finds_a_mutual_import_and_nothing_else() {
    let files = |b: &str| {
        vec![
            ("lib.rs".to_owned(), "pub mod a;\npub mod b;\n".to_owned()),
            (
                "a.rs".to_owned(),
                "use crate::{model, b::Thing};\n// crate::c::x\nmod tests { use super::*; }\n"
                    .to_owned(),
            ),
            ("b.rs".to_owned(), b.to_owned()),
            ("c.rs".to_owned(), "pub fn x() {}\n".to_owned()),
            ("model.rs".to_owned(), String::new()),
        ]
    };
    let found = cycles(&files(
        "pub struct Thing;\nfn f() -> String { \"crate::a::x\".into() }\n",
    ));
    assert!(found.is_empty(), "{found:?}");
    for back in [
        "fn f() { crate::a::helper(); }\n",
        "mod inner {\n    use super::super::a;\n}\n",
        "use super::{c, a::Other};\n",
    ] {
        let found = cycles(&files(back));
        assert_eq!(found.len(), 1, "{back}: {found:?}");
        assert_eq!(found[0].len(), 2, "{back}: {found:?}");
        assert_eq!(found[0][0].file, "src/a.rs");
        assert_eq!(found[0][0].path, "crate::b::Thing");
        assert_eq!(found[0][1].file, "src/b.rs");
    }
    // A longer cycle: a -> b -> c -> a.
    let mut three = files("use crate::c::x;\n");
    three[3].1 = "use crate::a::Other;\npub fn x() {}\n".to_owned();
    let found = cycles(&three);
    assert_eq!(found.len(), 1, "{found:?}");
    let order: Vec<&str> = found[0].iter().map(|u| u.file.as_str()).collect();
    assert_eq!(order, ["src/a.rs", "src/b.rs", "src/c.rs"]);
}
