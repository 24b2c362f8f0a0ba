//! `Duration`: `250ms`, `30s`, `5m`, `1h30m`, `30d`. No spaces, no signs.

use std::fmt;
use std::time::Duration as StdDuration;

/// A checked, non-negative duration written as number+unit groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(pub StdDuration);

impl Duration {
    pub const fn from_secs(secs: u64) -> Self {
        Self(StdDuration::from_secs(secs))
    }

    pub fn std(self) -> StdDuration {
        self.0
    }

    pub fn chrono(self) -> chrono::Duration {
        chrono::Duration::from_std(self.0).unwrap_or(chrono::Duration::MAX)
    }

    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }
}

const UNITS: &str = "ms, s, m, h, d, w";

impl TryFrom<&str> for Duration {
    type Error = String;

    fn try_from(text: &str) -> Result<Self, String> {
        let hint = format!("expected a number and a unit ({UNITS}) such as `30s` or `1h30m`");
        if text.is_empty() {
            return Err(format!("empty duration; {hint}"));
        }
        if text.starts_with('-') {
            return Err(format!("invalid duration `{text}`: durations cannot be negative"));
        }
        if text.chars().any(char::is_whitespace) {
            return Err(format!("invalid duration `{text}`: no spaces allowed; {hint}"));
        }
        let mut total = StdDuration::ZERO;
        let mut rest = text;
        while !rest.is_empty() {
            let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
            if digits == 0 {
                return Err(format!("invalid duration `{text}`: {hint}"));
            }
            let number: u64 =
                rest[..digits].parse().map_err(|_| format!("invalid duration `{text}`: number too large"))?;
            rest = &rest[digits..];
            let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
            let unit = &rest[..unit_len];
            rest = &rest[unit_len..];
            let part = match unit {
                "ms" => StdDuration::from_millis(number),
                "s" => StdDuration::from_secs(number),
                "m" => StdDuration::from_secs(number.saturating_mul(60)),
                "h" => StdDuration::from_secs(number.saturating_mul(3600)),
                "d" => StdDuration::from_secs(number.saturating_mul(86_400)),
                "w" => StdDuration::from_secs(number.saturating_mul(604_800)),
                "" => return Err(format!("invalid duration `{text}`: missing unit after `{number}`; {hint}")),
                other => return Err(format!("invalid duration `{text}`: unknown unit `{other}`; {hint}")),
            };
            total = total.saturating_add(part);
        }
        Ok(Duration(total))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms == 0 {
            return f.write_str("0s");
        }
        let mut secs = ms / 1000;
        for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
            if secs >= size {
                write!(f, "{}{unit}", secs / size)?;
                secs %= size;
            }
        }
        if !ms.is_multiple_of(1000) {
            write!(f, "{}ms", ms % 1000)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        let table = [
            ("250ms", 250),
            ("30s", 30_000),
            ("5m", 300_000),
            ("1h30m", 5_400_000),
            ("30d", 2_592_000_000),
            ("1w", 604_800_000),
            ("0s", 0),
        ];
        for (text, ms) in table {
            assert_eq!(Duration::try_from(text).unwrap().0.as_millis(), ms, "{text}");
        }
    }

    #[test]
    fn refuses_what_users_mistype() {
        let table = [
            ("30 s", "no spaces"),
            ("-5m", "cannot be negative"),
            ("30", "missing unit"),
            ("5min", "unknown unit `min`"),
            ("s", "expected a number"),
            ("", "empty duration"),
        ];
        for (text, needle) in table {
            let err = Duration::try_from(text).unwrap_err();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn displays_compactly() {
        assert_eq!(Duration::try_from("90m").unwrap().to_string(), "1h30m");
        assert_eq!(Duration::try_from("1500ms").unwrap().to_string(), "1s500ms");
    }
}
