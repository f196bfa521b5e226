//! A real Kubernetes control plane for end-to-end tests: etcd and
//! kube-apiserver as child processes on free 127.0.0.1 ports, RBAC on, with a
//! cluster-admin kubeconfig and kubeconfigs for the `trustplane-agent`
//! ServiceAccount with the RBAC the Helm chart renders into
//! `deploy/manifests/agent.yaml`.
//!
//! It owns the processes, their certificates and their temporary directory.
//! It does not run controllers, a scheduler or kubelets: Secrets, Leases and
//! RBAC work; Pods never start.
//!
//! The binaries come from `tests/e2e/harness/build-peers.sh` (built from the
//! Go modules once, then cached). Set `TRUSTPLANE_E2E_KEEP=1` to keep a
//! cluster's directory (certificates, kubeconfigs, logs) after the test.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use base64::Engine;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::GroupVersionKind;
use kube::discovery::ApiResource;
use kube::{Api, Client, Config};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use tempfile::TempDir;
use time::OffsetDateTime;

/// The namespaces every cluster starts with, each holding the agent RBAC.
pub const AGENT_NAMESPACES: [&str; 2] = ["istio-system", "d8-istio"];
/// The agent's ServiceAccount, Role and RoleBinding name in `deploy/manifests/agent.yaml`.
pub const AGENT_SERVICE_ACCOUNT: &str = "trustplane-agent";
/// The agent manifests the Helm chart renders (deploy/render.sh); the harness applies the
/// ServiceAccount, Role and RoleBinding of this very file into each agent namespace.
pub const AGENT_MANIFEST_PATH: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/manifests/agent.yaml");
/// The kinds of `AGENT_MANIFEST_PATH` the harness applies: the agent's RBAC.
const AGENT_RBAC_KINDS: [&str; 3] = ["ServiceAccount", "Role", "RoleBinding"];
/// trustplane's CRDs (`trustplane admin crds`), applied by [`KubeCluster::apply_crds`].
pub const CRDS_PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/crds/trustplane.io.yaml"
);
const BUILD_PEERS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/e2e/harness/build-peers.sh"
);
const SERVICE_ACCOUNT_ISSUER: &str = "https://kubernetes.default.svc";
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(50);
const LOG_TAIL_LINES: usize = 30;
const START_ATTEMPTS: usize = 3;

/// True (after printing "skipped (TRUSTPLANE_SKIP_E2E=1)") when the developer
/// opted out of the e2e tests. CI never sets it: without it, a machine that
/// cannot build the peers fails the tests.
#[allow(clippy::disallowed_methods)] // the harness's own switch, not product configuration
pub fn skip_e2e() -> bool {
    let skip = std::env::var("TRUSTPLANE_SKIP_E2E").is_ok_and(|value| value == "1");
    if skip {
        println!("skipped (TRUSTPLANE_SKIP_E2E=1)");
    }
    skip
}

/// Installs rustls' ring provider for kube's TLS; a provider already installed is kept.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The binaries the harness starts, and their versions as they report them.
struct Peers {
    etcd: PathBuf,
    kube_apiserver: PathBuf,
    etcd_version: String,
    kube_apiserver_version: String,
}

static PEERS: OnceLock<Result<Peers, String>> = OnceLock::new();

/// Builds (first call only, for the whole process) or finds the peers.
/// Blocks for minutes on a machine that has never built them.
fn peers() -> anyhow::Result<&'static Peers> {
    PEERS
        .get_or_init(|| resolve_peers().map_err(|error| format!("{error:#}")))
        .as_ref()
        .map_err(|error| anyhow!("{error}"))
}

fn resolve_peers() -> anyhow::Result<Peers> {
    let etcd = build_peer("etcd")?;
    let kube_apiserver = build_peer("kube-apiserver")?;
    // "etcd Version: 3.5.35" on the first line.
    let etcd_version = version_output(&etcd)?
        .lines()
        .find_map(|line| line.strip_prefix("etcd Version:"))
        .map(|version| version.trim().to_owned())
        .with_context(|| format!("{} --version names no version", etcd.display()))?;
    // "Kubernetes v1.33.13".
    let kube_apiserver_version = version_output(&kube_apiserver)?
        .split_whitespace()
        .last()
        .map(str::to_owned)
        .with_context(|| format!("{} --version names no version", kube_apiserver.display()))?;
    Ok(Peers {
        etcd,
        kube_apiserver,
        etcd_version,
        kube_apiserver_version,
    })
}

