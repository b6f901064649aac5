//! Rate limit values as operators write them: `N/sec`, `N/min`, `N/hour` or `N/day`
//! (`RATE_LIMIT_IP=60/min`), and `off`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// At most `count` events per `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u64,
    pub window: Duration,
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(text: &str) -> Result<Rate, String> {
        let usage = "write it as N/sec, N/min, N/hour or N/day, e.g. 60/min";
        let (count, unit) = text
            .trim()
            .split_once('/')
            .ok_or_else(|| format!("{text:?} is not a rate: {usage}"))?;
        let count: u64 = count
            .trim()
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                format!("{text:?}: the count must be a whole number above 0; {usage}")
            })?;
        let seconds = match unit.trim().to_ascii_lowercase().as_str() {
            "s" | "sec" | "second" => 1,
            "m" | "min" | "minute" => 60,
            "h" | "hour" => 3600,
            "d" | "day" => 86_400,
            _ => return Err(format!("{text:?}: unknown unit; {usage}")),
        };
        Ok(Rate {
            count,
            window: Duration::from_secs(seconds),
        })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.window.as_secs() {
            1 => "sec",
            60 => "min",
            3600 => "hour",
            _ => "day",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

/// A rate or `off` (also `0` and the empty string).
pub fn parse_optional(text: &str) -> Result<Option<Rate>, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "" | "off" | "0" | "none" => Ok(None),
        _ => text.parse().map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_in_every_unit() {
        for (text, count, secs) in [
            ("60/min", 60, 60),
            ("5/sec", 5, 1),
            (" 1000 / hour ", 1000, 3600),
            ("20000/day", 20000, 86400),
            ("3/S", 3, 1),
        ] {
            let rate: Rate = text.parse().unwrap();
            assert_eq!(
                rate,
                Rate {
                    count,
                    window: Duration::from_secs(secs)
                },
                "{text}"
            );
        }
        assert_eq!("60/min".parse::<Rate>().unwrap().to_string(), "60/min");
    }

    #[test]
    fn bad_rates_say_how_to_write_one() {
        for text in ["60", "0/min", "-1/min", "x/min", "60/week", "60/"] {
            let err = text.parse::<Rate>().unwrap_err();
            assert!(
                err.contains("N/sec, N/min, N/hour or N/day"),
                "{text}: {err}"
            );
        }
    }

    #[test]
    fn off_means_no_limit() {
        for text in ["off", "OFF", "0", "", "none"] {
            assert_eq!(parse_optional(text), Ok(None), "{text}");
        }
        assert!(parse_optional("10/min").unwrap().is_some());
    }
}
