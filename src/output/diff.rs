//! The three faces of a [`DiffReport`]: `text` for a terminal, `markdown` for a pull
//! request comment, `json` for programs. Placement changes come first in each: they are
//! what a reviewer decides on; the object diffs are the evidence.

use std::fmt::Write;
use std::io::Write as _;

use anstyle::{AnsiColor, Style};
use anyhow::Context;

use crate::flags::{ColorChoice, Outcome};

use cloud4iot_core::diff::{
    Action, DiffReport, ObjectChange, PlacementChange, PlacementChangeKind,
};

/// Output formats of `cloud4iot diff`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DiffFormat {
    Text,
    Markdown,
    Json,
}

/// The two revisions `diff --base` compares, named in its output.
pub struct Revisions<'a> {
    pub base: &'a str,
    pub head: &'a str,
}

/// Prints `report` on stdout in `format` (naming the two revisions compared, if any) and
/// turns it into the exit status: 1 when anything changes, as `kubectl diff`.
pub fn print(
    report: &DiffReport,
    format: DiffFormat,
    color: ColorChoice,
    revisions: Option<Revisions>,
) -> anyhow::Result<Outcome> {
    let body = report
        .render(format, format == DiffFormat::Text && color.enabled())
        .context("encoding the diff")?;
    let text = match revisions {
        Some(r) => with_revisions(&body, format, r.base, r.head)?,
        None => body,
    };
    std::io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .context("writing the diff")?;
    Ok(if report.has_changes() {
        Outcome::Changes
    } else {
        Outcome::Clean
    })
}

/// Names the two revisions compared: a line under the markdown heading (the pull-request
/// comment says what it is about), a first line of text; JSON gains `base` and `head`.
/// A JSON body that is not an object is an error, not passed through unnamed.
pub fn with_revisions(
    body: &str,
    format: DiffFormat,
    base: &str,
    head: &str,
) -> anyhow::Result<String> {
    Ok(match format {
        DiffFormat::Text => format!("Comparing base {base} with head {head}\n\n{body}"),
        DiffFormat::Markdown => {
            let line = format!("Merging `{head}` into `{base}`\n\n");
            match body.split_once("\n\n") {
                Some((heading, rest)) if heading.starts_with('#') => {
                    format!("{heading}\n\n{line}{rest}")
                }
                _ => format!("{line}{body}"),
            }
        }
        DiffFormat::Json => {
            let mut map = match serde_json::from_str(body).context("the JSON diff")? {
                serde_json::Value::Object(map) => map,
                _ => anyhow::bail!("the JSON diff is not an object"),
            };
            map.insert("base".into(), base.into());
            map.insert("head".into(), head.into());
            serde_json::to_string_pretty(&map).context("encoding the JSON diff")? + "\n"
        }
    })
}

/// The output formats of a [`DiffReport`] (the report itself is the core's; how it reads
/// is the command line's).
pub trait DiffOutput {
    /// The report in `format`; an error only if JSON cannot be encoded (never empty output).
    fn render(&self, format: DiffFormat, color: bool) -> Result<String, serde_json::Error>;
    fn render_text(&self, color: bool) -> String;
    fn render_markdown(&self) -> String;
    fn render_json(&self) -> Result<String, serde_json::Error>;
}

impl DiffOutput for DiffReport {
    fn render(&self, format: DiffFormat, color: bool) -> Result<String, serde_json::Error> {
        match format {
            DiffFormat::Text => Ok(self.render_text(color)),
            DiffFormat::Markdown => Ok(self.render_markdown()),
            DiffFormat::Json => self.render_json(),
        }
    }

