//! `trustplane agent`: its flags and the wiring of identity store, cacerts
//! sink, leader election and health endpoint around [`crate::agent`],
//! which owns the agent loop itself.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use zeroize::Zeroizing;

use super::options::{ServerCaOption, ServerOption, parse_generated_algorithm};
use super::signal::shutdown_signal;
use crate::agent::{self, AgentConfig};
use crate::ca::KeyAlgorithm;
use crate::sink::{self, ClusterSink, DirectorySink};

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
    /// Where the agent keeps its enrollment identity (client key 0600) [default with --sink kubernetes: the Secret <namespace>/<--identity-secret>].
    #[arg(long, env = "TRUSTPLANE_IDENTITY_DIR")]
    pub identity_dir: Option<PathBuf>,
    /// Name of the Secret in --namespace that holds the enrollment identity when there is no --identity-dir (the agent creates it; its RBAC names it).
    #[arg(long, env = "TRUSTPLANE_IDENTITY_SECRET", default_value = sink::kube::IDENTITY_SECRET_NAME, conflicts_with = "identity_dir")]
    pub identity_secret: String,
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
    /// Serve /healthz, /readyz and /metrics (Prometheus) on this address, e.g. 0.0.0.0:8080.
    #[arg(long, env = "TRUSTPLANE_HEALTH_LISTEN")]
    pub health_listen: Option<SocketAddr>,
    /// Intermediate key algorithm.
    #[arg(long, env = "TRUSTPLANE_KEY_ALGORITHM", default_value = "ecdsa-p256", value_parser = parse_generated_algorithm)]
    pub key_algorithm: KeyAlgorithm,
}

/// `trustplane agent`: enrolls (or reuses the saved identity) and keeps the
/// cluster's cacerts current until Ctrl-C or SIGTERM.
pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
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
        (None, Some(client)) => Arc::new(agent::KubernetesIdentityStore::with_name(
            client.clone(),
            &args.namespace,
            &args.identity_secret,
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
    let clock = config.clock.clone();
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
        let bound = listener.local_addr().unwrap_or(address);
        println!("serving /healthz, /readyz and /metrics on http://{bound}");
        tokio::spawn(agent::serve_health(
            listener,
            handle.status.clone(),
            clock,
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
