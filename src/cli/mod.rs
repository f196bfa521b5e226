//! The `trustplane` command line: clap commands, table or JSON output,
//! progress for long work. `anyhow` is used here and in `main` only.

mod client;
mod demo;
mod options;
mod output;
mod rotate;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use zeroize::Zeroizing;

pub use client::{AdminConnection, connect};
pub use options::{
    DEFAULT_DATA_DIR, DEFAULT_SERVER_URL, DataDirOption, KekOption, MissingKek, PolicyOption,
    ServerCaOption, ServerOption, load_policy,
};
pub use output::Format;
pub use rotate::{AuditArgs, RotateCommand, RotationFlags};

use crate::agent::{self, AgentConfig};
use crate::ca::{self, CacertsFiles, KeyAlgorithm, Severity, system_time_to_unix};
use crate::config::KekSource;
use crate::proto;
use crate::proto::admin_service_client::AdminServiceClient;
use crate::proto::trust_bundle_service_client::TrustBundleServiceClient;
use crate::server::{self, Authority, DataDir, InitOptions, SystemClock};
use crate::sink::{self, ClusterSink, DirectorySink};
use crate::store::RedbStore;
use crate::wire;

/// trustplane: a CA and trust-bundle service for Istio multicluster meshes.
///
/// One central server issues each cluster its own intermediate CA and
/// publishes the mesh's trust bundle; an agent per cluster keeps Istio's
/// `cacerts` current.
#[derive(Debug, Parser)]
#[command(name = "trustplane", version, about, long_about = None)]
#[command(
    after_help = "Quick start:\n  trustplane demo                 # everything end to end, in one process\n  trustplane init --trust-domain cluster.local\n  trustplane server &\n  trustplane cluster add east"
)]
pub struct Cli {
    /// Log level [default: info; warn for `demo`] (RUST_LOG overrides).
    #[arg(long, global = true, env = "TRUSTPLANE_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Every command.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the mesh root (or import one), the control-plane CA and the admin credential.
    #[command(
        after_help = "Examples:\n  trustplane init --trust-domain cluster.local\n  trustplane init --trust-domain cluster.local --key-algorithm ecdsa-p384 --root-validity 20y\n  trustplane init --trust-domain cluster.local --import-root root-cert.pem --import-key root-key.pem\n  # the KEK outside the data directory (lookup order: --kek-file, TRUSTPLANE_KEK, <data-dir>/kek)\n  trustplane init --trust-domain cluster.local --kek-file /secure/trustplane-kek"
    )]
    Init(InitArgs),
    /// Run the central server (gRPC over TLS).
    #[command(
        after_help = "Examples:\n  trustplane server --data-dir trustplane-data --listen 0.0.0.0:8443 --server-name trustplane.example.com\n  # the KEK from a secret manager (lookup order: --kek-file, TRUSTPLANE_KEK, <data-dir>/kek)\n  TRUSTPLANE_KEK=\"$(cat /secure/trustplane-kek)\" trustplane server --data-dir trustplane-data"
    )]
    Server(ServerArgs),
    /// Run a cluster agent that keeps Istio's cacerts (Secret or directory) current.
    #[command(
        after_help = "Examples:\n  # in a pod: keep the Secret istio-system/cacerts current; identity in a Secret too\n  trustplane agent --server https://trustplane.example.com:8443 --server-ca control-plane-ca.pem \\\n      --join-token tp1.east.XXXX --leader-elect --health-listen 0.0.0.0:8080\n  # Deckhouse: another namespace, kubernetes.io/tls form, take over an existing cacerts Secret\n  trustplane agent --namespace d8-istio --secret-format tls --adopt-existing \\\n      --kubeconfig ~/.kube/east\n  # outside Kubernetes: enroll with the token from `trustplane cluster add east`, write a directory\n  trustplane agent --server https://trustplane.example.com:8443 --server-ca control-plane-ca.pem \\\n      --join-token tp1.east.XXXX --identity-dir /var/lib/trustplane --cacerts-dir /etc/cacerts\n  # later starts reuse the saved identity\n  trustplane agent --identity-dir /var/lib/trustplane --cacerts-dir /etc/cacerts"
    )]
    Agent(AgentArgs),
    /// Manage clusters (admin).
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Show server status: bundle, signing root, clusters (admin).
    #[command(after_help = "Examples:\n  trustplane status\n  trustplane status -o json")]
    Status(StatusArgs),
    /// Trust bundle commands.
    #[command(subcommand)]
    Bundle(BundleCommand),
    /// Rotate the mesh root without a moment of broken trust: plan, start, status, advance, abort (admin).
    #[command(
        subcommand,
        after_help = "Phases: stable {A} -> trust-new {A,B} -> sign-new (B signs; grace) -> retire-old {B} -> stable.\nEach step waits until every enrolled, non-excluded cluster has acknowledged it.\n\nExamples:\n  trustplane rotate plan\n  trustplane rotate start\n  trustplane rotate status\n  trustplane rotate advance --wait                 # trust-new -> sign-new\n  trustplane rotate advance --wait --timeout 30h   # sign-new -> retire-old, after the grace (24h)\n  trustplane rotate advance --wait                 # retire-old -> stable\n  trustplane rotate abort"
    )]
    Rotate(RotateCommand),
    /// Show the audit log: rotation steps, exclusions, reissues (admin).
    #[command(after_help = "Examples:\n  trustplane audit\n  trustplane audit --limit 200 -o json")]
    Audit(AuditArgs),
    /// Offline: generate a cluster's key and sign its cacerts files locally (server must be stopped).
    #[command(
        after_help = "Examples (replaces Istio's tools/certs Makefiles):\n  trustplane issue --cluster east --out east/\n  kubectl create secret generic cacerts -n istio-system --from-file=east/\n  trustplane issue --cluster west --out west/ -o json"
    )]
    Issue(IssueArgs),
    /// Check a cacerts directory the way istiod loads it.
    #[command(
        after_help = "Examples:\n  trustplane verify /etc/cacerts\n  trustplane verify east/ -o json"
    )]
    Verify(VerifyArgs),
    /// Run the whole flow in one process: server, two clusters, two agents, cross-cluster trust check.
    #[command(
        after_help = "Examples:\n  trustplane demo\n  trustplane demo --keep-running --dir /tmp/trustplane-demo"
    )]
    Demo(demo::DemoArgs),
}

