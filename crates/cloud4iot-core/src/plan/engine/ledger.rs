//! The capacity ledger: each node's free room (allocatable, less what others use there
//! by its gateway report, less what is charged to it), the gateway reserves that must stay
//! free there, and the pools of schedulable nodes ordered by free room that a tier's node
//! is picked from.

use std::collections::BTreeSet;

use jiff::Timestamp;

use super::catalog::FunctionEntry;
use super::catalog::intern;
use super::{HashMap, Planner};
use crate::model::{Arch, GatewayReport, Inventory, NodeInfo, Resources, Tier};
use crate::plan::{Refusal, Shortage};

pub(super) struct NodeEntry {
    pub(super) info: NodeInfo,
    pub(super) site: Option<u32>,
    /// In use by things cloud4iot did not place (the gateway's report).
    pub(super) external: Resources,
    /// allocatable - external - placed.
    pub(super) free: Resources,
    /// Indexes into `Planner::pools`: (tier, arch) and (tier, site, arch).
    pub(super) pools: [Option<u32>; 2],
    /// The gateway's report heartbeat, if it has a report with one.
    pub(super) heartbeat: Option<Timestamp>,
    /// The non-zero gatewayReserves of the instances charged here: every one of them stays
    /// free (a gateway never runs more than allocatable less the largest of them).
    pub(super) reserves: Vec<Resources>,
}

pub(super) type PoolKey = (Tier, Option<u32>, Arch);

/// (-free cpu, -free memory, node): iteration order is most free first, then by name.
pub(super) type PoolEntry = (i64, i64, u32);

/// A node's room as waiting instances see it: (free, the largest gatewayReserve of what
/// runs there, per resource).
pub(super) type NodeRoom = (Resources, Resources);

pub(super) fn external_of(r: &GatewayReport) -> Resources {
    match r.spec.resources.as_ref().map(|q| q.parse()) {
        Some(Ok(res)) => res,
        Some(Err(e)) => {
            tracing::warn!(report = ?r.metadata.name, "spec.resources: {e}: counted as zero");
            Resources::ZERO
        }
        None => Resources::ZERO,
    }
}

/// The nodes of `inv` in name order, their ids by name, and the sites they name.
pub(super) fn read_nodes(inv: &Inventory) -> (Vec<String>, Vec<NodeEntry>, HashMap<String, u32>) {
    let mut infos = inv.nodes.clone();
    // Two Nodes with one name (never from an API server; snapshots reject it): the
    // one whose contents sort last wins, whatever the input order.
    infos.sort_by(|a, b| {
        a.name
            .cmp(&b.name)
            .then_with(|| format!("{b:?}").cmp(&format!("{a:?}")))
    });
    infos.dedup_by(|a, b| a.name == b.name);
    let mut sites = Vec::new();
    let mut site_ids = HashMap::default();
    let mut nodes = Vec::with_capacity(infos.len());
    let mut node_ids = HashMap::with_capacity_and_hasher(infos.len(), Default::default());
    for info in infos {
        let site = info
            .site
            .as_deref()
            .map(|s| intern(&mut site_ids, &mut sites, s));
        node_ids.insert(info.name.clone(), nodes.len() as u32);
        nodes.push(NodeEntry {
            free: info.allocatable,
            info,
            site,
            external: Resources::ZERO,
            pools: [None, None],
            heartbeat: None,
            reserves: Vec::new(),
        });
    }
    (sites, nodes, node_ids)
}

impl Planner {
    /// Lists every node in its pools with its room less what others use there, and counts
    /// the schedulable nodes of each tier (and site). After the reports are read (their
    /// resources and heartbeats), before anything is charged.
    pub(super) fn index_pools(&mut self) {
        for i in 0..self.nodes.len() {
            self.nodes[i].pools = self.pool_ids_of(i as u32);
            let slot = &mut self.nodes[i];
            slot.free = slot.info.allocatable - slot.external;
            self.pool_insert(i as u32);
            let slot = &self.nodes[i];
            if slot.info.schedulable() {
                *self.tier_nodes.entry((slot.info.tier, None)).or_default() += 1;
                if let Some(s) = slot.site {
                    *self
                        .tier_nodes
                        .entry((slot.info.tier, Some(s)))
                        .or_default() += 1;
                }
            }
        }
    }

