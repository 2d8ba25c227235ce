//! Why an instance is where it is: typed while planning, turned into the one-line text of
//! the reason annotation, `plan --explain` and `diff` only at the output edge (`Display`,
//! and serde as that string).

use std::fmt;

use jiff::SignedDuration;

use crate::model::{Arch, Cpu, Duration, Memory, NodeBlock, Tier};

/// The reason of one placement. Two reasons are equal when their text is.
#[derive(Clone, Debug)]
pub enum Reason {
    /// A new instance on the gateway that sees its device best.
    Sees {
        gateway: String,
        rssi: i32,
        seen_for: SignedDuration,
        /// How many gateways the device is present at (1: only this one).
        present_at: usize,
    },
    /// A running instance on a gateway that still sees its device above minRssi.
    StaysWhilePresent { gateway: String, rssi: i32 },
    /// A running instance moved to a gateway that has seen the device for the dwell.
    Moved {
        gateway: String,
        rssi: i32,
        seen_for: SignedDuration,
        dwell: Duration,
        from: String,
    },
    /// A running instance handed over (`handoverMargin`) to a gateway that hears its device
    /// at least the margin stronger than the one it ran on, and has seen it for the dwell.
    HandedOver {
        gateway: String,
        from: String,
        stronger_by: i32,
        margin: i32,
        seen_for: SignedDuration,
        dwell: Duration,
    },
    /// The gateway the instance wants refused it (`why`); it went to another gateway where
    /// its device is present and that has seen it for the dwell (`spill: gateways`).
    Spilled {
        gateway: String,
        rssi: i32,
        seen_for: SignedDuration,
        dwell: Duration,
        why: Vec<Refusal>,
    },
    /// A running instance recalled onto a gateway that has seen the device for the dwell.
    Recalled {
        gateway: String,
        rssi: i32,
        seen_for: SignedDuration,
        dwell: Duration,
    },
    /// A running instance that stays on its gateway while another has not reached dwell.
    WaitsForDwell {
        gateway: String,
        seen_for: SignedDuration,
        dwell: Duration,
        stays_on: String,
    },
    /// A running replica (or a policy that does not follow the device) keeps its gateway.
    StaysRunning { gateway: String },
    /// The gateway with the most free room.
    MostRoom {
        gateway: String,
        cpu_millis: i64,
        memory_bytes: i64,
    },
    /// The policy's first tier with room is edge or cloud.
    Prefers {
        policy: String,
        mode: Option<String>,
        tier: Tier,
        site: Option<String>,
    },
    /// An earlier tier was refused: the instance went to `to`.
    Offloaded { why: Vec<Refusal>, to: Target },
    /// Every tier of the policy was refused.
    Unplaced(Vec<Refusal>),
    /// Why a running instance stays where it runs although a move was considered (another
    /// gateway sees its device, or tiers before its own): what `plan --explain` and `diff`
    /// say; never written to the reason annotation, which keeps the reason it was placed
    /// for.
    Stays { at: Target, because: Vec<Refusal> },
    /// A reason read back from a running instance's annotation, kept as it was.
    Text(String),
    /// The gateway the instance wants (`chosen`), and the gateway that ranks above it but
    /// is not selected by the policy's `gatewaySelector` (a [`Refusal::NotSelected`]).
    Selected {
        chosen: Box<Reason>,
        passed_over: Refusal,
    },
}

/// Where an offloaded instance went: a gateway, or a tier (at a site).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Gateway(String),
    Tier { tier: Tier, site: Option<String> },
}

/// Why one gateway or tier was not used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The node is not ready, cordoned or tainted.
    Blocked {
        node: String,
        why: NodeBlock,
    },
    /// The gateway's report heartbeat is older than `plan::STALE_AFTER`.
    Stale {
        node: String,
        age: SignedDuration,
    },
    NoImageForArch {
        node: String,
        arch: Arch,
    },
    /// A gateway without room: what is in use of what it offers (allocatable less the
    /// policy's gatewayReserve), per resource that does not fit.
    Full {
        node: String,
        cpu: Option<Shortage>,
        memory: Option<Shortage>,
    },
    NoTier {
        tier: Tier,
        site: Option<String>,
    },
    NoArch {
        tier: Tier,
        site: Option<String>,
        function: String,
    },
    NoRoom {
        tier: Tier,
        site: Option<String>,
        cpu_millis: i64,
        memory_bytes: i64,
    },
    NoSiteLabel {
        node: String,
        tier: Tier,
    },
    LocalityGateway(Vec<Tier>),
    /// A running instance stays on the gateway `on` while its device is present there,
    /// although `gateway` sees it too (maybe stronger).
    StillPresent {
        gateway: String,
        rssi: i32,
        on: String,
        on_rssi: i32,
    },
    /// Under a `handoverMargin`: `gateway` hears the device stronger than `on`, where it is
    /// still present, but by less than the margin.
    UnderMargin {
        gateway: String,
        on: String,
        stronger_by: i32,
        margin: i32,
    },
    /// Under a `handoverMargin`: `gateway` hears the device at least the margin stronger
    /// than `on`, but has not seen it for the dwell.
    MarginBeforeDwell {
        gateway: String,
        on: String,
        stronger_by: i32,
        margin: i32,
        seen_for: SignedDuration,
        dwell: Duration,
    },
    /// A running instance does not move onto a gateway before it has seen the device for
    /// the dwell.
    BeforeDwell {
        gateway: String,
        seen_for: SignedDuration,
        dwell: Duration,
    },
    BadResources(String),
    NoPolicy(String),
    BadReserve {
        policy: String,
        error: String,
    },
    NoTiers {
        policy: String,
    },
    /// A gateway that sees the device (and ranks above the one chosen) but is not
    /// selected by the policy's `gatewaySelector`.
    NotSelected {
        node: String,
        rssi: i32,
    },
    /// No schedulable gateway (at `site`) is selected by the policy's `gatewaySelector`.
    NoneSelected {
        site: Option<String>,
    },
}

