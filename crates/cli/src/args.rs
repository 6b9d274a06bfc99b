//! The command line, shaped like `docker buildx build` and kubectl's help.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

const ABOUT: &str = "Build a container image from a Dockerfile for one or many platforms and push it under one tag as an image index.";

const EXAMPLES: &str = "\
Examples:
  # Build the current directory for the host platform (the result stays in the local store)
  kubectl build ./

  # Build for six platforms and push one image index to a registry
  kubectl build ./ -t registry.example/ns/app:1.0 -f Dockerfile.cross \\
    --platform=linux/386,linux/amd64,linux/arm/v6,linux/arm/v7,linux/arm64,windows/amd64 --push

  # Show what would run for each platform, without building
  kubectl build ./ --platform linux/amd64,linux/arm64 --dry-run

  # Write an OCI layout tarball instead of pushing
  kubectl build ./ -o type=oci,dest=image.tar

  # Read the Dockerfile from standard input (no build context)
  kubectl build - < Dockerfile";

const AFTER: &str = "\
Usage:
  kubectl build [flags] PATH
  kubectl build doctor
  kubectl build prune [flags]
  kubectl build serve [flags]
  kubectl build create NAME --endpoint ADDRESS [flags]
  kubectl build create NAME --driver kubernetes [--platform ...] [--driver-opt ...]
  kubectl build ls | rm NAME | use NAME

Use \"kubectl build doctor\" to see which platforms this machine can build natively or by emulation.
Use \"kubectl options\" for a list of global command-line options (applies to all commands).";

/// `kubectl build`: the top-level command.
#[derive(Debug, Parser)]
#[command(
    name = "kubectl-build",
    bin_name = "kubectl build",
    version,
    about = ABOUT,
    subcommand_negates_reqs = true,
    disable_help_subcommand = true,
    help_template = "{about-with-newline}\n{before-help}\n\nOptions:\n{options}\n\n{after-help}\n",
    before_help = EXAMPLES,
    after_help = AFTER,
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub build: BuildArgs,

    #[command(flatten)]
    pub global: GlobalArgs,
}

/// Subcommands besides the default build.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Report, for every supported platform, whether this machine builds it natively, by emulation, or not at all.
    Doctor {
        /// Register missing QEMU handlers (binfmt_misc, needs root and qemu-user-static).
        #[arg(long)]
        install: bool,
    },
    /// Remove blobs, snapshots and cache entries that no image or cache record references (with --builder NAME: on every node of that builder, and the client contexts its daemons keep beyond --keep-contexts).
    Prune {
        /// Remove the build cache records too, not only unreferenced data.
        #[arg(long)]
        all: bool,
    },
    /// Run a builder daemon that clients reach with "kubectl build create --driver remote".
    Serve(ServeArgs),
    /// Add a builder (or, with --append, a node or node pool to one): a "kubectl-build serve" daemon (remote), or builder pods in the cluster (kubernetes).
    Create(CreateArgs),
    /// List builders, their nodes, status and platforms.
    Ls(LsArgs),
    /// Remove a builder (a kubernetes builder: everything create made in the cluster).
    Rm {
        /// The builder.
        #[arg(value_name = "NAME")]
        name: String,
    },
    /// Join standard input and output to a builder daemon's socket (what the kubernetes driver runs in a builder pod).
    #[command(hide = true)]
    DialStdio {
        /// The daemon's socket.
        #[arg(
            long,
            value_name = "ADDRESS",
            default_value = "unix:///run/kubectl-build/builder.sock"
        )]
        addr: String,
    },
    /// Exit 0 when the builder daemon answers Info (the builder pods' readiness probe).
    #[command(hide = true)]
    Health {
        /// The daemon's socket.
        #[arg(
            long,
            value_name = "ADDRESS",
            default_value = "unix:///run/kubectl-build/builder.sock"
        )]
        addr: String,
        /// Seconds to wait for the answer.
        #[arg(long, default_value = "4", value_name = "SECONDS")]
        timeout: u64,
    },
    /// Make a builder the default.
    Use {
        /// The builder ("local" for the embedded one).
        #[arg(value_name = "NAME")]
        name: String,
    },
}

