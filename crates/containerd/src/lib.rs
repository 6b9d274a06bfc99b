//! Loading a built image into containerd through its gRPC API, so a node's
//! CRI (Kubernetes) or `ctr` runs it without a registry.
//!
//! What [`load`] does, in the order containerd's own Go client does it:
//!
//! 1. takes a lease (`containerd-lease` header), so nothing it writes is
//!    collected before the image names it;
//! 2. writes every blob of the image (index, manifests, configs, layers)
//!    through the Content service with its expected digest, labelled so
//!    containerd's garbage collector keeps children with their parent
//!    (`containerd.io/gc.ref.content.*`) and each layer with its
//!    uncompressed digest (`containerd.io/uncompressed`); blobs containerd
//!    holds already only get the labels;
//! 3. unpacks the platforms asked for (by default the machine's own):
//!    for each layer a snapshot prepared on the previous layer's chain ID,
//!    the layer applied by the Diff service, the snapshot committed under
//!    its chain ID; the config then names the top snapshot
//!    (`containerd.io/gc.ref.snapshot.SNAPSHOTTER`), as CRI expects of an
//!    unpacked image;
//! 4. creates (or updates) one image record per name, normalized as CRI
//!    looks names up (`docker.io/library/app:1`);
//! 5. drops the lease.
//!
//! containerd 1.6 has no Transfer service, so the unpack happens here.

#![deny(missing_docs)]

use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::{
    ApplyRequest, CreateImageRequest, CreateRequest as CreateLease, DeleteRequest as DeleteLease,
    Image, Info, InfoRequest, UpdateImageRequest, UpdateRequest, WriteAction, WriteContentRequest,
};
use containerd_client::types::{Descriptor as CtrDescriptor, Mount};
use containerd_client::Client;
use kbuild_image::{ContentStore, Descriptor, Digest, ImageConfig, Index, Manifest};
use kbuild_platform::Platform;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use tokio::io::AsyncReadExt;
use tonic::{Code, Request, Status};

/// Where containerd listens on a standard installation.
pub const DEFAULT_ADDRESS: &str = "/run/containerd/containerd.sock";
/// The namespace Kubernetes' CRI uses.
pub const DEFAULT_NAMESPACE: &str = "k8s.io";
/// The snapshotter CRI uses by default.
pub const DEFAULT_SNAPSHOTTER: &str = "overlayfs";

/// Label on a layer blob: its uncompressed digest (the config's diff ID).
pub const LABEL_UNCOMPRESSED: &str = "containerd.io/uncompressed";
/// Prefix of the labels that make the garbage collector keep a blob's
/// children.
pub const LABEL_GC_CONTENT: &str = "containerd.io/gc.ref.content";
/// Prefix of the label on a config naming its unpacked top snapshot.
pub const LABEL_GC_SNAPSHOT: &str = "containerd.io/gc.ref.snapshot";

const CHUNK: usize = 1 << 20;

/// Which containerd, and how the image goes in.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Target {
    /// containerd's gRPC socket.
    pub address: PathBuf,
    /// The containerd namespace (`k8s.io` for Kubernetes).
    pub namespace: String,
    /// The snapshotter the image is unpacked with.
    pub snapshotter: String,
    /// The platforms to unpack; empty means this machine's own.
    pub unpack: Vec<Platform>,
}

impl Default for Target {
    fn default() -> Target {
        Target {
            address: PathBuf::from(DEFAULT_ADDRESS),
            namespace: DEFAULT_NAMESPACE.to_string(),
            snapshotter: DEFAULT_SNAPSHOTTER.to_string(),
            unpack: Vec::new(),
        }
    }
}

