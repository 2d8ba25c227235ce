//! `cloud4iot render`: the Deployments a repository and a live state call for, as the
//! YAML stream `kubectl apply --server-side -f -` reads.

use std::io::Write;

use anyhow::Context;
use clap::Args;
use jiff::Timestamp;

use super::inputs::{Live, Loaded};
use crate::flags::{Outcome, RepoArgs, StateArgs};
use cloud4iot_core::pipeline::Pipeline;
use cloud4iot_core::render::to_yaml_stream;

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

pub async fn run(args: &RenderArgs) -> anyhow::Result<Outcome> {
    let Some(loaded) = Loaded::read(&args.repo, "invalid, nothing rendered")? else {
        return Ok(Outcome::Changes);
    };
    let live = Live::read(&args.state, &args.namespace, args.now).await?;
    let desired = Pipeline::new(&loaded.repo, &live.inventory, live.now(args.now))
        .run(&loaded.render_options(&args.namespace));
    let yaml = to_yaml_stream(&desired.objects).context("encoding the objects as YAML")?;
    std::io::stdout().lock().write_all(yaml.as_bytes())?;
    Ok(Outcome::Clean)
}
