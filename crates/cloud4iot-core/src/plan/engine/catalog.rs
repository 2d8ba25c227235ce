//! The repository as the planner reads it: each policy and function resolved once per
//! revision (tiers, presence times, reserve, resources, images per arch, priority).

use jiff::SignedDuration;

use super::{HashMap, Planner};
use crate::model::{Arch, DataLocality, Repo, Resources, Tier};
use crate::plan::Refusal;

pub(super) struct PolicyEntry {
    pub(super) name: String,
    pub(super) mode: Option<String>,
    pub(super) tiers: Vec<Tier>,
    pub(super) follow: bool,
    pub(super) locality: DataLocality,
    pub(super) min_rssi: Option<i32>,
    pub(super) dwell: SignedDuration,
    pub(super) grace: SignedDuration,
    /// `presence.handoverMargin` (dB): a running instance leaves a gateway where its
    /// device is present for one that hears it this much stronger (`None`: never).
    pub(super) margin: Option<i32>,
    /// `spill: gateways`: a full or unusable wanted gateway tries the others first.
    pub(super) spill: bool,
    pub(super) reserve: Result<Resources, Refusal>,
    pub(super) priority: i32,
    /// The gateways its `gatewaySelector` selects (`None`: no selector, every gateway).
    pub(super) selection: Option<Selection>,
}

/// The gateways a policy's `gatewaySelector` selects, read once per inventory (a Node
/// that changes needs `Planner::rebuild`).
pub(super) struct Selection {
    /// By node index: whether the node is a gateway the selector matches.
    pub(super) nodes: Vec<bool>,
    /// How many selected gateways are schedulable, in all (`None`) and per site.
    pub(super) schedulable: HashMap<Option<u32>, usize>,
}

impl PolicyEntry {
    /// Whether its per-device instances follow their device on the gateway tier.
    pub(super) fn follows(&self) -> bool {
        self.follow || self.locality == DataLocality::Gateway
    }

    /// Whether gateway `g` may host this policy's instances.
    pub(super) fn selects(&self, g: u32) -> bool {
        self.selection.as_ref().is_none_or(|s| s.nodes[g as usize])
    }
}

pub(super) enum InstanceKind {
    PerDevice(u32),
    Replicas(u32),
}

pub(super) struct FunctionEntry {
    pub(super) name: String,
    pub(super) res: Result<Resources, Refusal>,
    pub(super) policy: Result<usize, Refusal>,
    pub(super) kind: InstanceKind,
    pub(super) image: Option<String>,
    pub(super) arch_images: std::collections::BTreeMap<Arch, String>,
    /// Effective minRssi: the policy's, else the device class's.
    pub(super) min_rssi: i32,
}

impl FunctionEntry {
    pub(super) fn image_for(&self, arch: Arch) -> Option<&str> {
        crate::model::image_for(&self.arch_images, self.image.as_deref(), arch)
    }
}

/// The id of `name` in `names` (appended if new).
pub(super) fn intern(ids: &mut HashMap<String, u32>, names: &mut Vec<String>, name: &str) -> u32 {
    if let Some(&i) = ids.get(name) {
        return i;
    }
    let i = names.len() as u32;
    names.push(name.to_string());
    ids.insert(name.to_string(), i);
    i
}

/// The policies of `repo` in name order (a function's `policy` is an index into them).
pub(super) fn read_policies(repo: &Repo) -> Vec<PolicyEntry> {
    repo.policies
        .values()
        .map(|p| {
            let s = &p.spec;
            PolicyEntry {
                name: p.name().to_string(),
                mode: s.mode.clone().filter(|m| s.modes.contains_key(m)),
                tiers: s.effective_tiers().to_vec(),
                follow: s.follow_device,
                locality: s.data_locality,
                min_rssi: s.presence.min_rssi,
                dwell: s.presence.dwell.as_signed(),
                grace: s.presence.loss_grace.as_signed(),
                margin: s
                    .presence
                    .handover_margin
                    .map(|m| m.min(i32::MAX as u32) as i32),
                spill: s.spill == crate::model::Spill::Gateways,
                reserve: s
                    .gateway_reserve
                    .as_ref()
                    .map(|r| {
                        r.parse().map_err(|e| Refusal::BadReserve {
                            policy: p.name().to_string(),
                            error: e.to_string(),
                        })
                    })
                    .unwrap_or(Ok(Resources::ZERO)),
                priority: s.priority,
                selection: None,
            }
        })
        .collect()
}

