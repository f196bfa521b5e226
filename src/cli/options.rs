//! Options that several commands share, each declared once and
//! `#[command(flatten)]`ed wherever it is used, so that a setting has one
//! flag, one environment variable (`--foo-bar` ⇔ `TRUSTPLANE_FOO_BAR`), one
//! default and one help text in every command. Also the one place that turns
//! them into a data directory, a policy and a key-encryption key.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;

use crate::ca::KeyAlgorithm;
use crate::config::{self, KekSource};
use crate::policy::Policy;
use crate::server::DataDir;
use crate::signer::sealed::Kek;
use crate::store::{KubeStore, KubeStoreConfig, RedbStore, Store, VaultKvStore};
use crate::vault::{Vault, VaultConfig, VaultSettings};

/// The data directory when `--data-dir` is not given.
pub const DEFAULT_DATA_DIR: &str = "trustplane-data";

/// The server admin commands talk to when `--server` is not given.
pub const DEFAULT_SERVER_URL: &str = "https://127.0.0.1:8443";

/// `--data-dir` (`TRUSTPLANE_DATA_DIR`).
#[derive(Clone, Debug, clap::Args)]
pub struct DataDirOption {
    /// Data directory `trustplane init` creates: store, key-encryption key, control-plane CA, admin credential.
    #[arg(
        id = "data_dir",
        long = "data-dir",
        env = "TRUSTPLANE_DATA_DIR",
        value_name = "DIR",
        default_value = DEFAULT_DATA_DIR
    )]
    pub path: PathBuf,
}

impl DataDirOption {
    /// The data directory's layout.
    pub fn layout(&self) -> DataDir {
        DataDir::new(&self.path)
    }
}

/// Where trustplane keeps its state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    /// redb in the data directory (one server).
    #[default]
    Embedded,
    /// Vault or OpenBao KV v2 under --vault-kv-mount/--vault-kv-prefix
    /// (several servers share it).
    VaultKv,
    /// Custom resources and Secrets in --store-namespace of a Kubernetes
    /// cluster (several servers share it; etcd replicates it).
    Kubernetes,
}

/// The namespace of `--store kubernetes` when none is given and trustplane
/// does not run in a pod.
pub const DEFAULT_STORE_NAMESPACE: &str = "trustplane";

/// Where a pod's ServiceAccount namespace is mounted.
const POD_NAMESPACE_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// `--store` (`TRUSTPLANE_STORE`) and the Vault settings the `vault-kv`
/// store connects with.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct StoreOption {
    /// Where the state lives: `embedded` (redb in the data directory), `vault-kv` (Vault/OpenBao KV v2, shared by several servers; needs the --vault-* settings) or `kubernetes` (custom resources and Secrets in --store-namespace, shared by several servers; needs the CRDs of `trustplane admin crds`). The KEK, the control-plane CA file and the admin credential stay in the data directory either way.
    #[arg(
        id = "store",
        long = "store",
        env = "TRUSTPLANE_STORE",
        value_enum,
        default_value_t
    )]
    pub kind: StoreKind,
    /// With --store kubernetes: the kubeconfig of the cluster that holds the state [default: the pod's ServiceAccount, else KUBECONFIG or ~/.kube/config].
    #[arg(id = "store_kubeconfig", long = "kubeconfig", value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// With --store kubernetes: the namespace of the state's objects [default: the pod's namespace, else trustplane].
    #[arg(
        id = "store_namespace",
        long = "store-namespace",
        env = "TRUSTPLANE_STORE_NAMESPACE",
        value_name = "NS"
    )]
    pub namespace: Option<String>,
    /// Vault connection (`--vault-addr`, `VAULT_ADDR`, `--vault-config`, ...):
    /// as given; [`VaultSettings::load`] merges and fills in the defaults.
    #[command(flatten)]
    pub vault: VaultSettings,
}

impl StoreOption {
    /// Opens the store: the embedded one under `data_dir` (created when
    /// missing), or the Vault KV one (checks the mount) over `vault` when
    /// given (one connection, one login, for the signer and the store),
    /// else over a connection of its own.
    pub fn open(
        &self,
        data_dir: &DataDir,
        vault: Option<&Arc<Vault>>,
    ) -> anyhow::Result<Arc<dyn Store>> {
        Ok(match (self.kind, vault) {
            (StoreKind::Embedded, _) => Arc::new(RedbStore::open(&data_dir.store_path())?),
            (StoreKind::VaultKv, Some(vault)) => Arc::new(VaultKvStore::with_vault(vault.clone())?),
            (StoreKind::VaultKv, None) => Arc::new(VaultKvStore::open(self.vault.load()?)?),
            (StoreKind::Kubernetes, _) => Arc::new(KubeStore::open(KubeStoreConfig {
                kubeconfig: self.kubeconfig.clone(),
                namespace: self.kube_namespace(),
            })?),
        })
    }

    /// The namespace of `--store kubernetes`: `--store-namespace`, else
    /// the pod's, else [`DEFAULT_STORE_NAMESPACE`].
    pub fn kube_namespace(&self) -> String {
        if let Some(namespace) = &self.namespace {
            return namespace.clone();
        }
        std::fs::read_to_string(POD_NAMESPACE_FILE)
            .ok()
            .map(|text| text.trim().to_string())
            .filter(|text| !text.is_empty())
            .unwrap_or_else(|| DEFAULT_STORE_NAMESPACE.to_string())
    }

