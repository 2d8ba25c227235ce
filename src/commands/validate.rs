//! `cloud4iot validate`: schema and semantic checks of a repository, every problem with
//! file:line:column and field. Exit 0 valid, 1 invalid, 2 when the repository cannot be read.

use std::io::Write;

use clap::{Args, ValueEnum};

use crate::flags::{Outcome, RepoArgs};
use cloud4iot_core::model::Repo;

/// The long help of `cloud4iot validate --help`.
pub const LONG_ABOUT: &str = "Check a repository's Functions, PlacementPolicies and DeviceClasses.\n\n\
Reads every *.yaml/*.yml file under the repository (multi-document; hidden files and \
directories, and paths listed in a .sourceignore file, are skipped), checks each document \
against the JSON Schema of its kind (schema/*.json), then checks what a schema cannot: names \
that are referenced but not defined, duplicate names, a `mode` missing from `modes`, tiers, \
quantities, images. Every problem is reported, not only the first, as \
`file:line:column: field: message`.\n\n\
Exit codes: 0 valid, 1 invalid, 2 the repository could not be read.";

#[derive(Debug, Clone, Args)]
#[command(
    after_help = "Examples:\n  cloud4iot validate --repo examples-repo\n  cloud4iot validate --repo . -o json | jq '.[].message'"
)]
pub struct ValidateArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// Output format. text: a summary on stdout when valid, the problems on stderr when not.
    /// json: a JSON array of problems on stdout (empty when valid), each with file, line,
    /// column, field and message.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = ValidateOutput::Text)]
    pub output: ValidateOutput,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ValidateOutput {
    Text,
    Json,
}

pub fn run(args: &ValidateArgs) -> anyhow::Result<Outcome> {
    let checkout = cloud4iot_source::open(&args.repo.source())?;
    let loaded = cloud4iot_core::load::load_dir_with_sources(&checkout.dir).map_err(|d| {
        anyhow::anyhow!(
            "cannot list the files of repository {}:\n{d}",
            cloud4iot_source::redact(&args.repo.repo)
        )
    })?;
    let result = loaded.finish();
    let mut stdout = std::io::stdout().lock();
    match (args.output, result) {
        (ValidateOutput::Json, result) => {
            let diagnostics = result.err().unwrap_or_default();
            serde_json::to_writer_pretty(&mut stdout, &diagnostics.0)?;
            writeln!(stdout)?;
            Ok(if diagnostics.is_empty() {
                Outcome::Clean
            } else {
                Outcome::Changes
            })
        }
        (ValidateOutput::Text, Ok(repo)) => {
            let name = match &checkout.revision {
                Some(rev) => format!("{} ({rev})", cloud4iot_source::redact(&args.repo.repo)),
                None => cloud4iot_source::redact(&args.repo.repo),
            };
            writeln!(stdout, "{name}: {}: valid", summary(&repo))?;
            Ok(Outcome::Clean)
        }
        (ValidateOutput::Text, Err(diagnostics)) => {
            eprintln!("{diagnostics}");
            Ok(Outcome::Changes)
        }
    }
}

/// `2 functions, 2 placement policies, 1 device class`.
pub fn summary(repo: &Repo) -> String {
    fn count(n: usize, one: &str, many: &str) -> String {
        format!("{n} {}", if n == 1 { one } else { many })
    }
    format!(
        "{}, {}, {}",
        count(repo.functions.len(), "function", "functions"),
        count(
            repo.policies.len(),
            "placement policy",
            "placement policies"
        ),
        count(repo.device_classes.len(), "device class", "device classes"),
    )
}