/// `init` flags.
#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// `--data-dir`.
    #[command(flatten)]
    pub data_dir: DataDirOption,
    /// Trust domain of the mesh.
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,
    /// Subject organisation [default: the policy's].
    #[arg(long)]
    pub organisation: Option<String>,
    /// Root key algorithm.
    #[arg(long, default_value = "ecdsa-p256", value_parser = parse_generated_algorithm)]
    pub key_algorithm: KeyAlgorithm,
    /// Root validity.
    #[arg(long, default_value = "10y", value_parser = humantime::parse_duration)]
    pub root_validity: Duration,
    /// Import this root certificate (PEM) instead of creating one.
    #[arg(long, requires = "import_key")]
    pub import_root: Option<PathBuf>,
    /// The imported root's key (PKCS#8, SEC1 or PKCS#1 PEM).
    #[arg(long, requires = "import_root")]
    pub import_key: Option<PathBuf>,
    /// `--policy`.
    #[command(flatten)]
    pub policy: PolicyOption,
    /// `--kek-file` and the KEK lookup order.
    #[command(flatten)]
    pub kek: KekOption,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Format,
}

/// `server` flags.
#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// `--data-dir`.
    #[command(flatten)]
    pub data_dir: DataDirOption,
    /// Listen address.
    #[arg(long, env = "TRUSTPLANE_LISTEN", default_value = "127.0.0.1:8443")]
    pub listen: SocketAddr,
    /// Extra DNS name or IP address for the server certificate (repeatable; comma-separated in TRUSTPLANE_SERVER_NAME).
    #[arg(
        long = "server-name",
        env = "TRUSTPLANE_SERVER_NAME",
        value_name = "NAME",
        value_delimiter = ','
    )]
    pub server_names: Vec<String>,
    /// `--policy`.
    #[command(flatten)]
    pub policy: PolicyOption,
    /// `--kek-file` and the KEK lookup order.
    #[command(flatten)]
    pub kek: KekOption,
}

/// Where the agent writes Istio's cacerts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AgentSink {
    /// A directory istiod mounts (--cacerts-dir).
    Directory,
    /// The Secret <namespace>/cacerts istiod mounts.
    Kubernetes,
}

/// `agent` flags.
#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// `--server`.
    #[command(flatten)]
    pub server: ServerOption,
    /// `--server-ca`.
    #[command(flatten)]
    pub server_ca: ServerCaOption,
    /// One-time join token from `trustplane cluster add` (needed to enroll).
    #[arg(long, env = "TRUSTPLANE_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,
    /// Where the agent keeps its enrollment identity (client key 0600) [default with --sink kubernetes: the Secret <namespace>/trustplane-agent-identity].
    #[arg(long, env = "TRUSTPLANE_IDENTITY_DIR")]
    pub identity_dir: Option<PathBuf>,
    /// Where to write the cacerts [default: directory if --cacerts-dir is given, else kubernetes].
    #[arg(long, value_enum, env = "TRUSTPLANE_SINK")]
    pub sink: Option<AgentSink>,
    /// The cacerts directory istiod mounts (--sink directory).
    #[arg(long, env = "TRUSTPLANE_CACERTS_DIR")]
    pub cacerts_dir: Option<PathBuf>,
    /// Namespace of the cacerts Secret, the identity Secret and the leader-election Lease.
    #[arg(long, env = "TRUSTPLANE_NAMESPACE", default_value = sink::kube::DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// Keys of the cacerts Secret: istio (ca-cert.pem, ca-key.pem, cert-chain.pem, root-cert.pem) or tls (tls.crt, tls.key, ca.crt).
    #[arg(long, env = "TRUSTPLANE_SECRET_FORMAT", default_value = "istio")]
    pub secret_format: sink::SecretFormat,
    /// Take over a cacerts Secret that trustplane did not create (its other keys and labels are kept).
    #[arg(long, env = "TRUSTPLANE_ADOPT_EXISTING")]
    pub adopt_existing: bool,
    /// Kubeconfig file [default: the pod's ServiceAccount, else KUBECONFIG or ~/.kube/config].
    #[arg(long, env = "TRUSTPLANE_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Run several replicas: only the holder of the Lease --lease-name works, the others wait.
    #[arg(long, env = "TRUSTPLANE_LEADER_ELECT")]
    pub leader_elect: bool,
    /// Name of the leader-election Lease.
    #[arg(long, env = "TRUSTPLANE_LEASE_NAME", default_value = agent::DEFAULT_LEASE_NAME)]
    pub lease_name: String,
    /// This replica's name in the Lease, a random suffix added [default: trustplane-agent]; in a pod, set TRUSTPLANE_LEASE_HOLDER to the pod's name.
    #[arg(long, env = "TRUSTPLANE_LEASE_HOLDER")]
    pub lease_holder: Option<String>,
    /// Serve /healthz and /readyz on this address, e.g. 0.0.0.0:8080.
    #[arg(long, env = "TRUSTPLANE_HEALTH_LISTEN")]
    pub health_listen: Option<SocketAddr>,
    /// Intermediate key algorithm.
    #[arg(long, env = "TRUSTPLANE_KEY_ALGORITHM", default_value = "ecdsa-p256", value_parser = parse_generated_algorithm)]
    pub key_algorithm: KeyAlgorithm,
}