/// One resource of a full gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shortage {
    /// In use: the report's resources plus the instances placed.
    pub used: i64,
    pub allocatable: i64,
    pub reserve: i64,
    pub needs: i64,
}

fn secs(d: SignedDuration) -> Duration {
    Duration(SignedDuration::from_secs(d.as_secs().max(0)))
}

fn at(site: &Option<String>) -> impl fmt::Display + '_ {
    struct At<'a>(&'a Option<String>);
    impl fmt::Display for At<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self.0 {
                Some(s) => write!(f, " at site {s}"),
                None => Ok(()),
            }
        }
    }
    At(site)
}

fn joined<T: fmt::Display>(f: &mut fmt::Formatter<'_>, items: &[T], sep: &str) -> fmt::Result {
    for (i, x) in items.iter().enumerate() {
        if i > 0 {
            f.write_str(sep)?;
        }
        write!(f, "{x}")?;
    }
    Ok(())
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Sees {
                gateway,
                rssi,
                seen_for,
                present_at,
            } => {
                write!(
                    f,
                    "{gateway} sees the device at {rssi} dBm for {}",
                    secs(*seen_for)
                )?;
                if *present_at > 1 {
                    write!(f, " (strongest of {present_at})")?;
                }
                Ok(())
            }
            Reason::StaysWhilePresent { gateway, rssi } => write!(
                f,
                "{gateway} still sees the device at {rssi} dBm: stays while present"
            ),
            Reason::Moved {
                gateway,
                rssi,
                seen_for,
                dwell,
                from,
            } => write!(
                f,
                "{gateway} sees the device at {rssi} dBm for {} >= dwell {dwell}; {from} no longer does",
                secs(*seen_for)
            ),
            Reason::HandedOver { .. } | Reason::Spilled { .. } => self.fmt_roaming(f),
            Reason::Recalled {
                gateway,
                rssi,
                seen_for,
                dwell,
            } => write!(
                f,
                "{gateway} sees the device at {rssi} dBm for {} >= dwell {dwell}",
                secs(*seen_for)
            ),
            Reason::WaitsForDwell {
                gateway,
                seen_for,
                dwell,
                stays_on,
            } => write!(
                f,
                "{gateway} has seen the device for {} < dwell {dwell}: stays on {stays_on}",
                secs(*seen_for)
            ),
            Reason::StaysRunning { gateway } => {
                write!(f, "stays on {gateway}: running there, still has room")
            }
            Reason::MostRoom {
                gateway,
                cpu_millis,
                memory_bytes,
            } => write!(
                f,
                "{gateway} has the most room (cpu {}, memory {} free)",
                Cpu(*cpu_millis),
                Memory(*memory_bytes)
            ),
            _ => self.fmt_where(f),
        }
    }
}

impl Reason {
    /// The reasons that name a tier or a target rather than what a gateway sees.
    fn fmt_where(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Prefers {
                policy,
                mode,
                tier,
                site,
            } => {
                write!(f, "policy {policy}")?;
                if let Some(m) = mode {
                    write!(f, " (mode {m})")?;
                }
                write!(f, " prefers {tier}{}", at(site))
            }
            Reason::Offloaded { why, to } => {
                joined(f, why, " and ")?;
                f.write_str(": offloaded to ")?;
                match to {
                    Target::Gateway(g) => f.write_str(g),
                    Target::Tier { tier, site } => write!(f, "{tier}{}", at(site)),
                }
            }
            Reason::Unplaced(why) => {
                joined(f, why, " and ")?;
                f.write_str(": unplaced")
            }
            Reason::Stays {
                at: target,
                because,
            } => {
                match target {
                    Target::Gateway(g) => write!(f, "stays on {g}: ")?,
                    Target::Tier { tier, site } => write!(f, "stays at {tier}{}: ", at(site))?,
                }
                joined(f, because, " and ")
            }
            Reason::Text(s) => f.write_str(s),
            Reason::Selected {
                chosen,
                passed_over,
            } => write!(f, "{chosen}; {passed_over}"),
            _ => unreachable!("fmt handles the other reasons"),
        }
    }
}