/// Why an image could not be loaded. Every variant names the socket.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Nothing listens at the address.
    #[error("no containerd socket at {}: is containerd running? pass address=/path/to/containerd.sock", socket.display())]
    NoSocket {
        /// The address.
        socket: PathBuf,
        /// Why it could not be used.
        #[source]
        source: std::io::Error,
    },
    /// The socket exists but the connection failed.
    #[error("cannot reach containerd at {}: is containerd running? pass address=/path/to/containerd.sock", socket.display())]
    Connect {
        /// The address.
        socket: PathBuf,
        /// Why.
        #[source]
        source: tonic::transport::Error,
    },
    /// A call containerd refused or failed.
    #[error("containerd at {}: {what}: {}", socket.display(), source.message())]
    Rpc {
        /// The address.
        socket: PathBuf,
        /// What was asked.
        what: String,
        /// containerd's status.
        #[source]
        source: Box<Status>,
    },
    /// The namespace is not a valid gRPC header value.
    #[error(
        "containerd namespace {namespace:?} is not a valid name (letters, digits, '-', '_', '.')"
    )]
    Namespace {
        /// The namespace.
        namespace: String,
    },
    /// A blob of the image could not be read from the local store.
    #[error("read {digest} of the image from the local store: {source}")]
    Store {
        /// The blob.
        digest: Digest,
        /// Why.
        #[source]
        source: Box<kbuild_image::Error>,
    },
    /// A blob file could not be read.
    #[error("read {} (blob {digest}): {source}", path.display())]
    Blob {
        /// The blob.
        digest: Digest,
        /// Its file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// An image name does not parse.
    #[error("image name {name:?}: {source}")]
    Name {
        /// The name.
        name: String,
        /// Why.
        #[source]
        source: Box<kbuild_registry::Error>,
    },
    /// `unpack=` names a platform the image does not have.
    #[error("unpack={wanted}: the image has no such platform (it has {available}); unpack only platforms of --platform")]
    NoSuchPlatform {
        /// The platform asked for.
        wanted: String,
        /// The image's platforms, comma-separated.
        available: String,
    },
    /// containerd unpacked a layer to something other than what the image
    /// config says.
    #[error("containerd at {} unpacked layer {layer} of {platform} to {applied}, but the image config says {expected}", socket.display())]
    DiffMismatch {
        /// The address.
        socket: PathBuf,
        /// The image platform.
        platform: String,
        /// The compressed layer's digest.
        layer: String,
        /// The diff ID in the config.
        expected: String,
        /// What containerd reported.
        applied: String,
    },
    /// A manifest's layers and its config's diff IDs disagree.
    #[error("manifest {manifest} has {layers} layers but its config lists {diff_ids} diff IDs")]
    LayerCount {
        /// The manifest.
        manifest: Digest,
        /// Layers in the manifest.
        layers: usize,
        /// Diff IDs in the config.
        diff_ids: usize,
    },
}

/// What a load did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LoadReport {
    /// The image names created or updated (normalized).
    pub images: Vec<String>,
    /// The platforms unpacked.
    pub unpacked: Vec<String>,
    /// Blobs sent to containerd.
    pub blobs_written: usize,
    /// Blobs containerd held already (only labelled).
    pub blobs_present: usize,
    /// Bytes sent.
    pub bytes_written: u64,
    /// Layers unpacked now (not already present as snapshots).
    pub layers_unpacked: usize,
}

/// One image manifest of the tree being loaded.
struct Part {
    manifest: Descriptor,
    platform: Option<Platform>,
    doc: Manifest,
    config: ImageConfig,
}

/// A name as CRI looks it up: `app:1` → `docker.io/library/app:1`.
pub fn normalize_name(name: &str) -> Result<String, Error> {
    kbuild_registry::Reference::parse(name)
        .map(|r| r.to_string())
        .map_err(|source| Error::Name {
            name: name.to_string(),
            source: Box::new(source),
        })
}

/// The chain IDs of a layer stack (OCI image spec): the first layer's is
/// its diff ID, each next one `sha256(previous + " " + diff ID)`.
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<String> {
    use sha2::{Digest as _, Sha256};
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.to_string(),
            Some(prev) => format!(
                "sha256:{}",
                hex::encode(Sha256::digest(format!("{prev} {d}").as_bytes()))
            ),
        };
        out.push(next);
    }
    out
}

/// Loads the image whose root (index or manifest) is `root`, held in
/// `store`, into containerd at `target` under `names`. `lease_expires`
/// (RFC 3339) bounds the lease when this process dies before dropping it.
pub async fn load(
    target: &Target,
    store: &ContentStore,
    root: &Descriptor,
    names: &[String],
    lease_expires: Option<&str>,
) -> Result<LoadReport, Error> {
    let names = names
        .iter()
        .map(|n| normalize_name(n))
        .collect::<Result<Vec<_>, _>>()?;
    let parts = read_tree(store, root)?;
    let unpack = choose_unpack(target, &parts)?;
    let conn = Conn::connect(target).await?;
    let lease = format!("kubectl-build-{:016x}", unique_id());
    let mut labels = HashMap::new();
    if let Some(t) = lease_expires {
        labels.insert("containerd.io/gc.expire".to_string(), t.to_string());
    }
    conn.leases()
        .create(conn.req(CreateLease {
            id: lease.clone(),
            labels,
        })?)
        .await
        .map_err(conn.rpc("create a lease"))?;
    let conn = Conn {
        lease: Some(lease.clone()),
        ..conn
    };
    let result = load_in_lease(&conn, target, store, root, &parts, &unpack, &names).await;
    let dropped = conn
        .leases()
        .delete(conn.req(DeleteLease {
            id: lease,
            sync: false,
        })?)
        .await;
    let report = result?;
    dropped.map_err(conn.rpc("drop the lease"))?;
    Ok(report)
}