/// `cluster` subcommands.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Register a cluster and print its one-time join token (or, with --kubeconfig, push mode).
    #[command(
        after_help = "Examples:\n  trustplane cluster add east\n  trustplane cluster add west --token-ttl 15m -o json\n  # push mode: no agent; the server writes the cluster's cacerts Secret itself\n  trustplane cluster add edge --kubeconfig edge.kubeconfig --namespace istio-system"
    )]
    Add {
        /// Cluster name (DNS label).
        name: String,
        /// Join token lifetime.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        token_ttl: Duration,
        /// Push mode: kubeconfig the server uses to write this cluster's cacerts (sealed at rest).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// Push mode: namespace of the cacerts Secret.
        #[arg(long, default_value = sink::kube::DEFAULT_NAMESPACE)]
        namespace: String,
        /// Push mode: keys of the cacerts Secret: istio (ca-cert.pem, ca-key.pem, cert-chain.pem, root-cert.pem) or tls (tls.crt, tls.key, ca.crt).
        #[arg(long, default_value = "istio")]
        secret_format: sink::SecretFormat,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
        /// Connection.
        #[command(flatten)]
        connection: AdminConnection,
    },
    /// List clusters with what they last reported.
    #[command(
        after_help = "Examples:\n  trustplane cluster list\n  trustplane cluster list -o json"
    )]
    List {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
        /// Connection.
        #[command(flatten)]
        connection: AdminConnection,
    },
    /// Give a cluster a new intermediate from the current signing root (e.g. after a key compromise).
    #[command(
        after_help = "Examples:\n  trustplane cluster reissue east\n  trustplane cluster list    # INTERMEDIATE shows the new serial once it is applied"
    )]
    Reissue {
        /// Cluster name.
        name: String,
        /// Connection.
        #[command(flatten)]
        connection: AdminConnection,
    },
    /// Remove a cluster: its agent's certificate is refused from then on.
    #[command(
        after_help = "Examples:\n  trustplane cluster remove east\n  trustplane cluster remove east -o json"
    )]
    Remove {
        /// Cluster name.
        name: String,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
        /// Connection.
        #[command(flatten)]
        connection: AdminConnection,
    },
}

/// `status` flags.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Format,
    /// Connection.
    #[command(flatten)]
    pub connection: AdminConnection,
}

/// Bundle output formats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum BundleFormat {
    /// Summary table.
    #[default]
    Table,
    /// Istio's root-cert.pem.
    Pem,
    /// SPIFFE bundle (JWKS).
    Spiffe,
    /// The whole bundle message as JSON.
    Json,
}

/// `bundle` subcommands.
#[derive(Debug, Subcommand)]
pub enum BundleCommand {
    /// Show the current trust bundle.
    #[command(
        after_help = "Examples:\n  trustplane bundle show\n  trustplane bundle show -o pem > root-cert.pem\n  trustplane bundle show -o spiffe"
    )]
    Show {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: BundleFormat,
        /// Connection.
        #[command(flatten)]
        connection: AdminConnection,
    },
}

/// `issue` flags.
#[derive(Debug, clap::Args)]
pub struct IssueArgs {
    /// Cluster name (DNS label).
    #[arg(long)]
    pub cluster: String,
    /// Output directory for ca-cert.pem, ca-key.pem, cert-chain.pem, root-cert.pem.
    #[arg(long)]
    pub out: PathBuf,
    /// `--data-dir`.
    #[command(flatten)]
    pub data_dir: DataDirOption,
    /// Intermediate lifetime [default: the policy's].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub lifetime: Option<Duration>,
    /// Intermediate key algorithm.
    #[arg(long, default_value = "ecdsa-p256", value_parser = parse_generated_algorithm)]
    pub key_algorithm: KeyAlgorithm,
    /// `--policy`.
    #[command(flatten)]
    pub policy: PolicyOption,
    /// `--kek-file` and the KEK lookup order.
    #[command(flatten)]
    pub kek: KekOption,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Format,
}

/// `verify` flags.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The cacerts directory.
    pub dir: PathBuf,
    /// Warn when a certificate expires within this time.
    #[arg(long, default_value = "30d", value_parser = humantime::parse_duration)]
    pub warn_within: Duration,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Format,
}

fn parse_generated_algorithm(text: &str) -> Result<KeyAlgorithm, String> {
    match text.parse::<KeyAlgorithm>() {
        Ok(KeyAlgorithm::Rsa) => Err("trustplane generates ECDSA keys only: use ecdsa-p256 or ecdsa-p384 (RSA roots can be imported)".into()),
        Ok(algorithm) => Ok(algorithm),
        Err(error) => Err(error.to_string()),
    }
}

/// Parses the command line and runs the command.
pub async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let default_level = match cli.command {
        // The demo's own step output is the story; logs only for problems.
        Command::Demo(_) => "warn",
        _ => "info",
    };
    crate::telemetry::init(cli.log_level.as_deref().unwrap_or(default_level));
    run(cli.command).await
}

