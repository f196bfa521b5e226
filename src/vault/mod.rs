//! Vault (or OpenBao, same API): one authenticated connection shared by the
//! PKI signer ([`crate::signer`]) and the KV v2 store ([`crate::store`]).
//!
//! Owns: the typed connection settings ([`VaultConfig`], flags and the
//! conventional `VAULT_*` variables), login, the current token, and turning
//! a failed call into a [`VaultError`] that names the Vault path and what to
//! do. Does not own: what is stored or signed there.

mod error;
pub mod kv;

pub use error::{VaultError, VaultErrorKind, classify, retry};

use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};

use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};
use zeroize::Zeroizing;

/// How to reach and log in to Vault. Every field is a flag whose
/// environment form is the conventional Vault variable where one exists.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct VaultConfig {
    /// Vault's address, e.g. https://vault.example:8200.
    #[arg(long = "vault-addr", env = "VAULT_ADDR")]
    pub addr: Option<String>,
    /// A Vault token (renewed before it expires).
    #[arg(long = "vault-token", env = "VAULT_TOKEN", hide_env_values = true)]
    pub token: Option<Secret>,
    /// PEM file of the CA that signed Vault's TLS certificate.
    #[arg(long = "vault-cacert", env = "VAULT_CACERT")]
    pub cacert: Option<PathBuf>,
    /// Vault Enterprise / OpenBao namespace (X-Vault-Namespace).
    #[arg(long = "vault-namespace", env = "VAULT_NAMESPACE")]
    pub namespace: Option<String>,
    /// PKI mount that holds the mesh root issuer.
    #[arg(
        long = "vault-pki-mount",
        env = "TRUSTPLANE_VAULT_PKI_MOUNT",
        default_value = "pki"
    )]
    pub pki_mount: String,
    /// KV v2 mount of the `vault-kv` store.
    #[arg(
        long = "vault-kv-mount",
        env = "TRUSTPLANE_VAULT_KV_MOUNT",
        default_value = "secret"
    )]
    pub kv_mount: String,
    /// Path prefix under the KV mount for the `vault-kv` store.
    #[arg(
        long = "vault-kv-prefix",
        env = "TRUSTPLANE_VAULT_KV_PREFIX",
        default_value = "trustplane"
    )]
    pub kv_prefix: String,
}

/// A secret string from a flag or the environment: wiped on drop, never
/// printed by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub Zeroizing<String>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(Secret(Zeroizing::new(text.to_string())))
    }
}

/// A logged-in connection to Vault. Cheap to share; the token inside is
/// swapped when it is renewed or the login is repeated.
pub struct Vault {
    config: VaultConfig,
    client: RwLock<Arc<VaultClient>>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("addr", &self.config.addr)
            .field("namespace", &self.config.namespace)
            .finish_non_exhaustive()
    }
}

impl Vault {
    /// Connects and logs in.
    ///
    /// Errors: [`VaultError`] with kind [`VaultErrorKind::Config`] for
    /// settings that cannot work, and the login's errors.
    pub async fn connect(config: VaultConfig) -> Result<Arc<Vault>, VaultError> {
        let addr = config.addr.clone().ok_or_else(|| {
            VaultError::config("no Vault address: set VAULT_ADDR or --vault-addr")
        })?;
        let token = config
            .token
            .as_ref()
            .map(|token| token.0.to_string())
            .ok_or_else(|| {
                VaultError::config("no Vault credentials: set VAULT_TOKEN or --vault-token")
            })?;
        // reqwest takes the process's default rustls provider: ring, the
        // one TLS stack of this crate (main installs it too; idempotent).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut settings = VaultClientSettingsBuilder::default();
        settings.address(addr).token(token);
        if let Some(cacert) = &config.cacert {
            settings.ca_certs(vec![cacert.display().to_string()]);
        }
        if let Some(namespace) = &config.namespace {
            settings.set_namespace(namespace.clone());
        }
        let settings = settings
            .build()
            .map_err(|error| VaultError::config(format!("Vault client settings: {error}")))?;
        let client = VaultClient::new(settings)
            .map_err(|error| VaultError::config(format!("Vault client: {error}")))?;
        Ok(Arc::new(Vault {
            config,
            client: RwLock::new(Arc::new(client)),
        }))
    }

    /// The client with the current token.
    pub fn client(&self) -> Arc<VaultClient> {
        self.client
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The settings this connection was made with.
    pub fn config(&self) -> &VaultConfig {
        &self.config
    }
}