    /// Whether the store is in Vault (and needs a Vault connection).
    pub fn is_vault(&self) -> bool {
        self.kind == StoreKind::VaultKv
    }

    /// Whether the store is the embedded one in the data directory.
    pub fn is_embedded(&self) -> bool {
        self.kind == StoreKind::Embedded
    }

    /// Where the store is, for people (`vault`: the loaded Vault settings).
    pub fn describe(&self, data_dir: &DataDir, vault: &VaultConfig) -> String {
        match self.kind {
            StoreKind::Embedded => data_dir.store_path().display().to_string(),
            StoreKind::VaultKv => format!(
                "Vault KV v2 {}/data/{}/ at {}",
                vault.kv_mount.trim_matches('/'),
                vault.kv_prefix.trim_matches('/'),
                vault.addr.as_deref().unwrap_or("(no VAULT_ADDR)")
            ),
            StoreKind::Kubernetes => format!(
                "Kubernetes namespace {} ({})",
                self.kube_namespace(),
                self.kubeconfig.as_ref().map_or_else(
                    || "in-cluster or KUBECONFIG".to_string(),
                    |path| path.display().to_string()
                )
            ),
        }
    }
}

/// `--policy` (`TRUSTPLANE_POLICY`).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct PolicyOption {
    /// Issuance policy file [default: the built-in policies/default.yaml].
    #[arg(
        id = "policy",
        long = "policy",
        env = "TRUSTPLANE_POLICY",
        value_name = "FILE"
    )]
    pub path: Option<PathBuf>,
}

impl PolicyOption {
    /// Loads the policy file, or the built-in default.
    pub fn load(&self) -> anyhow::Result<Policy> {
        load_policy(self.path.as_deref())
    }
}

/// Loads the policy file at `path`, or the built-in default.
pub fn load_policy(path: Option<&Path>) -> anyhow::Result<Policy> {
    match path {
        None => Ok(Policy::builtin_default()?),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read policy file {}", path.display()))?;
            Ok(Policy::from_yaml(&path.display().to_string(), &text)?)
        }
    }
}

/// `--kek-file` (`TRUSTPLANE_KEK_FILE`) and the lookup order of the
/// key-encryption key ([`config::kek_source`]).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct KekOption {
    /// Key-encryption key (KEK) file. Lookup order: this flag (or TRUSTPLANE_KEK_FILE), else the KEK itself (base64) in TRUSTPLANE_KEK, else <data-dir>/kek; `init` and `demo` create the file when it is missing.
    #[arg(
        id = "kek_file",
        long = "kek-file",
        env = "TRUSTPLANE_KEK_FILE",
        value_name = "FILE"
    )]
    pub file: Option<PathBuf>,
}

/// What to do when the KEK file the lookup order picked does not exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MissingKek {
    /// Create a new random KEK there, mode 0600 (`init`, `demo`).
    Create,
    /// Fail, saying how to provide one (every command that opens a store).
    Fail,
}

impl KekOption {
    /// The KEK, found by the one lookup order ([`config::kek_source`]:
    /// `--kek-file`, else `TRUSTPLANE_KEK`, else `<data-dir>/kek`), and where
    /// it came from.
    pub fn load(
        &self,
        data_dir: &DataDir,
        missing: MissingKek,
    ) -> anyhow::Result<(Kek, KekSource)> {
        let source = config::kek_source(self.file.as_deref(), &data_dir.kek_path());
        let kek = match &source {
            KekSource::Environment(text) => Kek::load(None, Some(text.as_str()))?,
            KekSource::File(path) if missing == MissingKek::Create && !path.exists() => {
                let kek = Kek::generate()?;
                kek.write_new_file(path)?;
                kek
            }
            KekSource::File(path) => Kek::load(Some(path), None)?,
        };
        Ok((kek, source))
    }
}

/// `--server` (`TRUSTPLANE_SERVER`).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ServerOption {
    /// Server URL [default: https://127.0.0.1:8443 for admin commands; for the agent, the URL saved with its identity at enrollment]. The agent also takes several replicas' URLs, comma-separated (https://a:8443,https://b:8443), and fails over between them.
    #[arg(
        id = "server",
        long = "server",
        env = "TRUSTPLANE_SERVER",
        value_name = "URL"
    )]
    pub url: Option<String>,
}

/// `--server-ca` (`TRUSTPLANE_SERVER_CA`): the control-plane CA that
/// verifies the server. `--ca-cert` is a hidden alias kept for old scripts.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ServerCaOption {
    /// Control-plane CA certificate that verifies the server [default for admin commands: <data-dir>/control-plane-ca.pem; the agent needs it to enroll].
    #[arg(
        id = "server_ca",
        long = "server-ca",
        alias = "ca-cert",
        env = "TRUSTPLANE_SERVER_CA",
        value_name = "FILE"
    )]
    pub path: Option<PathBuf>,
}

/// Parses `--key-algorithm` for a key trustplane generates: ECDSA only
/// (RSA roots can be imported, not created).
pub fn parse_generated_algorithm(text: &str) -> Result<KeyAlgorithm, String> {
    match text.parse::<KeyAlgorithm>() {
        Ok(KeyAlgorithm::Rsa) => Err("trustplane generates ECDSA keys only: use ecdsa-p256 or ecdsa-p384 (RSA roots can be imported)".into()),
        Ok(algorithm) => Ok(algorithm),
        Err(error) => Err(error.to_string()),
    }
}
