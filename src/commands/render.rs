//! `cloud4iot render`: the Deployments a repository and a live state call for, as the
//! YAML stream `kubectl apply --server-side -f -` reads. Also the shared front half of
//! `diff`: source -> load -> state -> plan.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use clap::Args;
use jiff::Timestamp;

use crate::cli::{Outcome, RepoArgs, StateArgs};
use cloud4iot_core::model::{Inventory, Repo};
use cloud4iot_core::plan::Plan;
use cloud4iot_core::render::{RenderOptions, render, to_yaml_stream};
use cloud4iot_source::Checkout;

#[derive(Debug, Clone, Args)]
#[command(
    about = "Print the Deployments the placement calls for (YAML)",
    long_about = "Print the Deployments the placement calls for, one per placed function \
instance, as a multi-document YAML stream (`kubectl apply --server-side -f -` reads it).\n\n\
Exit codes: 0 rendered, 1 invalid repository, 2 error.",
    after_help = "Example:\n  cloud4iot render --repo examples-repo --state examples-repo/state/home.yaml"
)]
pub struct RenderArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    #[command(flatten)]
    pub state: StateArgs,
    /// The time presence and dwell are judged at (RFC 3339). Default with --state: the
    /// newest GatewayReport heartbeat of the snapshot (so a snapshot always means the same
    /// thing); otherwise the clock.
    #[arg(long, value_name = "TIMESTAMP")]
    pub now: Option<Timestamp>,
    /// The namespace of the function Deployments.
    #[arg(long, short = 'n', value_name = "NS", default_value = cloud4iot_core::render::DEFAULT_NAMESPACE)]
    pub namespace: String,
}

/// Everything the pure pipeline needs, read once.
pub struct Inputs {
    pub checkout: Checkout,
    pub repo: Repo,
    pub inventory: Inventory,
    pub now: Timestamp,
}

impl Inputs {
    pub fn render_options(&self, namespace: &str) -> RenderOptions {
        RenderOptions {
            namespace: namespace.to_string(),
            revision: self.checkout.revision.clone(),
        }
    }

    pub fn plan(&self) -> Plan {
        cloud4iot_core::plan::plan(&self.repo, &self.inventory, self.now)
    }
}

/// Source, load and state. `Ok(None)`: the repository is invalid; its diagnostics have
/// been printed to stderr (exit 1, as `validate`).
pub fn read_inputs(
    repo: &RepoArgs,
    state: &StateArgs,
    now: Option<Timestamp>,
) -> anyhow::Result<Option<Inputs>> {
    let checkout = cloud4iot_source::open(&repo.source())?;
    let loaded = match cloud4iot_core::load::load_dir(&checkout.dir) {
        Ok(r) => r,
        Err(diagnostics) => {
            print_invalid(repo, &diagnostics)?;
            return Ok(None);
        }
    };
    let inventory = read_state(state)?;
    let now = now
        .or_else(|| state.state.as_ref().and_then(|_| snapshot_now(&inventory)))
        .unwrap_or_else(Timestamp::now);
    Ok(Some(Inputs {
        checkout,
        repo: loaded,
        inventory,
        now,
    }))
}

/// The live state from `--state FILE` (the cluster is read by the async callers).
pub fn read_state(state: &StateArgs) -> anyhow::Result<Inventory> {
    match &state.state {
        Some(path) => read_snapshot(path),
        None => anyhow::bail!("no --state FILE given"),
    }
}

fn read_snapshot(path: &Path) -> anyhow::Result<Inventory> {
    cloud4iot_core::state::read_snapshot(path)
        .with_context(|| format!("reading state snapshot {}", path.display()))
}

/// The newest GatewayReport heartbeat: the moment a snapshot describes.
pub fn snapshot_now(inv: &Inventory) -> Option<Timestamp> {
    inv.reports.iter().filter_map(|r| r.spec.heartbeat).max()
}

pub async fn run(args: &RenderArgs) -> anyhow::Result<Outcome> {
    let inputs = if args.state.state.is_some() {
        read_inputs(&args.repo, &args.state, args.now)?
    } else {
        read_inputs_from_cluster(args).await?
    };
    let Some(inputs) = inputs else {
        return Ok(Outcome::Changes);
    };
    let plan = inputs.plan();
    let objects = render(&inputs.repo, &plan, &inputs.render_options(&args.namespace));
    let yaml = to_yaml_stream(&objects)?;
    std::io::stdout().lock().write_all(yaml.as_bytes())?;
    Ok(Outcome::Clean)
}

/// Source and load as [`read_inputs`], the live state from the cluster, the clock.
async fn read_inputs_from_cluster(args: &RenderArgs) -> anyhow::Result<Option<Inputs>> {
    let checkout = cloud4iot_source::open(&args.repo.source())?;
    let repo = match cloud4iot_core::load::load_dir(&checkout.dir) {
        Ok(r) => r,
        Err(diagnostics) => {
            print_invalid(&args.repo, &diagnostics)?;
            return Ok(None);
        }
    };
    let client = cloud4iot_kube::cluster::client(&args.state.client())
        .await
        .context("connecting to the cluster")?;
    let inventory = cloud4iot_kube::cluster::read_inventory_in(&client, &args.namespace)
        .await
        .context("reading the live state")?;
    let now = args.now.unwrap_or_else(Timestamp::now);
    Ok(Some(Inputs {
        checkout,
        repo,
        inventory,
        now,
    }))
}

fn print_invalid(
    repo: &RepoArgs,
    diagnostics: &cloud4iot_core::diag::Diagnostics,
) -> std::io::Result<()> {
    let mut stderr = std::io::stderr().lock();
    for d in &diagnostics.0 {
        writeln!(stderr, "{d}")?;
    }
    writeln!(stderr, "{}: invalid, nothing rendered", repo.repo)
}