/// Runs one command.
pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Init(args) => init(args),
        Command::Server(args) => serve(args).await,
        Command::Agent(args) => run_agent(args).await,
        Command::Cluster(command) => cluster(command).await,
        Command::Status(args) => status(args).await,
        Command::Bundle(BundleCommand::Show { output, connection }) => {
            bundle_show(output, connection).await
        }
        Command::Rotate(command) => rotate::run(command).await,
        Command::Audit(args) => rotate::audit(args).await,
        Command::Issue(args) => issue(args).await,
        Command::Verify(args) => verify(args).await,
        Command::Demo(args) => demo::run(args).await,
    }
}

/// Opens the embedded store under `data_dir` and loads the authority.
pub fn open_authority(
    data_dir: &DataDir,
    kek: &KekOption,
    policy: &PolicyOption,
) -> anyhow::Result<Authority> {
    if !data_dir.store_path().exists() {
        bail!(
            "no trustplane data in {}: run `trustplane init --data-dir {}` first",
            data_dir.path.display(),
            data_dir.path.display()
        );
    }
    let store = Arc::new(RedbStore::open(&data_dir.store_path())?);
    let (kek, _) = kek.load(data_dir, MissingKek::Fail)?;
    let policy = policy.load()?;
    Ok(Authority::open(store, &kek, policy, Arc::new(SystemClock))?)
}

fn init(args: InitArgs) -> anyhow::Result<()> {
    let data_dir = args.data_dir.layout();
    std::fs::create_dir_all(&data_dir.path)
        .with_context(|| format!("cannot create {}", data_dir.path.display()))?;
    let policy = args.policy.load()?;
    let import = match (&args.import_root, &args.import_key) {
        (Some(certificate), Some(key)) => Some((
            std::fs::read_to_string(certificate)
                .with_context(|| format!("cannot read {}", certificate.display()))?,
            Zeroizing::new(
                std::fs::read_to_string(key)
                    .with_context(|| format!("cannot read {}", key.display()))?,
            ),
        )),
        _ => None,
    };
    let store = RedbStore::open(&data_dir.store_path())?;
    let (kek, kek_source) = args.kek.load(&data_dir, MissingKek::Create)?;
    let kek_file = match kek_source {
        KekSource::File(path) => Some(path),
        KekSource::Environment(_) => None,
    };
    let options = InitOptions {
        trust_domain: args.trust_domain.clone(),
        organisation: args.organisation,
        key_algorithm: args.key_algorithm,
        root_validity: args.root_validity,
        import,
        policy,
    };
    let outcome = server::initialize(&store, &kek, &data_dir, &options, SystemTime::now())?;
    let root = &outcome.root;
    if args.output == Format::Json {
        let json = serde_json::json!({
            "trust_domain": args.trust_domain,
            "root_serial": root.serial_hex()?,
            "root_subject": root.subject()?,
            "root_not_after": output::time(system_time_to_unix(root.not_after()?)),
            "imported": outcome.imported,
            "kek_file": kek_file.as_ref().map(|path| path.display().to_string()),
            "control_plane_ca": data_dir.control_plane_ca_path().display().to_string(),
            "admin_cert": data_dir.admin_cert_path().display().to_string(),
            "admin_key": data_dir.admin_key_path().display().to_string(),
        });
        println!("{}", serde_json::to_string_pretty(&json)?);
        return Ok(());
    }
    let mut table = output::table(&["", ""]);
    table.add_row(vec!["trust domain".to_string(), args.trust_domain.clone()]);
    table.add_row(vec![
        if outcome.imported {
            "root (imported)"
        } else {
            "root (created)"
        }
        .to_string(),
        root.subject()?,
    ]);
    table.add_row(vec!["root serial".to_string(), root.serial_hex()?]);
    table.add_row(vec![
        "root expires".to_string(),
        output::time(system_time_to_unix(root.not_after()?)),
    ]);
    table.add_row(vec![
        "store".to_string(),
        data_dir.store_path().display().to_string(),
    ]);
    table.add_row(vec![
        "control-plane CA".to_string(),
        data_dir.control_plane_ca_path().display().to_string(),
    ]);
    table.add_row(vec![
        "admin credential".to_string(),
        format!("{} (+ key, 0600)", data_dir.admin_cert_path().display()),
    ]);
    println!("{table}");
    match kek_file {
        Some(path) => println!(
            "\nThe root key is sealed with the key-encryption key in {} (0600).\nMove it off this disk (e.g. into a secret manager) and start the server with\n  --kek-file <path>   or   TRUSTPLANE_KEK=<contents>   (looked up in that order, then <data-dir>/kek)\nAnyone with both the data directory and that file can sign as your mesh root.",
            path.display()
        ),
        None => {
            println!("\nThe root key is sealed with the key-encryption key from TRUSTPLANE_KEK.")
        }
    }
    println!(
        "\nNext: trustplane server --data-dir {}",
        data_dir.path.display()
    );
    Ok(())
}

async fn serve(args: ServerArgs) -> anyhow::Result<()> {
    let data_dir = args.data_dir.layout();
    let authority = Arc::new(open_authority(&data_dir, &args.kek, &args.policy)?);
    let mut dns_names = Vec::new();
    let mut ip_addresses = Vec::new();
    for name in args.server_names {
        match name.parse::<IpAddr>() {
            Ok(address) => ip_addresses.push(address),
            Err(_) => dns_names.push(name),
        }
    }
    let config = server::ServerConfig {
        listen: args.listen,
        dns_names,
        ip_addresses,
    };
    let mut running = server::start(authority, &config).await?;
    println!(
        "trustplane server for trust domain {} listening on {} (bundle version {})",
        running.authority.trust_domain(),
        running.url(),
        running.authority.publication.current().bundle.version()
    );
    tokio::select! {
        result = running.wait() => result?,
        _ = shutdown_signal() => {
            println!("shutting down");
            running.shutdown().await?;
        }
    }
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}