impl Reason {
    /// The reasons of `handoverMargin` and `spill: gateways`.
    fn fmt_roaming(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::HandedOver {
                gateway,
                from,
                stronger_by,
                margin,
                seen_for,
                dwell,
            } => write!(
                f,
                "{gateway} hears the device {stronger_by} dB stronger than {from} (margin {margin} dB) for {} >= dwell {dwell}",
                secs(*seen_for)
            ),
            Reason::Spilled {
                gateway,
                rssi,
                seen_for,
                dwell,
                why,
            } => {
                write!(
                    f,
                    "spilled to {gateway} (sees the device at {rssi} dBm for {} >= dwell {dwell}): ",
                    secs(*seen_for)
                )?;
                joined(f, why, " and ")
            }
            _ => unreachable!("fmt handles the other reasons"),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Blocked { node, why } => write!(f, "{node} {why}"),
            Refusal::Stale { node, age } => write!(
                f,
                "{node}'s heartbeat is stale ({} old, more than {})",
                secs(*age),
                Duration(super::STALE_AFTER)
            ),
            Refusal::NoImageForArch { node, arch } => {
                write!(f, "no image for {node}'s arch {arch}")
            }
            Refusal::Full { node, cpu, memory } => full(f, node, cpu, memory),
            Refusal::NoTier { tier, site } => write!(f, "no {tier}{}", at(site)),
            Refusal::NoArch {
                tier,
                site,
                function,
            } => write!(
                f,
                "no {tier}{} has an arch {function} has an image for",
                at(site)
            ),
            Refusal::NoRoom {
                tier,
                site,
                cpu_millis,
                memory_bytes,
            } => write!(
                f,
                "no {tier}{} has room (needs cpu {}, memory {})",
                at(site),
                Cpu(*cpu_millis),
                Memory(*memory_bytes)
            ),
            Refusal::NoSiteLabel { node, tier } => write!(
                f,
                "{node} has no site label, so {tier} cannot stay at the device's site"
            ),
            Refusal::LocalityGateway(tiers) => {
                f.write_str("dataLocality: gateway rules out ")?;
                joined(f, tiers, " and ")
            }
            Refusal::StillPresent {
                gateway,
                rssi,
                on,
                on_rssi,
            } => write!(
                f,
                "{gateway} sees the device at {rssi} dBm, but {on} still does at {on_rssi} dBm"
            ),
            Refusal::BeforeDwell {
                gateway,
                seen_for,
                dwell,
            } => write!(
                f,
                "{gateway} has seen the device for {} < dwell {dwell}",
                secs(*seen_for)
            ),
            Refusal::UnderMargin { .. } | Refusal::MarginBeforeDwell { .. } => self.fmt_margin(f),
            Refusal::BadResources(e) => write!(f, "spec.resources: {e}"),
            Refusal::NoPolicy(p) => write!(f, "no PlacementPolicy named {p}"),
            Refusal::BadReserve { policy, error } => {
                write!(f, "policy {policy}: gatewayReserve: {error}")
            }
            Refusal::NoTiers { policy } => write!(f, "policy {policy} allows no tier"),
            Refusal::NotSelected { node, rssi } => write!(
                f,
                "{node} hears the device at {rssi} dBm but is not selected by the policy's gatewaySelector"
            ),
            Refusal::NoneSelected { site } => write!(
                f,
                "no schedulable gateway{} is selected by the policy's gatewaySelector",
                at(site)
            ),
        }
    }
}

impl Refusal {
    /// The refusals of `handoverMargin`.
    fn fmt_margin(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::UnderMargin {
                gateway,
                on,
                stronger_by,
                margin,
            } => write!(
                f,
                "{gateway} is {stronger_by} dB stronger than {on}, under the {margin} dB margin"
            ),
            Refusal::MarginBeforeDwell {
                gateway,
                on,
                stronger_by,
                margin,
                seen_for,
                dwell,
            } => write!(
                f,
                "{gateway} hears the device {stronger_by} dB stronger than {on} (margin {margin} dB) for {} < dwell {dwell}",
                secs(*seen_for)
            ),
            _ => unreachable!("fmt handles the other refusals"),
        }
    }
}