async fn load_in_lease(
    conn: &Conn,
    target: &Target,
    store: &ContentStore,
    root: &Descriptor,
    parts: &[Part],
    unpack: &[usize],
    names: &[String],
) -> Result<LoadReport, Error> {
    let mut report = LoadReport::default();
    // Children first, so a parent's labels never name a missing blob.
    for p in parts {
        for (layer, diff_id) in p.doc.layers.iter().zip(&p.config.rootfs.diff_ids) {
            let labels = BTreeMap::from([(LABEL_UNCOMPRESSED.to_string(), diff_id.to_string())]);
            put(conn, store, layer, labels, &mut report).await?;
        }
        put(conn, store, &p.doc.config, BTreeMap::new(), &mut report).await?;
        let mut labels = BTreeMap::new();
        labels.insert(
            format!("{LABEL_GC_CONTENT}.config"),
            p.doc.config.digest.to_string(),
        );
        for (i, l) in p.doc.layers.iter().enumerate() {
            labels.insert(format!("{LABEL_GC_CONTENT}.l.{i}"), l.digest.to_string());
        }
        put(conn, store, &p.manifest, labels, &mut report).await?;
    }
    if root.is_index() {
        let mut labels = BTreeMap::new();
        for (i, p) in parts.iter().enumerate() {
            labels.insert(
                format!("{LABEL_GC_CONTENT}.m.{i}"),
                p.manifest.digest.to_string(),
            );
        }
        put(conn, store, root, labels, &mut report).await?;
    }
    for &i in unpack {
        let p = &parts[i];
        let top = unpack_one(conn, target, p, &mut report).await?;
        if let Some(top) = top {
            let label = format!("{LABEL_GC_SNAPSHOT}.{}", target.snapshotter);
            set_labels(conn, &p.doc.config.digest, BTreeMap::from([(label, top)])).await?;
        }
        report.unpacked.push(
            p.platform
                .as_ref()
                .map(|p| p.to_string())
                .unwrap_or_else(|| "unknown".to_string()),
        );
    }
    for name in names {
        create_image(conn, name, root).await?;
        report.images.push(name.clone());
    }
    Ok(report)
}

/// The manifests below `root`, with their configs.
fn read_tree(store: &ContentStore, root: &Descriptor) -> Result<Vec<Part>, Error> {
    let read = |d: &Digest| {
        store.read(d).map_err(|source| Error::Store {
            digest: *d,
            source: Box::new(source),
        })
    };
    let parse_err = |d: &Digest| {
        let d = *d;
        move |source| Error::Store {
            digest: d,
            source: Box::new(source),
        }
    };
    let manifests: Vec<Descriptor> = if root.is_index() {
        Index::parse(&read(&root.digest)?)
            .map_err(parse_err(&root.digest))?
            .manifests
            .into_iter()
            .filter(Descriptor::is_manifest)
            .collect()
    } else {
        vec![root.clone()]
    };
    let mut parts = Vec::new();
    for m in manifests {
        let doc = Manifest::parse(&read(&m.digest)?).map_err(parse_err(&m.digest))?;
        let config = ImageConfig::parse(&read(&doc.config.digest)?)
            .map_err(parse_err(&doc.config.digest))?;
        if config.rootfs.diff_ids.len() != doc.layers.len() {
            return Err(Error::LayerCount {
                manifest: m.digest,
                layers: doc.layers.len(),
                diff_ids: config.rootfs.diff_ids.len(),
            });
        }
        let platform = match &m.platform {
            Some(p) => Some(Platform::from(p)),
            None => Some(Platform::from(&config.platform())),
        };
        parts.push(Part {
            manifest: m,
            platform,
            doc,
            config,
        });
    }
    Ok(parts)
}

