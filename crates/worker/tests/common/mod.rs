//! Helpers shared by the worker's snapshot tests.

use kbuild_image::tarball::{DeterministicTar, Entry, EntryKind, TarOptions};
use sha2::{Digest, Sha256};

/// Whether the test may make overlay mounts (root); if not, skipped (or,
/// under CI, failed) through the one skip rule.
pub fn require_root() -> bool {
    kbuild_testkit::fixtures::require_root("overlay mounts need root")
}

/// A one-file layer tar and its diff_id.
pub fn layer(name: &str, data: &[u8]) -> (Vec<u8>, String) {
    let mut b = DeterministicTar::new(Vec::new(), TarOptions::default());
    let size = data.len() as u64;
    b.append(&Entry::new(name, EntryKind::File { size }), data)
        .expect("tar entry");
    let tar = b.finish().expect("tar");
    let id = format!("sha256:{}", hex::encode(Sha256::digest(&tar)));
    (tar, id)
}