    pub(super) fn gateway_index(&self, name: &str) -> Option<u32> {
        self.node_ids
            .get(name)
            .copied()
            .filter(|&g| self.nodes[g as usize].info.tier == Tier::Gateway)
    }

    /// Node `n`'s room now.
    pub(super) fn room(&self, n: u32) -> NodeRoom {
        (
            self.nodes[n as usize].free,
            self.reserve_on(n, Resources::ZERO),
        )
    }

    pub(super) fn charge(&mut self, node: u32, function: u32, take: bool) {
        let f = &self.fns[function as usize];
        let res = f.res.clone().unwrap_or_default();
        let reserve = match f.policy {
            Ok(p) => self.policies[p].reserve.clone().unwrap_or_default(),
            Err(_) => Resources::ZERO,
        };
        self.note_room_before(node);
        self.pool_remove(node);
        let slot = &mut self.nodes[node as usize];
        if reserve != Resources::ZERO && slot.info.tier == Tier::Gateway {
            if take {
                slot.reserves.push(reserve);
            } else if let Some(at) = slot.reserves.iter().position(|r| *r == reserve) {
                slot.reserves.swap_remove(at);
            }
        }
        slot.free = if take {
            slot.free - res
        } else {
            slot.free + res
        };
        self.pool_insert(node);
        self.note_room_after(node);
    }

    /// The reserve to keep free on `node` when `reserve` is the placing policy's: the
    /// largest, per resource, of it and those of the instances already there.
    pub(super) fn reserve_on(&self, node: u32, reserve: Resources) -> Resources {
        self.nodes[node as usize]
            .reserves
            .iter()
            .fold(reserve, |a, r| {
                Resources::new(
                    a.cpu_millis.max(r.cpu_millis),
                    a.memory_bytes.max(r.memory_bytes),
                )
            })
    }

    /// The pools a node is listed in (none when it is not schedulable).
    pub(super) fn pool_keys(&self, node: u32) -> [Option<PoolKey>; 2] {
        let slot = &self.nodes[node as usize];
        if !slot.info.schedulable() || self.stale(node) {
            return [None, None];
        }
        let (t, a) = (slot.info.tier, slot.info.arch);
        [Some((t, None, a)), slot.site.map(|s| (t, Some(s), a))]
    }

    /// The ids of the pools a node belongs to now, creating pools as needed.
    pub(super) fn pool_ids_of(&mut self, node: u32) -> [Option<u32>; 2] {
        self.pool_keys(node).map(|k| {
            k.map(|k| {
                let next = self.pool_ids.len() as u32;
                let id = *self.pool_ids.entry(k).or_insert(next);
                if id == next {
                    self.pools.push(BTreeSet::new());
                }
                id
            })
        })
    }

    pub(super) fn pool_entry(&self, node: u32) -> PoolEntry {
        let f = self.nodes[node as usize].free;
        (-f.cpu_millis, -f.memory_bytes, node)
    }

    pub(super) fn pool_insert(&mut self, node: u32) {
        let e = self.pool_entry(node);
        for p in self.nodes[node as usize].pools.into_iter().flatten() {
            self.pools[p as usize].insert(e);
        }
    }

    pub(super) fn pool_remove(&mut self, node: u32) {
        let e = self.pool_entry(node);
        for p in self.nodes[node as usize].pools.into_iter().flatten() {
            self.pools[p as usize].remove(&e);
        }
    }