    /// Placement changes, then one unified diff per object; ANSI colours when `color`.
    fn render_text(&self, color: bool) -> String {
        let paint = |style: Style, s: &str| {
            if color {
                format!("{}{s}{}", style.render(), style.render_reset())
            } else {
                s.to_string()
            }
        };
        let bold = Style::new().bold();
        let mut out = String::new();
        let heading = |out: &mut String, text: String| {
            let _ = writeln!(out, "{}", paint(bold, &text));
        };
        if !self.blocked.is_empty() {
            heading(&mut out, format!("Blocked ({}):", self.blocked.len()));
            for b in &self.blocked {
                let _ = writeln!(out, "  {}: {}", paint(bold, &b.instance), b.reason);
            }
            out.push('\n');
        }
        if !self.has_changes() {
            out.push_str("No changes.\n");
            if !self.stays.is_empty() {
                out.push('\n');
                stays_text(&mut out, self, |s| paint(bold, s));
            }
            return out;
        }
        if !self.placement_changes.is_empty() {
            let n = self.placement_changes.len();
            heading(&mut out, format!("Placement changes ({n}):"));
            for c in &self.placement_changes {
                let _ = writeln!(out, "  {}: {}", paint(bold, &c.instance), movement(c));
                if let Some(r) = &c.reason_before {
                    let _ = writeln!(out, "      before: {r}");
                }
                if let Some(r) = &c.reason_after {
                    let _ = writeln!(out, "      after:  {r}");
                }
            }
            out.push('\n');
        }
        if !self.stays.is_empty() {
            stays_text(&mut out, self, |s| paint(bold, s));
            out.push('\n');
        }
        if !self.object_changes.is_empty() {
            let counts = summary(&self.object_changes);
            heading(&mut out, format!("Object changes ({counts}):"));
            for c in &self.object_changes {
                let _ = writeln!(
                    out,
                    "{}",
                    paint(bold, &format!("{} {} {}", verb(c.action), c.kind, c.key()))
                );
                for line in c.diff.lines() {
                    let style = if line.starts_with("+++") || line.starts_with("---") {
                        bold
                    } else if line.starts_with('+') {
                        AnsiColor::Green.on_default()
                    } else if line.starts_with('-') {
                        AnsiColor::Red.on_default()
                    } else if line.starts_with("@@") {
                        AnsiColor::Cyan.on_default()
                    } else {
                        Style::new()
                    };
                    let _ = writeln!(out, "{}", paint(style, line));
                }
            }
        }
        out
    }

    /// A summary table of placement changes and one collapsible diff per object.
    fn render_markdown(&self) -> String {
        let mut out = String::from("### cloud4iot diff\n\n");
        if !self.blocked.is_empty() {
            let _ = writeln!(out, "**Blocked** (never written):\n");
            for b in &self.blocked {
                let _ = writeln!(out, "- `{}`: {}", b.instance, cell(&b.reason));
            }
            out.push('\n');
        }
        let stays = |out: &mut String| {
            if !self.stays.is_empty() {
                let _ = writeln!(out, "**Staying** (a move was considered):\n");
                for s in &self.stays {
                    let _ = writeln!(out, "- `{}`: {}", s.instance, cell(&s.reason.to_string()));
                }
                out.push('\n');
            }
        };
        if !self.has_changes() {
            out.push_str("No changes.\n");
            if !self.stays.is_empty() {
                out.push('\n');
                stays(&mut out);
            }
            return out;
        }
        let _ = writeln!(
            out,
            "**{} placement change{}**, **{} object change{}** ({}).\n",
            self.placement_changes.len(),
            plural(self.placement_changes.len()),
            self.object_changes.len(),
            plural(self.object_changes.len()),
            summary(&self.object_changes)
        );
        if !self.placement_changes.is_empty() {
            out.push_str("| Instance | Change | From | To | Why now | Why before |\n|---|---|---|---|---|---|\n");
            for c in &self.placement_changes {
                let from = c.from.as_ref().map_or("-".to_string(), |l| l.to_string());
                let to = c.to.as_ref().map_or("-".to_string(), |l| l.to_string());
                let reason = |r: &Option<String>| r.as_deref().map_or("-".to_string(), cell);
                let _ = writeln!(
                    out,
                    "| `{}` | {} | {} | {} | {} | {} |",
                    c.instance,
                    kind_word(c.change),
                    cell(&from),
                    cell(&to),
                    reason(&c.reason_after),
                    reason(&c.reason_before)
                );
            }
            out.push('\n');
        }
        stays(&mut out);
        for c in &self.object_changes {
            let fence = "`".repeat(longest_backtick_run(&c.diff).max(2) + 1);
            let _ = write!(
                out,
                "<details><summary>{} {} <code>{}</code></summary>\n\n{fence}diff\n{}{fence}\n\n</details>\n\n",
                verb(c.action),
                c.kind,
                html_escape(&c.key()),
                c.diff
            );
        }
        out
    }

