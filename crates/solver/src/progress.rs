//! Progress events. The solver reports what it does through a [`Progress`]
//! sink; the command line renders them (plain lines, a live view, or only
//! the digest). Vertex names follow BuildKit: `[linux/arm64 builder 3/5] COPY . .`.

use std::time::Duration;

/// One thing that happened.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A step (vertex) started.
    Start {
        /// Unique per build.
        id: u64,
        /// `[platform stage i/n] INSTRUCTION`.
        name: String,
    },
    /// A step's result came from the cache.
    Cached {
        /// The vertex.
        id: u64,
        /// Its name.
        name: String,
    },
    /// A step finished.
    Done {
        /// The vertex.
        id: u64,
        /// How long it took.
        elapsed: Duration,
    },
    /// A line of a step's output.
    Log {
        /// The vertex.
        id: u64,
        /// The line, without its newline.
        line: String,
    },
    /// A step failed (the build error follows separately).
    Failed {
        /// The vertex.
        id: u64,
        /// How long it ran.
        elapsed: Duration,
    },
    /// A note that belongs to no step (resolving images, pushing, exporting).
    Note(String),
}

/// Receives events; must be cheap and never block for long.
pub trait Progress: Send + Sync {
    /// Handle one event.
    fn event(&self, event: Event);
}

/// Discards everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct Silent;

impl Progress for Silent {
    fn event(&self, _: Event) {}
}

/// Collects events in memory (tests and `--metadata-file` timings).
#[derive(Debug, Default)]
pub struct Recorder(pub std::sync::Mutex<Vec<Event>>);

impl Progress for Recorder {
    fn event(&self, event: Event) {
        if let Ok(mut v) = self.0.lock() {
            v.push(event);
        }
    }
}

impl Recorder {
    /// A copy of what was recorded.
    pub fn events(&self) -> Vec<Event> {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }
}
