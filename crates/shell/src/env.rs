use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;

/// Where the lexer looks variables up.
///
/// `get` returns `None` for a variable that is not set and `Some("")` for one
/// that is set but empty; the `${v-w}` / `${v:-w}` family tells the two apart.
///
/// Lookups are exact (case-sensitive), as BuildKit does on a Linux build host.
/// BuildKit folds case only when the *builder* runs on Windows; a caller that
/// wants that behaviour implements `Env` over case-folded keys.
pub trait Env {
    /// The value of `name`, or `None` when it is not set.
    fn get(&self, name: &str) -> Option<String>;
}

impl<T: Env + ?Sized> Env for &T {
    fn get(&self, name: &str) -> Option<String> {
        (**self).get(name)
    }
}

impl Env for BTreeMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        BTreeMap::get(self, name).cloned()
    }
}

impl<S: BuildHasher> Env for HashMap<String, String, S> {
    fn get(&self, name: &str) -> Option<String> {
        HashMap::get(self, name).cloned()
    }
}

/// A list of `(name, value)` pairs in definition order: when a name occurs
/// more than once the **last** occurrence wins, like a process environment
/// built up by successive `ENV`/`ARG` instructions.
impl Env for [(String, String)] {
    fn get(&self, name: &str) -> Option<String> {
        self.iter()
            .rev()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
    }
}

/// Same as the slice: the last occurrence of a name wins.
impl Env for Vec<(String, String)> {
    fn get(&self, name: &str) -> Option<String> {
        Env::get(self.as_slice(), name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn slices_take_the_last_occurrence() {
        let env = pairs(&[("foo", "bar"), ("car", "hat"), ("car", "bike")]);
        assert_eq!(env.get("car").as_deref(), Some("bike"));
        assert_eq!(Env::get(env.as_slice(), "foo").as_deref(), Some("bar"));
        assert_eq!(env.get("nope"), None);
    }

    #[test]
    fn empty_is_set_but_missing_is_not() {
        let env = pairs(&[("empty", "")]);
        assert_eq!(env.get("empty").as_deref(), Some(""));
        assert_eq!(env.get("EMPTY"), None);
        let map: BTreeMap<String, String> = env.iter().cloned().collect();
        assert_eq!(Env::get(&map, "empty").as_deref(), Some(""));
        let hash: HashMap<String, String> = env.into_iter().collect();
        assert_eq!(Env::get(&hash, "empty").as_deref(), Some(""));
        assert_eq!(Env::get(&hash, "other"), None);
    }
}
