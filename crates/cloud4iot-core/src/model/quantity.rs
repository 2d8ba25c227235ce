//! Kubernetes resource quantities reduced to the two numbers placement needs.
//!
//! The planner compares and adds resources constantly, so quantities are parsed once into
//! integers (millicores and bytes) instead of being carried around as strings.

use std::fmt;
use std::ops::{Add, AddAssign, Sub};

use serde::{Deserialize, Serialize};

/// CPU in millicores and memory in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Resources {
    pub cpu_millis: i64,
    pub memory_bytes: i64,
}

impl Resources {
    pub const ZERO: Resources = Resources {
        cpu_millis: 0,
        memory_bytes: 0,
    };

    pub fn new(cpu_millis: i64, memory_bytes: i64) -> Self {
        Resources {
            cpu_millis,
            memory_bytes,
        }
    }

    /// Parses a `cpu` and a `memory` quantity; a missing one counts as zero.
    pub fn parse(cpu: Option<&str>, memory: Option<&str>) -> Result<Self, QuantityError> {
        Ok(Resources {
            cpu_millis: cpu.map(parse_cpu_millis).transpose()?.unwrap_or(0),
            memory_bytes: memory.map(parse_memory_bytes).transpose()?.unwrap_or(0),
        })
    }

    /// True when `self` fits inside `room` in every dimension.
    pub fn fits_in(&self, room: &Resources) -> bool {
        self.cpu_millis <= room.cpu_millis && self.memory_bytes <= room.memory_bytes
    }

    /// The dimensions that do not fit, for a reviewer-readable reason.
    pub fn shortfall(&self, room: &Resources) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.cpu_millis > room.cpu_millis {
            out.push("cpu");
        }
        if self.memory_bytes > room.memory_bytes {
            out.push("memory");
        }
        out
    }

    pub fn saturating_sub(self, other: Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_sub(other.cpu_millis).max(0),
            memory_bytes: self.memory_bytes.saturating_sub(other.memory_bytes).max(0),
        }
    }
}

/// Sums and differences saturate at the bounds of i64: every quantity is at most i64::MAX
/// (parsing refuses more), and a sum that would overflow (a report claiming exabytes twice)
/// is "more than anything has", which is what a capacity check needs, never a wrap-around
/// to a negative number or a panic.
impl Add for Resources {
    type Output = Resources;
    fn add(self, o: Resources) -> Resources {
        self.each(o, i64::saturating_add)
    }
}

impl AddAssign for Resources {
    fn add_assign(&mut self, o: Resources) {
        *self = *self + o;
    }
}

impl Sub for Resources {
    type Output = Resources;
    fn sub(self, o: Resources) -> Resources {
        self.each(o, i64::saturating_sub)
    }
}

impl Resources {
    /// `op` on each resource of `self` and `o`: CPU with CPU, memory with memory.
    #[inline]
    fn each(self, o: Resources, op: fn(i64, i64) -> i64) -> Resources {
        Resources {
            cpu_millis: op(self.cpu_millis, o.cpu_millis),
            memory_bytes: op(self.memory_bytes, o.memory_bytes),
        }
    }
}

impl fmt::Display for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cpu {}, memory {}",
            Cpu(self.cpu_millis),
            Memory(self.memory_bytes)
        )
    }
}

/// `950m`, `2` — the shortest exact form, as kubectl prints it.
pub fn format_cpu(millis: i64) -> String {
    Cpu(millis).to_string()
}

/// `512Mi`, `1Gi`, or plain bytes when no binary suffix is exact.
pub fn format_memory(bytes: i64) -> String {
    Memory(bytes).to_string()
}

/// Millicores printed as [`format_cpu`] does, without building a string (reasons are
/// printed, and compared by their text, on the planner's hot path).
#[derive(Clone, Copy, Debug)]
pub struct Cpu(pub i64);

impl fmt::Display for Cpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 % 1000 == 0 {
            write!(f, "{}", self.0 / 1000)
        } else {
            write!(f, "{}m", self.0)
        }
    }
}

/// Bytes printed as [`format_memory`] does, without building a string.
#[derive(Clone, Copy, Debug)]
pub struct Memory(pub i64);

impl fmt::Display for Memory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.0;
        // Ti down to Ki (larger units as so many Ti).
        for (i, suffix) in BINARY[..4].iter().enumerate().rev() {
            let unit = 1i64 << (10 * (i + 1));
            if bytes != 0 && bytes % unit == 0 {
                return write!(f, "{}{suffix}", bytes / unit);
            }
        }
        write!(f, "{bytes}")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a Kubernetes quantity ({why})")]
