//! What is wrong with a flag value ([`super::OptionError`]): one variant per
//! rule, holding the part of the value that breaks it and, where a parser
//! refused it, that parser's error.

/// Why a flag value is refused. The text is the part of the message after
/// the flag and its value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OptionProblem {
    // --output
    /// An empty `--output`.
    #[error("empty output; use e.g. type=registry")]
    EmptyOutput,
    /// A comma-separated field without `=`.
    #[error("field {0:?} is not KEY=VALUE")]
    NotKeyValue(String),
    /// `compression-level=` that is not a number.
    #[error("compression-level {value:?} is not a number")]
    LevelNotNumber {
        /// The level as given.
        value: String,
        /// Why it does not parse.
        #[source]
        source: std::num::ParseIntError,
    },
    /// A level outside the compressor's range.
    #[error("compression-level for {compression} is 0 to {max}")]
    LevelRange {
        /// `gzip` or `zstd`.
        compression: &'static str,
        /// Its highest level.
        max: i32,
    },
    /// A level for uncompressed layers.
    #[error("compression-level needs compression=gzip or zstd")]
    LevelUncompressed,
    /// `oci-mediatypes=false`.
    #[error("oci-mediatypes=false (Docker media types) is not supported by this builder; images use OCI media types, which every current registry and docker accept")]
    DockerMediaTypes,
    /// A field `--output` does not take.
    #[error("unsupported field {0:?}; supported: type, dest, name, push, compression, compression-level, force-compression, oci-mediatypes, tar, preserve-special, annotation.KEY, annotation-TYPE[PLATFORM].KEY; for type=containerd also address, namespace, snapshotter, unpack")]
    UnsupportedOutputField(String),
    /// No `type=`.
    #[error("missing type=; use e.g. type=registry")]
    MissingOutputType,
    /// An unknown `type=`.
    #[error("unknown type {0:?}; use registry, image, oci, docker, tar, local or containerd")]
    UnknownOutputType(String),
    /// An unknown `compression=`.
    #[error("unknown compression {0:?}; use gzip, zstd or uncompressed")]
    UnknownCompression(String),
    /// A push without an image name.
    #[error("pushing needs an image name: add -t NAME or name=NAME")]
    PushWithoutName,
    /// A file or directory output without `dest=`.
    #[error("this output type needs dest=PATH")]
    MissingDest,
    /// `type=containerd` without an image name.
    #[error("containerd needs an image name: add -t NAME or name=NAME")]
    ContainerdWithoutName,
    /// `type=containerd` with `dest=` or `push=`.
    #[error("type=containerd takes no dest= or push=; use address= for containerd's socket")]
    ContainerdDestOrPush,
    /// `preserve-special=` on an output other than `type=local`.
    #[error("preserve-special only applies to type=local (the other outputs keep every file as it is in the image)")]
    PreserveSpecialNotLocal,
    /// A containerd field (named) on another output type.
    #[error("{0}= only applies to type=containerd")]
    ContainerdOnly(String),
    /// `address=` that is not an absolute socket path.
    #[error("address {0:?} is not an absolute socket path; use e.g. address=/run/containerd/containerd.sock")]
    ContainerdAddress(String),
    /// `namespace=` outside containerd's namespace grammar.
    #[error("namespace {0:?} is not a containerd namespace (letters, digits, '-', '_', '.')")]
    ContainerdNamespace(String),
    /// An empty `snapshotter=`.
    #[error("snapshotter= is empty")]
    EmptySnapshotter,
    /// `unpack=` that is not a platform list.
    #[error("unpack={value}: {source}")]
    Unpack {
        /// The list as given.
        value: String,
        /// Why it does not parse (boxed: it is large).
        #[source]
        source: Box<kbuild_platform::Error>,
    },
    /// A boolean field that is not true or false.
    #[error("{0:?} is not true or false")]
    NotBool(String),

    // --build-arg, --label
    /// `=VALUE` without a key.
    #[error("missing KEY before '='")]
    MissingKey,
    /// An empty `--build-arg`.
    #[error("empty; use KEY=VALUE")]
    EmptyBuildArg,
    /// A label without `KEY=`.
    #[error("use KEY=VALUE")]
    LabelNotKeyValue,

    // --secret, --ssh
    /// A field `--secret` does not take.
    #[error("unknown field {0:?}; use id, src, env or type")]
    UnknownSecretField(String),
    /// A secret without an id.
    #[error("missing id=; use id=NAME,src=FILE")]
    MissingSecretId,
    /// Both `src=` and `env=`.
    #[error("give src= or env=, not both")]
    SecretSrcAndEnv,
    /// An unknown secret `type=`.
    #[error("unknown type {0:?}; use file or env")]
    UnknownSecretType(String),
    /// An `--ssh` without an id.
    #[error("missing id; use default or ID=PATH")]
    MissingSshId,

    // --add-host, --network, --shm-size
    /// An `--add-host` without `:` or `=`.
    #[error("use HOST:IP")]
    NotHostIp,
    /// An `--add-host` address that does not parse.
    #[error("{ip:?} is not an IP address")]
    NotIp {
        /// The address as given.
        ip: String,
        /// Why it does not parse.
        #[source]
        source: std::net::AddrParseError,
    },
    /// An `--add-host` without a host name.
    #[error("missing host name")]
    MissingHost,
    /// An unknown network mode.
    #[error("use default, none or host")]
    UnknownNetwork,
    /// A size whose number does not parse.
    #[error("use a size in bytes, or with a unit as docker takes it: 64m, 512MiB, 1g")]
    SizeNumber(#[source] std::num::ParseFloatError),
    /// A size with a unit docker does not take.
    #[error("use a size in bytes, or with a unit as docker takes it: 64m, 512MiB, 1g")]
    SizeUnit(String),
    /// A size below one byte (or beyond 64 bits).
    #[error("the size must be at least one byte")]
    SizeRange,

    // --annotation, annotation fields of --output
    /// An annotation without `=`.
    #[error("use KEY=VALUE or TYPE[PLATFORM]:KEY=VALUE")]
    AnnotationNotKeyValue,
    /// An annotation with an empty key.
    #[error("the annotation key is empty")]
    EmptyAnnotationKey,
    /// A platform on an index annotation.
    #[error("a [platform] only applies to manifest and manifest-descriptor annotations")]
    AnnotationPlatformOnIndex,
    /// An annotation type whose `[` is not closed.
    #[error("{0:?}: a platform is written [os/arch]")]
    AnnotationPlatformSyntax(String),
    /// An annotation type whose platform is not one.
    #[error("{word:?}: {source}")]
    AnnotationPlatform {
        /// The type as given.
        word: String,
        /// Why its platform is refused (boxed: it is large).
        #[source]
        source: Box<kbuild_platform::Error>,
    },
    /// An unknown annotation type.
    #[error("unknown annotation type {0:?}; the types are manifest, manifest-descriptor, index, index-descriptor")]
    UnknownAnnotationType(String),

    // --cache-to, --cache-from
    /// A cache boolean attribute (named) that is not true or false.
    #[error("{key}={value:?} is not true or false")]
    CacheNotBool {
        /// The attribute.
        key: String,
        /// Its value as given.
        value: String,
    },
    /// `image-manifest=false` or `oci-mediatypes=false` (the attribute named).
    #[error("{0}=false is not supported: caches are always OCI image manifests")]
    CacheAlwaysTrue(String),
    /// A `--cache-to` without any `KEY=VALUE`.
    #[error("give type=registry,ref=REF, type=local,dest=DIR or type=inline")]
    CacheToShape,
    /// `mode=` other than min or max.
    #[error("mode={0:?}: use min or max")]
    CacheMode(String),
    /// A `--cache-to` without `type=`.
    #[error("no type=; the types are registry, local and inline")]
    CacheToNoType,
    /// A `--cache-to` type that does not exist.
    #[error("unsupported cache type {0:?}; the types are registry, local and inline")]
    CacheToType(String),
    /// An attribute `--cache-to` does not take.
    #[error("unknown attribute {0:?}; the attributes are type, ref (registry), dest and tag (local), mode, ignore-error")]
    CacheToAttribute(String),
    /// An attribute of another cache type.
    #[error("{attribute}= does not apply to type={kind}")]
    CacheAttributeNotFor {
        /// The attribute.
        attribute: &'static str,
        /// The type given.
        kind: &'static str,
    },
    /// `type=local` without `dest=`.
    #[error("type=local needs dest=DIR")]
    CacheLocalDest,
    /// `type=registry` without `ref=`.
    #[error("type=registry needs ref=REF")]
    CacheRegistryRef,
    /// `type=inline,mode=max`.
    #[error("type=inline holds only the image's own steps (mode=min); use type=registry or type=local for mode=max")]
    InlineModeMax,
    /// A cache reference that does not parse.
    #[error("ref={reference:?}: {source}")]
    CacheReference {
        /// The reference as given.
        reference: String,
        /// Why it does not parse.
        #[source]
        source: Box<kbuild_registry::Error>,
    },
    /// A `--cache-from` with `KEY=VALUE` fields but no `type=`.
    #[error("no type=; the types are registry and local (or give a bare image reference)")]
    CacheFromNoType,
    /// A `--cache-from` type that does not exist.
    #[error("unsupported cache type {0:?}; the types are registry and local")]
    CacheFromType(String),
    /// An attribute `--cache-from` does not take.
    #[error(
        "unknown attribute {0:?}; the attributes are type, ref (registry), src and tag (local)"
    )]
    CacheFromAttribute(String),
    /// `--cache-from type=local` without `src=`.
    #[error("type=local needs src=DIR")]
    CacheLocalSrc,
    /// `--cache-from type=registry` with `src=` or `tag=`.
    #[error("src= and tag= apply to type=local only")]
    CacheFromRegistryLocal,
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use crate::options::*;
    use crate::remote_cache::{CacheFrom, CacheTo};

    fn output(spec: &str) -> OptionError {
        Output::parse(spec, &[]).expect_err(spec)
    }

    fn secret(spec: &str) -> OptionError {
        SecretSpec::parse(spec, |_| false).expect_err(spec)
    }

    fn annotation(spec: &str) -> OptionError {
        Annotation::parse_flag(spec).expect_err(spec)
    }

    fn cache_to(spec: &str) -> OptionError {
        CacheTo::parse(spec).expect_err(spec)
    }

    fn cache_from(spec: &str) -> OptionError {
        CacheFrom::parse(spec).expect_err(spec)
    }

    /// Every rule's whole message, as the flags have always printed it.
    #[test]
    fn messages_name_flag_value_and_rule() {
        let cases: Vec<(OptionError, &str)> = vec![
            (
                output(""),
                r#"invalid --output value "": empty output; use e.g. type=registry"#,
            ),
            (
                output("type=local,dest"),
                r#"invalid --output value "type=local,dest": field "dest" is not KEY=VALUE"#,
            ),
            (
                output("type=oci,dest=x,compression-level=hi"),
                r#"invalid --output value "type=oci,dest=x,compression-level=hi": compression-level "hi" is not a number"#,
            ),
            (
                output("type=oci,dest=x,compression-level=10"),
                r#"invalid --output value "type=oci,dest=x,compression-level=10": compression-level for gzip is 0 to 9"#,
            ),
            (
                output("type=oci,dest=x,compression=uncompressed,compression-level=1"),
                r#"invalid --output value "type=oci,dest=x,compression=uncompressed,compression-level=1": compression-level needs compression=gzip or zstd"#,
            ),
            (
                output("type=oci,dest=x,oci-mediatypes=false"),
                r#"invalid --output value "type=oci,dest=x,oci-mediatypes=false": oci-mediatypes=false (Docker media types) is not supported by this builder; images use OCI media types, which every current registry and docker accept"#,
            ),
            (
                output("type=local,dest=x,colour=red"),
                r#"invalid --output value "type=local,dest=x,colour=red": unsupported field "colour"; supported: type, dest, name, push, compression, compression-level, force-compression, oci-mediatypes, tar, preserve-special, annotation.KEY, annotation-TYPE[PLATFORM].KEY; for type=containerd also address, namespace, snapshotter, unpack"#,
            ),
            (
                output("dest=x,name=a"),
                r#"invalid --output value "dest=x,name=a": missing type=; use e.g. type=registry"#,
            ),
            (
                output("type=ftp"),
                r#"invalid --output value "type=ftp": unknown type "ftp"; use registry, image, oci, docker, tar, local or containerd"#,
            ),
            (
                output("type=oci,dest=x,compression=lz4"),
                r#"invalid --output value "type=oci,dest=x,compression=lz4": unknown compression "lz4"; use gzip, zstd or uncompressed"#,
            ),
            (
                output("type=registry"),
                r#"invalid --output value "type=registry": pushing needs an image name: add -t NAME or name=NAME"#,
            ),
            (
                output("type=oci"),
                r#"invalid --output value "type=oci": this output type needs dest=PATH"#,
            ),
            (
                output("type=containerd"),
                r#"invalid --output value "type=containerd": containerd needs an image name: add -t NAME or name=NAME"#,
            ),
            (
                output("type=containerd,name=a,push=true"),
                r#"invalid --output value "type=containerd,name=a,push=true": type=containerd takes no dest= or push=; use address= for containerd's socket"#,
            ),
            (
                output("type=tar,dest=o.tar,preserve-special=true"),
                r#"invalid --output value "type=tar,dest=o.tar,preserve-special=true": preserve-special only applies to type=local (the other outputs keep every file as it is in the image)"#,
            ),
            (
                output("type=oci,dest=x,namespace=k8s.io"),
                r#"invalid --output value "type=oci,dest=x,namespace=k8s.io": namespace= only applies to type=containerd"#,
            ),
            (
                output("type=containerd,name=a,address=rel.sock"),
                r#"invalid --output value "type=containerd,name=a,address=rel.sock": address "rel.sock" is not an absolute socket path; use e.g. address=/run/containerd/containerd.sock"#,
            ),
            (
                output("type=containerd,name=a,namespace=a/b"),
                r#"invalid --output value "type=containerd,name=a,namespace=a/b": namespace "a/b" is not a containerd namespace (letters, digits, '-', '_', '.')"#,
            ),
            (
                output("type=containerd,name=a,snapshotter= "),
                r#"invalid --output value "type=containerd,name=a,snapshotter= ": snapshotter= is empty"#,
            ),
            (
                output("type=local,dest=x,push=maybe"),
                r#"invalid --output value "type=local,dest=x,push=maybe": "maybe" is not true or false"#,
            ),
            (
                parse_build_args(&["=1".into()], |_| None).unwrap_err(),
                r#"invalid --build-arg value "=1": missing KEY before '='"#,
            ),
            (
                parse_build_args(&["".into()], |_| None).unwrap_err(),
                r#"invalid --build-arg value "": empty; use KEY=VALUE"#,
            ),
            (
                parse_labels(&["a".into()]).unwrap_err(),
                r#"invalid --label value "a": use KEY=VALUE"#,
            ),
            (
                secret("id=a,bogus"),
                r#"invalid --secret value "id=a,bogus": field "bogus" is not KEY=VALUE"#,
            ),
            (
                secret("id=a,kind=x"),
                r#"invalid --secret value "id=a,kind=x": unknown field "kind"; use id, src, env or type"#,
            ),
            (
                secret("src=/x"),
                r#"invalid --secret value "src=/x": missing id=; use id=NAME,src=FILE"#,
            ),
            (
                secret("id=a,src=x,env=y"),
                r#"invalid --secret value "id=a,src=x,env=y": give src= or env=, not both"#,
            ),
            (
                secret("id=a,type=vault"),
                r#"invalid --secret value "id=a,type=vault": unknown type "vault"; use file or env"#,
            ),
            (
                SshSpec::parse("=x").unwrap_err(),
                r#"invalid --ssh value "=x": missing id; use default or ID=PATH"#,
            ),
            (
                parse_add_host("db").unwrap_err(),
                r#"invalid --add-host value "db": use HOST:IP"#,
            ),
            (
                parse_add_host("db:notanip").unwrap_err(),
                r#"invalid --add-host value "db:notanip": "notanip" is not an IP address"#,
            ),
            (
                parse_add_host(":10.0.0.1").unwrap_err(),
                r#"invalid --add-host value ":10.0.0.1": missing host name"#,
            ),
            (
                parse_network("bridge").unwrap_err(),
                r#"invalid --network value "bridge": use default, none or host"#,
            ),
            (
                parse_shm_size("lots").unwrap_err(),
                r#"invalid --shm-size value "lots": use a size in bytes, or with a unit as docker takes it: 64m, 512MiB, 1g"#,
            ),
            (
                parse_shm_size("12q").unwrap_err(),
                r#"invalid --shm-size value "12q": use a size in bytes, or with a unit as docker takes it: 64m, 512MiB, 1g"#,
            ),
            (
                parse_shm_size("0").unwrap_err(),
                r#"invalid --shm-size value "0": the size must be at least one byte"#,
            ),
            (
                annotation("nokey"),
                r#"invalid --annotation value "nokey": use KEY=VALUE or TYPE[PLATFORM]:KEY=VALUE"#,
            ),
            (
                annotation("manifest:=v"),
                r#"invalid --annotation value "manifest:=v": the annotation key is empty"#,
            ),
            (
                annotation("index[linux/amd64]:k=v"),
                r#"invalid --annotation value "index[linux/amd64]:k=v": a [platform] only applies to manifest and manifest-descriptor annotations"#,
            ),
            (
                annotation("manifest[linux/amd64:k=v"),
                r#"invalid --annotation value "manifest[linux/amd64:k=v": "manifest[linux/amd64": a platform is written [os/arch]"#,
            ),
            (
                annotation("bogus:k=v"),
                r#"invalid --annotation value "bogus:k=v": unknown annotation type "bogus"; the types are manifest, manifest-descriptor, index, index-descriptor"#,
            ),
            (
                output("type=oci,dest=x,annotation-bogus.a=1"),
                r#"invalid --output value "type=oci,dest=x,annotation-bogus.a=1": unknown annotation type "bogus"; the types are manifest, manifest-descriptor, index, index-descriptor"#,
            ),
            (
                cache_to("type=local,dest"),
                r#"invalid --cache-to value "type=local,dest": field "dest" is not KEY=VALUE"#,
            ),
            (
                cache_to("type=registry,ref=r/a,ignore-error=maybe"),
                r#"invalid --cache-to value "type=registry,ref=r/a,ignore-error=maybe": ignore-error="maybe" is not true or false"#,
            ),
            (
                cache_to("type=registry,ref=r/a,image-manifest=false"),
                r#"invalid --cache-to value "type=registry,ref=r/a,image-manifest=false": image-manifest=false is not supported: caches are always OCI image manifests"#,
            ),
            (
                cache_to("inline"),
                r#"invalid --cache-to value "inline": give type=registry,ref=REF, type=local,dest=DIR or type=inline"#,
            ),
            (
                cache_to("type=registry,ref=r/a,mode=all"),
                r#"invalid --cache-to value "type=registry,ref=r/a,mode=all": mode="all": use min or max"#,
            ),
            (
                cache_to("ref=r/a"),
                r#"invalid --cache-to value "ref=r/a": no type=; the types are registry, local and inline"#,
            ),
            (
                cache_to("type=s3"),
                r#"invalid --cache-to value "type=s3": unsupported cache type "s3"; the types are registry, local and inline"#,
            ),
            (
                cache_to("type=registry,ref=r/a,bucket=x"),
                r#"invalid --cache-to value "type=registry,ref=r/a,bucket=x": unknown attribute "bucket"; the attributes are type, ref (registry), dest and tag (local), mode, ignore-error"#,
            ),
            (
                cache_to("type=local,dest=/c,ref=r/a"),
                r#"invalid --cache-to value "type=local,dest=/c,ref=r/a": ref= does not apply to type=local"#,
            ),
            (
                cache_to("type=local"),
                r#"invalid --cache-to value "type=local": type=local needs dest=DIR"#,
            ),
            (
                cache_to("type=registry"),
                r#"invalid --cache-to value "type=registry": type=registry needs ref=REF"#,
            ),
            (
                cache_to("type=inline,mode=max"),
                r#"invalid --cache-to value "type=inline,mode=max": type=inline holds only the image's own steps (mode=min); use type=registry or type=local for mode=max"#,
            ),
            (
                cache_to("type=registry,ref=A"),
                r#"invalid --cache-to value "type=registry,ref=A": ref="A": invalid image reference "A": repository "A": "A" must be lowercase"#,
            ),
            (
                cache_from("type=local,src=/c,ref=r/a"),
                r#"invalid --cache-from value "type=local,src=/c,ref=r/a": ref= does not apply to type=local"#,
            ),
            (
                cache_from("ref=r/a"),
                r#"invalid --cache-from value "ref=r/a": no type=; the types are registry and local (or give a bare image reference)"#,
            ),
            (
                cache_from("type=s3,bucket=x"),
                r#"invalid --cache-from value "type=s3,bucket=x": unsupported cache type "s3"; the types are registry and local"#,
            ),
            (
                cache_from("type=registry,ref=r/a,mode=max"),
                r#"invalid --cache-from value "type=registry,ref=r/a,mode=max": unknown attribute "mode"; the attributes are type, ref (registry), src and tag (local)"#,
            ),
            (
                cache_from("type=local"),
                r#"invalid --cache-from value "type=local": type=local needs src=DIR"#,
            ),
            (
                cache_from("type=registry,ref=r/a,tag=x"),
                r#"invalid --cache-from value "type=registry,ref=r/a,tag=x": src= and tag= apply to type=local only"#,
            ),
            (
                cache_from("type=registry"),
                r#"invalid --cache-from value "type=registry": type=registry needs ref=REF"#,
            ),
            (
                cache_from("A"),
                r#"invalid --cache-from value "A": ref="A": invalid image reference "A": repository "A": "A" must be lowercase"#,
            ),
        ];
        for (error, want) in cases {
            assert_eq!(error.to_string(), want);
        }
    }

    /// The parse error behind a refused part is the source, not only text.
    #[test]
    fn parse_errors_are_kept_as_sources() {
        let source_text = |e: &OptionError| e.reason.source().map(ToString::to_string);

        let e = output("type=oci,dest=x,compression-level=hi");
        let want = "hi".parse::<i32>().unwrap_err();
        assert!(
            matches!(&e.reason, OptionProblem::LevelNotNumber { source, .. } if *source == want)
        );
        assert_eq!(
            e.source().map(ToString::to_string),
            Some(e.reason.to_string())
        );
        assert_eq!(source_text(&e), Some(want.to_string()));

        let e = parse_add_host("db:notanip").unwrap_err();
        let want = "notanip".parse::<std::net::IpAddr>().unwrap_err();
        assert!(matches!(&e.reason, OptionProblem::NotIp { source, .. } if *source == want));

        let e = parse_shm_size("lots").unwrap_err();
        let want = "".parse::<f64>().unwrap_err();
        assert!(matches!(&e.reason, OptionProblem::SizeNumber(source) if *source == want));

        let e = output("type=containerd,name=a,unpack= ");
        let want = kbuild_platform::parse_list("").unwrap_err();
        assert!(matches!(&e.reason, OptionProblem::Unpack { source, .. } if **source == want));
        assert_eq!(
            e.to_string(),
            format!(r#"invalid --output value "type=containerd,name=a,unpack= ": unpack=: {want}"#)
        );

        let e = annotation("manifest[linux/arm65]:k=v");
        let OptionProblem::AnnotationPlatform { word, source } = &e.reason else {
            panic!("{:?}", e.reason)
        };
        assert_eq!(word, "manifest[linux/arm65]");
        assert_eq!(source_text(&e), Some(source.to_string()));

        let e = cache_from("A");
        let OptionProblem::CacheReference { source, .. } = &e.reason else {
            panic!("{:?}", e.reason)
        };
        assert!(matches!(
            **source,
            kbuild_registry::Error::InvalidReference {
                reason: kbuild_registry::ReferenceProblem::Repository { .. },
                ..
            }
        ));
    }
}
