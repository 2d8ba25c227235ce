//! The user guide (`docs/src/`), README.md and examples-repo/README.md say what is true:
//! - the command reference (`docs/src/commands/*.md`) is the `--help` of the clap
//!   definitions; `UPDATE_GOLDEN=1 cargo test --test docs` rewrites it after a change;
//! - every `console` block runs offline against the real binary, from the repository root,
//!   and prints what the block shows (see [`check_block`] for the notation);
//! - every relative link names a file that exists, and every `#anchor` a heading of it.

use std::path::{Path, PathBuf};
use std::process::Command as Process;

use clap::CommandFactory;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Markdown files of the guide, README.md and the example repository's README.
fn documents() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "md") {
                out.push(path);
            }
        }
    }
    let mut out = vec![
        root().join("README.md"),
        root().join("examples-repo/README.md"),
    ];
    walk(&root().join("docs/src"), &mut out);
    out.sort();
    out
}

fn relative(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string()
}

fn update_golden() -> bool {
    std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1")
}

// --- The command reference -------------------------------------------------------------

/// What `cloud4iot [SUBCOMMAND] --help` prints, at 100 columns, with environment values
/// hidden (they are the reader's, not the project's).
fn help(cli: &clap::Command, sub: Option<&str>) -> String {
    let mut cmd = cli.clone();
    let mut args = vec!["cloud4iot"];
    if let Some(name) = sub {
        cmd = cmd.mut_subcommand(name, |s| s.mut_args(|a| a.hide_env_values(true)));
        args.push(name);
    }
    args.push("--help");
    let err = cmd
        .try_get_matches_from(args)
        .expect_err("--help stops parsing");
    let text = err.render().to_string();
    let lines: Vec<&str> = text.lines().map(str::trim_end).collect();
    lines.join("\n").trim_end().to_owned()
}

/// The reference page of one command: its `--help`.
fn reference_page(name: &str, help: &str) -> String {
    format!(
        "# {name}\n\n<!-- Generated from the clap definitions by tests/docs.rs; \
         `UPDATE_GOLDEN=1 cargo test --test docs` rewrites it. -->\n\n\
         ```text\n$ {name} --help\n{help}\n```\n"
    )
}

/// `cloud4iot` and every subcommand: (file stem, page).
fn commands() -> Vec<(String, String)> {
    let cli = cloud4iot::cli::Cli::command()
        .term_width(100)
        .mut_args(|a| a.hide_env_values(true));
    let mut pages = vec![(
        "cloud4iot".to_owned(),
        reference_page("cloud4iot", &help(&cli, None)),
    )];
    for sub in cli.get_subcommands() {
        let name = sub.get_name();
        let page = reference_page(&format!("cloud4iot {name}"), &help(&cli, Some(name)));
        pages.push((name.to_owned(), page));
    }
    pages
}

#[test]
fn the_command_reference_is_the_help_of_the_clap_definitions() {
    let dir = root().join("docs/src/commands");
    let summary = std::fs::read_to_string(root().join("docs/src/SUMMARY.md")).unwrap();
    let mut stale = Vec::new();
    for (name, page) in commands() {
        let path = dir.join(format!("{name}.md"));
        if update_golden() {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &page).unwrap();
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(page.as_str()) {
            stale.push(relative(&path));
        }
        assert!(
            summary.contains(&format!("(commands/{name}.md)")),
            "docs/src/SUMMARY.md does not list commands/{name}.md"
        );
    }
    assert!(
        stale.is_empty(),
        "the command reference differs from the clap definitions: {}; rerun with \
         UPDATE_GOLDEN=1 and review the git diff",
        stale.join(", ")
    );
}

// --- Console examples --------------------------------------------------------------------

/// One command of a `console` block and the output shown under it.
#[derive(Debug)]
struct Example {
    file: String,
    line: usize,
    command: String,
    expected: Vec<String>,
}

/// The `console` blocks of a Markdown text, one [`Example`] per `$ ` line.
fn examples(file: &str, text: &str) -> Vec<Example> {
    let mut out: Vec<Example> = Vec::new();
    let mut in_console = false;
    for (i, line) in text.lines().enumerate() {
        let fence = line.trim_start();
        if fence.starts_with("```") {
            in_console = !in_console && fence.trim_end() == "```console";
            continue;
        }
        if !in_console {
            continue;
        }
        if let Some(command) = line.strip_prefix("$ ") {
            out.push(Example {
                file: file.to_owned(),
                line: i + 1,
                command: command.to_owned(),
                expected: Vec::new(),
            });
        } else if let Some(example) = out.last_mut() {
            example.expected.push(line.trim_end().to_owned());
        }
    }
    out
}

