//! `--chmod` values: octal (`0755`) or symbolic like chmod(1) and BuildKit's
//! Dockerfile 1.x (`u+x`, `go-w`, `u=rwX,go=rX`), without a umask.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a `--chmod` value is not a mode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChmodError {
    /// Empty value.
    #[error("the mode is empty; use an octal mode such as 0755 or a symbolic one such as u+x")]
    Empty,
    /// Octal digits beyond 07777.
    #[error("octal mode {0} is larger than 7777")]
    TooLarge(String),
    /// Neither octal nor a valid symbolic clause.
    #[error("{clause:?} is not a mode clause; use an octal mode such as 0755 or clauses such as u+x,go-w")]
    BadClause {
        /// The clause at fault.
        clause: String,
    },
}

/// A parsed `--chmod`. Serializes as its canonical text (`"0755"`,
/// `"u+x,go-w"`) and reads back by parsing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chmod {
    /// An absolute mode (`0755`), at most `0o7777`.
    Octal(u32),
    /// chmod(1) clauses applied in order to each file's current mode.
    Symbolic(Vec<ModeClause>),
}

/// One `[ugoa]*[+-=][rwxXst]*` action of a symbolic mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModeClause {
    /// Which classes: bit 0 user, 1 group, 2 others (none written: all).
    pub who: u8,
    /// `+`, `-` or `=`.
    pub op: char,
    /// The permission letters, as written (`rwX`).
    pub perms: String,
}

const WHO_U: u8 = 1;
const WHO_G: u8 = 2;
const WHO_O: u8 = 4;

impl Chmod {
    /// Parse a `--chmod` value (already expanded).
    pub fn parse(value: &str) -> Result<Chmod, ChmodError> {
        if value.is_empty() {
            return Err(ChmodError::Empty);
        }
        if value.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
            return match u32::from_str_radix(value, 8) {
                Ok(m) if m <= 0o7777 => Ok(Chmod::Octal(m)),
                _ => Err(ChmodError::TooLarge(value.to_string())),
            };
        }
        let mut clauses = Vec::new();
        for clause in value.split(',') {
            let bad = || ChmodError::BadClause {
                clause: clause.to_string(),
            };
            let mut who = 0u8;
            let mut rest = clause;
            while let Some(c) = rest.chars().next() {
                match c {
                    'u' => who |= WHO_U,
                    'g' => who |= WHO_G,
                    'o' => who |= WHO_O,
                    'a' => who |= WHO_U | WHO_G | WHO_O,
                    _ => break,
                }
                rest = &rest[1..];
            }
            // One or more actions may follow the classes: `u+x-w`.
            let mut any = false;
            while let Some(op) = rest.chars().next() {
                if !matches!(op, '+' | '-' | '=') {
                    return Err(bad());
                }
                rest = &rest[1..];
                let end = rest.find(['+', '-', '=']).unwrap_or(rest.len());
                let perms = &rest[..end];
                if !perms
                    .chars()
                    .all(|c| matches!(c, 'r' | 'w' | 'x' | 'X' | 's' | 't'))
                {
                    return Err(bad());
                }
                clauses.push(ModeClause {
                    who,
                    op,
                    perms: perms.to_string(),
                });
                rest = &rest[end..];
                any = true;
            }
            if !any {
                return Err(bad());
            }
        }
        Ok(Chmod::Symbolic(clauses))
    }

    /// The mode a file with mode `current` (permission bits) gets;
    /// `is_dir` decides `X`.
    pub fn apply(&self, current: u32, is_dir: bool) -> u32 {
        let clauses = match self {
            Chmod::Octal(m) => return *m,
            Chmod::Symbolic(c) => c,
        };
        let mut mode = current & 0o7777;
        for c in clauses {
            let who = if c.who == 0 {
                WHO_U | WHO_G | WHO_O
            } else {
                c.who
            };
            let any_x = mode & 0o111 != 0;
            let mut bits = 0u32;
            for p in c.perms.chars() {
                for (class, shift) in [(WHO_U, 6), (WHO_G, 3), (WHO_O, 0)] {
                    if who & class == 0 {
                        continue;
                    }
                    bits |= match p {
                        'r' => 0o4 << shift,
                        'w' => 0o2 << shift,
                        'x' => 0o1 << shift,
                        'X' if is_dir || any_x => 0o1 << shift,
                        's' if class == WHO_U => 0o4000,
                        's' if class == WHO_G => 0o2000,
                        't' if class == WHO_O || c.who == 0 => 0o1000,
                        _ => 0,
                    };
                }
            }
            let mut mask = 0u32;
            for (class, m) in [(WHO_U, 0o4700), (WHO_G, 0o2070), (WHO_O, 0o1007)] {
                if who & class != 0 {
                    mask |= m;
                }
            }
            mode = match c.op {
                '+' => mode | bits,
                '-' => mode & !bits,
                _ => (mode & !mask) | bits,
            };
        }
        mode
    }

    /// The absolute mode, when the value was octal.
    pub fn octal(&self) -> Option<u32> {
        match self {
            Chmod::Octal(m) => Some(*m),
            Chmod::Symbolic(_) => None,
        }
    }
}