/// Which parts to unpack: for each wanted platform (this machine's when
/// none is given), the manifest containerd's matcher likes best. A
/// platform named in `unpack=` that the image lacks is an error; without
/// `unpack=`, an image without this machine's platform is loaded and not
/// unpacked.
fn choose_unpack(target: &Target, parts: &[Part]) -> Result<Vec<usize>, Error> {
    let given = !target.unpack.is_empty();
    let wanted = if given {
        target.unpack.clone()
    } else {
        vec![Platform::host()]
    };
    let indexed: Vec<(usize, &Platform)> = parts
        .iter()
        .enumerate()
        .filter_map(|(i, p)| p.platform.as_ref().map(|pl| (i, pl)))
        .collect();
    let mut out = Vec::new();
    for w in &wanted {
        match w.best_match(indexed.iter().map(|(_, p)| *p)) {
            Some(k) => {
                let i = indexed[k].0;
                if !out.contains(&i) {
                    out.push(i);
                }
            }
            None if given => {
                return Err(Error::NoSuchPlatform {
                    wanted: w.to_string(),
                    available: indexed
                        .iter()
                        .map(|(_, p)| p.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                })
            }
            None => {}
        }
    }
    Ok(out)
}

struct Conn {
    client: Client,
    socket: PathBuf,
    namespace: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    lease: Option<String>,
}

impl Conn {
    async fn connect(target: &Target) -> Result<Conn, Error> {
        let socket = target.address.clone();
        let namespace = target
            .namespace
            .parse()
            .ok()
            .filter(|_| {
                !target.namespace.is_empty()
                    && target
                        .namespace
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            })
            .ok_or_else(|| Error::Namespace {
                namespace: target.namespace.clone(),
            })?;
        match tokio::fs::metadata(&socket).await {
            Ok(_) => {}
            Err(source) => return Err(Error::NoSocket { socket, source }),
        }
        let client = Client::from_path(&socket)
            .await
            .map_err(|source| Error::Connect {
                socket: socket.clone(),
                source,
            })?;
        Ok(Conn {
            client,
            socket,
            namespace,
            lease: None,
        })
    }

    fn req<T>(&self, message: T) -> Result<Request<T>, Error> {
        let mut r = Request::new(message);
        r.metadata_mut()
            .insert("containerd-namespace", self.namespace.clone());
        if let Some(l) = &self.lease {
            let v = l.parse().map_err(|_| Error::Namespace {
                namespace: l.clone(),
            })?;
            r.metadata_mut().insert("containerd-lease", v);
        }
        Ok(r)
    }

    fn rpc(&self, what: impl Into<String>) -> impl FnOnce(Status) -> Error {
        let socket = self.socket.clone();
        let what = what.into();
        move |source| Error::Rpc {
            socket,
            what,
            source: Box::new(source),
        }
    }

    fn leases(
        &self,
    ) -> containerd_client::services::v1::leases_client::LeasesClient<tonic::transport::Channel>
    {
        self.client.leases()
    }
}

fn ctr_descriptor(d: &Descriptor) -> CtrDescriptor {
    CtrDescriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.to_string(),
        size: d.size as i64,
        annotations: d
            .annotations
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

/// Adds `labels` to a blob containerd holds.
async fn set_labels(
    conn: &Conn,
    digest: &Digest,
    labels: BTreeMap<String, String>,
) -> Result<(), Error> {
    if labels.is_empty() {
        return Ok(());
    }
    let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
    conn.client
        .content()
        .update(conn.req(UpdateRequest {
            info: Some(Info {
                digest: digest.to_string(),
                labels: labels.into_iter().collect(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask { paths }),
        })?)
        .await
        .map_err(conn.rpc(format!("label blob {digest}")))?;
    Ok(())
}

/// Makes containerd hold blob `d` with `labels`.
async fn put(
    conn: &Conn,
    store: &ContentStore,
    d: &Descriptor,
    labels: BTreeMap<String, String>,
    report: &mut LoadReport,
) -> Result<(), Error> {
    let held = conn
        .client
        .content()
        .info(conn.req(InfoRequest {
            digest: d.digest.to_string(),
        })?)
        .await;
    match held {
        Ok(_) => {
            report.blobs_present += 1;
            return set_labels(conn, &d.digest, labels).await;
        }
        Err(s) if s.code() == Code::NotFound => {}
        Err(s) => return Err(conn.rpc(format!("look up blob {}", d.digest))(s)),
    }
    match write_blob(conn, store, d, labels.clone()).await {
        Ok(n) => {
            report.blobs_written += 1;
            report.bytes_written += n;
            Ok(())
        }
        // Written meanwhile by someone else: only the labels are ours.
        Err(Error::Rpc { source, .. }) if source.code() == Code::AlreadyExists => {
            report.blobs_present += 1;
            set_labels(conn, &d.digest, labels).await
        }
        Err(e) => Err(e),
    }
}

/// Streams a blob to the Content service: WRITE messages with the data,
/// then COMMIT with the expected size, digest and labels. containerd
/// answers each message before it reads the next, so they go in lockstep;
/// the first goes out before the call is awaited, since the call only
/// completes once containerd has answered something.
async fn write_blob(
    conn: &Conn,
    store: &ContentStore,
    d: &Descriptor,
    labels: BTreeMap<String, String>,
) -> Result<u64, Error> {
    let path = store.path(&d.digest);
    let blob_err = |source| Error::Blob {
        digest: d.digest,
        path: path.clone(),
        source,
    };
    let mut file = tokio::fs::File::open(&path).await.map_err(blob_err)?;
    let what = format!("write blob {}", d.digest);
    let closed = || Status::aborted("containerd closed the write stream early");
    let reference = format!(
        "kubectl-build-{}-{:08x}",
        d.digest.hex(),
        unique_id() as u32
    );
    let expected = d.digest.to_string();
    let total = d.size as i64;
    let mut offset: i64 = 0;
    let mut buf = vec![0u8; CHUNK];
    let (tx, rx) = tokio::sync::mpsc::channel::<WriteContentRequest>(1);
    let mut rx = Some(rx);
    let mut responses = None;
    loop {
        let n = file.read(&mut buf).await.map_err(|source| Error::Blob {
            digest: d.digest,
            path: path.clone(),
            source,
        })?;
        let last = n == 0;
        let msg = WriteContentRequest {
            action: if last {
                WriteAction::Commit
            } else {
                WriteAction::Write
            } as i32,
            r#ref: reference.clone(),
            total,
            expected: expected.clone(),
            offset,
            data: buf[..n].to_vec(),
            labels: if last {
                labels.clone().into_iter().collect()
            } else {
                HashMap::new()
            },
        };
        if tx.send(msg).await.is_err() {
            return Err(conn.rpc(what)(closed()));
        }
        let stream = match responses.as_mut() {
            Some(s) => s,
            None => {
                let Some(rx) = rx.take() else {
                    return Err(conn.rpc(what)(closed()));
                };
                responses.insert(
                    conn.client
                        .content()
                        .write(conn.req(tokio_stream::wrappers::ReceiverStream::new(rx))?)
                        .await
                        .map_err(conn.rpc(what.clone()))?
                        .into_inner(),
                )
            }
        };
        match stream.message().await {
            Ok(Some(_)) => {}
            Ok(None) => return Err(conn.rpc(what)(closed())),
            Err(s) => return Err(conn.rpc(what)(s)),
        }
        offset += n as i64;
        if last {
            return Ok(offset as u64);
        }
    }
}

/// Unpacks one image's layers into snapshots; returns the top chain ID
/// (none for an image without layers).
async fn unpack_one(
    conn: &Conn,
    target: &Target,
    p: &Part,
    report: &mut LoadReport,
) -> Result<Option<String>, Error> {
    let chain = chain_ids(&p.config.rootfs.diff_ids);
    let mut snapshots = conn.client.snapshots();
    let platform = p
        .platform
        .as_ref()
        .map(|p| p.to_string())
        .unwrap_or_else(|| "unknown".to_string());
    for (i, chain_id) in chain.iter().enumerate() {
        let present = snapshots
            .stat(conn.req(StatSnapshotRequest {
                snapshotter: target.snapshotter.clone(),
                key: chain_id.clone(),
            })?)
            .await;
        match present {
            Ok(_) => continue,
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) => return Err(conn.rpc(format!("look up snapshot {chain_id}"))(s)),
        }
        let parent = if i == 0 {
            String::new()
        } else {
            chain[i - 1].clone()
        };
        let key = format!("extract-{:016x} {chain_id}", unique_id());
        let mounts: Vec<Mount> = snapshots
            .prepare(conn.req(PrepareSnapshotRequest {
                snapshotter: target.snapshotter.clone(),
                key: key.clone(),
                parent,
                labels: HashMap::new(),
            })?)
            .await
            .map_err(conn.rpc(format!(
                "prepare a {} snapshot for layer {} of {platform}",
                target.snapshotter, p.doc.layers[i].digest
            )))?
            .into_inner()
            .mounts;
        let applied = conn
            .client
            .diff()
            .apply(conn.req(ApplyRequest {
                diff: Some(ctr_descriptor(&p.doc.layers[i])),
                mounts,
                ..Default::default()
            })?)
            .await
            .map_err(conn.rpc(format!(
                "apply layer {} of {platform}",
                p.doc.layers[i].digest
            )));
        let applied = match applied {
            Ok(a) => a.into_inner().applied.map(|d| d.digest).unwrap_or_default(),
            Err(e) => {
                remove_key(conn, target, &key).await;
                return Err(e);
            }
        };
        let expected = p.config.rootfs.diff_ids[i].to_string();
        if applied != expected {
            remove_key(conn, target, &key).await;
            return Err(Error::DiffMismatch {
                socket: conn.socket.clone(),
                platform,
                layer: p.doc.layers[i].digest.to_string(),
                expected,
                applied,
            });
        }
        let committed = snapshots
            .commit(conn.req(CommitSnapshotRequest {
                snapshotter: target.snapshotter.clone(),
                name: chain_id.clone(),
                key: key.clone(),
                ..Default::default()
            })?)
            .await;
        match committed {
            Ok(_) => report.layers_unpacked += 1,
            // Unpacked meanwhile by someone else.
            Err(s) if s.code() == Code::AlreadyExists => remove_key(conn, target, &key).await,
            Err(s) => {
                remove_key(conn, target, &key).await;
                return Err(conn.rpc(format!("commit snapshot {chain_id}"))(s));
            }
        }
    }
    Ok(chain.last().cloned())
}

/// Removes an active snapshot left by a failed step (best effort: the
/// lease lets containerd collect it anyway).
async fn remove_key(conn: &Conn, target: &Target, key: &str) {
    let Ok(r) = conn.req(RemoveSnapshotRequest {
        snapshotter: target.snapshotter.clone(),
        key: key.to_string(),
    }) else {
        return;
    };
    if let Err(e) = conn.client.snapshots().remove(r).await {
        tracing::debug!("remove snapshot {key}: {}", e.message());
    }
}

/// Creates image `name` pointing at `root`, or points an existing one at it.
async fn create_image(conn: &Conn, name: &str, root: &Descriptor) -> Result<(), Error> {
    let image = Image {
        name: name.to_string(),
        target: Some(ctr_descriptor(root)),
        ..Default::default()
    };
    let created = conn
        .client
        .images()
        .create(conn.req(CreateImageRequest {
            image: Some(image.clone()),
            ..Default::default()
        })?)
        .await;
    match created {
        Ok(_) => Ok(()),
        Err(s) if s.code() == Code::AlreadyExists => {
            conn.client
                .images()
                .update(conn.req(UpdateImageRequest {
                    image: Some(image),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["target".to_string()],
                    }),
                    ..Default::default()
                })?)
                .await
                .map_err(conn.rpc(format!("update image {name}")))?;
            Ok(())
        }
        Err(s) => Err(conn.rpc(format!("create image {name}"))(s)),
    }
}

/// A number for lease, ingest and snapshot keys that no other load (of
/// this or another process) uses: the standard library's randomly seeded
/// hasher over a per-process counter.
fn unique_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    h.write_u32(std::process::id());
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_image_spec() {
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        let c = chain_ids(&[a, b]);
        assert_eq!(c[0], a.to_string());
        let want = Digest::of(format!("{a} {b}").as_bytes()).to_string();
        assert_eq!(c[1], want);
        assert!(chain_ids(&[]).is_empty());
    }

    #[test]
    fn names_are_normalized_as_cri_looks_them_up() {
        assert_eq!(normalize_name("app:1").unwrap(), "docker.io/library/app:1");
        assert_eq!(
            normalize_name("127.0.0.1:5000/x/y").unwrap(),
            "127.0.0.1:5000/x/y:latest"
        );
        assert!(normalize_name("UPPER").is_err());
    }
}
