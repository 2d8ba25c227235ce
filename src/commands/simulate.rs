//! `cloud4iot simulate`: replay a presence trace through the planner (what-if for a policy
//! change). The replay itself is pure (cloud4iot_core::simulate); this reads the inputs and
//! prints the timeline and totals.

use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, ValueEnum};

use crate::flags::{Outcome, RepoArgs};
use cloud4iot_core::model::{Repo, Tier};
use cloud4iot_core::simulate::{self, SimOptions, Simulation};

#[derive(Debug, Clone, Args)]
#[command(
    about = "Replay a presence trace through the planner: migration timeline and totals",
    long_about = "Replay a presence trace (timestamped BLE sightings per gateway, as `cloud4iot \
agent --record` writes them) through the agents' presence tracking and the planner, in trace \
time, against the nodes of a state snapshot. Prints every migration (an instance placed, \
moved, unplaced or removed, with its reason), then totals: moves per function, the churn \
that dwell and lossGrace avoided (the same trace replayed with every dwell at 0s, and with \
every lossGrace at the agents' 10s lastSeen refresh), instance-time per tier and unplaced \
time. With --base REV the same trace is replayed under both revisions, side by side: what \
a change of dwell or minRssi in a pull request would have done to yesterday's movements.\n\n\
Trace: CSV with the header `time,gateway,device,class,rssi` (RFC 3339 time, dBm), or a YAML \
sequence of maps with those keys (.yaml/.yml). The snapshot gives the nodes and the \
resources in use by others; its devices and Deployments are ignored (the trace is the \
presence; the cluster starts empty).\n\n\
Exit codes: 0 replayed, 1 invalid repository or trace, 2 error.",
    after_help = "Examples:\n  cloud4iot simulate --repo examples-repo --state examples-repo/state/home.yaml \\\n    \
--trace examples-repo/traces/roaming-morning.csv\n  \
cloud4iot simulate --repo . --base main --state state.yaml --trace yesterday.csv -o json"
)]
pub struct SimulateArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// The state snapshot whose nodes the trace is replayed on.
    #[arg(long, value_name = "FILE")]
    pub state: PathBuf,
    /// The presence trace (CSV, or YAML for .yaml/.yml).
    #[arg(long, value_name = "FILE")]
    pub trace: PathBuf,
    /// Also replay under this revision (e.g. main) and show both.
    #[arg(long, value_name = "REV")]
    pub base: Option<String>,
    #[arg(long, short = 'o', value_enum, default_value_t = SimFormat::Text)]
    pub output: SimFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SimFormat {
    Text,
    Json,
}

pub fn run(args: &SimulateArgs) -> anyhow::Result<Outcome> {
    let head = cloud4iot_source::open(&args.repo.source())?;
    let Some(head_repo) = load(&head.dir, &args.repo.repo)? else {
        return Ok(Outcome::Changes);
    };
    let base = match &args.base {
        Some(rev) => {
            let checkout = cloud4iot_source::open_at(&args.repo.source(), Some(rev))?;
            let Some(repo) = load(&checkout.dir, &format!("{} ({rev})", args.repo.repo))? else {
                return Ok(Outcome::Changes);
            };
            Some((checkout.revision.unwrap_or_else(|| rev.clone()), repo))
        }
        None => None,
    };
    let mut inventory = cloud4iot_core::state::read_snapshot(&args.state)?;
    // Only the managed namespace's instances count as running (as for plan and diff).
    inventory.keep_namespace(cloud4iot_core::render::DEFAULT_NAMESPACE);
    let trace = match read_trace(&args.trace) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{e}");
            return Ok(Outcome::Changes);
        }
    };
    let opts = SimOptions::default();
    let sim = simulate::simulate(&head_repo, &inventory, &trace, &opts);
    let base_sim = base.as_ref().map(|(rev, repo)| {
        (
            rev.clone(),
            simulate::simulate(repo, &inventory, &trace, &opts),
        )
    });
    let head_name = head
        .revision
        .clone()
        .unwrap_or_else(|| args.repo.repo.clone());
    let out = match args.output {
        SimFormat::Json => {
            let mut v = serde_json::json!({"trace": {"sightings": trace.len()}, "head": {"revision": head_name, "simulation": sim}});
            if let Some((rev, s)) = &base_sim {
                v["base"] = serde_json::json!({"revision": rev, "simulation": s});
            }
            serde_json::to_string_pretty(&v)? + "\n"
        }
        SimFormat::Text => {
            let mut out = String::new();
            if let Some((rev, s)) = &base_sim {
                writeln!(out, "== base {rev}")?;
                out += &text(s);
                writeln!(out, "\n== head {head_name}")?;
            }
            out += &text(&sim);
            out
        }
    };
    std::io::stdout()
        .lock()
        .write_all(out.as_bytes())
        .context("writing the simulation")?;
    Ok(Outcome::Clean)
}

