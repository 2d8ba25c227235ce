//! `cloud4iot plan`: where every function instance would run, and why.

use std::fmt::Write as _;
use std::io::Write;

use clap::{Args, ValueEnum};
use jiff::Timestamp;

use super::inputs::{Live, Loaded};
use crate::flags::{ColorChoice, Outcome, RepoArgs, StateArgs};
use cloud4iot_core::model::Tier;
use cloud4iot_core::pipeline::Pipeline;
use cloud4iot_core::plan::{Placement, Plan, Staying};

#[derive(Debug, Clone, Args)]
#[command(
    about = "Show where every function instance would run (gateway, edge, cloud) and why",
    long_about = "Plan the placement of every function instance of the repository against the \
live state: per-device instances on the gateway that sees their device (presence, dwell, \
loss grace), offloaded to the edge or the cloud in the policy's order when a gateway is \
full, replicas by room. Nothing is changed.\n\n\
Columns: FUNCTION INSTANCE DEVICE TIER NODE (NODE only on the gateway tier; edge and cloud \
instances are pinned to their tier, and site where dataLocality demands it, which SITE \
shows), and REASON with --explain: why the instance is where it is. A running instance \
keeps the reason it was placed for (its annotation is not rewritten on signal jitter); when \
a move was considered and it stays (another gateway has not seen its device for the dwell, \
or its gateway still sees it, or the tiers before its own are still refused), REASON says \
why it stays. JSON and YAML print every field of every placement (`reason` as stored, \
`stays` when it stays); an unplaced instance has tier null and its reason.\n\n\
Exit codes: 0 every instance placed, 1 some instance unplaced or the repository invalid \
(so CI can fail a pull request that leaves functions without a home), 2 error.",
    after_help = "Examples:\n  cloud4iot plan --repo examples-repo --state examples-repo/state/home.yaml --explain\n  \
cloud4iot plan --repo . --state state.yaml -o json | jq '.[] | select(.tier == null)'"
)]
pub struct PlanArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    #[command(flatten)]
    pub state: StateArgs,
    /// The namespace of the function Deployments: only instances running there count as
    /// running (with --state too: a copy elsewhere never steers placement).
    #[arg(long, short = 'n', value_name = "NS", default_value = cloud4iot_core::render::DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// table: for people; json/yaml: every field, for programs.
    #[arg(long, short = 'o', value_enum, default_value_t = PlanFormat::Table)]
    pub output: PlanFormat,
    /// Add the REASON column to the table: the one line a reviewer reads (why it stays,
    /// for a running instance a move was considered for).
    #[arg(long)]
    pub explain: bool,
    /// The time presence and dwell are judged at (RFC 3339). Default with --state: the
    /// newest GatewayReport heartbeat of the snapshot (so a snapshot always plans the same);
    /// otherwise the clock.
    #[arg(long, value_name = "TIMESTAMP")]
    pub now: Option<Timestamp>,
    /// Re-run whenever a file under --repo (a local directory) or --state changes.
    #[arg(long)]
    pub watch: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PlanFormat {
    Table,
    Json,
    Yaml,
}

pub async fn run(args: &PlanArgs, color: ColorChoice) -> anyhow::Result<Outcome> {
    let Some(loaded) = Loaded::read(&args.repo, "invalid, nothing planned")? else {
        return Ok(Outcome::Changes);
    };
    let live = Live::read(&args.state, &args.namespace, args.now).await?;
    let (plan, stays) = Pipeline::new(&loaded.repo, &live.inventory, live.now(args.now)).explain();
    let blocked = cloud4iot_core::diff::blocked(&plan, &live.inventory, &args.namespace);
    let out = match args.output {
        PlanFormat::Table => table(&plan, &stays, args.explain, color.enabled()),
        PlanFormat::Json => serde_json::to_string_pretty(&rows(&plan, &stays, &blocked))? + "\n",
        PlanFormat::Yaml => serde_norway::to_string(&rows(&plan, &stays, &blocked))?,
    };
    std::io::stdout().lock().write_all(out.as_bytes())?;
    for b in &blocked {
        eprintln!(
            "warning: {} ({}) is blocked: {}",
            b.instance, b.function, b.reason
        );
    }
    if args.output == PlanFormat::Table {
        eprintln!("{}", summary(&plan));
    }
    Ok(if plan.unplaced().next().is_some() || !blocked.is_empty() {
        Outcome::Changes
    } else {
        Outcome::Clean
    })
}

/// One placement as JSON and YAML print it: every field of the placement (`reason` is
/// what its reason annotation holds) and, for a running instance a move was considered
/// for, `stays`: why it stays where it runs now.
#[derive(serde::Serialize)]
struct Row<'a> {
    #[serde(flatten)]
    placement: &'a Placement,
    #[serde(skip_serializing_if = "Option::is_none")]
    stays: Option<String>,
    /// Why its Deployment is never written (a name clash), if it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    blocked: Option<String>,
}

