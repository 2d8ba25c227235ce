//! Building the indexes from one repository revision and one inventory, then placing
//! every instance once: the start of every [`Planner`].

use std::collections::BTreeSet;

use jiff::Timestamp;

use super::catalog::{InstanceKind, PolicyEntry, Selection, read_functions, read_policies};
use super::ledger::{NodeEntry, external_of, read_nodes};
use super::{Candidate, HashMap, Planner};
use crate::model::{GatewayReport, Inventory, Repo, Tier, replica_instance_name};
use crate::plan::Placement;

impl Planner {
    /// The planner of `repo` and `inv` at `now` in which `running` runs: the catalog,
    /// the nodes, the reports' sightings, heartbeats and resources indexed, then every
    /// instance placed once.
    pub(super) fn build(
        repo: &Repo,
        inv: &Inventory,
        now: Timestamp,
        running: Vec<Placement>,
    ) -> Planner {
        let mut class_ids = HashMap::default();
        let mut policies = read_policies(repo);
        let (fns, fn_by_class) = read_functions(repo, &policies, &mut class_ids);
        let (sites, mut nodes, node_ids) = read_nodes(inv);
        read_selections(repo, &mut policies, &nodes);
        // The selections hold all the planner needs of the labels: no copy per node for
        // its lifetime (a controller keeps its planner).
        for n in &mut nodes {
            n.info.labels = Default::default();
        }
        let n = nodes.len();
        let mut planner = Planner {
            now,
            policies,
            fns,
            fn_by_class,
            class_times: HashMap::default(),
            class_ids,
            sites,
            nodes,
            node_ids,
            pools: Vec::new(),
            pool_ids: HashMap::default(),
            tier_nodes: HashMap::default(),
            devices: Vec::new(),
            device_ids: HashMap::default(),
            gw_devices: vec![Vec::new(); n],
            insts: Vec::new(),
            free_slots: Vec::new(),
            by_name: HashMap::default(),
            device_insts: Vec::new(),
            node_insts: vec![Vec::new(); n],
            home_insts: vec![Vec::new(); n],
            waiting: BTreeSet::new(),
            waiting_for: HashMap::default(),
            replan_log: None,
            due_devices: BTreeSet::new(),
            due_gateways: BTreeSet::new(),
        };
        planner.class_times = planner.read_class_times();
        planner.read_reports(&inv.reports);
        planner.index_pools();
        let cands = planner.first_candidates(running);
        planner.place_all(cands);
        planner
    }

    /// Reads `reports` (one per gateway: see [`latest_reports`]): each gateway's external
    /// use, heartbeat and sightings, then every device's due instants.
    pub(super) fn read_reports(&mut self, reports: &[GatewayReport]) {
        let mut by_gw: Vec<(u32, &GatewayReport)> = latest_reports(reports)
            .into_iter()
            .filter_map(|(name, r)| self.gateway_index(name).map(|g| (g, r)))
            .collect();
        by_gw.sort_by_key(|(g, _)| *g);
        for (g, r) in by_gw {
            self.nodes[g as usize].external = external_of(r);
            self.set_heartbeat(g, r.spec.heartbeat);
            self.add_sightings(g, r);
        }
        for d in 0..self.devices.len() as u32 {
            self.index_device(d);
        }
    }

    /// Every instance the catalog and the sightings ask for, with `running`'s placement
    /// of it as current: per device, then the replicas.
    fn first_candidates(&self, running: Vec<Placement>) -> Vec<Candidate> {
        let current: HashMap<String, Placement> = running
            .into_iter()
            .map(|p| (p.instance.clone(), p))
            .collect();
        let mut cands = Vec::new();
        for d in 0..self.devices.len() as u32 {
            self.device_candidates(d, &mut |name| current.get(name).cloned(), &mut cands);
        }
        for fi in 0..self.fns.len() as u32 {
            if let InstanceKind::Replicas(r) = self.fns[fi as usize].kind {
                for i in 0..r {
                    let name = replica_instance_name(&self.fns[fi as usize].name, i);
                    let cur = current.get(&name).cloned();
                    cands.push(self.cand(fi, name, None, None, cur));
                }
            }
        }
        cands
    }
}

/// Reads each policy's `gatewaySelector` against the gateways of `nodes` (`policies` are
/// `repo`'s, in name order).
pub(super) fn read_selections(repo: &Repo, policies: &mut [PolicyEntry], nodes: &[NodeEntry]) {
    for (entry, p) in policies.iter_mut().zip(repo.policies.values()) {
        let Some(selector) = &p.spec.gateway_selector else {
            continue;
        };
        let mut selection = Selection {
            nodes: Vec::with_capacity(nodes.len()),
            schedulable: HashMap::default(),
        };
        for n in nodes {
            let selected = n.info.tier == Tier::Gateway && selector.matches(&n.info.labels);
            selection.nodes.push(selected);
            if selected && n.info.schedulable() {
                *selection.schedulable.entry(None).or_default() += 1;
                if let Some(s) = n.site {
                    *selection.schedulable.entry(Some(s)).or_default() += 1;
                }
            }
        }
        entry.selection = Some(selection);
    }
}

/// One report per gateway name: of two with one name, the newest heartbeat wins, then
/// the contents that sort last, whatever the input order. (The contents are compared with
/// their devices in a canonical order: the order an agent lists them in must not pick the
/// winner.)
pub(super) fn latest_reports(reports: &[GatewayReport]) -> HashMap<&str, &GatewayReport> {
    let mut reports: Vec<&GatewayReport> = reports.iter().collect();
    let canonical = |r: &GatewayReport| {
        let mut spec = r.spec.clone();
        spec.devices.sort_by(|x, y| {
            (&x.id, &x.class, x.first_seen, x.last_seen, x.rssi).cmp(&(
                &y.id,
                &y.class,
                y.first_seen,
                y.last_seen,
                y.rssi,
            ))
        });
        format!("{spec:?}")
    };
    reports.sort_by(|a, b| {
        (&a.metadata.name, &a.spec.heartbeat)
            .cmp(&(&b.metadata.name, &b.spec.heartbeat))
            .then_with(|| canonical(a).cmp(&canonical(b)))
    });
    let mut last: HashMap<&str, &GatewayReport> = HashMap::default();
    for r in reports {
        last.insert(r.metadata.name.as_deref().unwrap_or_default(), r);
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Tier;
    use crate::plan::tests::{OMH, inventory, now, repo, world};

    #[test]
    fn nodes_are_indexed_in_name_order_whatever_the_input_order() {
        let mut inv = inventory(&world(&[]));
        let a = Planner::new(&repo(OMH), &inv, now());
        inv.nodes.reverse();
        let b = Planner::new(&repo(OMH), &inv, now());
        let names = |p: &Planner| {
            p.nodes
                .iter()
                .map(|n| n.info.name.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&a), names(&b));
        let mut sorted = names(&a);
        sorted.sort();
        assert_eq!(names(&a), sorted);
    }

    #[test]
    fn each_tier_and_site_counts_its_schedulable_nodes() {
        let p = Planner::new(&repo(OMH), &inventory(&world(&[])), now());
        let site = |s: &str| p.sites.iter().position(|x| x == s).map(|i| i as u32);
        assert_eq!(p.tier_nodes[&(Tier::Gateway, None)], 2);
        assert_eq!(p.tier_nodes[&(Tier::Edge, site("home"))], 1);
        assert_eq!(p.tier_nodes[&(Tier::Cloud, None)], 1);
        assert_eq!(p.tier_nodes.get(&(Tier::Cloud, site("home"))), None);
    }
}
