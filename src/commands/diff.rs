//! `cloud4iot diff`: what an apply would change — placement changes first (what moves
//! where, and why), then the object diff. Exit codes as `kubectl diff`: 0 no change,
//! 1 changes (or an invalid repository), 2 error.

use std::io::Write;

use clap::Args;
use jiff::Timestamp;

use crate::cli::{ColorChoice, Outcome, RepoArgs, StateArgs};
use crate::output::diff::{DiffFormat, DiffOutput};
use cloud4iot_core::diff::DiffReport;

#[derive(Debug, Clone, Args)]
#[command(
    about = "Show what would change: placement moves, then the object diff",
    long_about = "Show what applying the repository would change: first the placement \
changes (which instance moves from where to where, with the reason before and after), \
then a unified diff of every Deployment to create, update or delete.\n\n\
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
    /// state and show what merging the head changes (see diff_base.rs).
    #[arg(long, value_name = "REV")]
    pub base: Option<String>,
    /// Re-run whenever a file under --repo (a local directory) or --state changes.
    #[arg(long)]
    pub watch: bool,
}

pub fn run(args: &DiffArgs, color: ColorChoice) -> anyhow::Result<Outcome> {
    if let Some(base) = &args.base {
        return super::diff_base::run(args, base, color);
    }
    let Some(inputs) = super::render::read_inputs(&args.repo, &args.state, args.now)? else {
        return Ok(Outcome::Changes);
    };
    let report = cloud4iot_core::diff::against_live(
        &inputs.repo,
        &inputs.inventory,
        inputs.now,
        &inputs.render_options(&args.namespace),
    );
    print(&report, args.output, color)
}

/// Against the cluster (no `--state`): the rendered objects go through a server-side
/// dry-run apply, so the diff compares what the server would store with what it stores,
/// and defaulting or admission never shows as drift.
pub async fn run_against_cluster(args: &DiffArgs, color: ColorChoice) -> anyhow::Result<Outcome> {
    use anyhow::Context;
    let checkout = cloud4iot_source::open(&args.repo.source())?;
    let repo = match cloud4iot_core::load::load_dir(&checkout.dir) {
        Ok(repo) => repo,
        Err(diagnostics) => {
            diagnostics.0.iter().for_each(|d| eprintln!("{d}"));
            eprintln!("{}: invalid, nothing compared", args.repo.repo);
            return Ok(Outcome::Changes);
        }
    };
    let client = cloud4iot_kube::cluster::client(&args.state.client())
        .await
        .context("connecting to the cluster")?;
    let inventory = cloud4iot_kube::cluster::read_inventory_in(&client, &args.namespace)
        .await
        .context("reading the live state")?;
    let plan =
        cloud4iot_core::plan::plan(&repo, &inventory, args.now.unwrap_or_else(Timestamp::now));
    let opts = cloud4iot_core::render::RenderOptions {
        namespace: args.namespace.clone(),
        revision: checkout.revision.clone(),
    };
    let rendered = cloud4iot_core::render::render(&repo, &plan, &opts);
    let desired = cloud4iot_kube::cluster::dry_run_apply(&client, &rendered).await?;
    let before = cloud4iot_core::plan::current_placements(&inventory.live);
    print(
        &DiffReport::new(&before, &plan, &desired, &inventory.live),
        args.output,
        color,
    )
}

/// Prints `report` and turns it into the exit status.
pub fn print(
    report: &DiffReport,
    format: DiffFormat,
    color: ColorChoice,
) -> anyhow::Result<Outcome> {
    let text = report.render(format, format == DiffFormat::Text && color.enabled());
    std::io::stdout().lock().write_all(text.as_bytes())?;
    Ok(if report.has_changes() {
        Outcome::Changes
    } else {
        Outcome::Clean
    })
}
