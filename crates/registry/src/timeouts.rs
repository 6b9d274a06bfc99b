//! How long the client waits for registries, token endpoints and credential
//! helpers, and the `KIND=DURATION,...` syntax users set them with.

use std::fmt;
use std::time::Duration;

/// Limits on waiting. None of them bounds a whole transfer: a large blob that
/// keeps moving may take as long as it needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// Establishing a TCP (and TLS) connection (`connect`).
    pub connect: Duration,
    /// From the end of the request (body included) to the first byte of the
    /// reply (`response`). A registry verifying a large blob's digest before it
    /// answers the closing PUT needs this to be generous.
    pub response: Duration,
    /// Longest silence while sending a request body or reading a reply body (`idle`).
    pub idle: Duration,
    /// A whole token request to the registry's token endpoint (`token`).
    pub token: Duration,
    /// A whole run of a `docker-credential-*` helper (`helper`).
    pub helper: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(30),
            response: Duration::from_secs(120),
            idle: Duration::from_secs(60),
            token: Duration::from_secs(60),
            helper: Duration::from_secs(60),
        }
    }
}

/// The names of the limits, as written in a specification.
pub const TIMEOUT_KINDS: [&str; 5] = ["connect", "response", "idle", "token", "helper"];

/// A timeout specification that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid registry timeouts {spec:?}: {reason}; write DURATION or KIND=DURATION[,KIND=DURATION...] with KIND one of connect, response, idle, token, helper and DURATION like 500ms, 30s, 2m")]
pub struct TimeoutsError {
    /// The specification as given.
    pub spec: String,
    /// What is wrong with it.
    #[source]
    pub reason: TimeoutsProblem,
}

/// What is wrong with a timeout specification ([`TimeoutsError`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TimeoutsProblem {
    /// Nothing was given.
    #[error("it is empty")]
    Empty,
    /// An entry of a list without `KIND=`.
    #[error("{0:?} has no KIND=")]
    NoKind(String),
    /// A kind that is none of [`TIMEOUT_KINDS`].
    #[error("unknown kind {0:?}")]
    UnknownKind(String),
    /// A duration whose number does not parse.
    #[error("{text:?} is not a duration")]
    NotADuration {
        /// The duration as given.
        text: String,
        /// Why its number does not parse.
        #[source]
        source: std::num::ParseFloatError,
    },
    /// A duration in another unit than ms, s, m or h.
    #[error("{0:?} has an unknown unit (use ms, s, m or h)")]
    UnknownUnit(String),
    /// A duration of zero or less, or longer than a week.
    #[error("{0:?} must be more than zero and at most a week")]
    OutOfRange(String),
}

impl Timeouts {
    /// Environment variable the CLI reads a specification from.
    pub const ENV: &'static str = "KUBECTL_BUILD_REGISTRY_TIMEOUTS";

    /// Applies a specification on top of `self`: `DURATION` sets every limit,
    /// `KIND=DURATION[,KIND=DURATION...]` the named ones (later entries win).
    pub fn apply(&mut self, spec: &str) -> Result<(), TimeoutsError> {
        let bad = |reason| TimeoutsError {
            spec: spec.to_string(),
            reason,
        };
        let spec_trimmed = spec.trim();
        if spec_trimmed.is_empty() {
            return Err(bad(TimeoutsProblem::Empty));
        }
        if !spec_trimmed.contains('=') {
            let d = parse_duration(spec_trimmed).map_err(bad)?;
            *self = Timeouts {
                connect: d,
                response: d,
                idle: d,
                token: d,
                helper: d,
            };
            return Ok(());
        }
        for part in spec_trimmed.split(',') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let Some((kind, value)) = part.split_once('=') else {
                return Err(bad(TimeoutsProblem::NoKind(part.to_string())));
            };
            let d = parse_duration(value.trim()).map_err(bad)?;
            match kind.trim() {
                "connect" => self.connect = d,
                "response" => self.response = d,
                "idle" => self.idle = d,
                "token" => self.token = d,
                "helper" => self.helper = d,
                other => return Err(bad(TimeoutsProblem::UnknownKind(other.to_string()))),
            }
        }
        Ok(())
    }

    /// The defaults with `spec` applied.
    pub fn parse(spec: &str) -> Result<Timeouts, TimeoutsError> {
        let mut t = Timeouts::default();
        t.apply(spec)?;
        Ok(t)
    }
}

impl fmt::Display for Timeouts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "connect={},response={},idle={},token={},helper={}",
            show(self.connect),
            show(self.response),
            show(self.idle),
            show(self.token),
            show(self.helper)
        )
    }
}

/// A duration the way users write it back: `1.5s`, `250ms`, `2m`.
pub(crate) fn show(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 60_000 == 0 && ms > 0 {
        format!("{}m", ms / 60_000)
    } else if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else if ms >= 1000 {
        format!("{}s", d.as_secs_f64())
    } else {
        format!("{ms}ms")
    }
}

/// `500ms`, `30s`, `1.5s`, `2m`, `1h`, or a bare number of seconds; not zero.
fn parse_duration(text: &str) -> Result<Duration, TimeoutsProblem> {
    let (number, unit) = match text.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let value: f64 = number
        .parse()
        .map_err(|source| TimeoutsProblem::NotADuration {
            text: text.to_string(),
            source,
        })?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(TimeoutsProblem::UnknownUnit(text.to_string())),
    };
    if !seconds.is_finite() || seconds <= 0.0 || seconds > 7.0 * 86400.0 {
        return Err(TimeoutsProblem::OutOfRange(text.to_string()));
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_duration_sets_every_limit() {
        let t = Timeouts::parse("5s").unwrap();
        assert_eq!(t.connect, Duration::from_secs(5));
        assert_eq!(t.helper, Duration::from_secs(5));
        assert_eq!(
            Timeouts::parse("250ms").unwrap().idle,
            Duration::from_millis(250)
        );
        assert_eq!(Timeouts::parse("2").unwrap().token, Duration::from_secs(2));
    }

    #[test]
    fn kinds_set_only_themselves() {
        let t = Timeouts::parse("response=10m, idle=1.5s,token=3s").unwrap();
        let d = Timeouts::default();
        assert_eq!(t.response, Duration::from_secs(600));
        assert_eq!(t.idle, Duration::from_millis(1500));
        assert_eq!(t.token, Duration::from_secs(3));
        assert_eq!((t.connect, t.helper), (d.connect, d.helper));
        assert_eq!(
            Timeouts::parse(&t.to_string()).unwrap(),
            t,
            "Display reads back"
        );
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        for (spec, says) in [
            ("", "empty"),
            ("0s", "more than zero"),
            ("fast", "not a duration"),
            ("10x", "unknown unit"),
            ("read=5s", "unknown kind"),
            ("idle=5s,oops", "no KIND="),
        ] {
            let e = Timeouts::parse(spec).unwrap_err().to_string();
            assert!(e.contains(says), "{spec}: {e}");
        }
        let e = Timeouts::parse("idle=fast").unwrap_err();
        let number = std::error::Error::source(&e).and_then(std::error::Error::source);
        assert!(
            number.is_some_and(|n| n.is::<std::num::ParseFloatError>()),
            "{e:?}"
        );
    }
}