/// A tool `tests/e2e/harness/build-peers.sh` builds and caches: `kubectl` (the kube-apiserver's
/// Kubernetes version) or `helm`. Blocks for minutes on a machine that has never built it.
pub fn build_tool(which: &str) -> anyhow::Result<PathBuf> {
    build_peer(which)
}

fn build_peer(which: &str) -> anyhow::Result<PathBuf> {
    let output = Command::new("bash")
        .arg(BUILD_PEERS)
        .arg(which)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {BUILD_PEERS} (is bash installed?)"))?;
    if !output.status.success() {
        bail!(
            "cannot build the e2e peer {which} with {BUILD_PEERS} ({}); it needs Go 1.24+ and \
             the Go module proxy (network) the first time. Its output:\n{}",
            output.status,
            tail(&String::from_utf8_lossy(&output.stderr), LOG_TAIL_LINES)
        );
    }
    let stdout = String::from_utf8(output.stdout).context("build-peers.sh printed non-UTF-8")?;
    let path = PathBuf::from(
        stdout
            .lines()
            .last()
            .with_context(|| format!("{BUILD_PEERS} {which} printed no path"))?
            .trim(),
    );
    if !path.is_file() {
        bail!(
            "{BUILD_PEERS} {which} printed {}, which is not a file",
            path.display()
        );
    }
    Ok(path)
}

fn version_output(binary: &Path) -> anyhow::Result<String> {
    let output = Command::new(binary)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {} --version", binary.display()))?;
    if !output.status.success() {
        bail!("{} --version failed: {}", binary.display(), output.status);
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A child process whose output goes to a log file.
struct Process {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Process {
    fn spawn(
        name: &'static str,
        binary: &Path,
        args: &[OsString],
        log: &Path,
    ) -> anyhow::Result<Self> {
        let log_file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("cannot open {}", log.display()))?;
        let stdout = log_file
            .try_clone()
            .with_context(|| format!("cannot duplicate {}", log.display()))?;
        let child = Command::new(binary)
            .args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("cannot start {name} ({})", binary.display()))?;
        Ok(Process {
            name,
            child,
            log: log.to_owned(),
        })
    }

    /// An error if the process has exited, with the end of its log.
    fn check_running(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(anyhow!(
                "{} exited ({status}); {}",
                self.name,
                self.log_tail()
            )),
            Err(error) => Err(error).with_context(|| format!("cannot poll {}", self.name)),
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        format!(
            "last lines of {} ({}):\n{}",
            self.name,
            self.log.display(),
            tail(&text, LOG_TAIL_LINES)
        )
    }

    /// SIGKILL, then reap. A no-op once the process has been reaped.
    fn kill(&mut self) -> anyhow::Result<()> {
        if let Ok(Some(_)) = self.child.try_wait() {
            return Ok(());
        }
        self.child
            .kill()
            .with_context(|| format!("cannot kill {} (pid {})", self.name, self.child.id()))?;
        self.child
            .wait()
            .with_context(|| format!("cannot wait for {} (pid {})", self.name, self.child.id()))?;
        Ok(())
    }
}

/// A process never outlives its handle: not on an error path, not in a panicking test.
impl Drop for Process {
    fn drop(&mut self) {
        if let Err(error) = self.kill() {
            eprintln!("{error:#}");
        }
    }
}

/// A running etcd + kube-apiserver pair. Dropping it kills both (also when a
/// test panics) and removes its directory.
pub struct KubeCluster {
    name: String,
    // Dropped after the processes are killed (Drop runs before fields drop).
    dir: TempDir,
    etcd: Option<Process>,
    apiserver: Option<Process>,
    apiserver_port: u16,
    apiserver_args: Vec<OsString>,
    ca_pem: String,
    admin_kubeconfig: PathBuf,
    peers: &'static Peers,
}

impl fmt::Debug for KubeCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // No tokens: they sit in files under `dir`.
        f.debug_struct("KubeCluster")
            .field("name", &self.name)
            .field("dir", &self.dir.path())
            .field("server_url", &self.server_url())
            .finish_non_exhaustive()
    }
}

