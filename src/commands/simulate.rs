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
use cloud4iot_core::simulate::{self, RoamingQuality, SimOptions, Simulation};

#[derive(Debug, Clone, Args)]
#[command(
    about = "Replay a presence trace through the planner: migration timeline and totals",
    long_about = "Replay a presence trace (timestamped BLE sightings per gateway, as `cloud4iot \
agent --record` writes them) through the agents' presence tracking and the planner, in trace \
time, against the nodes of a state snapshot. Prints every migration (an instance placed, \
moved, unplaced or removed, with its reason), then totals: moves per function, the churn \
that dwell and lossGrace avoided (the same trace replayed with every dwell at 0s, and with \
every lossGrace at the agents' 10s lastSeen refresh), instance-time per tier and unplaced \
time, and roaming quality: for each function's per-device instances, the share of the time \
their device was heard that they ran on a gateway hearing it best (by the agents' reported \
RSSI; ties count), their moves, and their ping-pongs (a move back to where the instance \
was before, within --ping-pong-window). With --base REV (a revision of the repository) or \
--compare DIR (another repository directory) the same trace is replayed under both, and \
the roaming quality is shown side by side: what a change of dwell, minRssi or the handover \
margin in a pull request would have done to yesterday's movements.\n\n\
Trace: CSV with the header `time,gateway,device,class,rssi` (RFC 3339 time, dBm), or a YAML \
sequence of maps with those keys (.yaml/.yml). The snapshot gives the nodes and the \
resources in use by others; its devices and Deployments are ignored (the trace is the \
presence; the cluster starts empty).\n\n\
Exit codes: 0 replayed, 1 invalid repository or trace, 2 error.",
    after_help = "Examples:\n  cloud4iot simulate --repo examples-repo --state examples-repo/state/home.yaml \\\n    \
--trace examples-repo/traces/roaming-morning.csv\n  \
cloud4iot simulate --repo . --base main --state state.yaml --trace yesterday.csv -o json\n  \
cloud4iot simulate --repo with-margin --compare . --state state.yaml --trace corridor.csv"
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
    #[arg(long, value_name = "REV", conflicts_with = "compare")]
    pub base: Option<String>,
    /// Also replay under the repository in this directory and show both.
    #[arg(long, value_name = "DIR")]
    pub compare: Option<PathBuf>,
    /// A move back to where an instance was before its previous move, within this long,
    /// counts as a ping-pong.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = super::nonzero_duration)]
    pub ping_pong_window: std::time::Duration,
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
    let base = match (&args.base, &args.compare) {
        (Some(rev), _) => {
            let checkout = cloud4iot_source::open_at(&args.repo.source(), Some(rev))?;
            let Some(repo) = load(&checkout.dir, &format!("{} ({rev})", args.repo.repo))? else {
                return Ok(Outcome::Changes);
            };
            Some((checkout.revision.unwrap_or_else(|| rev.clone()), repo))
        }
        (None, Some(dir)) => {
            let name = dir.display().to_string();
            let Some(repo) = load(dir, &name)? else {
                return Ok(Outcome::Changes);
            };
            Some((name, repo))
        }
        (None, None) => None,
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
    let opts = SimOptions {
        ping_pong_window: jiff::SignedDuration::try_from(args.ping_pong_window)
            .unwrap_or(jiff::SignedDuration::MAX),
        ..SimOptions::default()
    };
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
                out += &text(s, &opts);
                writeln!(out, "\n== head {head_name}")?;
            }
            out += &text(&sim, &opts);
            if let Some((rev, s)) = &base_sim {
                writeln!(out)?;
                out += &roaming_side_by_side((rev, s), (&head_name, &sim));
            }
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
fn text(sim: &Simulation, opts: &SimOptions) -> String {
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
    if !t.roaming.is_empty() {
        let window = human(opts.ping_pong_window.as_secs());
        let _ = writeln!(
            out,
            "  roaming (per-device instances, while their device is heard):"
        );
        for (function, q) in &t.roaming {
            let _ = writeln!(
                out,
                "    {function}: on the best gateway {} of {}, {}, {} (back within {window})",
                share(q),
                human(q.heard_seconds),
                count(q.moves, "move"),
                count(q.ping_pongs, "ping-pong")
            );
        }
    }
    out
}

/// `n` and the noun, plural unless `n` is 1.
fn count(n: u64, noun: &str) -> String {
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}

/// A share of time on the best gateway, as a percentage with one decimal.
fn share(q: &RoamingQuality) -> String {
    q.on_best_share()
        .map(|s| format!("{:.1}%", s * 100.0))
        .unwrap_or_else(|| "-".into())
}

/// The roaming quality of two replays of one trace, a row per function and figure.
fn roaming_side_by_side(a: (&str, &Simulation), b: (&str, &Simulation)) -> String {
    let functions: std::collections::BTreeSet<&String> =
        a.1.totals
            .roaming
            .keys()
            .chain(b.1.totals.roaming.keys())
            .collect();
    let cells = |s: &Simulation, f: &str| {
        let q = s.totals.roaming.get(f).cloned().unwrap_or_default();
        [share(&q), q.moves.to_string(), q.ping_pongs.to_string()]
    };
    let mut rows = vec![[
        "ROAMING QUALITY".to_string(),
        a.0.to_string(),
        b.0.to_string(),
    ]];
    for f in functions {
        rows.push([f.clone(), String::new(), String::new()]);
        let (x, y) = (cells(a.1, f), cells(b.1, f));
        for (k, label) in ["  on the best gateway", "  moves", "  ping-pongs"]
            .into_iter()
            .enumerate()
        {
            rows.push([label.to_string(), x[k].clone(), y[k].clone()]);
        }
    }
    let w0 = rows.iter().map(|r| r[0].len()).max().unwrap_or(0);
    let w1 = rows.iter().map(|r| r[1].len()).max().unwrap_or(0);
    let mut out = String::new();
    for r in rows {
        let line = format!("{:w0$}  {:w1$}  {}", r[0], r[1], r[2]);
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}