fn load(dir: &Path, name: &str) -> anyhow::Result<Option<Repo>> {
    match cloud4iot_core::load::load_dir(dir) {
        Ok(r) => Ok(Some(r)),
        Err(diagnostics) => {
            let mut stderr = std::io::stderr().lock();
            for d in &diagnostics.0 {
                writeln!(stderr, "{d}")?;
            }
            writeln!(stderr, "{name}: invalid, nothing simulated")?;
            Ok(None)
        }
    }
}

/// The trace, or an error naming the file and line.
fn read_trace(path: &Path) -> anyhow::Result<Vec<simulate::Sighting>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("error: read trace {}: {e}", path.display()))?;
    let yaml = matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    );
    let parsed = if yaml {
        simulate::parse_yaml(&text)
    } else {
        simulate::parse_csv(&text)
    };
    parsed.map_err(|e| format!("{}:{}: {}", path.display(), e.line, e.message))
}

fn human(secs: i64) -> String {
    let d = jiff::SignedDuration::from_secs(secs);
    if secs == 0 {
        "0s".into()
    } else {
        format!("{d:#}")
    }
}

/// Timeline, then totals.
fn text(sim: &Simulation) -> String {
    let mut out = String::new();
    let rows: Vec<[String; 5]> = sim
        .timeline
        .iter()
        .map(|m| {
            let loc = |l: &Option<simulate::Location>| {
                l.as_ref()
                    .map(|l| l.to_string())
                    .unwrap_or_else(|| "-".into())
            };
            [
                // Timers fire just after a threshold (lastSeen + lossGrace + 1ns).
                m.time
                    .round(jiff::Unit::Second)
                    .unwrap_or(m.time)
                    .to_string(),
                m.instance.clone(),
                loc(&m.from),
                loc(&m.to),
                m.reason.clone(),
            ]
        })
        .collect();
    let header = ["TIME", "INSTANCE", "FROM", "TO", "REASON"];
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(c.len());
        }
    }
    for r in std::iter::once(header.map(String::from)).chain(rows) {
        let _ = writeln!(
            out,
            "{:w0$}  {:w1$}  {:w2$}  {:w3$}  {}",
            r[0],
            r[1],
            r[2],
            r[3],
            r[4],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3]
        );
    }
    let t = &sim.totals;
    let span = match (t.start, t.end) {
        (Some(s), Some(e)) => format!("{s} .. {e} ({})", human(e.duration_since(s).as_secs())),
        _ => "empty trace".into(),
    };
    let _ = writeln!(out, "\nTotals over {span}, {} reports:", t.reports);
    let total_moves: u64 = t.moves.values().sum();
    let per_fn: Vec<String> = t.moves.iter().map(|(f, n)| format!("{f} {n}")).collect();
    let _ = writeln!(
        out,
        "  moves: {total_moves}{}",
        if per_fn.is_empty() {
            String::new()
        } else {
            format!(" ({})", per_fn.join(", "))
        }
    );
    let _ = writeln!(
        out,
        "  avoided by dwell: {}, by lossGrace: {}",
        sim.avoided_by_dwell, sim.avoided_by_loss_grace
    );
    let tiers: Vec<String> = Tier::ALL
        .iter()
        .map(|tier| {
            format!(
                "{tier} {}",
                human(t.instance_seconds.get(tier).copied().unwrap_or(0))
            )
        })
        .collect();
    let _ = writeln!(out, "  instance-time: {}", tiers.join(", "));
    let _ = writeln!(out, "  unplaced: {}", human(t.unplaced_seconds));
    out
}