    /// The node of `tier` (at `site`, of `arch` if given) with the most free room that fits
    /// `need` and has an image for its arch; ties go to the node whose name sorts first.
    pub(super) fn pick(
        &self,
        f: &FunctionEntry,
        tier: Tier,
        site: Option<u32>,
        res: Resources,
        reserve: Resources,
        only: Option<Arch>,
    ) -> Result<u32, Refusal> {
        let need = res + reserve;
        let site_name = || site.map(|s| self.sites[s as usize].clone());
        if self.tier_nodes.get(&(tier, site)).copied().unwrap_or(0) == 0 {
            return Err(Refusal::NoTier {
                tier,
                site: site_name(),
            });
        }
        // On the gateway tier, only the gateways the policy's gatewaySelector selects.
        let selection = match (tier, &f.policy) {
            (Tier::Gateway, Ok(p)) => self.policies[*p].selection.as_ref(),
            _ => None,
        };
        if selection.is_some_and(|s| s.schedulable.get(&site).copied().unwrap_or(0) == 0) {
            return Err(Refusal::NoneSelected { site: site_name() });
        }
        let mut best: Option<PoolEntry> = None;
        let mut any_arch = false;
        for arch in Arch::ALL {
            if f.image_for(arch).is_none() || only.is_some_and(|a| a != arch) {
                continue;
            }
            let Some(pool) = self
                .pool_ids
                .get(&(tier, site, arch))
                .map(|&p| &self.pools[p as usize])
            else {
                continue;
            };
            any_arch |= !pool.is_empty();
            for &(ncpu, nmem, node) in pool {
                if -ncpu < need.cpu_millis {
                    break; // sorted by free cpu: nothing further fits
                }
                if selection.is_some_and(|s| !s.nodes[node as usize]) {
                    continue;
                }
                if -nmem >= need.memory_bytes {
                    let slot = &self.nodes[node as usize];
                    if !slot.reserves.is_empty()
                        && !res.fits_in(&(slot.free - self.reserve_on(node, reserve)))
                    {
                        continue; // a reserve of what runs there does not leave room
                    }
                    let e = (ncpu, nmem, node);
                    if best.is_none_or(|b| e < b) {
                        best = Some(e);
                    }
                    break;
                }
            }
        }
        match best {
            Some((_, _, node)) => Ok(node),
            None if !any_arch => Err(Refusal::NoArch {
                tier,
                site: site_name(),
                function: f.name.clone(),
            }),
            None => Err(Refusal::NoRoom {
                tier,
                site: site_name(),
                cpu_millis: need.cpu_millis,
                memory_bytes: need.memory_bytes,
            }),
        }
    }

    /// Checks one gateway for `f`: usable (ready, not cordoned, no foreign taint, fresh
    /// heartbeat), an image for its arch, room for `res` above `reserve`.
    pub(super) fn try_gateway(
        &self,
        f: &FunctionEntry,
        g: u32,
        res: Resources,
        reserve: Resources,
    ) -> Result<(), Refusal> {
        let slot = &self.nodes[g as usize];
        let name = || slot.info.name.clone();
        if let Some(why) = &slot.info.blocked {
            return Err(Refusal::Blocked {
                node: name(),
                why: why.clone(),
            });
        }
        if self.stale(g) {
            let age = slot
                .heartbeat
                .map(|h| self.now.duration_since(h))
                .unwrap_or_default();
            return Err(Refusal::Stale { node: name(), age });
        }
        if f.image_for(slot.info.arch).is_none() {
            return Err(Refusal::NoImageForArch {
                node: name(),
                arch: slot.info.arch,
            });
        }
        let reserve = self.reserve_on(g, reserve);
        let avail = slot.free - reserve;
        if res.fits_in(&avail) {
            return Ok(());
        }
        let alloc = slot.info.allocatable;
        // One resource (`of` picks it): what is short, or None where it fits.
        let short = |of: fn(&Resources) -> i64| {
            (of(&res) > of(&avail)).then(|| Shortage {
                used: of(&alloc) - of(&slot.free),
                allocatable: of(&alloc),
                reserve: of(&reserve),
                needs: of(&res),
            })
        };
        Err(Refusal::Full {
            node: name(),
            cpu: short(|r| r.cpu_millis),
            memory: short(|r| r.memory_bytes),
        })
    }

