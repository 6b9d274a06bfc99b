//! `-o -` for archives (oci, docker): the archive is written to an
//! unnamed temporary file first and copied to standard output only once it
//! is whole, so a failure half-way leaves standard output empty instead of
//! holding a truncated archive.

use crate::error::SolveError;
use std::io::{Seek, Write};

/// Runs `write` into a staging file, then copies the file to standard
/// output.
pub(crate) fn staged(
    write: impl FnOnce(&mut std::io::BufWriter<&mut std::fs::File>) -> Result<(), SolveError>,
) -> Result<(), SolveError> {
    let io =
        |what: &'static str| move |e: std::io::Error| SolveError::Image(format!("{what}: {e}"));
    let mut file = tempfile::tempfile().map_err(io("stage the archive for standard output"))?;
    {
        let mut w = std::io::BufWriter::new(&mut file);
        write(&mut w)?;
        w.flush()
            .map_err(io("stage the archive for standard output"))?;
    }
    file.rewind()
        .map_err(io("stage the archive for standard output"))?;
    let mut out = std::io::stdout().lock();
    std::io::copy(&mut file, &mut out).map_err(io("write standard output"))?;
    out.flush().map_err(io("write standard output"))
}