/// Flags of `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Listening address: unix:///path/to/socket or tcp://IP:PORT (TCP needs --tls-* or --insecure); repeatable.
    #[arg(
        long = "addr",
        value_name = "ADDRESS",
        default_value = "unix:///run/kubectl-build/builder.sock"
    )]
    pub addrs: Vec<String>,

    /// Native platforms to advertise instead of the host's, comma-separated or repeated.
    #[arg(long = "platform", value_name = "OS/ARCH[/VARIANT]")]
    pub platforms: Vec<String>,

    /// The daemon's TLS certificate (PEM) for TCP listeners.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// The key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// CA certificate (PEM) that signs the client certificates to accept.
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,

    /// Serve TCP listeners without TLS or authentication (anyone who reaches them can build).
    #[arg(long)]
    pub insecure: bool,

    /// Before serving, mount binfmt_misc if needed and register missing QEMU handlers, as "doctor --install" does (builder pods run with it; needs privileges).
    #[arg(long)]
    pub install_emulation: bool,

    /// Test only: advertise this protocol version instead of the real one.
    #[arg(long, hide = true, value_name = "N")]
    pub test_protocol_version: Option<u32>,
    /// Client contexts kept after a build (the most recently used; older
    /// copies and the files only they use are removed).
    #[arg(long, value_name = "N", default_value_t = kbuild_serve::gc::KEEP_CONTEXTS)]
    pub keep_contexts: usize,
}

/// Flags of `create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The builder's name.
    #[arg(value_name = "NAME")]
    pub name: String,

    /// Driver to use: "remote" (a "kubectl-build serve" daemon) or "kubernetes" (builder pods in the cluster of the kubeconfig).
    #[arg(long, default_value = "remote", value_name = "DRIVER")]
    pub driver: String,

    /// The daemon's address (remote driver): unix:///path/to/socket or tcp://HOST:PORT.
    #[arg(long, value_name = "ADDRESS")]
    pub endpoint: Option<String>,

    /// Platforms this node builds, comma-separated or repeated (default: what the daemon reports); with the kubernetes driver, one Deployment per architecture, pinned to nodes of that kubernetes.io/arch.
    #[arg(long = "platform", value_name = "OS/ARCH[/VARIANT]")]
    pub platforms: Vec<String>,

    /// Add a node (kubernetes: a node pool) to an existing builder.
    #[arg(long)]
    pub append: bool,

    /// Driver options. remote: cacert=FILE,cert=FILE,key=FILE,servername=NAME for mutual TLS to a tcp:// endpoint. kubernetes: replicas=N, image=REF, namespace=NS, "nodeselector=K=V,...", "tolerations=key=K,value=V,effect=E;...", requests.cpu, requests.memory, limits.cpu, limits.memory, rootless=false, containerd-socket=PATH|true, timeout=SECONDS.
    #[arg(long = "driver-opt", value_name = "KEY=VALUE")]
    pub driver_opts: Vec<String>,
}

/// How `ls` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LsFormat {
    /// A table.
    Table,
    /// JSON.
    Json,
}

/// Flags of `ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// Output format.
    #[arg(long, value_enum, default_value = "table", value_name = "FORMAT")]
    pub format: LsFormat,

    /// Seconds to wait for each node.
    #[arg(long, default_value = "5", value_name = "SECONDS")]
    pub timeout: u64,

    /// List kubernetes builders in every namespace (as kubectl's -A).
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
}