async fn run_agent(args: AgentArgs) -> anyhow::Result<()> {
    let server_ca_pem = match &args.server_ca.path {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read --server-ca {}", path.display()))?,
        ),
        None => None,
    };
    let sink_kind = args.sink.unwrap_or(if args.cacerts_dir.is_some() {
        AgentSink::Directory
    } else {
        AgentSink::Kubernetes
    });
    if sink_kind == AgentSink::Directory && args.identity_dir.is_none() {
        bail!("--sink directory needs --identity-dir <dir> (where the agent keeps its identity)");
    }
    let client = if sink_kind == AgentSink::Kubernetes || args.leader_elect {
        Some(sink::kube::connect(args.kubeconfig.as_deref()).await?)
    } else {
        None
    };
    let identity: Arc<dyn agent::IdentityStore> = match (&args.identity_dir, &client) {
        (Some(dir), _) => Arc::new(agent::FileIdentityStore::new(dir.clone())),
        (None, Some(client)) => Arc::new(agent::KubernetesIdentityStore::new(
            client.clone(),
            &args.namespace,
        )),
        (None, None) => bail!("--identity-dir <dir> is needed without Kubernetes"),
    };
    let sink: Arc<dyn ClusterSink> = match (sink_kind, &args.cacerts_dir, &client) {
        (AgentSink::Directory, Some(dir), _) => Arc::new(DirectorySink::new(dir.clone())),
        (AgentSink::Directory, None, _) => {
            bail!("--sink directory needs --cacerts-dir <dir> (the directory istiod mounts)")
        }
        (AgentSink::Kubernetes, Some(_), _) => {
            bail!(
                "--cacerts-dir is for --sink directory; with --sink kubernetes the agent writes the Secret <namespace>/cacerts"
            )
        }
        (AgentSink::Kubernetes, None, Some(client)) => Arc::new(sink::KubernetesSink::new(
            client.clone(),
            sink::KubernetesSinkOptions {
                namespace: args.namespace.clone(),
                secret_name: sink::kube::DEFAULT_SECRET_NAME.to_string(),
                format: args.secret_format,
                adopt_existing: args.adopt_existing,
            },
        )),
        (AgentSink::Kubernetes, None, None) => bail!("no Kubernetes client"),
    };
    let saved_server = match &args.server.url {
        Some(_) => None,
        None => match identity.load().await? {
            agent::StoredIdentity::Complete(saved) => saved.server,
            _ => None,
        },
    };
    let Some(server) = args.server.url.or(saved_server) else {
        bail!(
            "pass --server https://<trustplane>:8443 (no server saved with the identity in {} yet)",
            identity.describe()
        );
    };
    let config = AgentConfig {
        server_ca_pem,
        join_token: args.join_token.map(Zeroizing::new),
        key_algorithm: args.key_algorithm,
        ..AgentConfig::new(server, args.identity_dir.unwrap_or_default())
    };
    println!(
        "trustplane agent writing {} (identity in {})",
        sink.describe(),
        identity.describe()
    );
    let mut handle = match (args.leader_elect, client) {
        (true, Some(client)) => {
            let mut lease = agent::LeaseOptions::new(client, &args.namespace);
            lease.name = args.lease_name;
            if let Some(holder) = &args.lease_holder {
                lease.holder_id = agent::unique_holder_id(holder);
            }
            println!(
                "competing for the leader Lease {}/{} as {}",
                lease.namespace, lease.name, lease.holder_id
            );
            agent::spawn_with_leader_election(config, identity, sink, lease)
        }
        _ => agent::spawn_with_identity(config, identity, sink),
    };
    if let Some(address) = args.health_listen {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| format!("cannot listen on --health-listen {address}"))?;
        println!("serving /healthz and /readyz on http://{address}");
        tokio::spawn(agent::serve_health(
            listener,
            handle.status.clone(),
            handle.stop_signal(),
        ));
    }
    let signalled = tokio::select! {
        result = &mut handle.task => {
            result.context("agent task failed")??;
            false
        }
        _ = shutdown_signal() => true,
    };
    if signalled {
        println!("stopping agent");
        handle.stop();
        // Time to release the leader lease; then stop regardless.
        if tokio::time::timeout(Duration::from_secs(10), &mut handle.task)
            .await
            .is_err()
        {
            handle.task.abort();
        }
    }
    Ok(())
}

