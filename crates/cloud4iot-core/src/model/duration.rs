//! Durations as users write them in YAML (`5s`, `2m`, `1h 30m`, or ISO 8601 `PT5S`).

use std::fmt;
use std::str::FromStr;

use jiff::SignedDuration;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub SignedDuration);

impl Duration {
    pub const fn from_secs(secs: i64) -> Self {
        Duration(SignedDuration::from_secs(secs))
    }
    pub fn as_signed(&self) -> SignedDuration {
        self.0
    }
}

impl FromStr for Duration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let d: SignedDuration = s
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not a duration (write e.g. 5s, 2m, 1h30m)"))?;
        if d.is_negative() {
            return Err(format!("{s:?} is negative"));
        }
        Ok(Duration(d))
    }
}

impl fmt::Display for Duration {
    /// Compact form that reads well inside a reason: `5s`, `2m 30s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl schemars::JsonSchema for Duration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "string", "description": "A duration such as 5s, 2m or 1h30m"})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_friendly_and_iso() {
        assert_eq!("5s".parse::<Duration>().unwrap(), Duration::from_secs(5));
        assert_eq!("2m".parse::<Duration>().unwrap(), Duration::from_secs(120));
        assert_eq!(
            "PT1M30S".parse::<Duration>().unwrap(),
            Duration::from_secs(90)
        );
        assert!("soon".parse::<Duration>().is_err());
        assert_eq!(Duration::from_secs(5).to_string(), "5s");
    }
}
