//! Human durations such as `90s`, `15m`, `1h30m`, `7d`, `10y` (a year is 365 days), as used in
//! policy files and command-line flags.

use std::fmt;
use std::str::FromStr;
use time::Duration;

/// A positive duration written the way operators write them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason} (examples: 30s, 15m, 1h30m, 7d, 10y)")]
pub struct DurationError {
    input: String,
    reason: &'static str,
}

impl FromStr for HumanDuration {
    type Err = DurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| DurationError {
            input: s.chars().take(64).collect(),
            reason,
        };
        let text = s.trim();
        if text.is_empty() {
            return Err(err("empty"));
        }
        let mut total: i64 = 0;
        let mut digits = String::new();
        for c in text.chars() {
            if c.is_ascii_digit() {
                digits.push(c);
                continue;
            }
            let unit: i64 = match c {
                's' => 1,
                'm' => 60,
                'h' => 3600,
                'd' => 86_400,
                'w' => 7 * 86_400,
                'y' => 365 * 86_400,
                _ => return Err(err("unknown unit (use s, m, h, d, w or y)")),
            };
            if digits.is_empty() {
                return Err(err("a unit must follow a number"));
            }
            let n: i64 = digits.parse().map_err(|_| err("number too large"))?;
            digits.clear();
            total = n
                .checked_mul(unit)
                .and_then(|v| total.checked_add(v))
                .ok_or_else(|| err("number too large"))?;
        }
        if !digits.is_empty() {
            return Err(err("missing unit after the last number"));
        }
        if total <= 0 {
            return Err(err("must be greater than zero"));
        }
        // Beyond ~1000 years the X.509 time encodings and the store's integers stop making sense.
        if total > 1000 * 365 * 86_400 {
            return Err(err("longer than 1000 years"));
        }
        Ok(HumanDuration(Duration::seconds(total)))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0.whole_seconds();
        if rest == 0 {
            return f.write_str("0s");
        }
        for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
            if rest >= size {
                write!(f, "{}{unit}", rest / size)?;
                rest %= size;
            }
        }
        Ok(())
    }
}

impl<'de> serde::Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: &str) -> i64 {
        s.parse::<HumanDuration>()
            .map(|d| d.0.whole_seconds())
            .unwrap_or(-1)
    }

    #[test]
    fn parses_units_and_compounds() {
        assert_eq!(secs("30s"), 30);
        assert_eq!(secs("15m"), 900);
        assert_eq!(secs("1h30m"), 5400);
        assert_eq!(secs("7d"), 604_800);
        assert_eq!(secs("2w"), 1_209_600);
        assert_eq!(secs("10y"), 315_360_000);
    }

    #[test]
    fn refuses_garbage() {
        for bad in [
            "",
            "h",
            "10",
            "1x",
            "-5m",
            "0s",
            "1h 30",
            "99999999999999999999s",
            "1001y",
        ] {
            assert!(
                bad.parse::<HumanDuration>().is_err(),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn displays_round_trip() {
        for s in ["1d1h1m1s", "15m", "2h", "45s"] {
            let d: HumanDuration = s.parse().expect("parses");
            assert_eq!(d.to_string(), s);
        }
    }
}
