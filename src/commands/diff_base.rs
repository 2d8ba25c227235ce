//! `cloud4iot diff --base REV [--rev REV]`: what merging a change does. Both revisions are
//! planned against the same live state (a snapshot or the cluster) and compared: the
//! instances that move, appear or disappear (with the reason under each revision), then
//! the rendered objects. The live objects play no part: this answers "if I merge this,
//! which functions move where?", not "what would an apply change now?".

use std::io::Write;

use anyhow::Context;
use jiff::Timestamp;

use crate::cli::{ColorChoice, Outcome};
use crate::commands::diff::DiffArgs;
use crate::output::diff::{DiffFormat, DiffOutput};
use cloud4iot_core::model::Repo;
use cloud4iot_source::Checkout;

/// Runs the two-revision diff: `--base` against `--rev` (or the files on disk).
pub fn run(args: &DiffArgs, base: &str, color: ColorChoice) -> anyhow::Result<Outcome> {
    // The head first: an invalid head is reported alone, nothing else computed.
    let head = cloud4iot_source::open(&args.repo.source())?;
    let Some(head_repo) = load(&head, "head", &args.repo.repo)? else {
        return Ok(Outcome::Changes);
    };
    let base_checkout = cloud4iot_source::open_at(&args.repo.source(), Some(base))?;
    let Some(base_repo) = load(&base_checkout, "base", &args.repo.repo)? else {
        return Ok(Outcome::Changes);
    };
    let inventory = read_state(args)?;
    // The clock is read here, at the edge; a snapshot plans at its own moment.
    let now = args
        .now
        .or_else(|| {
            args.state
                .state
                .as_ref()
                .and_then(|_| super::render::snapshot_now(&inventory))
        })
        .unwrap_or_else(Timestamp::now);
    let opts = cloud4iot_core::render::RenderOptions {
        namespace: args.namespace.clone(),
        revision: None,
    };
    let report =
        cloud4iot_core::diff::between_revisions(&base_repo, &head_repo, &inventory, now, &opts);

    let base_rev = base_checkout
        .revision
        .clone()
        .unwrap_or_else(|| base.to_owned());
    let head_rev = head
        .revision
        .clone()
        .unwrap_or_else(|| args.repo.repo.clone());
    let body = report.render(
        args.output,
        args.output == DiffFormat::Text && color.enabled(),
    );
    let text = with_revisions(&body, args.output, &base_rev, &head_rev);
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

/// The live state both revisions are planned against: the snapshot, else the cluster.
fn read_state(args: &DiffArgs) -> anyhow::Result<cloud4iot_core::model::Inventory> {
    if args.state.state.is_some() {
        return super::render::read_state(&args.state);
    }
    // The diff commands are synchronous; the cluster client is not. Inside the CLI's
    // multi-threaded runtime, block this worker while the inventory is read.
    let handle = tokio::runtime::Handle::try_current()
        .context("reading the cluster needs the async runtime")?;
    tokio::task::block_in_place(|| {
        handle.block_on(async {
            let client = cloud4iot_kube::cluster::client(&args.state.client())
                .await
                .context("connecting to the cluster")?;
            cloud4iot_kube::cluster::read_inventory_in(&client, &args.namespace)
                .await
                .context("reading the live state")
        })
    })
}

/// Loads a checkout; `None` after printing its diagnostics (`which`: head or base).
fn load(checkout: &Checkout, which: &str, repo: &str) -> anyhow::Result<Option<Repo>> {
    match cloud4iot_core::load::load_dir(&checkout.dir) {
        Ok(r) => Ok(Some(r)),
        Err(diagnostics) => {
            let mut stderr = std::io::stderr().lock();
            for d in &diagnostics.0 {
                writeln!(stderr, "{d}")?;
            }
            let rev = checkout
                .revision
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default();
            writeln!(
                stderr,
                "{repo}{rev}: the {which} revision is invalid, nothing compared"
            )?;
            Ok(None)
        }
    }
}

/// Names the two revisions compared: a line under the markdown heading (the pull-request
/// comment says what it is about), a first line of text; JSON gains `base` and `head`.
pub fn with_revisions(body: &str, format: DiffFormat, base: &str, head: &str) -> String {
    match format {
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
        DiffFormat::Json => match serde_json::from_str::<serde_json::Value>(body) {
            Ok(serde_json::Value::Object(mut map)) => {
                map.insert("base".into(), base.into());
                map.insert("head".into(), head.into());
                serde_json::to_string_pretty(&map)
                    .map(|s| s + "\n")
                    .unwrap_or_else(|_| body.to_owned())
            }
            _ => body.to_owned(),
        },
    }
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
        );
        assert_eq!(
            md,
            "### cloud4iot diff\n\nMerging `pr@sha1:b` into `main@sha1:a`\n\nNo changes.\n"
        );
        let text = with_revisions(
            "No changes.\n",
            DiffFormat::Text,
            "main@sha1:a",
            "pr@sha1:b",
        );
        assert!(text.starts_with("Comparing base main@sha1:a with head pr@sha1:b\n\n"));
        let json = with_revisions("{\"placementChanges\": []}", DiffFormat::Json, "b", "h");
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            (v["base"].as_str(), v["head"].as_str()),
            (Some("b"), Some("h"))
        );
        assert!(v["placementChanges"].is_array());
    }
}