impl KubeCluster {
    /// Builds peers if needed (once per process), starts etcd and kube-apiserver on free
    /// 127.0.0.1 ports, RBAC on, waits for /readyz, creates namespaces `istio-system` and
    /// `d8-istio`, applies the agent RBAC of deploy/manifests/agent.yaml into both namespaces. Prints one
    /// line naming the components and versions it started.
    ///
    /// Errors if the peers cannot be built, a process exits, or /readyz does not answer `ok`
    /// within 60 s (with the end of each log).
    pub async fn start(name: &str) -> anyhow::Result<KubeCluster> {
        install_crypto_provider();
        let started = Instant::now();
        let peers = tokio::task::spawn_blocking(peers)
            .await
            .context("the peer build task failed")??;
        let mut attempt = 1;
        let (cluster, phases) = loop {
            match Self::start_once(name, peers).await {
                Ok(started) => break started,
                // Ports are chosen free, then released to the processes: another
                // process may take one in between. Try other ports.
                Err(error)
                    if attempt < START_ATTEMPTS
                        && format!("{error:#}").contains("address already in use") =>
                {
                    eprintln!("KubeCluster {name}: a port was taken, retrying: {error:#}");
                    attempt += 1;
                }
                Err(error) => {
                    return Err(error).with_context(|| format!("cannot start KubeCluster {name}"));
                }
            }
        };
        println!(
            "KubeCluster {name}: started etcd {} and kube-apiserver {} at {} in {:.2?} ({phases})",
            peers.etcd_version,
            peers.kube_apiserver_version,
            cluster.server_url(),
            started.elapsed()
        );
        Ok(cluster)
    }

