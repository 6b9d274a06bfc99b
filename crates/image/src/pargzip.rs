//! gzip on every core, giving one standard gzip member whose bytes do not
//! depend on the number of threads.
//!
//! The uncompressed stream is cut into blocks of [`BLOCK_SIZE`] at fixed
//! offsets. Each block is deflated on its own, primed with the last 32 KiB
//! of the block before it as a preset dictionary (so matches still reach
//! back across the cut, as pigz does), and ends with a sync flush (the last
//! one with the final block), so the compressed blocks concatenate into
//! one deflate stream. The CRC-32 and size of the whole input close the
//! member. Blocks are compressed by worker threads, each block by a new
//! compressor, and written in order; each worker also takes its block's
//! CRC-32, and the writer combines them in order, so the thread that feeds
//! the stream only copies it into blocks. At most [`IN_FLIGHT_PER_THREAD`]
//! blocks per thread are in flight, so memory stays bounded.
//!
//! Block boundaries depend only on the input offsets (never on `flush` or
//! on timing), and each block's output depends only on its bytes, its
//! dictionary and the level: the result is the same for 1 or 64 threads.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Uncompressed bytes per independently compressed block (pigz's default).
pub const BLOCK_SIZE: usize = 128 * 1024;

/// The window deflate can reach back; the dictionary of each block.
const DICTIONARY: usize = 32 * 1024;

/// Blocks queued or being compressed per worker thread: enough that the
/// feeding thread runs ahead of the workers instead of in step with them,
/// and that the workers still have blocks to compress when the threads
/// feeding them are off the cores for a few milliseconds (each block holds
/// about 200 KiB: its input, dictionary and output). With 2 cores, 8
/// instead of 4 took the cold 1 GiB COPY's CPU/wall from 1.71–1.73 to
/// 1.73–1.76 (1 MB more at the peak).
const IN_FLIGHT_PER_THREAD: usize = 8;

/// gzip header: magic, deflate, no flags, mtime 0, no extra flags, OS
/// unknown (what flate2's `GzBuilder` writes, so layers stay reproducible).
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];

struct Job {
    index: u64,
    dictionary: Vec<u8>,
    data: Vec<u8>,
    last: bool,
}

/// A compressed block: its deflate bytes and the CRC-32 of its input.
struct Deflated {
    bytes: Vec<u8>,
    crc: flate2::Crc,
}

type Outcome = (u64, io::Result<Deflated>);

/// A [`Write`] that gzips into `W` on `threads` worker threads; call
/// [`ParallelGzip::finish`] to end the member and get `W` back.
pub struct ParallelGzip<W: Write> {
    sink: Option<W>,
    level: u32,
    block: Vec<u8>,
    dictionary: Vec<u8>,
    /// The CRC-32 of the blocks written so far.
    crc: flate2::Crc,
    jobs: Option<Sender<Job>>,
    results: Receiver<Outcome>,
    workers: Vec<JoinHandle<()>>,
    next_index: u64,
    next_to_write: u64,
    done: BTreeMap<u64, Deflated>,
    in_flight: usize,
    max_in_flight: usize,
    wrote_header: bool,
}

/// Deflates one block with a new compressor. A compressor reused after
/// `reset` is not the same: zlib-rs carries state across the reset, so a
/// block's bytes would depend on which block the worker compressed before
/// (layer digests then changed from run to run).
fn deflate_block(level: u32, job: &Job) -> io::Result<Deflated> {
    let mut c = flate2::Compress::new(flate2::Compression::new(level), false);
    if !job.dictionary.is_empty() {
        c.set_dictionary(&job.dictionary)
            .map_err(|e| io::Error::other(format!("set the deflate dictionary: {e}")))?;
    }
    let flush = if job.last {
        flate2::FlushCompress::Finish
    } else {
        flate2::FlushCompress::Sync
    };
    let mut out = Vec::with_capacity(job.data.len() / 2 + 1024);
    let mut input = &job.data[..];
    loop {
        if out.capacity() - out.len() < 1024 {
            out.reserve(out.capacity().max(64 * 1024));
        }
        let before_in = c.total_in();
        let status = c
            .compress_vec(input, &mut out, flush)
            .map_err(|e| io::Error::other(format!("deflate a block: {e}")))?;
        let used = (c.total_in() - before_in) as usize;
        input = &input[used..];
        match status {
            flate2::Status::StreamEnd => break,
            // A sync flush is complete once all input is in and the
            // compressor stopped short of filling the buffer.
            _ if !job.last && input.is_empty() && out.len() < out.capacity() => break,
            _ => {}
        }
    }
    let mut crc = flate2::Crc::new();
    crc.update(&job.data);
    Ok(Deflated { bytes: out, crc })
}

