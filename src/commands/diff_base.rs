//! `cloud4iot diff --base REV [--rev REV]`: what merging a change does. Both revisions are
//! planned against the same live state (a snapshot or the cluster) and compared: the
//! instances that move, appear or disappear (with the reason under each revision), then
//! the rendered objects. The live objects play no part: this answers "if I merge this,
//! which functions move where?", not "what would an apply change now?".

use jiff::Timestamp;

use super::inputs::{Live, Loaded};
use crate::flags::{ColorChoice, Outcome, RepoArgs, StateArgs};
use crate::output::diff::{self, DiffFormat, Revisions};
use cloud4iot_core::pipeline::Pipeline;
use cloud4iot_core::render::RenderOptions;

/// What `diff --base` reads of `diff`'s flags.
pub struct BaseDiff<'a> {
    /// The head: `--rev`, or the files on disk.
    pub repo: &'a RepoArgs,
    /// The revision the head would be merged into.
    pub base: &'a str,
    pub state: &'a StateArgs,
    pub namespace: &'a str,
    pub now: Option<Timestamp>,
}

/// Runs the two-revision diff: `--base` against `--rev` (or the files on disk).
pub async fn run(
    args: BaseDiff<'_>,
    format: DiffFormat,
    color: ColorChoice,
) -> anyhow::Result<Outcome> {
    // The head first: an invalid head is reported alone, nothing else computed.
    let name = &args.repo.repo;
    let head_checkout = cloud4iot_source::open(&args.repo.source())?;
    let invalid = "the head revision is invalid, nothing compared";
    let Some(head) = Loaded::load(head_checkout, name, invalid)? else {
        return Ok(Outcome::Changes);
    };
    let base_checkout = cloud4iot_source::open_at(&args.repo.source(), Some(args.base))?;
    let invalid = "the base revision is invalid, nothing compared";
    let Some(base_loaded) = Loaded::load(base_checkout, name, invalid)? else {
        return Ok(Outcome::Changes);
    };
    let live = Live::read(args.state, args.namespace, args.now).await?;
    let now = live.now(args.now);
    // No revision annotation on either side: it would mark every object as changed.
    let opts = RenderOptions {
        namespace: args.namespace.to_owned(),
        revision: None,
    };
    let before = Pipeline::new(&base_loaded.repo, &live.inventory, now).run(&opts);
    let after = Pipeline::new(&head.repo, &live.inventory, now).run(&opts);
    let report = after.diff_from(&before)?;

    let base_rev = base_loaded
        .checkout
        .revision
        .clone()
        .unwrap_or_else(|| args.base.to_owned());
    let head_rev = head
        .checkout
        .revision
        .clone()
        .unwrap_or_else(|| cloud4iot_source::redact(name));
    let revisions = Revisions {
        base: &base_rev,
        head: &head_rev,
    };
    diff::print(&report, format, color, Some(revisions))
}
