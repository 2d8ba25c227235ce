//! What every command reads before the pure pipeline ([`cloud4iot_core::pipeline`]): the
//! repository (source + load), the live state (`--state FILE` or the cluster) and the
//! moment to plan at. Also the one way an invalid repository is reported.

use std::io::Write;

use anyhow::Context;
use jiff::Timestamp;

use crate::flags::{Outcome, RepoArgs, StateArgs};
use cloud4iot_core::diag::Diagnostics;
use cloud4iot_core::model::{Inventory, Repo};
use cloud4iot_core::render::RenderOptions;
use cloud4iot_source::Checkout;

/// A checked-out, loaded and valid repository.
pub struct Loaded {
    pub checkout: Checkout,
    pub repo: Repo,
}

impl Loaded {
    /// Opens `--repo` (at `--rev`) and loads it. `Ok(None)`: the repository is invalid,
    /// its diagnostics are printed followed by `<repo>: <consequence>` (exit 1).
    pub fn read(args: &RepoArgs, consequence: &str) -> anyhow::Result<Option<Loaded>> {
        let checkout = cloud4iot_source::open(&args.source())?;
        Loaded::load(checkout, &args.repo, consequence)
    }

    /// Loads an opened checkout of the repository named `name`; `Ok(None)` as [`Loaded::read`].
    pub fn load(
        checkout: Checkout,
        name: &str,
        consequence: &str,
    ) -> anyhow::Result<Option<Loaded>> {
        match cloud4iot_core::load::load_dir(&checkout.dir) {
            Ok(repo) => Ok(Some(Loaded { checkout, repo })),
            Err(diagnostics) => {
                let line = format!("{}: {consequence}", described(name, &checkout));
                print_invalid(&diagnostics, Some(&line))?;
                Ok(None)
            }
        }
    }

    /// Render options: `namespace`, and the revision of the checkout as an annotation.
    pub fn render_options(&self, namespace: &str) -> RenderOptions {
        RenderOptions {
            namespace: namespace.to_owned(),
            revision: self.checkout.revision.clone(),
        }
    }
}

/// `repo (main@sha1:...)`, or `repo` for files on disk that are not a revision.
pub fn described(name: &str, checkout: &Checkout) -> String {
    // A URL's credentials never reach a line of output.
    let name = &cloud4iot_source::redact(name);
    match &checkout.revision {
        Some(rev) => format!("{name} ({rev})"),
        None => name.to_owned(),
    }
}

/// Prints the diagnostics of an invalid repository to stderr (`file:line:column: field:
/// message` each, then the count), then `then` when given: what was not done.
pub fn print_invalid(diagnostics: &Diagnostics, then: Option<&str>) -> anyhow::Result<Outcome> {
    let mut stderr = std::io::stderr().lock();
    writeln!(stderr, "{diagnostics}")?;
    if let Some(line) = then {
        writeln!(stderr, "{line}")?;
    }
    Ok(Outcome::Changes)
}

/// The live state, from `--state FILE` or from the cluster.
pub struct Live {
    pub inventory: Inventory,
    /// The cluster's client when the state was read from it; `None` for a snapshot.
    pub client: Option<kube::Client>,
}

impl Live {
    /// Reads `--state FILE` when given (it takes precedence over a kubeconfig), else the
    /// cluster of `--kubeconfig`/`KUBECONFIG`/in-cluster. Either way only the managed
    /// Deployments of `namespace` are read: one elsewhere never steers placement.
    ///
    /// Without `explicit_now` (`--now`) the reports are read on the API server's clock
    /// ([`cloud4iot_core::sightings::anchor`]: where they carry the agent's managedFields
    /// time); with it, as written, so a replay at a chosen moment reads the times it was
    /// written with.
    pub async fn read(
        state: &StateArgs,
        namespace: &str,
        explicit_now: Option<Timestamp>,
    ) -> anyhow::Result<Live> {
        let mut live = if let Some(path) = &state.state {
            let mut inventory = cloud4iot_core::state::read_snapshot(path)
                .with_context(|| format!("reading state snapshot {}", path.display()))?;
            // Only the managed namespace counts, as in the cluster read below.
            inventory.keep_namespace(namespace);
            Live {
                inventory,
                client: None,
            }
        } else {
            let client = cloud4iot_kube::cluster::client(&state.client())
                .await
                .context("connecting to the cluster")?;
            let inventory = cloud4iot_kube::cluster::read_inventory_in(&client, namespace)
                .await
                .context("reading the live state")?;
            Live {
                inventory,
                client: Some(client),
            }
        };
        if explicit_now.is_none() {
            for r in &mut live.inventory.reports {
                cloud4iot_core::sightings::anchor(r);
            }
        }
        Ok(live)
    }

    /// The moment to plan at: `--now` when given; for a snapshot, the moment it describes
    /// ([`cloud4iot_core::clock::snapshot_time`], so a snapshot always plans the same); else the clock,
    /// read here, at the edge.
    /// A heartbeat ahead of this machine's clock does not count (a warning names it).
    pub fn now(&self, explicit: Option<Timestamp>) -> Timestamp {
        explicit
            .or_else(|| {
                self.client
                    .is_none()
                    .then(|| {
                        let t =
                            cloud4iot_core::clock::snapshot_time(&self.inventory, Timestamp::now());
                        for w in &t.warnings {
                            eprintln!("warning: {w}");
                        }
                        t.now
                    })
                    .flatten()
            })
            .unwrap_or_else(Timestamp::now)
    }
}