/// One worker thread: deflates jobs until the job channel closes.
fn work(level: u32, jobs: &Mutex<Receiver<Job>>, results: &SyncSender<Outcome>) {
    loop {
        let job = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else { return };
        let out = deflate_block(level, &job);
        if results.send((job.index, out)).is_err() {
            return;
        }
    }
}

impl<W: Write> ParallelGzip<W> {
    /// A gzip member at `level` (0-9) into `sink`, on `threads` threads
    /// (at least one).
    pub fn new(sink: W, level: u32, threads: usize) -> ParallelGzip<W> {
        let threads = threads.max(1);
        let level = level.min(9);
        let (job_tx, job_rx) = mpsc::channel::<Job>();
        let job_rx = Arc::new(Mutex::new(job_rx));
        let max_in_flight = threads * IN_FLIGHT_PER_THREAD;
        let (result_tx, results) = mpsc::sync_channel::<Outcome>(max_in_flight);
        // Named for per-thread profiles. A worker that cannot be started
        // leaves the blocks to the others; with none, the first block
        // fails ("the gzip workers stopped").
        let workers = (0..threads)
            .map_while(|_| {
                let job_rx = Arc::clone(&job_rx);
                let result_tx: SyncSender<Outcome> = result_tx.clone();
                std::thread::Builder::new()
                    .name("gzip".into())
                    .spawn(move || work(level, &job_rx, &result_tx))
                    .ok()
            })
            .collect();
        ParallelGzip {
            sink: Some(sink),
            level,
            block: Vec::with_capacity(BLOCK_SIZE),
            dictionary: Vec::new(),
            crc: flate2::Crc::new(),
            jobs: Some(job_tx),
            results,
            workers,
            next_index: 0,
            next_to_write: 0,
            done: BTreeMap::new(),
            in_flight: 0,
            max_in_flight,
            wrote_header: false,
        }
    }

    fn sink(&mut self) -> io::Result<&mut W> {
        self.sink
            .as_mut()
            .ok_or_else(|| io::Error::other("the gzip stream is already finished"))
    }

    fn submit(&mut self, last: bool) -> io::Result<()> {
        let data = std::mem::replace(&mut self.block, Vec::with_capacity(BLOCK_SIZE));
        let tail = data.len().saturating_sub(DICTIONARY);
        let dictionary = std::mem::replace(&mut self.dictionary, data[tail..].to_vec());
        let job = Job {
            index: self.next_index,
            dictionary,
            data,
            last,
        };
        self.next_index += 1;
        while self.in_flight >= self.max_in_flight {
            self.collect_one()?;
        }
        self.jobs
            .as_ref()
            .ok_or_else(|| io::Error::other("the gzip workers are gone"))?
            .send(job)
            .map_err(|_| io::Error::other("the gzip workers stopped"))?;
        self.in_flight += 1;
        Ok(())
    }

    /// Waits for one block and writes every block that is now next in order.
    fn collect_one(&mut self) -> io::Result<()> {
        let (index, out) = self
            .results
            .recv()
            .map_err(|_| io::Error::other("a gzip worker stopped"))?;
        self.in_flight -= 1;
        self.done.insert(index, out?);
        self.write_ready()
    }

    /// Writes every compressed block that is next in order.
    fn write_ready(&mut self) -> io::Result<()> {
        while let Some(block) = self.done.remove(&self.next_to_write) {
            self.sink()?.write_all(&block.bytes)?;
            self.crc.combine(&block.crc);
            self.next_to_write += 1;
        }
        Ok(())
    }

    fn header(&mut self) -> io::Result<()> {
        if !self.wrote_header {
            self.sink()?.write_all(&HEADER)?;
            self.wrote_header = true;
        }
        Ok(())
    }