async fn cluster(command: ClusterCommand) -> anyhow::Result<()> {
    match command {
        ClusterCommand::Add {
            name,
            token_ttl,
            kubeconfig,
            namespace,
            secret_format,
            output,
            connection,
        } => {
            let kubeconfig_text = match &kubeconfig {
                Some(path) => Zeroizing::new(
                    std::fs::read_to_string(path)
                        .with_context(|| format!("cannot read --kubeconfig {}", path.display()))?,
                ),
                None => Zeroizing::new(String::new()),
            };
            let mut client = AdminServiceClient::new(connection.connect().await?);
            let response = client
                .add_cluster(proto::AddClusterRequest {
                    name: name.clone(),
                    token_ttl_seconds: token_ttl.as_secs(),
                    kubeconfig: kubeconfig_text.to_string(),
                    namespace: namespace.clone(),
                    secret_format: secret_format.as_str().to_string(),
                    format: proto::SecretFormat::from(secret_format).into(),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            if kubeconfig.is_some() {
                if output == Format::Json {
                    let json = serde_json::json!({"cluster": name, "mode": "push", "namespace": namespace, "secret_format": secret_format.as_str()});
                    println!("{}", serde_json::to_string_pretty(&json)?);
                } else {
                    println!(
                        "cluster {name} registered in push mode: the server writes Secret {namespace}/cacerts ({} format) itself.\nWatch it with: trustplane cluster list",
                        secret_format.as_str()
                    );
                }
                return Ok(());
            }
            if output == Format::Json {
                let json = serde_json::json!({
                    "cluster": name,
                    "join_token": response.join_token,
                    "expires": output::time(response.token_expires_unix),
                });
                println!("{}", serde_json::to_string_pretty(&json)?);
            } else {
                let data_dir = connection.data_dir.layout();
                println!(
                    "cluster {name} registered; one-time join token (expires {}):\n",
                    output::time(response.token_expires_unix)
                );
                println!("  {}\n", response.join_token);
                let ca = data_dir.control_plane_ca_path();
                println!(
                    "In the cluster (Secret istio-system/cacerts, see deploy/kubernetes/agent.yaml):\n  kubectl -n istio-system create configmap trustplane-server-ca --from-file=ca.pem={ca}\n  kubectl -n istio-system create secret generic trustplane-join-token --from-literal=token={token}\n  kubectl -n istio-system apply -f deploy/kubernetes/agent-rbac.yaml -f deploy/kubernetes/agent.yaml\n\nOr outside Kubernetes, writing a directory:\n  trustplane agent --server {server} --server-ca {ca} \\\n    --join-token {token} --identity-dir <dir> --cacerts-dir <dir>",
                    ca = ca.display(),
                    token = response.join_token,
                    server = connection.server_url(),
                );
            }
        }
        ClusterCommand::List { output, connection } => {
            let mut client = AdminServiceClient::new(connection.connect().await?);
            let response = client
                .list_clusters(proto::ListClustersRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            print_clusters(&response.clusters, response.bundle_version, output)?;
        }
        ClusterCommand::Reissue { name, connection } => {
            let mut client = AdminServiceClient::new(connection.connect().await?);
            client
                .reissue_cluster(proto::ReissueClusterRequest { name: name.clone() })
                .await
                .map_err(status_error)?;
            println!(
                "cluster {name}: new intermediate requested; its agent (or the server, in push mode) replaces the intermediate from the current signing root shortly"
            );
        }
        ClusterCommand::Remove {
            name,
            output,
            connection,
        } => {
            let mut client = AdminServiceClient::new(connection.connect().await?);
            client
                .remove_cluster(proto::RemoveClusterRequest { name: name.clone() })
                .await
                .map_err(status_error)?;
            if output == Format::Json {
                let json = serde_json::json!({ "removed": name });
                println!("{}", serde_json::to_string_pretty(&json)?);
            } else {
                println!("cluster {name} removed; its agent's certificate is refused from now on");
            }
        }
    }
    Ok(())
}

fn cluster_json(cluster: &proto::ClusterStatus) -> serde_json::Value {
    serde_json::json!({
        "name": cluster.name,
        "state": wire::cluster_state(cluster.cluster_state, &cluster.state).as_str(),
        "created": output::time(cluster.created_unix),
        "applied_bundle_version": cluster.applied_bundle_version,
        "intermediate_serial": cluster.intermediate_serial,
        "intermediate_not_after": output::time(cluster.intermediate_not_after_unix),
        "last_report": output::time(cluster.last_report_unix),
        "last_error": cluster.last_error,
    })
}

fn print_clusters(
    clusters: &[proto::ClusterStatus],
    bundle_version: u64,
    format: Format,
) -> anyhow::Result<()> {
    if format == Format::Json {
        let json = serde_json::json!({
            "bundle_version": bundle_version,
            "clusters": clusters.iter().map(cluster_json).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&json)?);
        return Ok(());
    }
    let now = system_time_to_unix(SystemTime::now());
    let mut table = output::table(&[
        "CLUSTER",
        "STATE",
        "BUNDLE",
        "INTERMEDIATE",
        "EXPIRES",
        "LAST REPORT",
        "ERROR",
    ]);
    for cluster in clusters {
        let bundle = if cluster.last_report_unix == 0 {
            "-".to_string()
        } else if cluster.applied_bundle_version == bundle_version {
            format!("v{} (current)", cluster.applied_bundle_version)
        } else {
            format!(
                "v{} (behind v{bundle_version})",
                cluster.applied_bundle_version
            )
        };
        table.add_row(vec![
            cluster.name.clone(),
            wire::cluster_state(cluster.cluster_state, &cluster.state)
                .as_str()
                .to_string(),
            bundle,
            output::short_hex(&cluster.intermediate_serial),
            output::time(cluster.intermediate_not_after_unix),
            output::age(cluster.last_report_unix, now),
            if cluster.last_error.is_empty() {
                "-".into()
            } else {
                cluster.last_error.clone()
            },
        ]);
    }
    if clusters.is_empty() {
        println!("no clusters yet: add one with `trustplane cluster add <name>`");
    } else {
        println!("{table}");
    }
    Ok(())
}

async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let mut client = AdminServiceClient::new(args.connection.connect().await?);
    let response = client
        .status(proto::StatusRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    let bundle = response.bundle.clone().unwrap_or_default();
    if args.output == Format::Json {
        let json = serde_json::json!({
            "trust_domain": response.trust_domain,
            "bundle_version": bundle.version,
            "bundle_digest": bundle.digest,
            "signing_root_serial": response.signing_root_serial,
            "signing_root_subject": response.signing_root_subject,
            "signing_root_not_after": output::time(response.signing_root_not_after_unix),
            "clusters": response.clusters.iter().map(cluster_json).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&json)?);
        return Ok(());
    }
    let mut table = output::table(&["", ""]);
    table.add_row(vec![
        "trust domain".to_string(),
        response.trust_domain.clone(),
    ]);
    table.add_row(vec![
        "bundle".to_string(),
        format!("v{} sha256:{}", bundle.version, bundle.digest),
    ]);
    table.add_row(vec![
        "signing root".to_string(),
        format!(
            "{} ({})",
            response.signing_root_subject, response.signing_root_serial
        ),
    ]);
    table.add_row(vec![
        "root expires".to_string(),
        output::time(response.signing_root_not_after_unix),
    ]);
    println!("{table}");
    print_clusters(&response.clusters, bundle.version, Format::Table)
}

async fn bundle_show(format: BundleFormat, connection: AdminConnection) -> anyhow::Result<()> {
    let mut client = TrustBundleServiceClient::new(connection.connect().await?);
    let bundle = client
        .get_bundle(proto::GetBundleRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    match format {
        BundleFormat::Pem => print!("{}", bundle.root_cert_pem),
        BundleFormat::Spiffe => println!("{}", bundle.spiffe_bundle_json),
        BundleFormat::Json => {
            let json = serde_json::json!({
                "trust_domain": bundle.trust_domain,
                "version": bundle.version,
                "digest": bundle.digest,
                "root_cert_pem": bundle.root_cert_pem,
                "spiffe_bundle": serde_json::from_str::<serde_json::Value>(&bundle.spiffe_bundle_json).unwrap_or(serde_json::Value::Null),
            });
            println!("{}", serde_json::to_string_pretty(&json)?);
        }
        BundleFormat::Table => {
            let roots = ca::Certificate::parse_pem_chain(&bundle.root_cert_pem)?;
            println!(
                "trust domain {}  version {}  sha256:{}",
                bundle.trust_domain, bundle.version, bundle.digest
            );
            let mut table = output::table(&["#", "ROOT", "SERIAL", "EXPIRES"]);
            for (index, root) in roots.iter().enumerate() {
                table.add_row(vec![
                    (index + 1).to_string(),
                    root.subject()?,
                    root.serial_hex()?,
                    output::time(system_time_to_unix(root.not_after()?)),
                ]);
            }
            println!("{table}");
        }
    }
    Ok(())
}

async fn issue(args: IssueArgs) -> anyhow::Result<()> {
    let data_dir = args.data_dir.layout();
    let authority = open_authority(&data_dir, &args.kek, &args.policy)?;
    let issued = authority
        .issuance
        .issue_with_local_key(&args.cluster, args.key_algorithm, args.lifetime)
        .await?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let mut written = Vec::new();
    let mut write = |name: &str, contents: &[u8], private: bool| -> anyhow::Result<()> {
        let path = args.out.join(name);
        if private {
            crate::signer::sealed::write_private_file(&path, contents)?;
        } else {
            let temporary = args.out.join(format!(".{name}.tmp"));
            std::fs::write(&temporary, contents)
                .with_context(|| format!("cannot write {}", temporary.display()))?;
            std::fs::rename(&temporary, &path)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        written.push(path.display().to_string());
        Ok(())
    };
    write("ca-key.pem", issued.key.to_pkcs8_pem().as_bytes(), true)?;
    write("ca-cert.pem", issued.certificate.to_pem().as_bytes(), false)?;
    write("cert-chain.pem", issued.cert_chain_pem.as_bytes(), false)?;
    write(
        "root-cert.pem",
        issued.bundle.root_cert_pem.as_bytes(),
        false,
    )?;
    let serial = issued.certificate.serial_hex()?;
    let not_after = output::time(system_time_to_unix(issued.certificate.not_after()?));
    if args.output == Format::Json {
        let json = serde_json::json!({
            "cluster": args.cluster,
            "out": args.out.display().to_string(),
            "files": written,
            "intermediate_serial": serial,
            "not_after": not_after,
        });
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        println!(
            "wrote {}/{{ca-cert.pem, ca-key.pem (0600), cert-chain.pem, root-cert.pem}} for cluster {}\nintermediate {serial} expires {not_after}\nload it into a cluster with:\n  kubectl create secret generic cacerts -n istio-system --from-file={}",
            args.out.display(),
            args.cluster,
            args.out.display()
        );
    }
    Ok(())
}

/// Reads the four cacerts files from a directory (missing ones are None).
pub fn read_cacerts_dir(dir: &Path) -> anyhow::Result<CacertsFiles> {
    if !dir.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    let read = |name: &str| -> anyhow::Result<Option<String>> {
        let path = dir.join(name);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text)),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error).with_context(|| format!("cannot read {}", path.display())),
        }
    };
    Ok(CacertsFiles {
        ca_cert: read("ca-cert.pem")?,
        ca_key: read("ca-key.pem")?.map(Zeroizing::new),
        cert_chain: read("cert-chain.pem")?,
        root_cert: read("root-cert.pem")?,
    })
}

async fn verify(args: VerifyArgs) -> anyhow::Result<()> {
    let files = read_cacerts_dir(&args.dir)?;
    let check = ca::check_cacerts(&files, SystemTime::now(), args.warn_within);
    if args.output == Format::Json {
        let json = serde_json::json!({
            "dir": args.dir.display().to_string(),
            "passed": check.passed(),
            "findings": check.findings,
        });
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        let mut table = output::table(&["CHECK", "RESULT", "DETAIL"]);
        for finding in &check.findings {
            let result = match finding.severity {
                Severity::Ok => "ok",
                Severity::Warning => "WARNING",
                Severity::Error => "ERROR",
            };
            table.add_row(vec![
                finding.check.clone(),
                result.to_string(),
                finding.message.clone(),
            ]);
        }
        println!("{table}");
        println!(
            "{}: {}",
            args.dir.display(),
            if check.passed() {
                "istiod would accept this cacerts set"
            } else {
                "istiod would NOT accept this cacerts set"
            }
        );
    }
    if !check.passed() {
        bail!("verification failed for {}", args.dir.display());
    }
    Ok(())
}

/// Turns a gRPC status into a readable error.
pub fn status_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!(
        "server refused the call ({:?}): {}",
        status.code(),
        status.message()
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use clap::CommandFactory as _;

    use super::Cli;

    /// Flags whose name recurs with another meaning in one-shot commands,
    /// which deliberately read no environment variable there: the agent's
    /// `--key-algorithm`, `--kubeconfig`, `--namespace` and `--secret-format`
    /// describe its own cluster; `init`, `issue`, `rotate` and `cluster add`
    /// use the same names for a root, an offline issue or a push-mode cluster.
    const ENVIRONMENT_ONLY_IN_DAEMONS: &[&str] =
        &["key-algorithm", "kubeconfig", "namespace", "secret-format"];

    /// Flags whose default differs by command because the setting does:
    /// `demo --timeout` waits for agents, `rotate advance --timeout` for a gate.
    const DEFAULT_PER_COMMAND: &[&str] = &["timeout"];

    /// One occurrence of a long flag: command path, environment variable, default.
    struct Occurrence {
        command: String,
        environment: Option<String>,
        default: Vec<String>,
    }

    fn collect(command: &clap::Command, path: &str, flags: &mut BTreeMap<String, Vec<Occurrence>>) {
        for argument in command.get_arguments() {
            let Some(long) = argument.get_long() else {
                continue;
            };
            flags.entry(long.to_string()).or_default().push(Occurrence {
                command: path.to_string(),
                environment: argument
                    .get_env()
                    .map(|name| name.to_string_lossy().into_owned()),
                default: argument
                    .get_default_values()
                    .iter()
                    .map(|value| value.to_string_lossy().into_owned())
                    .collect(),
            });
        }
        for subcommand in command.get_subcommands() {
            collect(
                subcommand,
                &format!("{path} {}", subcommand.get_name()),
                flags,
            );
        }
    }

    fn every_flag() -> BTreeMap<String, Vec<Occurrence>> {
        let mut command = Cli::command();
        command.build();
        let mut flags = BTreeMap::new();
        collect(&command, "trustplane", &mut flags);
        flags
    }

    #[test]
    fn the_command_line_definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_environment_variable_is_named_after_its_flag() {
        for (long, occurrences) in every_flag() {
            let expected = format!("TRUSTPLANE_{}", long.to_uppercase().replace('-', "_"));
            for occurrence in occurrences {
                if let Some(environment) = &occurrence.environment {
                    assert_eq!(
                        environment, &expected,
                        "`{} --{long}` reads {environment}, not {expected}",
                        occurrence.command
                    );
                }
            }
        }
    }

    #[test]
    fn the_store_and_connection_options_reach_every_command_that_needs_them() {
        let flags = every_flag();
        let commands = |long: &str| -> Vec<String> {
            flags[long]
                .iter()
                .map(|occurrence| occurrence.command.clone())
                .collect()
        };
        for long in ["kek-file", "policy"] {
            for command in ["init", "server", "issue", "demo"] {
                let command = format!("trustplane {command}");
                assert!(
                    commands(long).contains(&command),
                    "{command} has no --{long}"
                );
            }
        }
        let admin = commands("admin-cert");
        assert!(admin.len() >= 12, "{admin:?}");
        for command in admin.iter().chain([&"trustplane agent".to_string()]) {
            assert!(
                commands("server-ca").contains(command),
                "{command} has no --server-ca"
            );
            assert!(
                commands("server").contains(command),
                "{command} has no --server"
            );
        }
        for command in admin.iter().chain(
            ["trustplane init", "trustplane server", "trustplane issue"]
                .map(String::from)
                .iter(),
        ) {
            assert!(
                commands("data-dir").contains(command),
                "{command} has no --data-dir"
            );
        }
    }

    #[test]
    fn a_flag_has_one_environment_variable_and_one_default_in_every_command() {
        for (long, occurrences) in every_flag() {
            let first = &occurrences[0];
            for occurrence in &occurrences[1..] {
                if !ENVIRONMENT_ONLY_IN_DAEMONS.contains(&long.as_str()) {
                    assert_eq!(
                        occurrence.environment, first.environment,
                        "--{long}: `{}` and `{}` disagree on the environment variable",
                        first.command, occurrence.command
                    );
                }
                if !DEFAULT_PER_COMMAND.contains(&long.as_str()) {
                    assert_eq!(
                        occurrence.default, first.default,
                        "--{long}: `{}` and `{}` disagree on the default",
                        first.command, occurrence.command
                    );
                }
            }
        }
    }
}