pub struct QuantityError {
    pub value: String,
    pub why: &'static str,
}

/// The decimal suffixes, a factor of 1000 apart: `n` is 10^-9, none is 1, `E` is 10^18.
const DECIMAL: [&str; 10] = ["n", "u", "m", "", "k", "M", "G", "T", "P", "E"];
/// The binary suffixes, a factor of 1024 apart: `Ki` is 2^10, `Ei` is 2^60.
const BINARY: [&str; 6] = ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];

/// Splits a quantity into its decimal number and suffix, and scales the number by
/// `10^exp10 * 2^exp2` given by the suffix. Returns the value multiplied by `scale`
/// (1000 for CPU millicores, 1 for bytes), rounded up as Kubernetes does.
fn parse_scaled(value: &str, scale: i128) -> Result<i64, QuantityError> {
    let err = |why| QuantityError {
        value: value.to_string(),
        why,
    };
    let s = value.trim();
    if s.is_empty() {
        return Err(err("empty"));
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    // Decimal exponent forms (1e3, 1E3) are valid quantities too.
    let (exp10, exp2): (i32, u32) = if let Some(i) = DECIMAL.iter().position(|&x| x == suffix) {
        (3 * i as i32 - 9, 0)
    } else if let Some(i) = BINARY.iter().position(|&x| x == suffix) {
        (0, 10 * (i as u32 + 1))
    } else if suffix.starts_with(['e', 'E']) {
        (
            suffix[1..]
                .parse::<i32>()
                .map_err(|_| err("bad exponent"))?,
            0,
        )
    } else {
        return Err(err("unknown suffix"));
    };
    let negative = num.starts_with('-');
    let digits = num.trim_start_matches(['+', '-']);
    if digits.is_empty() || digits.matches('.').count() > 1 || digits == "." {
        return Err(err("no number"));
    }
    if negative {
        return Err(err("negative"));
    }
    let (int_part, frac_part) = digits.split_once('.').unwrap_or((digits, ""));
    let mantissa: i128 = format!("{int_part}{frac_part}")
        .parse()
        .map_err(|_| err("no number"))?;
    let exp10 = exp10 - frac_part.len() as i32;
    let mut numerator = mantissa.checked_mul(scale).ok_or(err("too large"))?;
    numerator = numerator
        .checked_mul(1i128 << exp2)
        .ok_or(err("too large"))?;
    let value = if exp10 >= 0 {
        numerator
            .checked_mul(10i128.checked_pow(exp10 as u32).ok_or(err("too large"))?)
            .ok_or(err("too large"))?
    } else {
        let d = 10i128
            .checked_pow((-exp10) as u32)
            .ok_or(err("too small"))?;
        (numerator + d - 1) / d
    };
    i64::try_from(value).map_err(|_| err("too large"))
}

/// CPU quantity (`250m`, `0.5`, `2`) in millicores.
pub fn parse_cpu_millis(value: &str) -> Result<i64, QuantityError> {
    parse_scaled(value, 1000)
}

/// Memory quantity (`128Mi`, `1G`, `1048576`) in bytes.
pub fn parse_memory_bytes(value: &str) -> Result<i64, QuantityError> {
    parse_scaled(value, 1)
}

/// The `cpu`/`memory` pair as users write it in YAML.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ResourceQuantities {
    #[serde(skip_serializing_if = "Option::is_none", deserialize_with = "quantity")]
    #[schemars(schema_with = "int_or_string")]
    pub cpu: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", deserialize_with = "quantity")]
    #[schemars(schema_with = "int_or_string")]
    pub memory: Option<String>,
}

/// The schema Kubernetes gives quantities, so the API server accepts `cpu: 1` too.
fn int_or_string(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "x-kubernetes-int-or-string": true,
        "nullable": true
    })
}

/// Kubernetes accepts `cpu: 1` as well as `cpu: "1"`; so do we, everywhere a quantity is read.
fn quantity<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        S(String),
        N(serde_json::Number),
    }
    Ok(Option::<Raw>::deserialize(d)?.map(|raw| match raw {
        Raw::S(s) => s,
        Raw::N(n) => number_as_quantity(&n),
    }))
}