/// The functions of `repo` in name order, and per device class (interned in
/// `class_ids`) the per-device functions of that class.
pub(super) fn read_functions(
    repo: &Repo,
    policies: &[PolicyEntry],
    class_ids: &mut HashMap<String, u32>,
) -> (Vec<FunctionEntry>, HashMap<u32, Vec<u32>>) {
    let mut class_names = Vec::new();
    let policy_names: Vec<&String> = repo.policies.keys().collect();
    let mut fns = Vec::new();
    let mut fn_by_class: HashMap<u32, Vec<u32>> = HashMap::default();
    for f in repo.functions.values() {
        let s = &f.spec;
        let policy = policy_names
            .binary_search(&&s.policy)
            .map_err(|_| Refusal::NoPolicy(s.policy.clone()));
        let kind = match (&s.instances.per_device, s.instances.replicas) {
            (Some(pd), _) => {
                InstanceKind::PerDevice(intern(class_ids, &mut class_names, &pd.device_class))
            }
            (None, n) => InstanceKind::Replicas(n.unwrap_or(1)),
        };
        let class_rssi = s
            .instances
            .per_device
            .as_ref()
            .and_then(|pd| repo.device_classes.get(&pd.device_class))
            .and_then(|c| c.spec.min_rssi);
        let min_rssi = policy
            .as_ref()
            .ok()
            .and_then(|&p| policies[p].min_rssi)
            .or(class_rssi)
            .unwrap_or(i32::MIN);
        if let InstanceKind::PerDevice(c) = kind {
            fn_by_class.entry(c).or_default().push(fns.len() as u32);
        }
        fns.push(FunctionEntry {
            name: f.name().to_string(),
            res: s
                .resources
                .parse()
                .map_err(|e| Refusal::BadResources(e.to_string())),
            policy,
            kind,
            image: s.image.clone(),
            arch_images: s.arch_images.clone(),
            min_rssi,
        });
    }
    (fns, fn_by_class)
}

impl Planner {
    /// (dwell, lossGrace) of function `fi`'s policy (the defaults when it has none).
    pub(super) fn presence_times(&self, fi: u32) -> (SignedDuration, SignedDuration) {
        match self.fns[fi as usize].policy {
            Ok(p) => (self.policies[p].dwell, self.policies[p].grace),
            Err(_) => {
                let d = crate::model::Presence::default();
                (d.dwell.as_signed(), d.loss_grace.as_signed())
            }
        }
    }

    /// Per device class: the distinct (dwell, lossGrace) of the policies of its functions.
    pub(super) fn read_class_times(&self) -> HashMap<u32, Vec<(SignedDuration, SignedDuration)>> {
        let mut out = HashMap::default();
        for (&c, fis) in &self.fn_by_class {
            let mut times: Vec<_> = fis.iter().map(|&fi| self.presence_times(fi)).collect();
            times.sort_unstable();
            times.dedup();
            out.insert(c, times);
        }
        out
    }

    /// Function `function`'s policy priority (the lowest when it has no policy).
    pub(super) fn priority(&self, function: u32) -> i32 {
        match self.fns[function as usize].policy {
            Ok(p) => self.policies[p].priority,
            Err(_) => i32::MIN,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::tests::{OMH, inventory, now, repo, world};

    #[test]
    fn a_function_without_its_policy_has_the_default_presence_and_the_lowest_priority() {
        let mut p = Planner::new(&repo(OMH), &inventory(&world(&[])), now());
        let secs = SignedDuration::from_secs;
        assert_eq!(p.presence_times(0), (secs(5), secs(30)), "the policy's");
        assert_eq!(p.priority(0), 0);
        p.fns[0].policy = Err(Refusal::NoPolicy("gone".into()));
        let d = crate::model::Presence::default();
        assert_eq!(
            p.presence_times(0),
            (d.dwell.as_signed(), d.loss_grace.as_signed())
        );
        assert_eq!(p.priority(0), i32::MIN);
    }

    #[test]
    fn the_image_for_an_arch_comes_from_arch_images_else_the_image() {
        let p = Planner::new(&repo(OMH), &inventory(&world(&[])), now());
        assert_eq!(
            p.fns[0].image_for(Arch::Arm64),
            Some("example.org/omh:1.0-arm64")
        );
        assert_eq!(
            p.fns[0].image_for(Arch::Amd64),
            Some("example.org/omh:1.0-amd64")
        );
    }
}