    /// `{"placementChanges": [...], "objectChanges": [...]}`, pretty-printed.
    fn render_json(&self) -> Result<String, serde_json::Error> {
        let mut s = serde_json::to_string_pretty(self)?;
        s.push('\n');
        Ok(s)
    }
}

/// `Staying (1):` and one line per running instance a move was considered for: why it
/// stays where it runs (its reason annotation keeps the reason it was placed for).
fn stays_text(out: &mut String, report: &DiffReport, bold: impl Fn(&str) -> String) {
    let _ = writeln!(
        out,
        "{}",
        bold(&format!("Staying ({}):", report.stays.len()))
    );
    for s in &report.stays {
        let _ = writeln!(out, "  {}: {}", bold(&s.instance), s.reason);
    }
}

fn movement(c: &PlacementChange) -> String {
    let loc = |l: &Option<cloud4iot_core::diff::Location>| {
        l.as_ref().map_or("-".to_string(), |l| l.to_string())
    };
    match c.change {
        PlacementChangeKind::Moved => format!("moved {} -> {}", loc(&c.from), loc(&c.to)),
        PlacementChangeKind::Appeared => format!("appeared on {}", loc(&c.to)),
        PlacementChangeKind::Disappeared => format!("disappeared from {}", loc(&c.from)),
    }
}

fn kind_word(k: PlacementChangeKind) -> &'static str {
    match k {
        PlacementChangeKind::Moved => "moved",
        PlacementChangeKind::Appeared => "appeared",
        PlacementChangeKind::Disappeared => "disappeared",
    }
}

fn verb(a: Action) -> &'static str {
    match a {
        Action::Create => "create",
        Action::Update => "update",
        Action::Delete => "delete",
    }
}

/// `1 to create, 2 to update, 0 to delete`.
fn summary(changes: &[ObjectChange]) -> String {
    let n = |a| changes.iter().filter(|c| c.action == a).count();
    format!(
        "{} to create, {} to update, {} to delete",
        n(Action::Create),
        n(Action::Update),
        n(Action::Delete)
    )
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// A markdown table cell: no pipes or line breaks, and no text GitHub takes for HTML.
fn cell(s: &str) -> String {
    html_escape(s).replace('|', "\\|").replace('\n', " ")
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn longest_backtick_run(s: &str) -> usize {
    s.split(|c| c != '`').map(str::len).max().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revisions_go_where_each_format_shows_them() {
        let md = with_revisions(
            "### cloud4iot diff\n\nNo changes.\n",
            DiffFormat::Markdown,
            "main@sha1:a",
            "pr@sha1:b",
        )
        .unwrap();
        assert_eq!(
            md,
            "### cloud4iot diff\n\nMerging `pr@sha1:b` into `main@sha1:a`\n\nNo changes.\n"
        );
        let text = with_revisions(
            "No changes.\n",
            DiffFormat::Text,
            "main@sha1:a",
            "pr@sha1:b",
        )
        .unwrap();
        assert!(text.starts_with("Comparing base main@sha1:a with head pr@sha1:b\n\n"));
        let json =
            with_revisions("{\"placementChanges\": []}", DiffFormat::Json, "b", "h").unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            (v["base"].as_str(), v["head"].as_str()),
            (Some("b"), Some("h"))
        );
        assert!(v["placementChanges"].is_array());
    }
}