/// A line that stands for any number of lines: `...`, or a note in brackets that starts
/// with `...` (`[...]`, `[... the unified diff ...]`).
fn elides(line: &str) -> bool {
    line == "..." || (line.starts_with("[...") && line.ends_with(']'))
}

/// Whether `actual` (lines) is what `expected` shows: an eliding line (see [`elides`])
/// stands for any number of lines, `...` within a line for any text.
fn matches(expected: &[String], actual: &[&str]) -> bool {
    match expected.split_first() {
        None => actual.is_empty(),
        Some((first, rest)) if elides(first) => {
            (0..=actual.len()).any(|skip| matches(rest, &actual[skip..]))
        }
        Some((first, rest)) => actual
            .split_first()
            .is_some_and(|(line, more)| line_matches(first, line) && matches(rest, more)),
    }
}

fn line_matches(expected: &str, actual: &str) -> bool {
    let mut parts = expected.split("...");
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = actual.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    for (i, part) in parts.iter().enumerate() {
        if i + 1 == parts.len() {
            return rest.ends_with(part);
        }
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.is_empty()
}

/// The words of a command line: whitespace-separated, `'...'` and `"..."` quoted.
fn words(command: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word: Option<String> = None;
    let mut quote = None;
    for c in command.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.get_or_insert_with(String::new).push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                word.get_or_insert_with(String::new);
            }
            (None, c) if c.is_whitespace() => out.extend(word.take()),
            (None, c) => word.get_or_insert_with(String::new).push(c),
        }
    }
    out.extend(word);
    out
}

/// Runs one block's examples in order. `cloud4iot ...` runs the binary from the repository
/// root with no cluster configured; its stdout, then its stderr, must match the lines
/// under it, and it must exit 0 unless the next command is `echo $?` showing its status.
fn check_block(examples: &[Example]) -> Result<(), String> {
    let mut last_status = None;
    for (i, ex) in examples.iter().enumerate() {
        let at = format!("{}:{}: `{}`", ex.file, ex.line, ex.command);
        if ex.command == "echo $?" {
            let status = last_status
                .take()
                .ok_or(format!("{at}: no command before it"))?;
            if ex.expected != [format!("{status}")] {
                return Err(format!(
                    "{at}: the status was {status}, not {:?}",
                    ex.expected
                ));
            }
            continue;
        }
        let mut args = words(&ex.command);
        if args.first().map(String::as_str) != Some("cloud4iot") {
            return Err(format!(
                "{at}: only `cloud4iot` commands run offline; show others in a `text` or `sh` block"
            ));
        }
        args.remove(0);
        let home = tempfile::tempdir().unwrap();
        let out = Process::new(env!("CARGO_BIN_EXE_cloud4iot"))
            .args(&args)
            .current_dir(root())
            .env_remove("KUBECONFIG")
            .env_remove("CLOUD4IOT_REPO")
            .env("HOME", home.path())
            .env("XDG_CACHE_HOME", home.path().join("cache"))
            .env("NO_COLOR", "1")
            .output()
            .map_err(|e| format!("{at}: {e}"))?;
        let status = out.status.code().unwrap_or(-1);
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        let actual: Vec<&str> = text.lines().map(str::trim_end).collect();
        let mut expected = ex.expected.clone();
        while expected.last().is_some_and(String::is_empty) {
            expected.pop();
        }
        if !matches(&expected, &actual) {
            return Err(format!(
                "{at} printed (exit {status}):\n{text}\n--- the document shows:\n{}",
                expected.join("\n")
            ));
        }
        let checked = examples.get(i + 1).is_some_and(|n| n.command == "echo $?");
        if status != 0 && !checked {
            return Err(format!(
                "{at} exited {status}; show it with `$ echo $?` after the command\n{text}"
            ));
        }
        last_status = Some(status);
    }
    Ok(())
}

