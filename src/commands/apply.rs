//! `cloud4iot apply`: source -> load -> inventory -> plan -> render -> apply -> prune.
//!
//! Exit codes: 0 applied (whether or not anything changed); 1 the repository is invalid
//! (nothing applied, nothing pruned); 2 a cluster or tool error, including any object that
//! failed to apply or prune and a refused prune-everything (kubectl apply exits 1 on any
//! error; cloud4iot keeps 1 for invalid input, as `validate` and `diff` do).

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::builder::TypedValueParser as _;
use clap::{Args, ValueEnum};

use crate::flags::{Outcome, TargetArgs};
use cloud4iot_kube::apply::{self, ApplyOptions, Progress, Prune, ReconcileError};
use cloud4iot_kube::cluster;

#[derive(Debug, Clone, Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Take ownership of fields another field manager applied (reported as conflicts
    /// otherwise). Fields changed by imperative edits are taken back without it.
    #[arg(long)]
    pub force: bool,
    /// Allow pruning every managed Deployment when the repository desires none.
    #[arg(long)]
    pub allow_empty: bool,
    /// Hold pruning when a run would delete more than this share (0 to 1) of the managed
    /// Deployments, or when more than this share of the gateways they run on dropped out
    /// of the inventory at once (an outage looks like every device leaving). Applies to
    /// 3 objects or gateways and more; everything else is still applied; exit 2.
    #[arg(long, value_name = "RATIO", default_value_t = apply::DEFAULT_MAX_PRUNE_RATIO,
          value_parser = parse_ratio)]
    pub max_prune_ratio: f64,
    /// Prune even when --max-prune-ratio would hold it (after checking the inventory).
    #[arg(long)]
    pub force_prune: bool,
    /// Where cloud4iot is installed (`manifests --namespace`): the DeviceClasses
    /// ConfigMap the agents read goes there.
    #[arg(long, value_name = "NS", default_value = cloud4iot_kube::install::SYSTEM_NAMESPACE)]
    pub install_namespace: String,
    /// Requests to the API server in flight at once.
    #[arg(long, value_name = "N", default_value_t = cluster::DEFAULT_CONCURRENCY,
          value_parser = clap::value_parser!(u16).range(1..=256).map(usize::from))]
    pub concurrency: usize,
    /// Server-side dry run: print what would be created, configured and pruned.
    #[arg(long)]
    pub dry_run: bool,
    /// The time presence and dwell are judged at (RFC 3339), with the reports' times as
    /// written. Default: now, with the reports' times on the API server's clock.
    #[arg(long, value_name = "TIMESTAMP")]
    pub now: Option<jiff::Timestamp>,
    #[arg(long, short = 'o', value_enum, default_value_t = ApplyFormat::Text)]
    pub output: ApplyFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ApplyFormat {
    Text,
    Json,
}

pub async fn run(args: ApplyArgs) -> anyhow::Result<Outcome> {
    let checkout = cloud4iot_source::open(&args.target.repo.source())?;
    let client = cluster::client(&args.target.cluster.client()).await?;
    let opts = ApplyOptions {
        namespace: args.target.namespace.clone(),
        force: args.force,
        allow_empty: args.allow_empty,
        concurrency: args.concurrency,
        dry_run: args.dry_run,
        max_prune_ratio: args.max_prune_ratio,
        force_prune: args.force_prune,
        install_namespace: args.install_namespace.clone(),
    };
    let indicator = ProgressLine::new(std::io::stderr().is_terminal());
    let progress = |p: Progress| indicator.show(p);
    let outcome = apply::reconcile(
        &client,
        &checkout.dir,
        checkout.revision.as_deref(),
        args.now,
        &opts,
        &progress,
    )
    .await;
    indicator.clear();
    let reconciled = match outcome {
        Ok(r) => r,
        Err(ReconcileError::Invalid(diagnostics)) => {
            let name = super::inputs::described(&args.target.repo.repo, &checkout);
            let line = format!("{name}: invalid, nothing applied, nothing pruned");
            return super::inputs::print_invalid(&diagnostics, Some(&line));
        }
        Err(err) => return Err(err.into()),
    };
    for p in reconciled.plan.unplaced() {
        eprintln!(
            "warning: {} ({}) is not placed: {}",
            p.instance, p.function, p.reason
        );
    }
    let report = &reconciled.report;
    match args.output {
        ApplyFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(report).context("encode the report")?
        ),
        ApplyFormat::Text => {
            for object in report
                .objects
                .iter()
                .filter(|o| o.action != apply::Action::Unchanged)
            {
                println!(
                    "{object}{}",
                    if report.dry_run {
                        " (server dry run)"
                    } else {
                        ""
                    }
                );
            }
            println!(
                "{}{}",
                report.summary,
                if report.dry_run {
                    " (server dry run)"
                } else {
                    ""
                }
            );
        }
    }
    match &report.prune {
        Prune::Done => {}
        Prune::Skipped(why) => eprintln!("prune skipped: {why}"),
        Prune::Refused(why) => eprintln!("prune refused: {why}"),
    }
    if !report.succeeded() {
        let clashes: Vec<&str> = report.clashes().map(|o| o.name.as_str()).collect();
        anyhow::bail!(
            "apply to namespace {} did not complete: {} failed{}{}",
            report.namespace,
            report.summary.failed,
            if clashes.is_empty() {
                String::new()
            } else {
                format!(
                    ", {} blocked by a Deployment of the same name that is not cloud4iot's ({})",
                    clashes.len(),
                    clashes.join(", ")
                )
            },
            if matches!(report.prune, Prune::Refused(_)) {
                ", prune refused"
            } else {
                ""
            }
        );
    }
    Ok(Outcome::Clean)
}

pub(crate) fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{s:?} is not a ratio between 0 and 1 (e.g. 0.5)")),
    }
}

/// `applying 120/1000` on one stderr line, redrawn at most every 100 ms, on a terminal only.
struct ProgressLine {
    enabled: bool,
    last: Mutex<Option<Instant>>,
}

impl ProgressLine {
    fn new(enabled: bool) -> Self {
        ProgressLine {
            enabled,
            last: Mutex::new(None),
        }
    }

    fn show(&self, p: Progress) {
        if !self.enabled {
            return;
        }
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let due = last.is_none_or(|t| t.elapsed() >= Duration::from_millis(100));
        if due || p.done == p.total {
            *last = Some(Instant::now());
            let verb = if p.phase == "prune" {
                "pruning"
            } else {
                "applying"
            };
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[K{verb} {}/{}", p.done, p.total);
            let _ = err.flush();
        }
    }

    fn clear(&self) {
        if self.enabled && self.last.lock().is_ok_and(|l| l.is_some()) {
            let _ = write!(std::io::stderr(), "\r\x1b[K");
        }
    }
}
