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
    let stdout = std::path::Path::new("standard output");
    let io = |action| crate::outputs::io(action, stdout);
    let mut file = tempfile::tempfile().map_err(io("stage the archive for"))?;
    {
        let mut w = std::io::BufWriter::new(&mut file);
        write(&mut w)?;
        w.flush().map_err(io("stage the archive for"))?;
    }
    file.rewind().map_err(io("stage the archive for"))?;
    let mut out = std::io::stdout().lock();
    std::io::copy(&mut file, &mut out).map_err(io("write"))?;
    out.flush().map_err(io("write"))
}
