//! `cloud4iot diff --base REV [--rev REV]`: what merging a change does. Both revisions are
//! planned against the same live state (a snapshot or the cluster) and compared: the
//! instances that move, appear or disappear (with the reason under each revision), then
//! the rendered objects. The live objects play no part: this answers "if I merge this,
//! which functions move where?", not "what would an apply change now?".

use std::io::Write;

use anyhow::Context;

use super::inputs::{Live, Loaded};
use crate::cli::{ColorChoice, Outcome};
use crate::commands::diff::DiffArgs;
use crate::output::diff::{DiffFormat, DiffOutput};
use cloud4iot_core::pipeline::Pipeline;
use cloud4iot_core::render::RenderOptions;

/// Runs the two-revision diff: `--base` against `--rev` (or the files on disk).
pub async fn run(args: &DiffArgs, base: &str, color: ColorChoice) -> anyhow::Result<Outcome> {
    // The head first: an invalid head is reported alone, nothing else computed.
    let name = &args.repo.repo;
    let head_checkout = cloud4iot_source::open(&args.repo.source())?;
    let invalid = "the head revision is invalid, nothing compared";
    let Some(head) = Loaded::load(head_checkout, name, invalid)? else {
        return Ok(Outcome::Changes);
    };
    let base_checkout = cloud4iot_source::open_at(&args.repo.source(), Some(base))?;
    let invalid = "the base revision is invalid, nothing compared";
    let Some(base_loaded) = Loaded::load(base_checkout, name, invalid)? else {
        return Ok(Outcome::Changes);
    };
    let live = Live::read(&args.state, &args.namespace).await?;
    let now = live.now(args.now);
    // No revision annotation on either side: it would mark every object as changed.
    let opts = RenderOptions {
        namespace: args.namespace.clone(),
        revision: None,
    };
    let before = Pipeline::new(&base_loaded.repo, &live.inventory, now).run(&opts);
    let after = Pipeline::new(&head.repo, &live.inventory, now).run(&opts);
    let report = after.diff_from(&before)?;

    let base_rev = base_loaded
        .checkout
        .revision
        .clone()
        .unwrap_or_else(|| base.to_owned());
    let head_rev = head
        .checkout
        .revision
        .clone()
        .unwrap_or_else(|| cloud4iot_source::redact(name));
    let body = report
        .render(
            args.output,
            args.output == DiffFormat::Text && color.enabled(),
        )
        .context("encoding the diff")?;
    let text = with_revisions(&body, args.output, &base_rev, &head_rev)?;
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
