//! The command line: the top-level arguments, the list of subcommands, and dispatch to
//! [`crate::commands`]. The flags the subcommands share are in [`crate::flags`].

use clap::{Parser, Subcommand};

use crate::commands;
use crate::flags::{ColorChoice, EXIT_ERROR, Outcome};

#[derive(Debug, Parser)]
#[command(
    name = "cloud4iot",
    version,
    about = "GitOps placement of IoT functions across gateways, edge and cloud on Kubernetes",
    long_about = "cloud4iot reads Function, PlacementPolicy and DeviceClass YAML from a git \
repository, merges it with what the gateways report (which BLE devices each one sees, and \
what it has room for), decides where every function instance runs - on the gateway that sees \
its device, at the edge or in the cloud - and applies the difference to Kubernetes.\n\n\
Exit codes: 0 valid / no change, 1 invalid input / changes, 2 error of the tool or cluster.",
    after_help = "Start with:\n  cloud4iot validate --repo examples-repo\n  cloud4iot plan --repo examples-repo --state examples-repo/state/home.yaml --explain"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log filter (tracing syntax, e.g. `info` or `cloud4iot=debug`); logs go to stderr.
    #[arg(long, global = true, env = "CLOUD4IOT_LOG", default_value = "warn")]
    pub log: String,
    /// Colour the output: auto colours only when writing to a terminal.
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a repository: JSON Schema and semantic checks, every problem with file:line.
    #[command(long_about = commands::validate::LONG_ABOUT)]
    Validate(commands::validate::ValidateArgs),
    /// Print the YAML that installs cloud4iot (CRDs, RBAC, controller, agents).
    Manifests(commands::manifests::ManifestsArgs),
    /// Show where every function instance would run (gateway, edge, cloud) and why.
    Plan(commands::plan::PlanArgs),
    /// Show what would change: placement moves, then the object diff.
    Diff(commands::diff::DiffArgs),
    /// Print the Deployments the placement calls for (YAML).
    Render(commands::render::RenderArgs),
    /// Apply the placement to the cluster: server-side apply (field manager `cloud4iot`),
    /// then prune managed Deployments that are no longer desired.
    Apply(commands::apply::ApplyArgs),
    /// Run the reconciler as a controller: git poll + webhook, watches, incremental
    /// re-planning, status, Events, metrics, leader election.
    #[command(long_about = commands::run::LONG_ABOUT)]
    Run(commands::run::RunArgs),
    Status(commands::status::StatusArgs),
    /// Run the gateway agent: BLE discovery -> this gateway's GatewayReport.
    Agent(commands::agent::AgentArgs),
    /// Replay a presence trace through the planner: migration timeline and totals.
    Simulate(commands::simulate::SimulateArgs),
}

/// Runs one command to its exit code. Errors are printed here, once, with their causes.
pub async fn run(cli: Cli) -> u8 {
    let color = cli.color;
    let result = match cli.command {
        Command::Validate(args) => commands::validate::run(&args),
        Command::Manifests(args) => commands::manifests::run(&args),
        Command::Plan(args) if args.watch => {
            crate::watch::watch(&args.repo, args.state.state.as_deref(), || {
                commands::plan::run(&args, color)
            })
            .await
        }
        Command::Diff(args) if args.watch => {
            crate::watch::watch(&args.repo, args.state.state.as_deref(), || {
                commands::diff::run(&args, color)
            })
            .await
        }
        Command::Plan(args) => commands::plan::run(&args, color).await,
        Command::Diff(args) => commands::diff::run(&args, color).await,
        Command::Render(args) => commands::render::run(&args).await,
        Command::Apply(args) => commands::apply::run(args).await,
        Command::Run(args) => commands::run::run(args).await,
        Command::Status(args) => commands::status::run(&args).await,
        Command::Agent(args) => commands::agent::run(args).await,
        Command::Simulate(args) => commands::simulate::run(&args),
    };
    match result {
        Ok(outcome) => outcome as u8,
        Err(err) => {
            // Backstop: no message, whatever produced it, shows a URL's credentials.
            eprintln!("error: {}", cloud4iot_source::redact(&format!("{err:#}")));
            // A revision refused by the signature policy is invalid input (1), not a failure.
            match err.downcast_ref::<cloud4iot_source::SourceError>() {
                Some(source) if source.is_refusal() => Outcome::Changes as u8,
                _ => EXIT_ERROR,
            }
        }
    }
}
