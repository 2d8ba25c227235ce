//! `cloud4iot status`: what the controller last did, read from its Reconciler object.
//!
//! Exit codes: 0 Ready; 1 not Ready (stalled, failing or still reconciling); 2 the object
//! could not be read.

use std::fmt::Write as _;

use anyhow::Context;
use clap::{Args, ValueEnum};
use kube::api::Api;

use crate::flags::{ClusterArgs, Outcome};
use cloud4iot_kube::cluster;
use cloud4iot_kube::reconciler::{NAME, Reconciler, ReconcilerStatus};

#[derive(Debug, Clone, Args)]
#[command(
    about = "Show what the controller (`cloud4iot run`) last did: conditions, revisions, instances per tier, unplaced instances",
    long_about = "Read the controller's status object (a cluster-scoped Reconciler, as \
`kubectl get reconcilers` shows it) and print its conditions (Ready, Reconciling, Stalled, \
with reasons), the last applied and attempted revisions, instances per tier, the unplaced \
instances with their reasons and the pending moves.\n\n\
Exit codes: 0 Ready, 1 not Ready, 2 the status could not be read."
)]
pub struct StatusArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// The Reconciler object's name.
    #[arg(long, value_name = "NAME", default_value = NAME)]
    pub name: String,
    #[arg(long, short = 'o', value_enum, default_value_t = StatusFormat::Text)]
    pub output: StatusFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StatusFormat {
    Text,
    Json,
}

pub async fn run(args: &StatusArgs) -> anyhow::Result<Outcome> {
    let client = cluster::client(&args.cluster.client()).await?;
    let api: Api<Reconciler> = Api::all(client);
    let object = api
        .get_opt(&args.name)
        .await
        .with_context(|| format!("read Reconciler {}", args.name))?
        .with_context(|| {
            format!(
                "no Reconciler {} in the cluster: is `cloud4iot run` running (and has it been the leader)?",
                args.name
            )
        })?;
    let status = object.status.clone().unwrap_or_default();
    match args.output {
        StatusFormat::Json => println!("{}", serde_json::to_string_pretty(&status)?),
        StatusFormat::Text => print!("{}", text(&args.name, &status)),
    }
    let ready = status
        .condition("Ready")
        .is_some_and(|c| c.status == "True");
    Ok(if ready {
        Outcome::Clean
    } else {
        Outcome::Changes
    })
}

/// The text form: conditions first, as a Flux user reads them.
pub fn text(name: &str, s: &ReconcilerStatus) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "reconciler/{name}");
    for c in &s.conditions {
        let _ = writeln!(
            out,
            "  {:<12} {:<7} {:<24} {}",
            c.type_, c.status, c.reason, c.message
        );
    }
    let rev = |r: &Option<String>| r.clone().unwrap_or_else(|| "-".to_owned());
    let _ = writeln!(out, "applied revision:   {}", rev(&s.last_applied_revision));
    let _ = writeln!(
        out,
        "attempted revision: {}",
        rev(&s.last_attempted_revision)
    );
    if let Some(t) = &s.last_reconciled_at {
        let _ = writeln!(out, "last full reconcile: {}", t.0);
    }
    if let Some(l) = &s.leader {
        let _ = writeln!(out, "leader: {l}");
    }
    let tiers: Vec<String> = ["gateway", "edge", "cloud"]
        .iter()
        .map(|t| format!("{t} {}", s.tiers.get(*t).copied().unwrap_or(0)))
        .collect();
    let _ = writeln!(
        out,
        "instances: {}, unplaced {}",
        tiers.join(", "),
        s.unplaced_count
    );
    for u in &s.unplaced {
        let _ = writeln!(
            out,
            "  unplaced {} ({}): {}",
            u.instance, u.function, u.reason
        );
    }
    for p in &s.pending {
        let _ = writeln!(
            out,
            "  pending {} ({}) at {}: {}",
            p.instance, p.function, p.due.0, p.reason
        );
    }
    out
}