impl fmt::Display for Chmod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let clauses = match self {
            Chmod::Octal(m) => return write!(f, "{m:04o}"),
            Chmod::Symbolic(c) => c,
        };
        for (i, c) in clauses.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            let all = WHO_U | WHO_G | WHO_O;
            if c.who == all {
                f.write_str("a")?;
            }
            for (bit, letter) in [(WHO_U, 'u'), (WHO_G, 'g'), (WHO_O, 'o')] {
                if c.who != all && c.who & bit != 0 {
                    write!(f, "{letter}")?;
                }
            }
            write!(f, "{}{}", c.op, c.perms)?;
        }
        Ok(())
    }
}

impl Serialize for Chmod {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Chmod {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Chmod, D::Error> {
        let text = String::deserialize(d)?;
        Chmod::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octal() {
        assert_eq!(Chmod::parse("0755"), Ok(Chmod::Octal(0o755)));
        assert_eq!(Chmod::parse("644"), Ok(Chmod::Octal(0o644)));
        assert_eq!(Chmod::parse("7777"), Ok(Chmod::Octal(0o7777)));
        assert!(matches!(
            Chmod::parse("17777"),
            Err(ChmodError::TooLarge(_))
        ));
        assert_eq!(Chmod::parse(""), Err(ChmodError::Empty));
        assert!(Chmod::parse("0789").is_err());
    }

    #[test]
    fn symbolic() {
        let m = |s: &str| Chmod::parse(s).unwrap();
        assert_eq!(m("u+x").apply(0o644, false), 0o744);
        assert_eq!(m("go-w").apply(0o666, false), 0o644);
        assert_eq!(m("a=r").apply(0o777, false), 0o444);
        assert_eq!(m("+x").apply(0o600, false), 0o711);
        assert_eq!(m("u=rwX,go=rX").apply(0o600, false), 0o644);
        assert_eq!(m("u=rwX,go=rX").apply(0o600, true), 0o755);
        assert_eq!(m("u=rwX,go=rX").apply(0o700, false), 0o755);
        assert_eq!(m("u+s,g+s").apply(0o755, false), 0o6755);
        assert_eq!(m("+t").apply(0o777, true), 0o1777);
        assert_eq!(m("u+x-w").apply(0o644, false), 0o544);
        assert_eq!(m("o=").apply(0o777, false), 0o770);
        for text in ["0755", "u+x", "go-w", "u=rwX,go=rX", "+x", "a-w"] {
            assert_eq!(m(text).to_string(), text);
            assert_eq!(Chmod::parse(&m(text).to_string()), Ok(m(text)));
        }
        for bad in ["x+u", "u", "u+q", "u+x,", "ug", "=rw x"] {
            assert!(
                matches!(Chmod::parse(bad), Err(ChmodError::BadClause { .. })),
                "{bad}"
            );
        }
    }
}
