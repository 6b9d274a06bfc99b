//! "did you mean ...?" suggestions by edit distance, as BuildKit words them.

/// Levenshtein distance over chars.
pub(crate) fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// The closest option within distance 2 (BuildKit keeps the first strictly
/// closer one), or `None` when `value` is itself an option or nothing is close.
/// Case-insensitive matching answers in the case of `value` when it is all
/// lower or all upper case.
pub(crate) fn suggest(value: &str, options: &[&str], case_sensitive: bool) -> Option<String> {
    let val = if case_sensitive {
        value.to_string()
    } else {
        value.to_lowercase()
    };
    let mut best: Option<String> = None;
    let mut min = 3;
    for opt in options {
        let o = if case_sensitive {
            opt.to_string()
        } else {
            opt.to_lowercase()
        };
        if o == val {
            return None;
        }
        let d = distance(&val, &o);
        if d < min {
            min = d;
            best = Some(if case_sensitive {
                o
            } else if value != value.to_lowercase() && value == value.to_uppercase() {
                o.to_uppercase()
            } else {
                o
            });
        }
    }
    best
}

/// `msg` with ` (did you mean X?)` appended when a suggestion exists.
pub(crate) fn wrap(msg: String, value: &str, options: &[&str], case_sensitive: bool) -> String {
    match suggest(value, options, case_sensitive) {
        Some(s) => format!("{msg} (did you mean {s}?)"),
        None => msg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances() {
        assert_eq!(distance("kitten", "sitting"), 3);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("copy", "copy"), 0);
    }

    #[test]
    fn suggestions_follow_case() {
        let opts = ["FROM", "COPY", "RUN"];
        assert_eq!(suggest("COPPY", &opts, false).as_deref(), Some("COPY"));
        assert_eq!(suggest("coppy", &opts, false).as_deref(), Some("copy"));
        assert_eq!(suggest("Coppy", &opts, false).as_deref(), Some("copy"));
        assert_eq!(suggest("XYZZY", &opts, false), None);
        assert_eq!(suggest("copy", &opts, false), None);
        assert_eq!(suggest("Bnd", &["bind"], true).as_deref(), Some("bind"));
        assert_eq!(suggest("tmp", &["bind"], true), None);
        assert_eq!(suggest("bnd", &["bind"], true).as_deref(), Some("bind"));
    }
}
