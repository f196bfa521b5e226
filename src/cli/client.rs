//! Connecting to a trustplane server as admin.

use std::path::PathBuf;

use anyhow::Context as _;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::server::DataDir;

/// How to reach the server as admin. Credentials default to the files
/// `trustplane init` wrote under `--data-dir`.
#[derive(Clone, Debug, clap::Args)]
pub struct AdminConnection {
    /// Server URL.
    #[arg(
        long,
        env = "TRUSTPLANE_SERVER",
        default_value = "https://127.0.0.1:8443"
    )]
    pub server: String,
    /// Data directory `init` wrote (for the default credential paths).
    #[arg(long, env = "TRUSTPLANE_DATA_DIR", default_value = "trustplane-data")]
    pub data_dir: PathBuf,
    /// Control-plane CA certificate [default: <data-dir>/control-plane-ca.pem].
    #[arg(long, env = "TRUSTPLANE_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// Admin client certificate [default: <data-dir>/admin/admin.pem].
    #[arg(long, env = "TRUSTPLANE_ADMIN_CERT")]
    pub admin_cert: Option<PathBuf>,
    /// Admin client key [default: <data-dir>/admin/admin-key.pem].
    #[arg(long, env = "TRUSTPLANE_ADMIN_KEY")]
    pub admin_key: Option<PathBuf>,
}

fn read(path: &PathBuf, what: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read the {what} at {}: pass --data-dir (the directory `trustplane init` wrote) or --{}",
            path.display(),
            what.replace(' ', "-")
        )
    })
}

impl AdminConnection {
    /// Opens a TLS channel with the admin credential.
    pub async fn connect(&self) -> anyhow::Result<Channel> {
        let data_dir = DataDir::new(&self.data_dir);
        let ca_path = self
            .ca_cert
            .clone()
            .unwrap_or_else(|| data_dir.control_plane_ca_path());
        let cert_path = self
            .admin_cert
            .clone()
            .unwrap_or_else(|| data_dir.admin_cert_path());
        let key_path = self
            .admin_key
            .clone()
            .unwrap_or_else(|| data_dir.admin_key_path());
        let ca = read(&ca_path, "ca cert")?;
        let certificate = read(&cert_path, "admin cert")?;
        let key = zeroize::Zeroizing::new(read(&key_path, "admin key")?);
        connect(&self.server, &ca, Some((&certificate, &key))).await
    }
}

/// Opens a TLS channel to `server` verifying it with `ca_pem`, optionally
/// presenting a client certificate.
pub async fn connect(
    server: &str,
    ca_pem: &str,
    client: Option<(&str, &str)>,
) -> anyhow::Result<Channel> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
    if let Some((certificate, key)) = client {
        tls = tls.identity(Identity::from_pem(certificate, key));
    }
    let endpoint = Channel::from_shared(server.to_string())
        .with_context(|| {
            format!("{server:?} is not a valid server URL (e.g. https://127.0.0.1:8443)")
        })?
        .tls_config(tls)
        .context("TLS configuration")?
        .connect_timeout(std::time::Duration::from_secs(10));
    endpoint.connect().await.with_context(|| {
        format!("cannot connect to {server}: is `trustplane server` running there, and is --server right?")
    })
}