/// Flags that apply to every subcommand.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Path to the kubeconfig file to use for CLI requests.
    #[arg(long, global = true, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,

    /// The name of the kubeconfig context to use.
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,

    /// If present, the namespace scope for this CLI request.
    #[arg(short = 'n', long, global = true, value_name = "NAMESPACE")]
    pub namespace: Option<String>,

    /// Name of the builder to use ("local" for the embedded one; default: the one "kubectl build use" chose, else "buildkit" in the cluster of the kubeconfig, else local).
    #[arg(long, global = true, value_name = "NAME")]
    pub builder: Option<String>,

    /// Local content store and cache directory (default: $XDG_DATA_HOME/kubectl-build).
    #[arg(long, global = true, value_name = "DIR", env = "KUBECTL_BUILD_ROOT")]
    pub root: Option<PathBuf>,
}

/// How `--dry-run` prints the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DryRun {
    /// Human-readable text.
    Text,
    /// The resolved plan as JSON, with its op graph under `graph`.
    Json,
}

/// Progress output style.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Progress {
    /// tty when standard error is a terminal, plain otherwise.
    Auto,
    /// Numbered steps, one line per event.
    Plain,
    /// A live, redrawn view.
    Tty,
    /// Only the image digest.
    Quiet,
}

/// Flags of the build command.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Build context directory, or "-" to read a Dockerfile from standard input (no context).
    #[arg(value_name = "PATH")]
    pub path: Option<String>,

    /// Name and optionally a tag (format: "name:tag"); repeatable.
    #[arg(short = 't', long = "tag", value_name = "NAME")]
    pub tags: Vec<String>,

    /// Name of the Dockerfile (default: "PATH/Dockerfile"; "-" reads it from standard input).
    #[arg(short = 'f', long = "file", value_name = "PATH")]
    pub file: Option<String>,

    /// Target platforms, comma-separated or repeated (default: the host's platform).
    #[arg(
        long = "platform",
        value_name = "OS/ARCH[/VARIANT]",
        env = "DOCKER_DEFAULT_PLATFORM"
    )]
    pub platforms: Vec<String>,

    /// Push the result to the registry (shorthand for --output=type=registry).
    #[arg(long)]
    pub push: bool,

    /// Load the single-platform result into the Docker daemon (shorthand for --output=type=docker); DOCKER_HOST=unix://PATH picks the daemon.
    #[arg(long)]
    pub load: bool,

    /// Output destination (format: "type=local,dest=path"); types: registry, image, oci, docker, tar, local.
    #[arg(short = 'o', long = "output", value_name = "SPEC")]
    pub outputs: Vec<String>,

    /// Set a build-time variable (KEY=VALUE, or KEY to take the value from the environment).
    #[arg(long = "build-arg", value_name = "KEY[=VALUE]")]
    pub build_args: Vec<String>,

    /// Set the target build stage to build.
    #[arg(long, value_name = "STAGE")]
    pub target: Option<String>,

    /// Set metadata for an image (KEY=VALUE).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,

    /// Do not use cache when building the image.
    #[arg(long)]
    pub no_cache: bool,

    /// Always attempt to pull all referenced images.
    #[arg(long)]
    pub pull: bool,

    /// Set type of progress output.
    #[arg(long, value_enum, default_value = "auto", value_name = "MODE")]
    pub progress: Progress,

    /// Suppress the build output and print the image ID on success (same as --progress quiet).
    #[arg(short = 'q', long)]
    pub quiet: bool,

    /// Attach an SLSA provenance attestation to each image ("true", "false", "mode=min" or "mode=max"; off by default, see the README).
    #[arg(long = "provenance", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "SPEC")]
    pub provenance: Option<String>,
    /// buildx's --sbom (not supported yet; =false accepted).
    #[arg(long = "sbom", hide = true, num_args = 0..=1, default_missing_value = "true", value_name = "SPEC")]
    pub sbom: Option<String>,
    /// buildx's --attest (not supported yet).
    #[arg(long = "attest", hide = true, value_name = "SPEC")]
    pub attest: Vec<String>,
    /// Add annotations to the image (format: "KEY=VALUE" on the manifests, or "TYPE[PLATFORM]:KEY=VALUE" with TYPE manifest, manifest-descriptor, index, index-descriptor); repeatable.
    #[arg(long = "annotation", value_name = "KEY=VALUE")]
    pub annotation: Vec<String>,
    /// Additional build contexts (format: "name=path", "name=docker-image://REF" or "name=oci-layout://PATH[:TAG|@DIGEST]"): FROM name, COPY --from=name and RUN --mount=from=name read them instead of a stage or image of that name; repeatable.
    #[arg(long = "build-context", value_name = "NAME=VALUE")]
    pub build_context: Vec<String>,
    /// Size of /dev/shm in RUN steps (bytes, or with a unit: 128m, 1g; default 64m).
    #[arg(long = "shm-size", value_name = "BYTES")]
    pub shm_size: Option<String>,
    /// buildx's --ulimit (not supported yet).
    #[arg(long = "ulimit", hide = true, value_name = "ULIMIT")]
    pub ulimit: Vec<String>,
    /// buildx's --cgroup-parent (not supported yet).
    #[arg(long = "cgroup-parent", hide = true, value_name = "PARENT")]
    pub cgroup_parent: Option<String>,

    /// Kubernetes docker-registry secret with push/pull credentials ("file:PATH" reads one from a file).
    #[arg(long, value_name = "NAME")]
    pub registry_secret: Option<String>,

    /// Limits on waiting for registries: DURATION for all, or KIND=DURATION,... with KIND connect, response (first byte of a reply), idle (silence mid-transfer), token, helper (credential helper); default connect=30s,response=2m,idle=1m,token=1m,helper=1m.
    #[arg(
        long = "registry-timeout",
        value_name = "SPEC",
        env = "KUBECTL_BUILD_REGISTRY_TIMEOUTS"
    )]
    pub registry_timeout: Option<String>,

    /// Registry host reached over plain HTTP or unverified TLS; repeatable.
    #[arg(long = "insecure-registry", value_name = "HOST")]
    pub insecure_registries: Vec<String>,

    /// Secret to expose to the build (format: "id=mysecret[,src=/local/secret]" or "id=X,env=VAR").
    #[arg(long = "secret", value_name = "SPEC")]
    pub secrets: Vec<String>,

    /// SSH agent socket or keys to expose to the build (format: "default|<id>[=<socket>|<key>[,<key>]]").
    #[arg(long = "ssh", value_name = "SPEC")]
    pub ssh: Vec<String>,

    /// Write the image ID to a file.
    #[arg(long, value_name = "FILE")]
    pub iidfile: Option<PathBuf>,

    /// Write build result metadata to a file.
    #[arg(long, value_name = "FILE")]
    pub metadata_file: Option<PathBuf>,

    /// Set the networking mode for the RUN instructions during build (default, none, host).
    #[arg(long, value_name = "MODE")]
    pub network: Option<String>,

    /// Allow extra privileged entitlement (e.g. "security.insecure" for RUN --security=insecure); repeatable, comma lists.
    #[arg(long = "allow", value_name = "ENTITLEMENT")]
    pub allow: Vec<String>,

    /// Add a custom host-to-IP mapping (format: "host:ip"); repeatable.
    #[arg(long = "add-host", value_name = "HOST:IP")]
    pub add_hosts: Vec<String>,

    /// External cache sources (e.g. "type=registry,ref=IMAGE").
    #[arg(long = "cache-from", value_name = "SPEC")]
    pub cache_from: Vec<String>,

    /// Cache export destinations (e.g. "type=registry,ref=IMAGE").
    #[arg(long = "cache-to", value_name = "SPEC")]
    pub cache_to: Vec<String>,

    /// Print the resolved plan for each platform and build nothing ("text" or "json").
    #[arg(long, value_enum, num_args = 0..=1, require_equals = true, default_missing_value = "text", value_name = "FORMAT")]
    pub dry_run: Option<DryRun>,
}
