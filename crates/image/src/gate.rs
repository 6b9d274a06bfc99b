//! The commit gate of one build's outputs: every output takes its name
//! (the final rename of an export, a tag in the store) through
//! [`CommitGate::commit`], and cancelling the build closes the gate. Once
//! [`CommitGate::close`] has returned, no output can take its name, and it
//! reports the ones that already had: so what the build says about a
//! cancelled build ("nothing was written", or what was) stays true
//! whatever its export threads are doing.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::Error;

/// See the module documentation. Clones share one gate.
#[derive(Debug, Clone, Default)]
pub struct CommitGate(Arc<Mutex<State>>);

#[derive(Debug, Default)]
struct State {
    closed: bool,
    committed: Vec<String>,
}

impl CommitGate {
    /// An open gate.
    pub fn new() -> CommitGate {
        CommitGate::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A commit that panicked left the state as it was.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Run `rename`, which gives `what` its final name, unless the gate is
    /// closed (then [`Error::Cancelled`], and the caller removes what it
    /// staged). A rename that has begun ends before `close` returns.
    pub fn commit<T, E: From<Error>>(
        &self,
        what: &Path,
        rename: impl FnOnce() -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        let mut state = self.lock();
        if state.closed {
            return Err(Error::Cancelled {
                path: what.to_path_buf(),
            }
            .into());
        }
        let out = rename()?;
        state.committed.push(what.display().to_string());
        Ok(out)
    }

    /// Close the gate: from now on no commit happens. Returns what was
    /// committed before, in order.
    pub fn close(&self) -> Vec<String> {
        let mut state = self.lock();
        state.closed = true;
        state.committed.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_commits_after_close() {
        let gate = CommitGate::new();
        gate.commit(Path::new("a"), || Ok::<_, Error>(())).unwrap();
        assert_eq!(gate.clone().close(), ["a"]);
        let mut ran = false;
        let err = gate
            .commit(Path::new("b"), || {
                ran = true;
                Ok::<_, Error>(())
            })
            .unwrap_err();
        assert!(!ran);
        assert!(matches!(err, Error::Cancelled { .. }));
        assert_eq!(gate.close(), ["a"]);
    }
}
