//! `cloud4iot diff`: what an apply would change — placement changes first (what moves
//! where, and why), then the object diff. Exit codes as `kubectl diff`: 0 no change,
//! 1 changes (or an invalid repository), 2 error.

use clap::Args;
use jiff::Timestamp;

use super::diff_base::{self, BaseDiff};
use super::inputs::{Live, Loaded};
use crate::flags::{ColorChoice, Outcome, RepoArgs, StateArgs};
use crate::output::diff::{self, DiffFormat};
use cloud4iot_core::pipeline::Pipeline;

#[derive(Debug, Clone, Args)]
#[command(
    about = "Show what would change: placement moves, then the object diff",
    long_about = "Show what applying the repository would change: first the placement \
changes (which instance moves from where to where, with the reason before and after), \
then a unified diff of every Deployment to create, update or delete. Running instances \
a move was considered for that stay where they run are listed under Staying with why \
(e.g. another gateway has not seen their device for the dwell); they are not changes.\n\n\
Live objects are compared after removing what the API server owns (managedFields, uid, \
resourceVersion, generation, timestamps, status) and keeping only the fields cloud4iot \
sets, so server defaults never show as drift.\n\n\
Exit codes (as kubectl diff): 0 no change, 1 changes or an invalid repository, 2 error.",
    after_help = "Examples:\n  cloud4iot diff --repo examples-repo --state examples-repo/state/hospital.yaml\n  \
cloud4iot diff --repo . --state state.yaml -o markdown > comment.md"
)]
pub struct DiffArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    #[command(flatten)]
    pub state: StateArgs,
    /// text: for a terminal (coloured there); markdown: a pull-request comment with a
    /// summary table and one collapsible diff per object; json: for programs.
    #[arg(long, short = 'o', value_enum, default_value_t = DiffFormat::Text)]
    pub output: DiffFormat,
    /// The time presence and dwell are judged at (RFC 3339). Default with --state: the
    /// newest GatewayReport heartbeat of the snapshot; otherwise the clock.
    #[arg(long, value_name = "TIMESTAMP")]
    pub now: Option<Timestamp>,
    /// The namespace of the function Deployments.
    #[arg(long, short = 'n', value_name = "NS", default_value = cloud4iot_core::render::DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// Compare two revisions instead of the repository with the live objects: plan the
    /// base (e.g. `main`) and the head (--rev, or the files on disk) against the same
    /// state and show what merging the head changes.
    #[arg(long, value_name = "REV")]
    pub base: Option<String>,
    /// Re-run whenever a file under --repo (a local directory) or --state changes.
    #[arg(long)]
    pub watch: bool,
}

/// Against a snapshot (`--state`), the rendered objects are compared with its live
/// objects. Against the cluster, they first go through a server-side dry-run apply, so the
/// diff compares what the server would store with what it stores, and defaulting or
/// admission never shows as drift. `--base`: see diff_base.rs.
pub async fn run(args: &DiffArgs, color: ColorChoice) -> anyhow::Result<Outcome> {
    if let Some(base) = &args.base {
        let compare = BaseDiff {
            repo: &args.repo,
            base,
            state: &args.state,
            namespace: &args.namespace,
            now: args.now,
        };
        return diff_base::run(compare, args.output, color).await;
    }
    let Some(loaded) = Loaded::read(&args.repo, "invalid, nothing compared")? else {
        return Ok(Outcome::Changes);
    };
    let live = Live::read(&args.state, &args.namespace, args.now).await?;
    let desired = Pipeline::new(&loaded.repo, &live.inventory, live.now(args.now))
        .run(&loaded.render_options(&args.namespace));
    let report = match &live.client {
        None => desired.diff_live(&live.inventory)?,
        Some(client) => {
            // A blocked object is never written, not even in a dry run.
            let writable: Vec<_> = desired
                .objects
                .iter()
                .filter(|o| {
                    !desired
                        .blocked
                        .iter()
                        .any(|b| o.metadata.name.as_deref() == Some(b.instance.as_str()))
                })
                .cloned()
                .collect();
            let served = cloud4iot_kube::cluster::dry_run_apply(client, &writable).await?;
            desired.diff_live_as(&served, &live.inventory)?
        }
    };
    diff::print(&report, args.output, color, None)
}