    #[cfg(test)]
    pub(crate) fn check_accounting(&self) -> Result<(), String> {
        // Recomputes every node's free room from scratch and compares with the indexes.
        let mut used = vec![Resources::ZERO; self.nodes.len()];
        for inst in self.insts.iter().flatten() {
            if let Some(a) = inst.account {
                used[a as usize] += self.fns[inst.function as usize]
                    .res
                    .clone()
                    .unwrap_or_default();
            }
        }
        for (i, slot) in self.nodes.iter().enumerate() {
            let expect = slot.info.allocatable - slot.external - used[i];
            if expect != slot.free {
                return Err(format!(
                    "{}: free {} but recomputed {}",
                    slot.info.name, slot.free, expect
                ));
            }
            if used[i] != Resources::ZERO
                && (slot.free.cpu_millis < 0 || slot.free.memory_bytes < 0)
            {
                return Err(format!(
                    "{}: over capacity, free {}",
                    slot.info.name, slot.free
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::tests::{OMH, inventory, now, repo, world};

    /// The fixture world with no reports: two gateways, two edge nodes, one cloud node.
    fn planner() -> Planner {
        Planner::new(&repo(OMH), &inventory(&world(&[])), now())
    }

    const OMH_FN: u32 = 0; // omh-consolidator: 100m, 64Mi

    #[test]
    fn a_charge_takes_the_function_s_room_and_its_release_gives_it_back() {
        let mut p = planner();
        let n = p.node_ids["edge-home-1"];
        let before = p.room(n);
        p.charge(n, OMH_FN, true);
        assert_eq!(p.room(n).0, before.0 - Resources::new(100, 64 << 20));
        p.charge(n, OMH_FN, false);
        assert_eq!(p.room(n), before);
        p.check_accounting().unwrap();
    }

    #[test]
    fn pick_takes_the_node_with_most_room_then_the_name_that_sorts_first() {
        let mut p = planner();
        let res = Resources::new(100, 64 << 20);
        let pick = |p: &Planner| {
            let n = p
                .pick(&p.fns[0], Tier::Edge, None, res, Resources::ZERO, None)
                .unwrap();
            p.nodes[n as usize].info.name.clone()
        };
        assert_eq!(pick(&p), "edge-home-1", "a tie: the name that sorts first");
        p.charge(p.node_ids["edge-home-1"], OMH_FN, true);
        assert_eq!(pick(&p), "edge-hospital-1", "most room");
        let too_big = Resources::new(5000, 0);
        let err = p.pick(&p.fns[0], Tier::Edge, None, too_big, Resources::ZERO, None);
        assert!(
            matches!(
                err,
                Err(Refusal::NoRoom {
                    cpu_millis: 5000,
                    ..
                })
            ),
            "{err:?}"
        );
    }

    #[test]
    fn a_gateway_keeps_the_largest_reserve_of_what_runs_there_free() {
        let mut p = planner();
        let g = p.node_ids["gw-home-1"];
        p.nodes[g as usize].reserves.push(Resources::new(200, 0));
        assert_eq!(
            p.reserve_on(g, Resources::new(100, 1 << 20)),
            Resources::new(200, 1 << 20)
        );
        // 1000m allocatable, 200m kept free: 800m fits, 900m does not.
        assert!(
            p.try_gateway(&p.fns[0], g, Resources::new(800, 0), Resources::ZERO)
                .is_ok()
        );
        let full = p.try_gateway(&p.fns[0], g, Resources::new(900, 0), Resources::ZERO);
        assert!(
            matches!(&full, Err(Refusal::Full { cpu: Some(s), memory: None, .. }) if s.reserve == 200),
            "{full:?}"
        );
    }

    #[test]
    fn only_gateways_are_found_by_gateway_name() {
        let p = planner();
        assert!(p.gateway_index("gw-home-1").is_some());
        assert_eq!(p.gateway_index("edge-home-1"), None);
        assert_eq!(p.gateway_index("no-such-node"), None);
    }
}
