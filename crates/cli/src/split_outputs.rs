//! File outputs (`-o type=oci|tar|local`, and `-o -`) of a build split over
//! several nodes. Each node streams back its own platforms' part, as it
//! would for a one-node build: an OCI layout tarball, or a tar of the
//! filesystem (one platform at its root, several in `linux_amd64/`-style
//! directories). This side keeps the parts as they arrive (the blobs in a
//! scratch content store, the tarballs as they came for `type=tar`, the
//! filesystems unpacked with the worker's one extractor in the output's
//! staging directory for `type=local`), and once every node has finished
//! writes the whole output through the same writers a local build uses: the
//! OCI layout of the merged index, one tarball merged from the nodes' ones
//! (`merge`: nothing unpacked, so no root needed), or one directory per
//! platform. A part of a node lost mid-build is dropped with it; its retry
//! streams a new one.

mod merge;

use crate::remote::{ChannelReader, WriterError, WriterThread};
use kbuild_image::tarball::TarOptions;
use kbuild_image::{ContentStore, Descriptor, Digest};
use kbuild_platform::Platform;
use kbuild_solver::options::{Output, OutputKind};
use kbuild_solver::outputs::FilesystemStage;
use kbuild_worker::snapshot::{ApplyOptions, ApplyReport};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Why a split build's file output could not be written.
#[derive(Debug, thiserror::Error)]
pub enum SplitOutputError {
    /// The scratch store or staging directory.
    #[error("-o type={kind},dest={dest}: {source}")]
    Stage {
        kind: &'static str,
        dest: String,
        source: Box<kbuild_solver::engine::SolveError>,
    },
    /// The blobs or the layout.
    #[error("-o type=oci,dest={dest}: {source}")]
    Layout {
        dest: String,
        source: kbuild_image::Error,
    },
    /// A node's part did not come.
    #[error("-o type={kind},dest={dest}: node {node} sent no output for {platforms}")]
    MissingPart {
        kind: &'static str,
        dest: String,
        node: String,
        platforms: String,
    },
    /// The nodes' tarballs could not be merged into one.
    #[error("-o type=tar,dest={dest}: {source}")]
    Tar {
        dest: String,
        source: kbuild_image::Error,
    },
    /// A part could not be moved into the output's tree.
    #[error("-o type={kind},dest={dest}: move {path}: {source}")]
    Move {
        kind: &'static str,
        dest: String,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Why a node's part of a file output could not be received; the text
/// goes back to the node's daemon as the answer to its result.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// The daemon named an output that is not collected here.
    #[error("the builder sent output {output}, which is not a file output")]
    NotAFileOutput {
        /// The output's index.
        output: u32,
    },
    /// The writer thread of a part failed.
    #[error(transparent)]
    Writer(#[from] WriterError),
    /// The part's directory in a `type=local` stage.
    #[error("{0}")]
    Scratch(#[source] kbuild_solver::engine::SolveError),
    /// A node's filesystem tar could not be unpacked.
    #[error("{}: {source}", dir.display())]
    Unpack {
        /// Where it was being unpacked.
        dir: PathBuf,
        /// Why.
        #[source]
        source: kbuild_worker::snapshot::Error,
    },
    /// A node's filesystem tarball could not be kept.
    #[error("{}: {source}", file.display())]
    Tarball {
        /// The file it goes to.
        file: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A node's OCI layout tarball could not be read.
    #[error("read the layout: {0}")]
    Layout(#[source] std::io::Error),
    /// A blob of a node's OCI layout could not be kept.
    #[error("layout entry {path}: {source}")]
    Blob {
        /// The entry's path in the layout.
        path: String,
        /// Why: a name that is no digest, or a blob that is not its digest.
        #[source]
        source: kbuild_image::Error,
    },
    /// A blob of a node's OCI layout broke off.
    #[error("layout entry {path}: {source}")]
    BlobRead {
        /// The entry's path in the layout.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The scratch store refused a new blob.
    #[error("{0}")]
    Store(#[source] kbuild_image::Error),
}

/// The image an OCI output holds.
pub(crate) enum Root<'a> {
    /// The index merged here from the nodes' manifests.
    Merged {
        /// Its bytes.
        index: &'a [u8],
        /// Its media type.
        media_type: &'a str,
    },
    /// The root one node built (its blob is among those it streamed).
    Streamed(Box<Descriptor>),
}

/// Where one file output collects the nodes' parts.
enum Stage {
    /// A scratch store beside the destination (removed with it).
    Oci {
        _dir: tempfile::TempDir,
        store: Arc<ContentStore>,
    },
    /// `type=tar`: a scratch directory beside the destination holding
    /// each node's tarball (`part-<part>-<output>.tar`).
    Tar(tempfile::TempDir),
    /// `type=local`: the output's staging tree.
    Files(FilesystemStage),
}

/// One part being received.
type Sink = WriterThread<Result<ApplyReport, ReceiveError>>;

/// The file outputs of one split build.
pub(crate) struct SplitOutputs {
    outputs: Vec<Output>,
    stages: Mutex<HashMap<u32, Stage>>,
    sinks: Mutex<HashMap<(usize, u32), Sink>>,
    /// Parts received whole, with what the extractor left out.
    received: Mutex<HashMap<(usize, u32), ApplyReport>>,
    tar: TarOptions,
}

fn dest_of(o: &Output) -> PathBuf {
    o.dest.clone().unwrap_or_else(|| PathBuf::from("-"))
}

/// Node `part`'s tarball of output `output` in a `type=tar` stage.
fn part_tar(dir: &Path, part: usize, output: u32) -> PathBuf {
    dir.join(format!("part-{part}-{output}.tar"))
}

/// A scratch directory beside `dest` (in the temporary directory for
/// standard output), removed when dropped.
fn scratch_beside(dest: &Path) -> Result<tempfile::TempDir, kbuild_image::Error> {
    let parent = kbuild_solver::outputs::staging_parent(dest);
    std::fs::create_dir_all(&parent).map_err(io_err("create", &parent))?;
    tempfile::Builder::new()
        .prefix(".kubectl-build-parts-")
        .tempdir_in(&parent)
        .map_err(io_err("create a staging directory in", &parent))
}

impl Stage {
    /// Where output `o`'s parts go; `None` when it is no file output.
    fn for_output(o: &Output) -> Result<Option<Stage>, SplitOutputError> {
        let dest = dest_of(o);
        let shown = || dest.display().to_string();
        Ok(Some(match o.kind {
            OutputKind::Oci => {
                let layout_err = |source| SplitOutputError::Layout {
                    dest: shown(),
                    source,
                };
                let dir = scratch_beside(&dest).map_err(layout_err)?;
                let store = ContentStore::open(dir.path().join("store")).map_err(layout_err)?;
                Stage::Oci {
                    _dir: dir,
                    store: Arc::new(store),
                }
            }
            OutputKind::Tar => {
                Stage::Tar(
                    scratch_beside(&dest).map_err(|source| SplitOutputError::Tar {
                        dest: shown(),
                        source,
                    })?,
                )
            }
            OutputKind::Local => Stage::Files(FilesystemStage::new(&dest).map_err(|source| {
                SplitOutputError::Stage {
                    kind: o.kind.name(),
                    dest: shown(),
                    source: Box::new(source),
                }
            })?),
            _ => return Ok(None),
        }))
    }
}

impl SplitOutputs {
    /// Prepares a staging place for each file output of `outputs` (the
    /// others run on the nodes). `None` when there is none.
    pub(crate) fn new(
        outputs: &[Output],
        source_date_epoch: Option<i64>,
    ) -> Result<Option<SplitOutputs>, SplitOutputError> {
        SplitOutputs::for_outputs(outputs, source_date_epoch, |_| true)
    }

    /// [`SplitOutputs::new`] for the file outputs `wanted` accepts only.
    pub(crate) fn for_outputs(
        outputs: &[Output],
        source_date_epoch: Option<i64>,
        wanted: impl Fn(&Output) -> bool,
    ) -> Result<Option<SplitOutputs>, SplitOutputError> {
        let mut stages = HashMap::new();
        for (i, o) in outputs.iter().enumerate().filter(|(_, o)| wanted(o)) {
            if let Some(stage) = Stage::for_output(o)? {
                stages.insert(i as u32, stage);
            }
        }
        if stages.is_empty() {
            return Ok(None);
        }
        Ok(Some(SplitOutputs {
            outputs: outputs.to_vec(),
            stages: Mutex::new(stages),
            sinks: Mutex::new(HashMap::new()),
            received: Mutex::new(HashMap::new()),
            tar: TarOptions {
                source_date_epoch: source_date_epoch.and_then(|e| u64::try_from(e).ok()),
            },
        }))
    }

    /// Whether output `output` is collected here.
    pub(crate) fn has(&self, output: u32) -> bool {
        self.stages
            .lock()
            .map(|s| s.contains_key(&output))
            .unwrap_or(false)
    }

    /// A piece of output `output` of part `part` (one node's session).
    pub(crate) fn chunk(
        &self,
        part: usize,
        output: u32,
        data: Vec<u8>,
        last: bool,
    ) -> Result<(), ReceiveError> {
        let mut sinks = self.sinks.lock().map_err(|_| WriterError::Poisoned)?;
        if let std::collections::hash_map::Entry::Vacant(slot) = sinks.entry((part, output)) {
            let stages = self.stages.lock().map_err(|_| WriterError::Poisoned)?;
            let stage = stages
                .get(&output)
                .ok_or(ReceiveError::NotAFileOutput { output })?;
            slot.insert(self.open(stage, part, output)?);
        }
        sinks
            .get(&(part, output))
            .ok_or(WriterError::Missing)?
            .send(data)?;
        if last {
            let sink = sinks.remove(&(part, output)).ok_or(WriterError::Missing)?;
            let report = sink.finish()??;
            self.received
                .lock()
                .map_err(|_| WriterError::Poisoned)?
                .insert((part, output), report);
        }
        Ok(())
    }

    fn open(&self, stage: &Stage, part: usize, output: u32) -> Result<Sink, ReceiveError> {
        Ok(match stage {
            Stage::Oci { store, .. } => {
                let store = store.clone();
                WriterThread::spawn(move |reader| {
                    receive_blobs(&store, reader).map(|()| Default::default())
                })
            }
            Stage::Tar(dir) => {
                let file = part_tar(dir.path(), part, output);
                WriterThread::spawn(move |reader| {
                    receive_tar(&file, reader).map(|()| Default::default())
                })
            }
            Stage::Files(s) => {
                let dir = s
                    .scratch(&format!("part-{part}-{output}"))
                    .map_err(ReceiveError::Scratch)?;
                let o = &self.outputs[output as usize];
                // Only what a local build's directory keeps.
                let apply = ApplyOptions {
                    preserve_special: o.preserve_special,
                };
                WriterThread::spawn(move |reader| {
                    kbuild_worker::snapshot::apply_layer_to_dir_with(&dir, reader, apply)
                        .map_err(|source| ReceiveError::Unpack { dir, source })
                })
            }
        })
    }

    /// Writes every file output from the finished parts: `parts` are
    /// (part, node name, platforms), `index` the merged index (bytes and
    /// media type). Returns notes (what a directory left out) and the
    /// files written.
    pub(crate) fn finish(
        &self,
        parts: &[(usize, String, Vec<Platform>)],
        root: &Root<'_>,
    ) -> Result<(Vec<String>, Vec<PathBuf>), SplitOutputError> {
        // Parts still open belong to lost nodes: their threads end here.
        if let Ok(mut s) = self.sinks.lock() {
            s.clear();
        }
        let received = self
            .received
            .lock()
            .map(|mut r| std::mem::take(&mut *r))
            .unwrap_or_default();
        let mut notes = Vec::new();
        let mut written = Vec::new();
        let mut stages: Vec<(u32, Stage)> = self
            .stages
            .lock()
            .map(|mut s| std::mem::take(&mut *s))
            .unwrap_or_default()
            .into_iter()
            .collect();
        stages.sort_by_key(|(i, _)| *i);
        for (i, stage) in stages {
            let o = &self.outputs[i as usize];
            let report = received_report(o, i, parts, &received)?;
            self.write_output(o, i, stage, parts, root)?;
            if o.kind == OutputKind::Local {
                notes.extend(left_out_notes(&dest_of(o), &report));
            }
            let dest = dest_of(o);
            if dest != Path::new("-") {
                written.push(dest);
            }
        }
        Ok((notes, written))
    }

    /// Writes output `o` (number `i`) from its stage.
    fn write_output(
        &self,
        o: &Output,
        i: u32,
        stage: Stage,
        parts: &[(usize, String, Vec<Platform>)],
        root: &Root<'_>,
    ) -> Result<(), SplitOutputError> {
        let dest = dest_of(o);
        let shown = dest.display().to_string();
        match stage {
            Stage::Oci { _dir, store } => {
                let root = match root {
                    Root::Merged { index, media_type } => {
                        let (digest, size) =
                            store
                                .put_bytes(index)
                                .map_err(|source| SplitOutputError::Layout {
                                    dest: shown.clone(),
                                    source,
                                })?;
                        Descriptor::new(media_type.to_string(), digest, size)
                    }
                    // Its blob came with the node's layout.
                    Root::Streamed(d) => (**d).clone(),
                };
                let ref_name = o.names.first().map(|n| kbuild_solver::outputs::tag_of(n));
                write_layout(
                    &store,
                    &root,
                    o,
                    &dest,
                    ref_name.as_deref(),
                    &self.tar,
                    &shown,
                )?;
                drop(_dir);
                Ok(())
            }
            Stage::Tar(dir) => write_merged_tar(dir.path(), i, parts, &dest, self.tar),
            Stage::Files(s) => {
                move_parts(&s, i, parts).map_err(|(path, source)| SplitOutputError::Move {
                    kind: o.kind.name(),
                    dest: shown.clone(),
                    path,
                    source,
                })?;
                s.finish(false, self.tar, &kbuild_image::CommitGate::new())
                    .map_err(|source| SplitOutputError::Stage {
                        kind: o.kind.name(),
                        dest: shown,
                        source: Box::new(source),
                    })
            }
        }
    }
}

/// What the extractor left out of output `o` (number `i`) over all parts;
/// an error naming the node whose part did not come.
fn received_report(
    o: &Output,
    i: u32,
    parts: &[(usize, String, Vec<Platform>)],
    received: &HashMap<(usize, u32), ApplyReport>,
) -> Result<ApplyReport, SplitOutputError> {
    let mut report = ApplyReport::default();
    for (part, node, platforms) in parts {
        let Some(r) = received.get(&(*part, i)) else {
            return Err(SplitOutputError::MissingPart {
                kind: o.kind.name(),
                dest: dest_of(o).display().to_string(),
                node: node.clone(),
                platforms: platforms
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        };
        report.devices_skipped += r.devices_skipped;
        report.privileges_dropped += r.privileges_dropped;
    }
    Ok(report)
}

/// The notes of a `type=local` output at `dest` about what it left out.
fn left_out_notes(dest: &Path, report: &ApplyReport) -> Vec<String> {
    let shown = dest.display();
    let mut notes = Vec::new();
    if report.devices_skipped > 0 {
        notes.push(format!("{shown}: left out {} device node(s); add preserve-special=true to -o type=local to create them", report.devices_skipped));
    }
    if report.privileges_dropped > 0 {
        notes.push(format!("{shown}: cleared setuid/setgid bits or capabilities of {} file(s); add preserve-special=true to -o type=local to keep them", report.privileges_dropped));
    }
    notes
}

/// Moves each part's unpacked platforms into the stage's tree, one
/// directory per platform; the failed rename's source on error.
fn move_parts(
    s: &FilesystemStage,
    i: u32,
    parts: &[(usize, String, Vec<Platform>)],
) -> Result<(), (PathBuf, std::io::Error)> {
    use kbuild_solver::outputs::platform_dir;
    for (part, _, platforms) in parts {
        let Some(from) = s
            .tree()
            .parent()
            .map(|p| p.join(format!("part-{part}-{i}")))
        else {
            continue;
        };
        let moves: Vec<(PathBuf, PathBuf)> = if let [one] = platforms.as_slice() {
            vec![(from.clone(), s.tree().join(platform_dir(one)))]
        } else {
            platforms
                .iter()
                .map(|p| (from.join(platform_dir(p)), s.tree().join(platform_dir(p))))
                .collect()
        };
        for (a, b) in moves {
            std::fs::rename(&a, &b).map_err(|source| (a.clone(), source))?;
        }
    }
    Ok(())
}

/// Merges the nodes' tarballs of output `i` (kept in `dir`) into `dest`,
/// written whole or not at all (standard output: nothing before the end).
fn write_merged_tar(
    dir: &Path,
    i: u32,
    parts: &[(usize, String, Vec<Platform>)],
    dest: &Path,
    tar: TarOptions,
) -> Result<(), SplitOutputError> {
    let inputs: Vec<(PathBuf, &[Platform])> = parts
        .iter()
        .map(|(part, _, platforms)| (part_tar(dir, *part, i), platforms.as_slice()))
        .collect();
    let shown = || dest.display().to_string();
    if dest == Path::new("-") {
        return kbuild_solver::outputs::staged_stdout(|w| {
            merge::merge_parts(&inputs, tar, w)?;
            Ok(())
        })
        .map_err(|source| SplitOutputError::Stage {
            kind: "tar",
            dest: shown(),
            source: Box::new(source),
        });
    }
    kbuild_image::write_atomic_with(dest, |w| merge::merge_parts(&inputs, tar, w)).map_err(
        |source| SplitOutputError::Tar {
            dest: shown(),
            source,
        },
    )
}

/// Keeps a node's filesystem tarball as it comes, in `file`.
fn receive_tar(file: &Path, mut reader: ChannelReader) -> Result<(), ReceiveError> {
    let kept = |source| ReceiveError::Tarball {
        file: file.to_path_buf(),
        source,
    };
    let mut f = std::fs::File::create(file).map_err(kept)?;
    std::io::copy(&mut reader, &mut f).map_err(kept)?;
    Ok(())
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> kbuild_image::Error {
    let path = path.to_path_buf();
    move |source| kbuild_image::Error::Io {
        action,
        path,
        source,
    }
}

fn write_layout(
    store: &ContentStore,
    root: &Descriptor,
    o: &Output,
    dest: &Path,
    ref_name: Option<&str>,
    tar: &TarOptions,
    shown: &str,
) -> Result<(), SplitOutputError> {
    if dest == Path::new("-") {
        // Whole before standard output sees a byte, as a one-node build's.
        return kbuild_solver::outputs::staged_stdout(|w| {
            kbuild_image::export::oci_layout_tar(store, root, w, ref_name, tar)?;
            Ok(())
        })
        .map_err(|source| SplitOutputError::Stage {
            kind: "oci",
            dest: shown.to_string(),
            source: Box::new(source),
        });
    }
    if o.as_directory {
        kbuild_image::export::oci_layout_dir(store, root, dest, ref_name)
    } else {
        kbuild_image::export::oci_layout_tar_file(store, root, dest, ref_name, tar)
    }
    .map_err(|source| SplitOutputError::Layout {
        dest: shown.to_string(),
        source,
    })
}

/// Reads a node's OCI layout tarball and keeps its blobs (each checked
/// against its name); its `index.json` is the node's own and is dropped.
fn receive_blobs(store: &ContentStore, reader: ChannelReader) -> Result<(), ReceiveError> {
    let mut archive = tar::Archive::new(reader);
    let entries = archive.entries().map_err(ReceiveError::Layout)?;
    for entry in entries {
        let mut entry = entry.map_err(ReceiveError::Layout)?;
        let path = entry
            .path()
            .map_err(ReceiveError::Layout)?
            .to_string_lossy()
            .into_owned();
        let Some(hex) = path.strip_prefix("blobs/sha256/") else {
            continue;
        };
        if hex.is_empty() {
            continue;
        }
        let blob = |source| ReceiveError::Blob {
            path: path.clone(),
            source,
        };
        let digest = Digest::parse(&format!("sha256:{hex}")).map_err(blob)?;
        if store.has(&digest) {
            continue;
        }
        let mut w = store.writer().map_err(ReceiveError::Store)?;
        std::io::copy(&mut entry, &mut w).map_err(|source| ReceiveError::BlobRead {
            path: path.clone(),
            source,
        })?;
        w.commit(Some(&digest)).map_err(blob)?;
    }
    Ok(())
}
