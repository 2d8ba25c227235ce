//! The flags several subcommands share (where the repository, the live state and the
//! cluster come from; colour), and the exit status every command returns. They live apart
//! from the dispatch in [`crate::cli`], so a command uses them without depending on the
//! list of all commands (which depends on every command).
//!
//! Exit codes follow `kubectl diff`: 0 no change / valid, 1 changes / invalid input,
//! 2 and up an error of the tool or the cluster.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::{Args, ValueEnum};

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
