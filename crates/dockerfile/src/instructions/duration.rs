//! Go's `time.ParseDuration`, for HEALTHCHECK intervals.

use std::time::Duration;

/// A duration Go's `time.ParseDuration` refuses; the text is Go's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DurationError {
    /// Not numbers with units, or out of range.
    #[error("time: invalid duration \"{0}\"")]
    Invalid(String),
    /// A number without a unit.
    #[error("time: missing unit in duration \"{0}\"")]
    MissingUnit(String),
    /// A unit other than ns, us, ms, s, m, h.
    #[error("time: unknown unit \"{unit}\" in duration \"{duration}\"")]
    UnknownUnit {
        /// The unit as written.
        unit: String,
        /// The whole duration.
        duration: String,
    },
}

/// A HEALTHCHECK interval flag that is refused; the text is BuildKit's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum IntervalError {
    /// The value is not a duration.
    #[error("{0}")]
    Duration(#[from] DurationError),
    /// A duration between zero and one millisecond (the flag named).
    #[error("Interval \"{0}\" cannot be less than 1ms")]
    TooShort(String),
}

/// Parses a Go duration string (`1h30m`, `1.5s`, `300ms`, `-2s`, `0`) to
/// signed nanoseconds; errors are Go's messages.
pub(crate) fn parse_go_duration(orig: &str) -> Result<i128, DurationError> {
    let invalid = || DurationError::Invalid(orig.to_string());
    let mut s = orig;
    let mut neg = false;
    if let Some(c) = s.chars().next() {
        if c == '-' || c == '+' {
            neg = c == '-';
            s = &s[1..];
        }
    }
    if s == "0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err(invalid());
    }
    let mut total: u128 = 0;
    while !s.is_empty() {
        let b = s.as_bytes();
        if !(b[0] == b'.' || b[0].is_ascii_digit()) {
            return Err(invalid());
        }
        let int_len = b.iter().take_while(|c| c.is_ascii_digit()).count();
        let int_part = &s[..int_len];
        let mut v: u128 = 0;
        for d in int_part.bytes() {
            v = v * 10 + u128::from(d - b'0');
            if v > (1u128 << 63) {
                return Err(invalid());
            }
        }
        s = &s[int_len..];
        let mut frac = "";
        let mut has_frac = false;
        if let Some(rest) = s.strip_prefix('.') {
            let n = rest.bytes().take_while(|c| c.is_ascii_digit()).count();
            frac = &rest[..n];
            has_frac = n > 0;
            s = &rest[n..];
        }
        if int_len == 0 && !has_frac {
            return Err(invalid());
        }
        let unit_len = s
            .find(|c: char| c == '.' || c.is_ascii_digit())
            .unwrap_or(s.len());
        if unit_len == 0 {
            return Err(DurationError::MissingUnit(orig.to_string()));
        }
        let unit = &s[..unit_len];
        s = &s[unit_len..];
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => {
                return Err(DurationError::UnknownUnit {
                    unit: unit.to_string(),
                    duration: orig.to_string(),
                })
            }
        };
        let mut part = v * scale;
        if !frac.is_empty() {
            // Go keeps at most the digits that fit; truncating is the same
            // for the precision a nanosecond count has.
            let digits = &frac[..frac.len().min(30)];
            let f: u128 = digits.parse().unwrap_or(0);
            let denom = 10u128.pow(digits.len() as u32);
            part += f * scale / denom;
        }
        total += part;
        if total > (1u128 << 63) {
            return Err(invalid());
        }
    }
    if !neg && total > i64::MAX as u128 {
        return Err(invalid());
    }
    Ok(if neg { -(total as i128) } else { total as i128 })
}

/// A HEALTHCHECK interval flag: empty is zero, zero is zero, anything
/// else must be at least 1ms.
pub(crate) fn parse_interval(flag: &str, value: Option<&str>) -> Result<Duration, IntervalError> {
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        return Ok(Duration::ZERO);
    };
    let ns = parse_go_duration(value)?;
    if ns == 0 {
        return Ok(Duration::ZERO);
    }
    if ns < 1_000_000 {
        return Err(IntervalError::TooShort(flag.to_string()));
    }
    Ok(Duration::from_nanos(ns as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("5s"), Ok(5_000_000_000));
        assert_eq!(parse_go_duration("1h30m"), Ok(5_400_000_000_000));
        assert_eq!(parse_go_duration("1.5s"), Ok(1_500_000_000));
        assert_eq!(parse_go_duration(".5ms"), Ok(500_000));
        assert_eq!(parse_go_duration("300us"), Ok(300_000));
        assert_eq!(parse_go_duration("2\u{b5}s"), Ok(2_000));
        assert_eq!(parse_go_duration("-2s"), Ok(-2_000_000_000));
        assert_eq!(parse_go_duration("0"), Ok(0));
        assert_eq!(
            parse_go_duration("5").unwrap_err().to_string(),
            "time: missing unit in duration \"5\""
        );
        assert_eq!(
            parse_go_duration("5x").unwrap_err().to_string(),
            "time: unknown unit \"x\" in duration \"5x\""
        );
        assert_eq!(
            parse_go_duration("abc").unwrap_err().to_string(),
            "time: invalid duration \"abc\""
        );
        assert_eq!(
            parse_go_duration("").unwrap_err().to_string(),
            "time: invalid duration \"\""
        );
        assert_eq!(
            parse_go_duration(".s").unwrap_err().to_string(),
            "time: invalid duration \".s\""
        );
        assert!(parse_go_duration("9999999999h").is_err());
    }

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("interval", None), Ok(Duration::ZERO));
        assert_eq!(parse_interval("interval", Some("0s")), Ok(Duration::ZERO));
        assert_eq!(
            parse_interval("timeout", Some("3s")),
            Ok(Duration::from_secs(3))
        );
        assert_eq!(
            parse_interval("interval", Some("10us"))
                .unwrap_err()
                .to_string(),
            "Interval \"interval\" cannot be less than 1ms"
        );
        assert_eq!(
            parse_interval("interval", Some("-1s"))
                .unwrap_err()
                .to_string(),
            "Interval \"interval\" cannot be less than 1ms"
        );
    }

    #[test]
    fn interval_errors_keep_the_duration_error() {
        let e = parse_interval("timeout", Some("5x")).unwrap_err();
        let want = DurationError::UnknownUnit {
            unit: "x".into(),
            duration: "5x".into(),
        };
        assert_eq!(e, IntervalError::Duration(want.clone()));
        assert_eq!(e.to_string(), want.to_string());
        let source = std::error::Error::source(&e).map(ToString::to_string);
        assert_eq!(source, Some(want.to_string()));
        assert_eq!(
            parse_interval("interval", Some("1ns")),
            Err(IntervalError::TooShort("interval".into()))
        );
    }
}