    /// The started cluster and how long each phase took.
    async fn start_once(
        name: &str,
        peers: &'static Peers,
    ) -> anyhow::Result<(KubeCluster, String)> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("trustplane-e2e-{name}-"))
            .tempdir()
            .context("cannot create the cluster's temporary directory")?;
        let [etcd_port, etcd_peer_port, apiserver_port] = free_ports()?;
        let files = ClusterFiles::write(dir.path(), name, apiserver_port)?;

        let etcd_client_url = format!("http://127.0.0.1:{etcd_port}");
        let etcd_peer_url = format!("http://127.0.0.1:{etcd_peer_port}");
        let etcd_args = vec![
            flag("name", "e2e"),
            flag("data-dir", dir.path().join("etcd")),
            flag("listen-client-urls", &etcd_client_url),
            flag("advertise-client-urls", &etcd_client_url),
            flag("listen-peer-urls", &etcd_peer_url),
            flag("initial-advertise-peer-urls", &etcd_peer_url),
            flag("initial-cluster", format!("e2e={etcd_peer_url}")),
            // Throwaway data: no fsync keeps two clusters on two cores fast.
            flag("unsafe-no-fsync", "true"),
        ];
        let apiserver_args = vec![
            flag("bind-address", "127.0.0.1"),
            flag("secure-port", apiserver_port.to_string()),
            // Without it kube-apiserver picks the host's first address (and fails on a host
            // with none). With 127.0.0.1 the `kubernetes` Endpoints would be invalid (loopback),
            // so the endpoint reconciler is off: no Pod here talks to the Service anyway.
            flag("advertise-address", "127.0.0.1"),
            flag("endpoint-reconciler-type", "none"),
            flag("etcd-servers", &etcd_client_url),
            flag("service-cluster-ip-range", "10.0.0.0/24"),
            flag("authorization-mode", "Node,RBAC"),
            flag("token-auth-file", &files.tokens),
            flag("tls-cert-file", &files.serving_cert),
            flag("tls-private-key-file", &files.serving_key),
            flag("service-account-issuer", SERVICE_ACCOUNT_ISSUER),
            flag(
                "service-account-key-file",
                &files.service_account_public_key,
            ),
            flag(
                "service-account-signing-key-file",
                &files.service_account_key,
            ),
            // Where it would write self-signed certificates (it needs none: ours are given).
            flag("cert-dir", dir.path().join("apiserver-certs")),
        ];

        let mut cluster = KubeCluster {
            name: name.to_owned(),
            dir,
            etcd: None,
            apiserver: None,
            apiserver_port,
            apiserver_args,
            ca_pem: files.ca_pem,
            admin_kubeconfig: files.admin_kubeconfig,
            peers,
        };
        // From here on, an error drops `cluster` (and `etcd`), which kills what was started.
        let etcd_log = cluster.dir.path().join("etcd.log");
        let mut etcd = Process::spawn("etcd", &peers.etcd, &etcd_args, &etcd_log)?;
        let phase = Instant::now();
        wait_for_port(&mut etcd, etcd_port).await?;
        cluster.etcd = Some(etcd);
        let etcd_took = phase.elapsed();
        let phase = Instant::now();
        cluster.start_apiserver().await?;
        let apiserver_took = phase.elapsed();
        let phase = Instant::now();

        let admin = cluster.admin_client().await?;
        create_namespaces(&admin).await?;
        let rbac = AgentRbac::load()?;
        for namespace in AGENT_NAMESPACES {
            rbac.apply(&admin, namespace).await?;
        }
        for namespace in AGENT_NAMESPACES {
            wait_for_agent_rbac(&admin, namespace).await?;
        }
        let phases = format!(
            "etcd {etcd_took:.2?}, kube-apiserver /readyz {apiserver_took:.2?}, namespaces and \
             agent RBAC {:.2?}",
            phase.elapsed()
        );
        Ok((cluster, phases))
    }

    /// The name given to `start`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `https://127.0.0.1:PORT`; the port stays the same across `start_apiserver`.
    pub fn server_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.apiserver_port)
    }

    /// The cluster CA (PEM) that signed the apiserver's serving certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The cluster's temporary directory: certificates, kubeconfigs, `etcd.log`, `kube-apiserver.log`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A kubeconfig file for a static-token user in group `system:masters` (cluster-admin).
    pub fn admin_kubeconfig_path(&self) -> PathBuf {
        self.admin_kubeconfig.clone()
    }

    /// A client built from `admin_kubeconfig_path` (a new connection pool each call).
    pub async fn admin_client(&self) -> anyhow::Result<Client> {
        client_from_kubeconfig(&self.admin_kubeconfig).await
    }

    /// A kubeconfig (file) for the `trustplane-agent` ServiceAccount in `namespace`,
    /// authenticated with a real ServiceAccount token from the TokenRequest API (valid for
    /// one hour) — i.e. exactly the RBAC of deploy/manifests/agent.yaml. Its context's
    /// namespace is `namespace`.
    ///
    /// Errors if the ServiceAccount does not exist there (see `AGENT_NAMESPACES`).
    pub async fn agent_kubeconfig_path(&self, namespace: &str) -> anyhow::Result<PathBuf> {
        self.service_account_kubeconfig_path(namespace, AGENT_SERVICE_ACCOUNT)
            .await
    }

    /// A kubeconfig (file) for the ServiceAccount `namespace/service_account`, authenticated
    /// with a real token from the TokenRequest API (valid for one hour): exactly the RBAC
    /// bound to that ServiceAccount, as a pod running as it would have. Its context's
    /// namespace is `namespace`.
    ///
    /// Errors if the ServiceAccount does not exist.
    pub async fn service_account_kubeconfig_path(
        &self,
        namespace: &str,
        service_account: &str,
    ) -> anyhow::Result<PathBuf> {
        let admin = self.admin_client().await?;
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![SERVICE_ACCOUNT_ISSUER.to_owned()],
                expiration_seconds: Some(3600),
                ..TokenRequestSpec::default()
            },
            ..TokenRequest::default()
        };
        let response = Api::<ServiceAccount>::namespaced(admin, namespace)
            .create_token_request(service_account, &PostParams::default(), &request)
            .await
            .with_context(|| {
                format!("TokenRequest for ServiceAccount {namespace}/{service_account}")
            })?;
        let token = response
            .status
            .map(|status| status.token)
            .filter(|token| !token.is_empty())
            .context("TokenRequest returned no token")?;
        let path = self
            .dir
            .path()
            .join(format!("{service_account}-{namespace}.kubeconfig"));
        let kubeconfig = kubeconfig_yaml(
            &self.name,
            &self.server_url(),
            &self.ca_pem,
            &format!("{namespace}-{service_account}"),
            &token,
            namespace,
        )?;
        write_private(&path, kubeconfig.as_bytes())?;
        Ok(path)
    }

    /// A client built from a fresh `agent_kubeconfig_path(namespace)`.
    pub async fn agent_client(&self, namespace: &str) -> anyhow::Result<Client> {
        let path = self.agent_kubeconfig_path(namespace).await?;
        client_from_kubeconfig(&path).await
    }

    /// Stops kube-apiserver only (SIGKILL), leaving etcd. A no-op if it is not running.
    pub async fn stop_apiserver(&mut self) -> anyhow::Result<()> {
        if let Some(mut apiserver) = self.apiserver.take() {
            apiserver.kill()?;
        }
        Ok(())
    }

    /// Starts kube-apiserver on the same port with the same certificates and flags, and waits
    /// for /readyz (60 s). Errors if it is already running, exits, or never becomes ready.
    pub async fn start_apiserver(&mut self) -> anyhow::Result<()> {
        if self.apiserver.is_some() {
            bail!("kube-apiserver of {} is already running", self.name);
        }
        let log = self.dir.path().join("kube-apiserver.log");
        if log.exists() {
            let mut file = OpenOptions::new()
                .append(true)
                .open(&log)
                .with_context(|| format!("cannot open {}", log.display()))?;
            writeln!(file, "---- trustplane e2e: kube-apiserver restarted ----")
                .with_context(|| format!("cannot write {}", log.display()))?;
        }
        let apiserver = Process::spawn(
            "kube-apiserver",
            &self.peers.kube_apiserver,
            &self.apiserver_args,
            &log,
        )?;
        self.apiserver = Some(apiserver);
        self.wait_ready().await
    }

    /// e.g. "kube-apiserver v1.33.13, etcd 3.5.35" (as the binaries report); names the
    /// problem instead if the peers could not be built. Builds them if needed (blocking).
    /// Applies the agent RBAC of deploy/manifests/agent.yaml into `namespace` (which must
    /// exist), as `start` does for `AGENT_NAMESPACES`, and waits until it is in effect.
    pub async fn apply_agent_rbac(&self, namespace: &str) -> anyhow::Result<()> {
        let admin = self.admin_client().await?;
        AgentRbac::load()?.apply(&admin, namespace).await?;
        wait_for_agent_rbac(&admin, namespace).await
    }

    /// Applies trustplane's CRDs as committed (deploy/crds/trustplane.io.yaml,
    /// server-side apply) and waits until the API server serves every kind.
    /// Returns how many it applied.
    pub async fn apply_crds(&self) -> anyhow::Result<usize> {
        use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
        use serde::Deserialize as _;
        let admin = self.admin_client().await?;
        let text = std::fs::read_to_string(CRDS_PATH)
            .with_context(|| format!("cannot read {CRDS_PATH}"))?;
        let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
        let mut plurals = Vec::new();
        for document in serde_yaml_ng::Deserializer::from_str(&text) {
            let crd = CustomResourceDefinition::deserialize(document)
                .with_context(|| format!("{CRDS_PATH} holds something other than CRDs"))?;
            let name = crd.metadata.name.clone().context("a CRD without a name")?;
            crds.patch(
                &name,
                &PatchParams::apply("trustplane-e2e").force(),
                &Patch::Apply(&crd),
            )
            .await
            .with_context(|| format!("cannot apply the CRD {name}"))?;
            plurals.push((
                crd.spec.group.clone(),
                crd.spec.names.plural.clone(),
                crd.spec.names.kind.clone(),
            ));
        }
        let deadline = Instant::now() + READY_TIMEOUT;
        for (group, plural, kind) in &plurals {
            let resource = ApiResource {
                group: group.clone(),
                version: "v1alpha1".to_owned(),
                api_version: format!("{group}/v1alpha1"),
                kind: kind.clone(),
                plural: plural.clone(),
            };
            let api: Api<DynamicObject> = Api::all_with(admin.clone(), &resource);
            loop {
                match api.list(&kube::api::ListParams::default().limit(1)).await {
                    Ok(_) => break,
                    Err(error) if Instant::now() < deadline => {
                        let _ = error;
                        tokio::time::sleep(POLL).await;
                    }
                    Err(error) => {
                        return Err(error)
                            .with_context(|| format!("{plural}.{group} is not served"));
                    }
                }
            }
        }
        Ok(plurals.len())
    }

    /// Creates the namespace `name`.
    pub async fn create_namespace(&self, name: &str) -> anyhow::Result<()> {
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        Api::<Namespace>::all(self.admin_client().await?)
            .create(&PostParams::default(), &namespace)
            .await
            .with_context(|| format!("cannot create namespace {name}"))?;
        Ok(())
    }

    pub fn versions() -> String {
        match peers() {
            Ok(peers) => format!(
                "kube-apiserver {}, etcd {}",
                peers.kube_apiserver_version, peers.etcd_version
            ),
            Err(error) => format!("peers unavailable: {error:#}"),
        }
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let client = self.admin_client().await?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            self.check_running()?;
            let request = http::Request::get("/readyz")
                .body(Vec::new())
                .context("cannot build the /readyz request")?;
            let last = match client.request_text(request).await {
                Ok(body) if body.trim() == "ok" => return Ok(()),
                Ok(body) => body,
                Err(error) => error.to_string(),
            };
            if Instant::now() >= deadline {
                bail!(
                    "kube-apiserver at {} not ready after {READY_TIMEOUT:?}; last /readyz: \
                     {last}\n{}",
                    self.server_url(),
                    self.log_tails()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn check_running(&mut self) -> anyhow::Result<()> {
        for process in [self.etcd.as_mut(), self.apiserver.as_mut()]
            .into_iter()
            .flatten()
        {
            process.check_running()?;
        }
        Ok(())
    }

    fn log_tails(&self) -> String {
        [self.etcd.as_ref(), self.apiserver.as_ref()]
            .into_iter()
            .flatten()
            .map(Process::log_tail)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for KubeCluster {
    fn drop(&mut self) {
        // kube-apiserver first, so that it does not log etcd's disappearance. Each Process
        // kills its child when dropped, before `dir` is removed.
        drop(self.apiserver.take());
        drop(self.etcd.take());
        #[allow(clippy::disallowed_methods)] // the harness's own switch
        let keep = std::env::var_os("TRUSTPLANE_E2E_KEEP").is_some();
        if keep {
            self.dir.disable_cleanup(true);
            eprintln!(
                "KubeCluster {}: kept {} (TRUSTPLANE_E2E_KEEP)",
                self.name,
                self.dir.path().display()
            );
        }
    }
}

/// Certificates, keys and the admin kubeconfig, written into the cluster directory.
struct ClusterFiles {
    ca_pem: String,
    serving_cert: PathBuf,
    serving_key: PathBuf,
    service_account_key: PathBuf,
    service_account_public_key: PathBuf,
    tokens: PathBuf,
    admin_kubeconfig: PathBuf,
}

impl ClusterFiles {
    fn write(dir: &Path, name: &str, apiserver_port: u16) -> anyhow::Result<Self> {
        let now = OffsetDateTime::now_utc();
        let not_before = now - time::Duration::hours(1);
        let not_after = now + time::Duration::days(7);

        let ca_key = KeyPair::generate().context("cannot generate the cluster CA key")?;
        let mut ca_params = CertificateParams::default();
        ca_params.distinguished_name = common_name(&format!("trustplane e2e {name} cluster CA"));
        ca_params.serial_number = Some(random_serial()?);
        ca_params.not_before = not_before;
        ca_params.not_after = not_after;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params
            .self_signed(&ca_key)
            .context("cannot sign the cluster CA")?;
        let issuer = Issuer::new(ca_params, ca_key);

        let serving_key = KeyPair::generate().context("cannot generate the apiserver key")?;
        let mut serving_params = CertificateParams::default();
        serving_params.distinguished_name = common_name("kube-apiserver");
        serving_params.serial_number = Some(random_serial()?);
        serving_params.not_before = not_before;
        serving_params.not_after = not_after;
        serving_params.is_ca = IsCa::ExplicitNoCa;
        serving_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        serving_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        serving_params.use_authority_key_identifier_extension = true;
        serving_params.subject_alt_names = vec![
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))),
            SanType::DnsName("localhost".try_into()?),
            SanType::DnsName("kubernetes".try_into()?),
            SanType::DnsName("kubernetes.default".try_into()?),
            SanType::DnsName("kubernetes.default.svc".try_into()?),
            SanType::DnsName("kubernetes.default.svc.cluster.local".try_into()?),
        ];
        let serving_cert = serving_params
            .signed_by(&serving_key, &issuer)
            .context("cannot sign the apiserver serving certificate")?;

        let service_account_key =
            KeyPair::generate().context("cannot generate the service-account signing key")?;
        let admin_token = hex::encode(random_bytes::<32>()?);

        let files = ClusterFiles {
            ca_pem: ca_cert.pem(),
            serving_cert: dir.join("apiserver.crt"),
            serving_key: dir.join("apiserver.key"),
            service_account_key: dir.join("service-account.key"),
            service_account_public_key: dir.join("service-account.pub"),
            tokens: dir.join("tokens.csv"),
            admin_kubeconfig: dir.join("admin.kubeconfig"),
        };
        write_private(&dir.join("ca.crt"), files.ca_pem.as_bytes())?;
        write_private(&files.serving_cert, serving_cert.pem().as_bytes())?;
        write_private(&files.serving_key, serving_key.serialize_pem().as_bytes())?;
        write_private(
            &files.service_account_key,
            service_account_key.serialize_pem().as_bytes(),
        )?;
        write_private(
            &files.service_account_public_key,
            service_account_key.public_key_pem().as_bytes(),
        )?;
        // token,user,uid,"group,..."
        write_private(
            &files.tokens,
            format!("{admin_token},trustplane-e2e-admin,trustplane-e2e-admin,\"system:masters\"\n")
                .as_bytes(),
        )?;
        let kubeconfig = kubeconfig_yaml(
            name,
            &format!("https://127.0.0.1:{apiserver_port}"),
            &files.ca_pem,
            "admin",
            &admin_token,
            "default",
        )?;
        write_private(&files.admin_kubeconfig, kubeconfig.as_bytes())?;
        Ok(files)
    }
}

/// The agent's RBAC objects from `deploy/manifests/agent.yaml`, with their API resources.
struct AgentRbac {
    objects: Vec<(DynamicObject, GroupVersionKind)>,
}

impl AgentRbac {
    /// The ServiceAccount, Role and RoleBinding of the rendered agent manifest, without their
    /// namespace: `apply_with` puts them (and the RoleBinding's subject) into the namespace it
    /// is given, so the chart's RBAC serves every agent namespace of a test cluster.
    fn load() -> anyhow::Result<Self> {
        let path = AGENT_MANIFEST_PATH;
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?;
        let mut objects = Vec::new();
        for document in serde_yaml_ng::Deserializer::from_str(&text) {
            let value: Option<serde_json::Value> = serde::Deserialize::deserialize(document)
                .with_context(|| format!("{path} is not valid YAML"))?;
            let Some(value) = value else { continue };
            let object: DynamicObject = serde_json::from_value(value)
                .with_context(|| format!("{path}: a document is not an object"))?;
            let types = object
                .types
                .as_ref()
                .with_context(|| format!("{path}: an object has no apiVersion/kind"))?;
            let gvk = GroupVersionKind::try_from(types)
                .with_context(|| format!("{path}: bad apiVersion {}", types.api_version))?;
            if !AGENT_RBAC_KINDS.contains(&gvk.kind.as_str()) {
                continue;
            }
            let mut object = object;
            object.metadata.namespace = None;
            objects.push((object, gvk));
        }
        let kinds: Vec<&str> = objects.iter().map(|(_, gvk)| gvk.kind.as_str()).collect();
        if kinds != AGENT_RBAC_KINDS {
            bail!(
                "{path} should hold one each of {AGENT_RBAC_KINDS:?} in that order, holds {kinds:?} \
                 (run deploy/render.sh)"
            );
        }
        Ok(AgentRbac { objects })
    }

    /// Server-side apply of every object into `namespace`.
    async fn apply(&self, client: &Client, namespace: &str) -> anyhow::Result<()> {
        let mut resources: HashMap<String, ApiResource> = HashMap::new();
        for (object, gvk) in &self.objects {
            let key = format!("{}/{}/{}", gvk.group, gvk.version, gvk.kind);
            let resource = match resources.get(&key) {
                Some(resource) => resource.clone(),
                None => {
                    let (resource, _) = kube::discovery::pinned_kind(client, gvk)
                        .await
                        .with_context(|| format!("discovery of {key}"))?;
                    resources.insert(key.clone(), resource.clone());
                    resource
                }
            };
            let name =
                object.metadata.name.as_deref().with_context(|| {
                    format!("{AGENT_MANIFEST_PATH}: a {} has no name", gvk.kind)
                })?;
            // The RoleBinding binds the ServiceAccount of the namespace it is applied to.
            let mut object = object.clone();
            if let Some(subjects) = object
                .data
                .get_mut("subjects")
                .and_then(|subjects| subjects.as_array_mut())
            {
                for subject in subjects {
                    subject["namespace"] = serde_json::Value::from(namespace);
                }
            }
            Api::<DynamicObject>::namespaced_with(client.clone(), namespace, &resource)
                .patch(
                    name,
                    &PatchParams::apply("trustplane-e2e").force(),
                    &Patch::Apply(&object),
                )
                .await
                .with_context(|| format!("cannot apply {} {namespace}/{name}", gvk.kind))?;
        }
        Ok(())
    }
}

async fn create_namespaces(admin: &Client) -> anyhow::Result<()> {
    let namespaces = Api::<Namespace>::all(admin.clone());
    for name in AGENT_NAMESPACES {
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        namespaces
            .create(&PostParams::default(), &namespace)
            .await
            .with_context(|| format!("cannot create namespace {name}"))?;
    }
    Ok(())
}

/// RBAC authorizes from informer caches: wait until the new RoleBinding is seen, so
/// that a test's first agent request is not refused by a cache that lags.
async fn wait_for_agent_rbac(admin: &Client, namespace: &str) -> anyhow::Result<()> {
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(format!(
                "system:serviceaccount:{namespace}:{AGENT_SERVICE_ACCOUNT}"
            )),
            groups: Some(vec![
                "system:serviceaccounts".to_owned(),
                format!("system:serviceaccounts:{namespace}"),
                "system:authenticated".to_owned(),
            ]),
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(namespace.to_owned()),
                verb: Some("update".to_owned()),
                group: Some("coordination.k8s.io".to_owned()),
                resource: Some("leases".to_owned()),
                // The Role names the Lease (resourceNames): the agent's default Lease name.
                name: Some(AGENT_SERVICE_ACCOUNT.to_owned()),
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    };
    let reviews = Api::<SubjectAccessReview>::all(admin.clone());
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let answer = reviews
            .create(&PostParams::default(), &review)
            .await
            .context("SubjectAccessReview")?;
        if answer.status.is_some_and(|status| status.allowed) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("the agent RBAC in {namespace} did not take effect within {READY_TIMEOUT:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Reads a kubeconfig file and builds a client from its current context.
pub async fn client_from_kubeconfig(path: &Path) -> anyhow::Result<Client> {
    install_crypto_provider();
    let kubeconfig = Kubeconfig::read_from(path)
        .with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("invalid kubeconfig {}", path.display()))?;
    Client::try_from(config)
        .with_context(|| format!("cannot build a client from {}", path.display()))
}

/// True if an `std::io::Error` of kind ConnectionRefused is in the error's source chain
/// (nothing listens on the server's port).
pub fn is_connection_refused(error: &kube::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = source {
        if current
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
        {
            return true;
        }
        source = current.source();
    }
    false
}

/// An error and all its sources, joined by ": ", for assertion messages.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut chain = error.to_string();
    let mut source = error.source();
    while let Some(current) = source {
        chain.push_str(": ");
        chain.push_str(&current.to_string());
        source = current.source();
    }
    chain
}