/// "gw-a full (cpu 900m of 1000m, needs 200m; memory ...)": what is short, per resource.
fn full(
    f: &mut fmt::Formatter<'_>,
    node: &str,
    cpu: &Option<Shortage>,
    memory: &Option<Shortage>,
) -> fmt::Result {
    write!(f, "{node} full (")?;
    if let Some(c) = cpu {
        write!(f, "cpu {}m of {}m", c.used, c.allocatable - c.reserve)?;
        if c.reserve > 0 {
            write!(f, " after the {}m reserve", c.reserve)?;
        }
        write!(f, ", needs {}m", c.needs)?;
    }
    if let Some(m) = memory {
        if cpu.is_some() {
            f.write_str("; ")?;
        }
        write!(
            f,
            "memory {} of {}",
            Memory(m.used),
            Memory(m.allocatable - m.reserve)
        )?;
        if m.reserve > 0 {
            write!(f, " after the {} reserve", Memory(m.reserve))?;
        }
        write!(f, ", needs {}", Memory(m.needs))?;
    }
    f.write_str(")")
}

impl Default for Reason {
    fn default() -> Self {
        Reason::Text(String::new())
    }
}

impl From<&str> for Reason {
    fn from(s: &str) -> Self {
        Reason::Text(s.to_string())
    }
}

impl From<String> for Reason {
    fn from(s: String) -> Self {
        Reason::Text(s)
    }
}

impl Reason {
    /// Whether the reason is empty (a live object without a reason annotation).
    pub fn is_empty(&self) -> bool {
        matches!(self, Reason::Text(s) if s.is_empty())
    }
}

impl PartialEq for Reason {
    fn eq(&self, other: &Reason) -> bool {
        match (self, other) {
            (Reason::Text(a), Reason::Text(b)) => a == b,
            (Reason::Text(a), r) | (r, Reason::Text(a)) => prints_as(r, a),
            (a, b) => TEXT.with(|buf| {
                // Re-planning compares reasons on every placement: one reused buffer, and
                // the other side compared as it prints, so nothing is allocated.
                let Ok(mut buf) = buf.try_borrow_mut() else {
                    return a.to_string() == b.to_string();
                };
                buf.clear();
                fmt::Write::write_fmt(&mut *buf, format_args!("{a}")).is_ok() && prints_as(b, &buf)
            }),
        }
    }
}

thread_local! {
    static TEXT: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// Whether `r` prints exactly as `text`; stops at the first difference.
fn prints_as(r: &Reason, text: &str) -> bool {
    struct Against<'a>(&'a str);
    impl fmt::Write for Against<'_> {
        fn write_str(&mut self, part: &str) -> fmt::Result {
            match self.0.strip_prefix(part) {
                Some(rest) => {
                    self.0 = rest;
                    Ok(())
                }
                None => Err(fmt::Error),
            }
        }
    }
    let mut against = Against(text);
    fmt::Write::write_fmt(&mut against, format_args!("{r}")).is_ok() && against.0.is_empty()
}

impl Eq for Reason {}

impl PartialEq<str> for Reason {
    fn eq(&self, other: &str) -> bool {
        match self {
            Reason::Text(s) => s == other,
            r => prints_as(r, other),
        }
    }
}

impl PartialEq<&str> for Reason {
    fn eq(&self, other: &&str) -> bool {
        self == *other
    }
}

impl serde::Serialize for Reason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Reason {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Reason::Text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sees(gateway: &str, millis: i64) -> Reason {
        Reason::Sees {
            gateway: gateway.to_string(),
            rssi: -60,
            seen_for: SignedDuration::from_millis(millis),
            present_at: 1,
        }
    }

    #[test]
    fn reasons_are_equal_when_their_text_is() {
        // Whole seconds are printed: 1.2s and 1.7s read the same.
        assert_eq!(sees("gw-a", 1_200), sees("gw-a", 1_700));
        assert_ne!(sees("gw-a", 1_200), sees("gw-a", 2_200));
        assert_ne!(sees("gw-a", 1_000), sees("gw-b", 1_000));
        let text = sees("gw-a", 1_000).to_string();
        assert_eq!(sees("gw-a", 1_000), Reason::Text(text.clone()));
        assert_eq!(Reason::Text(text.clone()), sees("gw-a", 1_000));
        assert_eq!(sees("gw-a", 1_000), text.as_str());
        // A prefix, or a longer text, is not the same text.
        assert_ne!(sees("gw-a", 1_000), text[..text.len() - 1]);
        assert_ne!(sees("gw-a", 1_000), format!("{text}!").as_str());
        let full = Reason::Unplaced(vec![Refusal::NoRoom {
            tier: Tier::Edge,
            site: None,
            cpu_millis: 250,
            memory_bytes: 96 << 20,
        }]);
        assert_eq!(
            full,
            "no edge has room (needs cpu 250m, memory 96Mi): unplaced"
        );
        assert_eq!(full, full.clone());
    }
}