fn rows<'a>(
    plan: &'a Plan,
    stays: &[Staying],
    blocked: &[cloud4iot_core::diff::Blocked],
) -> Vec<Row<'a>> {
    plan.placements
        .iter()
        .map(|p| Row {
            placement: p,
            stays: stay_of(stays, p).map(|s| s.reason.to_string()),
            blocked: blocked
                .iter()
                .find(|b| b.instance == p.instance)
                .map(|b| b.reason.clone()),
        })
        .collect()
}

fn stay_of<'a>(stays: &'a [Staying], p: &Placement) -> Option<&'a Staying> {
    stays
        .binary_search_by(|s| {
            (s.function.as_str(), s.instance.as_str()).cmp(&(&p.function, &p.instance))
        })
        .ok()
        .map(|i| &stays[i])
}

/// `5 instances: 2 on gateways, 1 at the edge, 1 in the cloud, 1 unplaced`.
pub fn summary(plan: &Plan) -> String {
    let count = |t: Option<Tier>| plan.placements.iter().filter(|p| p.tier == t).count();
    let n = plan.placements.len();
    format!(
        "{n} instance{}: {} on gateways, {} at the edge, {} in the cloud, {} unplaced",
        if n == 1 { "" } else { "s" },
        count(Some(Tier::Gateway)),
        count(Some(Tier::Edge)),
        count(Some(Tier::Cloud)),
        count(None)
    )
}

/// Aligned columns as kubectl prints them; `-` for an empty cell. REASON (with `explain`)
/// is why the instance is where it is now: for a running instance a move was considered
/// for, why it stays (`stays`), else the reason it was placed for.
pub fn table(plan: &Plan, stays: &[Staying], explain: bool, color: bool) -> String {
    let mut header = vec!["FUNCTION", "INSTANCE", "DEVICE", "TIER", "NODE", "SITE"];
    if explain {
        header.push("REASON");
    }
    let row = |p: &Placement| {
        let mut r = vec![
            p.function.clone(),
            p.instance.clone(),
            p.device.clone().unwrap_or_else(|| "-".into()),
            p.tier
                .map(|t| t.to_string())
                .unwrap_or_else(|| "unplaced".into()),
            p.node.clone().unwrap_or_else(|| "-".into()),
            p.site.clone().unwrap_or_else(|| "-".into()),
        ];
        if explain {
            r.push(match stay_of(stays, p) {
                Some(s) => s.reason.to_string(),
                None => p.reason.to_string(),
            });
        }
        r
    };
    let rows: Vec<Vec<String>> = plan.placements.iter().map(row).collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &[&str]| {
        let last = cells.len() - 1;
        for (i, cell) in cells.iter().enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                let _ = write!(out, "{cell:<w$}   ", w = widths[i]);
            }
        }
        out.push('\n');
    };
    line(&mut out, &header);
    for (p, r) in plan.placements.iter().zip(&rows) {
        let cells: Vec<&str> = r.iter().map(String::as_str).collect();
        if color && p.tier.is_none() {
            let mut s = String::new();
            line(&mut s, &cells);
            let _ = writeln!(out, "\x1b[31m{}\x1b[0m", s.trim_end_matches('\n'));
        } else {
            line(&mut out, &cells);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placement(
        function: &str,
        instance: &str,
        tier: Option<Tier>,
        node: Option<&str>,
    ) -> Placement {
        Placement {
            tier,
            node: node.map(Into::into),
            reason: format!("why {instance}").into(),
            ..cloud4iot_core::testing::placement(function, instance)
        }
    }

    #[test]
    fn table_aligns_columns_and_explains_on_request() {
        let plan = Plan {
            placements: vec![
                placement(
                    "engine-diagnostic",
                    "engine-diagnostic-0",
                    Some(Tier::Cloud),
                    None,
                ),
                placement("f", "f-0", None, None),
                placement("f", "f-1", Some(Tier::Gateway), Some("gw-1")),
            ],
        };
        assert_eq!(
            table(&plan, &[], false, false),
            "FUNCTION            INSTANCE              DEVICE   TIER       NODE   SITE\n\
             engine-diagnostic   engine-diagnostic-0   -        cloud      -      -\n\
             f                   f-0                   -        unplaced   -      -\n\
             f                   f-1                   -        gateway    gw-1   -\n"
        );
        assert!(
            table(&plan, &[], true, false)
                .lines()
                .nth(2)
                .unwrap()
                .ends_with("-      why f-0")
        );
        assert_eq!(
            summary(&plan),
            "3 instances: 1 on gateways, 0 at the edge, 1 in the cloud, 1 unplaced"
        );
    }

    #[test]
    fn json_has_null_tier_and_node_where_there_is_none() {
        let plan = Plan {
            placements: vec![placement("f", "f-0", None, None)],
        };
        let v: serde_json::Value = serde_json::to_value(&plan.placements).unwrap();
        assert_eq!(v[0]["tier"], serde_json::Value::Null);
        assert_eq!(v[0]["node"], serde_json::Value::Null);
        assert_eq!(v[0]["device"], serde_json::Value::Null);
        assert_eq!(v[0]["reason"], "why f-0");
    }
}