fn kubeconfig_yaml(
    cluster: &str,
    server: &str,
    ca_pem: &str,
    user: &str,
    token: &str,
    namespace: &str,
) -> anyhow::Result<String> {
    let ca_data = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let kubeconfig = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": cluster,
            "cluster": { "server": server, "certificate-authority-data": ca_data },
        }],
        "users": [{ "name": user, "user": { "token": token } }],
        "contexts": [{
            "name": format!("{user}@{cluster}"),
            "context": { "cluster": cluster, "user": user, "namespace": namespace },
        }],
        "current-context": format!("{user}@{cluster}"),
    });
    serde_yaml_ng::to_string(&kubeconfig).context("cannot serialize a kubeconfig")
}

/// Creates (or truncates) `path` with mode 0600: it may hold keys or tokens.
fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let mut file: File = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(contents)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Three distinct free ports on 127.0.0.1 (held together while chosen, then released).
fn free_ports() -> anyhow::Result<[u16; 3]> {
    let listeners = (0..3)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .context("cannot find free ports on 127.0.0.1")?;
    let mut ports = [0; 3];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener
            .local_addr()
            .context("cannot read a listener's address")?
            .port();
    }
    Ok(ports)
}

async fn wait_for_port(process: &mut Process, port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        process.check_running()?;
        if tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "{} does not listen on 127.0.0.1:{port} after {READY_TIMEOUT:?}; {}",
                process.name,
                process.log_tail()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `--name=value`.
fn flag(name: &str, value: impl AsRef<OsStr>) -> OsString {
    let mut flag = OsString::from(format!("--{name}="));
    flag.push(value);
    flag
}

fn common_name(name: &str) -> DistinguishedName {
    let mut distinguished_name = DistinguishedName::new();
    distinguished_name.push(DnType::CommonName, name);
    distinguished_name
}

fn random_bytes<const N: usize>() -> anyhow::Result<[u8; N]> {
    let mut bytes = [0; N];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| anyhow!("the system random generator failed"))?;
    Ok(bytes)
}

fn random_serial() -> anyhow::Result<SerialNumber> {
    let mut bytes = random_bytes::<16>()?;
    // Positive and non-zero as DER INTEGER.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
