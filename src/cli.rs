//! The command line: argument definitions shared by the subcommands, and dispatch.
//!
//! Exit codes follow `kubectl diff`: 0 no change / valid, 1 changes / invalid input,
//! 2 and up an error of the tool or the cluster.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Exit status of a command that did not fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing to change; the input is valid.
    Clean = 0,
    /// There are changes (diff, plan moves), or the input is invalid.
    Changes = 1,
}

/// Exit code for an error of the tool or the cluster.
pub const EXIT_ERROR: u8 = 2;

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

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

impl ColorChoice {
    /// Whether to colour stdout. Honours `NO_COLOR` (https://no-color.org) under `auto`.
    pub fn enabled(self) -> bool {
        match self {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => {
                std::env::var_os("NO_COLOR").is_none() && std::io::stdout().is_terminal()
            }
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a repository: JSON Schema and semantic checks, every problem with file:line.
    #[command(long_about = crate::commands::validate::LONG_ABOUT)]
    Validate(crate::commands::validate::ValidateArgs),
    /// Print the YAML that installs cloud4iot (CRDs, RBAC, controller, agents).
    Manifests(crate::commands::manifests::ManifestsArgs),
    /// Show where every function instance would run (gateway, edge, cloud) and why.
    Plan(crate::commands::plan::PlanArgs),
    /// Show what would change: placement moves, then the object diff.
    Diff(crate::commands::diff::DiffArgs),
    /// Print the Deployments the placement calls for (YAML).
    Render(crate::commands::render::RenderArgs),
    /// Apply the placement to the cluster: server-side apply (field manager `cloud4iot`),
    /// then prune managed Deployments that are no longer desired.
    Apply(crate::commands::apply::ApplyArgs),
    /// Run the reconciler as a controller: git poll + webhook, watches, incremental
    /// re-planning, status, Events, metrics, leader election.
    #[command(long_about = crate::commands::run::LONG_ABOUT)]
    Run(crate::commands::run::RunArgs),
    Status(crate::commands::status::StatusArgs),
    /// Run the gateway agent: BLE discovery -> this gateway's GatewayReport.
    Agent(crate::commands::agent::AgentArgs),
    /// Replay a presence trace through the planner: migration timeline and totals.
    Simulate(crate::commands::simulate::SimulateArgs),
}

/// Where the desired configuration comes from.
#[derive(Debug, Clone, Args)]
pub struct RepoArgs {
    /// The IaC repository: a directory, a local git repository, or a git URL.
    #[arg(long, value_name = "DIR|URL", env = "CLOUD4IOT_REPO")]
    pub repo: String,
    /// The revision to read: a branch, tag or commit. Default: the files on disk for a
    /// directory, HEAD for a bare repository, the remote's HEAD branch for a URL.
    #[arg(long, value_name = "REV")]
    pub rev: Option<String>,
    /// The directory inside the repository that holds the configuration (like a Flux
    /// Kustomization's path), for URLs and revisions of a monorepo. Default: the root.
    #[arg(long, value_name = "DIR")]
    pub path: Option<PathBuf>,
    /// Private key for ssh URLs (else the ssh agent is used).
    #[arg(long, value_name = "FILE", env = "CLOUD4IOT_SSH_KEY")]
    pub ssh_key: Option<PathBuf>,
    /// Accept a revision only when its commit carries an SSH signature by a key in
    /// --allowed-signers (a refused revision exits 1).
    #[arg(long, requires = "allowed_signers")]
    pub verify_signatures: bool,
    /// OpenSSH allowed_signers file: `principals [namespaces="git"] key-type base64-key`.
    #[arg(long, value_name = "FILE", env = "CLOUD4IOT_ALLOWED_SIGNERS")]
    pub allowed_signers: Option<PathBuf>,
}

impl RepoArgs {
    /// The source crate's options for these flags.
    pub fn source(&self) -> cloud4iot_source::SourceOptions {
        cloud4iot_source::SourceOptions {
            repo: self.repo.clone(),
            rev: self.rev.clone(),
            path: self.path.clone(),
            ssh_key: self.ssh_key.clone(),
            allowed_signers: self.allowed_signers.clone(),
            verify_signatures: self.verify_signatures,
        }
    }
}

/// Where the live state comes from: a snapshot file or a cluster.
#[derive(Debug, Clone, Args)]
pub struct StateArgs {
    /// A state snapshot: Nodes, GatewayReports and Deployments as `kubectl get -o yaml`
    /// prints them (a List or a multi-document stream).
    /// Takes precedence over `--kubeconfig`/`KUBECONFIG`, so an exported KUBECONFIG never
    /// turns an offline run into a cluster read.
    #[arg(long, value_name = "FILE")]
    pub state: Option<PathBuf>,
    /// Without --state: the cluster the live state is read from.
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

impl StateArgs {
    /// The kube crate's options for the cluster flags.
    pub fn client(&self) -> cloud4iot_kube::cluster::ClientOptions {
        self.cluster.client()
    }
}

/// What `apply` and `run` reconcile: a repository into a cluster's functions namespace.
#[derive(Debug, Clone, Args)]
pub struct TargetArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// The namespace functions run in: where Deployments are applied and pruned.
    #[arg(long, short = 'n', value_name = "NS", default_value = cloud4iot_core::render::DEFAULT_NAMESPACE)]
    pub namespace: String,
}

/// Which cluster to talk to (every command that reads or writes one).
#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// The cluster's kubeconfig (default: `KUBECONFIG`, `~/.kube/config`, or in-cluster;
    /// `KUBECONFIG` may list several files, merged as kubectl merges them).
    #[arg(long, value_name = "FILE", env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
}

impl ClusterArgs {
    /// The kube crate's options for these flags.
    pub fn client(&self) -> cloud4iot_kube::cluster::ClientOptions {
        cloud4iot_kube::cluster::ClientOptions {
            kubeconfig: self.kubeconfig.clone(),
            context: self.context.clone(),
        }
    }
}

/// Runs one command to its exit code. Errors are printed here, once, with their causes.
pub async fn run(cli: Cli) -> u8 {
    let color = cli.color;
    let result = match cli.command {
        Command::Validate(args) => crate::commands::validate::run(&args),
        Command::Manifests(args) => crate::commands::manifests::run(&args),
        Command::Plan(args) if args.watch => {
            crate::watch::watch(&args.repo, args.state.state.as_deref(), || {
                crate::commands::plan::run(&args, color)
            })
            .await
        }
        Command::Diff(args) if args.watch => {
            crate::watch::watch(&args.repo, args.state.state.as_deref(), || {
                crate::commands::diff::run(&args, color)
            })
            .await
        }
        Command::Plan(args) => crate::commands::plan::run(&args, color).await,
        Command::Diff(args) => crate::commands::diff::run(&args, color).await,
        Command::Render(args) => crate::commands::render::run(&args).await,
        Command::Apply(args) => crate::commands::apply::run(args).await,
        Command::Run(args) => crate::commands::run::run(args).await,
        Command::Status(args) => crate::commands::status::run(&args).await,
        Command::Agent(args) => crate::commands::agent::run(args).await,
        Command::Simulate(args) => crate::commands::simulate::run(&args),
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