#[test]
fn the_console_examples_print_what_the_documents_show() {
    let mut failures = Vec::new();
    let mut ran = 0;
    for path in documents() {
        let text = std::fs::read_to_string(&path).unwrap();
        let all = examples(&relative(&path), &text);
        // One block at a time: `echo $?` refers to the command before it in its block.
        let mut blocks: Vec<Vec<Example>> = Vec::new();
        let mut previous_line = 0;
        for ex in all {
            let mut gap = text
                .lines()
                .skip(previous_line)
                .take(ex.line - previous_line);
            if blocks.is_empty() || gap.any(|l| l.trim_start().starts_with("```")) {
                blocks.push(Vec::new());
            }
            previous_line = ex.line;
            blocks.last_mut().unwrap().push(ex);
        }
        for block in blocks {
            ran += block.len();
            if let Err(e) = check_block(&block) {
                failures.push(e);
            }
        }
    }
    assert!(ran >= 10, "only {ran} console examples found");
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn the_example_notation_matches_what_it_says() {
    let lines = |s: &str| s.lines().map(str::to_owned).collect::<Vec<_>>();
    assert!(matches(&lines("a\n...\nd"), &["a", "b", "c", "d"]));
    assert!(matches(&lines("a\n[...]\nb"), &["a", "b"]));
    assert!(matches(
        &lines("a\n[... the diff ...]\nb"),
        &["a", "x", "y", "b"]
    ));
    assert!(!matches(&lines("a\nb"), &["a", "b", "c"]));
    assert!(matches(
        &lines("x (...): valid"),
        &["x (main@sha1:12ab): valid"]
    ));
    assert!(!matches(&lines("x (...): valid"), &["x (main): invalid"]));
    assert_eq!(words("a 'b c' \"d\" e"), ["a", "b c", "d", "e"]);
    let ex = examples(
        "f.md",
        "```console\n$ cloud4iot x\nout\n$ echo $?\n1\n```\n```sh\n$ no\n```\n",
    );
    assert_eq!(ex.len(), 2);
    assert_eq!(
        (ex[0].line, ex[0].expected.clone()),
        (2, vec!["out".to_owned()])
    );
}

// --- Links -------------------------------------------------------------------------------

/// The anchors mdBook gives the headings of a Markdown text: lower case, spaces to `-`,
/// only letters, digits, `-` and `_` kept.
fn anchors(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_code = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
        } else if !in_code && line.starts_with('#') {
            let heading = line.trim_start_matches('#').trim();
            let id: String = heading
                .chars()
                .filter_map(|c| match c {
                    c if c.is_alphanumeric() || c == '_' || c == '-' => {
                        Some(c.to_lowercase().next().unwrap())
                    }
                    c if c.is_whitespace() => Some('-'),
                    _ => None,
                })
                .collect();
            out.push(id);
        }
    }
    out
}

/// `[text](target)` links outside code blocks and code spans, with their line numbers.
fn links(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut in_code = false;
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        // Drop code spans: a `[x](y)` inside backticks is not a link.
        let prose: String = line.split('`').step_by(2).collect::<Vec<_>>().join(" ");
        let mut rest = prose.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            out.push((i + 1, after[..end].to_owned()));
            rest = &after[end..];
        }
    }
    out
}

#[test]
fn every_relative_link_names_a_file_and_anchor_that_exist() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for path in documents() {
        let text = std::fs::read_to_string(&path).unwrap();
        for (line, target) in links(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (file, anchor) = target.split_once('#').unwrap_or((target.as_str(), ""));
            let file = if file.is_empty() {
                path.clone()
            } else {
                path.parent().unwrap().join(file)
            };
            let at = format!("{}:{line}: {target}", relative(&path));
            if !file.exists() {
                broken.push(format!("{at}: no such file"));
            } else if !anchor.is_empty() {
                let text = std::fs::read_to_string(&file).unwrap_or_default();
                if !anchors(&text).iter().any(|a| a == anchor) {
                    broken.push(format!("{at}: no heading with that anchor"));
                }
            }
        }
    }
    assert!(checked > 50, "only {checked} links found");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_anchors_are_mdbooks() {
    assert_eq!(
        anchors("# What `apply` does\n```\n# not a heading\n```\n## Controller: roaming latency"),
        ["what-apply-does", "controller-roaming-latency"]
    );
    assert_eq!(
        links("see [a](b.md#c) and `[x](y)`"),
        [(1, "b.md#c".to_owned())]
    );
}
