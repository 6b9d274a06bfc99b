//! Image assembly: the config and manifest of each target's final state,
//! and the index over several targets.

use std::collections::BTreeMap;

use kbuild_image::{
    Descriptor, DescriptorPlatform, ImageConfig, Index, Manifest, MEDIA_TYPE_OCI_CONFIG,
};
use kbuild_platform::Platform;

use crate::engine::{PlatformImage, Solver, State};
use crate::error::SolveError;
use crate::options::AnnotationTarget;

pub(crate) fn now_rfc3339(epoch: Option<i64>) -> String {
    let secs = epoch.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0)
    });
    rfc3339(secs)
}

/// Format seconds since the epoch as RFC 3339 UTC.
pub fn rfc3339(secs: i64) -> String {
    let secs = secs.clamp(
        jiff::Timestamp::MIN.as_second(),
        jiff::Timestamp::MAX.as_second(),
    );
    jiff::Timestamp::from_second(secs)
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// OCI manifests carry OCI layer media types; Docker's are renamed (same bytes).
fn oci_layer_media_type(mt: &str) -> String {
    match mt {
        kbuild_image::MEDIA_TYPE_DOCKER_LAYER_GZIP => {
            kbuild_image::MEDIA_TYPE_OCI_LAYER_GZIP.to_string()
        }
        kbuild_image::MEDIA_TYPE_DOCKER_LAYER => kbuild_image::MEDIA_TYPE_OCI_LAYER.to_string(),
        kbuild_image::MEDIA_TYPE_DOCKER_LAYER_ZSTD => {
            kbuild_image::MEDIA_TYPE_OCI_LAYER_ZSTD.to_string()
        }
        other => other.to_string(),
    }
}

/// The platform of a final image: the target platform's os, architecture
/// and variant whatever the base image's config said (an `arm/v6` image
/// built on a base whose config claims `v7` is `arm/v6`), with the base's
/// os version and features kept when the target names none (Windows).
pub(crate) fn image_platform(target: &Platform, base: &ImageConfig) -> Platform {
    let mut p = target.clone();
    if p.os_version.is_none() && base.os == p.os {
        p.os_version = base.os_version.clone().filter(|v| !v.is_empty());
    }
    if p.os_features.is_empty() && base.os == p.os {
        p.os_features = base.os_features.clone().unwrap_or_default();
    }
    p
}

impl Solver {
    /// Write the config and manifest of a final state.
    pub(crate) fn write_image(
        &self,
        st: &State,
        platform: &Platform,
        labels: &BTreeMap<String, String>,
    ) -> Result<Descriptor, SolveError> {
        let mut cfg = st.config.clone();
        // The config says what the index says, whatever the base claimed.
        let p = DescriptorPlatform::from(platform);
        cfg.os = p.os;
        cfg.architecture = p.architecture;
        cfg.variant = p.variant;
        cfg.os_version = p.os_version;
        cfg.os_features = (!p.os_features.is_empty()).then_some(p.os_features);
        if !labels.is_empty() {
            let c = cfg.config.get_or_insert_with(Default::default);
            let l = c.labels.get_or_insert_with(BTreeMap::new);
            for (k, v) in labels {
                l.insert(k.clone(), v.clone());
            }
        }
        // The image's time is its last step's, so a fully cached rebuild
        // gives the same digests.
        cfg.created = cfg
            .history
            .iter()
            .rev()
            .find_map(|h| h.created.clone())
            .or_else(|| Some(now_rfc3339(self.opts.source_date_epoch)));
        if let Some(epoch) = self.opts.source_date_epoch {
            let t = rfc3339(epoch);
            cfg.created = Some(t.clone());
            for h in &mut cfg.history {
                h.created = Some(t.clone());
            }
        }
        cfg.rootfs.diff_ids = st.layers.iter().map(|l| l.diff_id).collect();
        let config_desc = cfg.write(&self.store, MEDIA_TYPE_OCI_CONFIG)?;
        let layers = st
            .layers
            .iter()
            .map(|l| {
                let mut d = if self.opts.force_compression {
                    kbuild_image::layer_in_compression(
                        &self.store,
                        &l.descriptor,
                        &l.diff_id,
                        self.opts.compression,
                    )?
                } else {
                    l.descriptor.clone()
                };
                d.media_type = oci_layer_media_type(&d.media_type);
                d.platform = None;
                Ok(d)
            })
            .collect::<Result<Vec<_>, SolveError>>()?;
        let mut manifest = Manifest::new(config_desc, layers);
        manifest.annotations = self.annotations_for(AnnotationTarget::Manifest, platform);
        let mut desc = manifest.write(&self.store)?;
        desc.platform = Some(DescriptorPlatform::from(platform));
        desc.annotations = self.annotations_for(AnnotationTarget::ManifestDescriptor, platform);
        Ok(desc)
    }

    /// The index of several images (and their attestation manifests,
    /// listed after the images as BuildKit does), or the manifest of one
    /// image without attestations.
    pub(crate) fn write_root(
        &self,
        images: &[PlatformImage],
        attestations: &[Descriptor],
    ) -> Result<Descriptor, SolveError> {
        if let ([one], []) = (images, attestations) {
            return Ok(one.manifest.clone());
        }
        let mut index = Index::new();
        for i in images {
            let mut d = i.manifest.clone();
            d.platform = None;
            index.push_manifest(d, &i.platform);
        }
        index.manifests.extend(attestations.iter().cloned());
        let any = Platform::host();
        index.annotations = self.annotations_for(AnnotationTarget::Index, &any);
        let mut desc = index.write(&self.store)?;
        desc.annotations = self.annotations_for(AnnotationTarget::IndexDescriptor, &any);
        Ok(desc)
    }

    /// The annotations (`--annotation`) of `target` for `platform`'s image
    /// (index ones have no platform).
    fn annotations_for(
        &self,
        target: AnnotationTarget,
        platform: &Platform,
    ) -> BTreeMap<String, String> {
        self.opts
            .annotations
            .iter()
            .filter(|a| a.applies(target, platform))
            .map(|a| (a.key.clone(), a.value.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::rfc3339;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