/// A quantity written as a number (`cpu: 1`, `memory: 1e9`) as the string the model keeps:
/// its decimal form. Display of f64 never uses an exponent: 1e8 -> "100000000".
pub fn number_as_quantity(n: &serde_json::Number) -> String {
    match (n.as_i64(), n.as_u64(), n.as_f64()) {
        (Some(i), _, _) => i.to_string(),
        (_, Some(u), _) => u.to_string(),
        (_, _, Some(f)) => f.to_string(),
        _ => n.to_string(),
    }
}

impl ResourceQuantities {
    pub fn parse(&self) -> Result<Resources, QuantityError> {
        Resources::parse(self.cpu.as_deref(), self.memory.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_forms() {
        assert_eq!(parse_cpu_millis("250m").unwrap(), 250);
        assert_eq!(parse_cpu_millis("0.5").unwrap(), 500);
        assert_eq!(parse_cpu_millis("2").unwrap(), 2000);
        assert_eq!(
            parse_cpu_millis("1.0005").unwrap(),
            1001,
            "rounds up like Kubernetes"
        );
        assert_eq!(parse_cpu_millis("100000u").unwrap(), 100);
    }

    #[test]
    fn memory_forms() {
        assert_eq!(parse_memory_bytes("128Mi").unwrap(), 128 << 20);
        assert_eq!(parse_memory_bytes("1G").unwrap(), 1_000_000_000);
        assert_eq!(parse_memory_bytes("1e3").unwrap(), 1000);
        assert_eq!(parse_memory_bytes("1.5Gi").unwrap(), 3 << 29);
    }

    #[test]
    fn every_suffix_scales_as_kubernetes_defines_it() {
        // In bytes; what is less than one rounds up to one, as Kubernetes does.
        let cases = [
            ("1n", 1),
            ("1500u", 1),
            ("2000m", 2),
            ("3", 3),
            ("1k", 1_000),
            ("1M", 1_000_000),
            ("1G", 10i64.pow(9)),
            ("1T", 10i64.pow(12)),
            ("1P", 10i64.pow(15)),
            ("1E", 10i64.pow(18)),
            ("1Ki", 1 << 10),
            ("1Mi", 1 << 20),
            ("1Gi", 1 << 30),
            ("1Ti", 1 << 40),
            ("1Pi", 1 << 50),
            ("1Ei", 1 << 60),
            ("1e2", 100),
            ("1E2", 100),
        ];
        for (text, bytes) in cases {
            assert_eq!(parse_memory_bytes(text), Ok(bytes), "{text}");
        }
        assert_eq!(parse_cpu_millis("1500u"), Ok(2), "rounded up");
        assert_eq!(
            format_memory(1 << 50),
            "1024Ti",
            "Ti is the largest unit printed"
        );
        assert_eq!(format_memory(3 << 10), "3Ki");
        assert_eq!(format_memory(1000), "1000");
    }

    #[test]
    fn sums_saturate_instead_of_overflowing() {
        let huge = Resources::new(i64::MAX, i64::MAX);
        let mut sum = huge + huge;
        assert_eq!(sum, huge);
        sum += Resources::new(1, 1);
        assert_eq!(sum, huge);
        let negative = Resources::new(i64::MIN, i64::MIN) - huge;
        assert_eq!(negative, Resources::new(i64::MIN, i64::MIN));
        assert_eq!(
            Resources::new(0, 0).saturating_sub(huge),
            Resources::new(0, 0)
        );
        assert!(!sum.fits_in(&Resources::new(1 << 40, 1 << 40)));
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "abc", "12Q", "-1", "1..2", "."] {
            assert!(parse_memory_bytes(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn numbers_are_quantities_too() {
        let q: ResourceQuantities = serde_norway::from_str("cpu: 1\nmemory: 0.5").unwrap();
        assert_eq!(q.parse().unwrap(), Resources::new(1000, 1));
        let q: ResourceQuantities = serde_norway::from_str("cpu: 250m").unwrap();
        assert_eq!(q.cpu.as_deref(), Some("250m"));
        assert!(serde_norway::from_str::<ResourceQuantities>("cpu: [1]").is_err());
    }

    #[test]
    fn formats_round_trip() {
        assert_eq!(format_cpu(950), "950m");
        assert_eq!(format_cpu(2000), "2");
        assert_eq!(format_memory(512 << 20), "512Mi");
        assert_eq!(format_memory(1000), "1000");
    }
}