    /// Compresses what is left, writes the trailer and returns the sink.
    pub fn finish(mut self) -> io::Result<W> {
        self.header()?;
        self.submit(true)?;
        while self.in_flight > 0 {
            self.collect_one()?;
        }
        let (crc, size) = (self.crc.sum(), self.crc.amount());
        let mut sink = self
            .sink
            .take()
            .ok_or_else(|| io::Error::other("the gzip stream is already finished"))?;
        sink.write_all(&crc.to_le_bytes())?;
        sink.write_all(&size.to_le_bytes())?;
        Ok(sink)
    }

    /// The compression level.
    pub fn level(&self) -> u32 {
        self.level
    }
}

impl<W: Write> Write for ParallelGzip<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.header()?;
        let room = BLOCK_SIZE - self.block.len();
        let n = room.min(buf.len());
        self.block.extend_from_slice(&buf[..n]);
        if self.block.len() == BLOCK_SIZE {
            self.submit(false)?;
        }
        Ok(n)
    }

    /// Writes out the blocks already compressed; never cuts a block early
    /// (that would make the bytes depend on when callers flush).
    fn flush(&mut self) -> io::Result<()> {
        self.write_ready()?;
        match self.sink.as_mut() {
            Some(s) => s.flush(),
            None => Ok(()),
        }
    }
}

impl<W: Write> Drop for ParallelGzip<W> {
    fn drop(&mut self) {
        // Closing the job channel ends the workers; results still queued
        // are dropped with the receiver.
        self.jobs.take();
        while self.in_flight > 0 && self.results.recv().is_ok() {
            self.in_flight -= 1;
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// Compressible but not trivial: text-like with some noise.
    fn sample(len: usize) -> Vec<u8> {
        let mut x: u32 = 12345;
        (0..len)
            .map(|i| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                if i % 7 == 0 {
                    (x >> 24) as u8
                } else {
                    b"the quick brown fox jumps over the lazy dog "[i % 44]
                }
            })
            .collect()
    }

    fn gzip(data: &[u8], threads: usize, chunk: usize) -> Vec<u8> {
        let mut g = ParallelGzip::new(Vec::new(), 6, threads);
        for c in data.chunks(chunk.max(1)) {
            g.write_all(c).unwrap();
            g.flush().unwrap();
        }
        g.finish().unwrap()
    }

    #[test]
    fn output_is_the_same_for_any_thread_count_and_write_pattern() {
        for len in [
            0,
            1,
            BLOCK_SIZE - 1,
            BLOCK_SIZE,
            BLOCK_SIZE + 1,
            5 * BLOCK_SIZE + 333,
        ] {
            let data = sample(len);
            let one = gzip(&data, 1, 65536);
            for (threads, chunk) in [(2, 1000), (8, 7), (3, BLOCK_SIZE)] {
                assert_eq!(
                    gzip(&data, threads, chunk),
                    one,
                    "len {len}, {threads} threads"
                );
            }
            let mut back = Vec::new();
            flate2::read::GzDecoder::new(&one[..])
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(back, data, "len {len}");
        }
    }

    /// Machine code (this test binary) rather than text: the data on which
    /// a compressor reused across blocks gave other bytes run to run.
    #[test]
    fn binary_data_gives_the_same_bytes_on_any_thread_count_every_time() {
        let exe = std::env::current_exe().unwrap();
        let mut data = std::fs::read(exe).unwrap();
        data.truncate(8 * 1024 * 1024);
        assert!(data.len() > 16 * BLOCK_SIZE, "{} bytes", data.len());
        let one = gzip(&data, 1, 100_000);
        for run in 0..4 {
            for threads in [2, 8] {
                assert!(
                    gzip(&data, threads, 100_000) == one,
                    "run {run}, {threads} threads: other bytes than one thread"
                );
            }
        }
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&one[..])
            .read_to_end(&mut back)
            .unwrap();
        assert!(back == data);
    }

    #[test]
    fn size_is_close_to_single_stream_gzip() {
        let data = sample(4 * 1024 * 1024);
        let ours = gzip(&data, 2, 65536).len() as f64;
        let mut reference = flate2::GzBuilder::new().write(Vec::new(), flate2::Compression::new(6));
        reference.write_all(&data).unwrap();
        let reference = reference.finish().unwrap().len() as f64;
        assert!(ours <= reference * 1.01, "{ours} vs {reference}");
    }
}
