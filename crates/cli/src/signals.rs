//! Stop signals: SIGINT (Ctrl-C) and SIGTERM (what `kill`, systemd and
//! Kubernetes send) both mean "stop cleanly": cancel the work, clean up, and
//! exit non-zero. A command (a build today, a `serve` daemon later) installs
//! [`StopSignals`] before it starts work and races its work against
//! [`StopSignals::recv`].

use std::fmt;
use std::io;

use tokio::signal::unix::{signal, Signal, SignalKind};

/// Which stop signal arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSignal {
    /// SIGINT.
    Interrupt,
    /// SIGTERM.
    Terminate,
}

impl fmt::Display for StopSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StopSignal::Interrupt => "SIGINT",
            StopSignal::Terminate => "SIGTERM",
        })
    }
}

/// The installed handlers for SIGINT and SIGTERM. From [`StopSignals::install`]
/// on, neither signal kills the process; each is reported by
/// [`StopSignals::recv`] (one that arrives before `recv` is polled is kept).
pub struct StopSignals {
    interrupt: Signal,
    terminate: Signal,
}

impl StopSignals {
    /// Installs both handlers. Must run inside a Tokio runtime (with its
    /// I/O driver), e.g. under `Runtime::enter`.
    pub fn install() -> io::Result<StopSignals> {
        Ok(StopSignals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    /// Waits for the next stop signal.
    pub async fn recv(&mut self) -> StopSignal {
        tokio::select! {
            Some(()) = self.interrupt.recv() => StopSignal::Interrupt,
            Some(()) = self.terminate.recv() => StopSignal::Terminate,
            // The streams end only when the runtime shuts down: no signal came.
            else => std::future::pending().await,
        }
    }
}
