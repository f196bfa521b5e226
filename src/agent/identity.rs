//! The agent's control-plane identity: the [`IdentityStore`] seam (files in
//! an identity directory here, a Kubernetes Secret in `identity_secret.rs`, memory for
//! tests), join-token parsing, and the TLS channels built from an identity.

use std::fs::{self, File};

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tonic::transport::{
    Certificate as TlsCertificate, Channel, ClientTlsConfig, Endpoint, Identity,
};
use zeroize::Zeroizing;

use super::error::AgentError;
use crate::files::{self, PRIVATE_MODE, PUBLIC_MODE};

/// File holding the cluster name.
pub(crate) const CLUSTER_FILE: &str = "cluster";
/// File holding the control-plane CA (verifies the server).
pub(crate) const SERVER_CA_FILE: &str = "server-ca.pem";
/// File holding the agent's client certificate.
pub(crate) const CLIENT_CERT_FILE: &str = "client.pem";
/// File holding the agent's client key (mode 0600).
pub(crate) const CLIENT_KEY_FILE: &str = "client-key.pem";
/// File holding the server URL used at enrollment (optional).
pub(crate) const SERVER_FILE: &str = "server";
/// File holding a new client certificate and its key together (0600) while
/// [`save_identity`] replaces the two files: a save interrupted between
/// them leaves this file, and [`load_identity`] takes the pair from it.
pub(crate) const PENDING_FILE: &str = "client-pending.pem";
/// File holding the key an enrollment sends its CSR for (0600), written
/// before `Enroll` is called: an agent killed before it saved the answer
/// repeats `Enroll` with the same token and this key, which the server
/// accepts. Removed when the identity is saved (it is the identity's key).
pub(crate) const ENROLLING_KEY_FILE: &str = "enrolling-key.pem";
/// The PEM label that starts the key in [`PENDING_FILE`].
const KEY_PEM_BEGIN: &str = "-----BEGIN PRIVATE KEY-----";

/// The prefix of every join token this agent understands.
const JOIN_TOKEN_PREFIX: &str = "tp1";
/// How long to wait for a TCP + TLS connection to the server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 pings detect a dead server under a long-lived watch stream.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The agent's enrollment identity: what it needs to talk mTLS to the
/// server after the one-time join token is spent.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The cluster this agent acts for.
    pub cluster: String,
    /// The control-plane CA, PEM (verifies the server).
    pub server_ca_pem: String,
    /// The client certificate, PEM.
    pub client_cert_pem: String,
    /// The client key, PKCS#8 PEM (never printed).
    pub client_key_pem: Zeroizing<String>,
    /// The server URL used at enrollment (`None` for identities saved
    /// before it was recorded); lets a restarted agent find its server.
    pub server: Option<String>,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("cluster", &self.cluster)
            .field("server", &self.server)
            .field("client_key_pem", &format_args!("[redacted]"))
            .finish_non_exhaustive()
    }
}

/// What an identity store holds.
#[derive(Debug)]
pub enum StoredIdentity {
    /// A whole identity.
    Complete(ClientIdentity),
    /// Nothing.
    Absent,
    /// Some parts but not all (e.g. an enrollment interrupted while saving);
    /// the names of the missing parts (`cluster`, `server-ca.pem`,
    /// `client.pem`, `client-key.pem`).
    Incomplete(Vec<&'static str>),
}

/// Where the agent keeps its enrollment identity: files in a directory
/// ([`FileIdentityStore`]), a Kubernetes Secret
/// ([`super::KubernetesIdentityStore`]), or memory for tests
/// ([`MemoryIdentityStore`]). Implementations never log the client key.
#[async_trait::async_trait]
pub trait IdentityStore: Send + Sync {
    /// Human-readable location, e.g. "directory /var/lib/trustplane".
    fn describe(&self) -> String;

    /// Problems with the store's own settings, reported together with the
    /// rest of the agent configuration (none by default).
    fn problems(&self) -> Vec<String> {
        Vec::new()
    }

    /// What the store holds now.
    ///
    /// Errors: the store cannot be read ([`AgentError::IdentityIo`],
    /// [`AgentError::IdentitySecret`]).
    async fn load(&self) -> Result<StoredIdentity, AgentError>;

    /// Checks that [`IdentityStore::save`] can succeed, before a one-time
    /// join token is spent on an identity that could not be kept.
    ///
    /// Errors: as for `save`.
    async fn prepare(&self) -> Result<(), AgentError>;

    /// Saves `identity` as a whole, replacing any earlier or partial one,
    /// and drops the enrolling key (see [`IdentityStore::save_enrolling_key`]).
    ///
    /// Errors: the store cannot be written.
    async fn save(&self, identity: &ClientIdentity) -> Result<(), AgentError>;

    /// The key saved by an enrollment that never saved its identity, if any
    /// (PKCS#8 PEM).
    ///
    /// Errors: the store cannot be read.
    async fn load_enrolling_key(&self) -> Result<Option<Zeroizing<String>>, AgentError>;

    /// Saves the key an enrollment is about to send a CSR for, before
    /// `Enroll` is called, so that an agent killed before saving the answer
    /// enrolls again with the same key (and the same token).
    ///
    /// Errors: the store cannot be written.
    async fn save_enrolling_key(&self, key_pem: &Zeroizing<String>) -> Result<(), AgentError>;
}

/// The identity as files in a directory: `cluster`, `server-ca.pem`,
/// `client.pem`, `client-key.pem` (0600) and `server`.
#[derive(Clone, Debug)]
pub struct FileIdentityStore {
    dir: PathBuf,
}

impl FileIdentityStore {
    /// A store in `dir` (created 0700 on the first save if missing).
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, AgentError> + Send + 'static,
) -> Result<T, AgentError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(AgentError::Background)?
}

#[async_trait::async_trait]
impl IdentityStore for FileIdentityStore {
    fn describe(&self) -> String {
        format!("directory {}", self.dir.display())
    }

    fn problems(&self) -> Vec<String> {
        if self.dir.as_os_str().is_empty() {
            vec!["identity directory must be set".to_string()]
        } else {
            Vec::new()
        }
    }

    async fn load(&self) -> Result<StoredIdentity, AgentError> {
        let dir = self.dir.clone();
        blocking(move || load_identity(&dir)).await
    }

    async fn prepare(&self) -> Result<(), AgentError> {
        let dir = self.dir.clone();
        blocking(move || prepare_identity_dir(&dir)).await
    }

    async fn save(&self, identity: &ClientIdentity) -> Result<(), AgentError> {
        let dir = self.dir.clone();
        let identity = identity.clone();
        blocking(move || save_identity(&dir, &identity)).await
    }

    async fn load_enrolling_key(&self) -> Result<Option<Zeroizing<String>>, AgentError> {
        let path = self.dir.join(ENROLLING_KEY_FILE);
        blocking(move || Ok(read_optional(&path)?.map(Zeroizing::new))).await
    }

    async fn save_enrolling_key(&self, key_pem: &Zeroizing<String>) -> Result<(), AgentError> {
        let dir = self.dir.clone();
        let key_pem = key_pem.clone();
        blocking(move || {
            prepare_identity_dir(&dir)?;
            files::replace_atomically(
                &dir.join(ENROLLING_KEY_FILE),
                key_pem.as_bytes(),
                PRIVATE_MODE,
            )?;
            files::sync_directory(&dir)?;
            Ok(())
        })
        .await
    }
}

/// An identity kept in memory, for tests; counts saves.
#[derive(Debug, Default)]
pub struct MemoryIdentityStore {
    state: Mutex<(Option<ClientIdentity>, usize)>,
    enrolling_key: Mutex<Option<Zeroizing<String>>>,
}

impl MemoryIdentityStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// A store holding `identity` (not counted as a save).
    pub fn with_identity(identity: ClientIdentity) -> Self {
        Self {
            state: Mutex::new((Some(identity), 0)),
            enrolling_key: Mutex::default(),
        }
    }

    /// The identity held now.
    pub fn identity(&self) -> Option<ClientIdentity> {
        self.lock().0.clone()
    }

    /// How many times [`IdentityStore::save`] was called.
    pub fn saves(&self) -> usize {
        self.lock().1
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Option<ClientIdentity>, usize)> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn enrolling_key_slot(&self) -> std::sync::MutexGuard<'_, Option<Zeroizing<String>>> {
        self.enrolling_key
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait::async_trait]
impl IdentityStore for MemoryIdentityStore {
    fn describe(&self) -> String {
        "memory".to_string()
    }

    async fn load(&self) -> Result<StoredIdentity, AgentError> {
        Ok(match self.identity() {
            Some(identity) => StoredIdentity::Complete(identity),
            None => StoredIdentity::Absent,
        })
    }

    async fn prepare(&self) -> Result<(), AgentError> {
        Ok(())
    }

    async fn save(&self, identity: &ClientIdentity) -> Result<(), AgentError> {
        let mut state = self.lock();
        state.0 = Some(identity.clone());
        state.1 += 1;
        *self.enrolling_key_slot() = None;
        Ok(())
    }

    async fn load_enrolling_key(&self) -> Result<Option<Zeroizing<String>>, AgentError> {
        Ok(self.enrolling_key_slot().clone())
    }

    async fn save_enrolling_key(&self, key_pem: &Zeroizing<String>) -> Result<(), AgentError> {
        *self.enrolling_key_slot() = Some(key_pem.clone());
        Ok(())
    }
}

/// The cluster named by a join token `tp1.<cluster>.<secret>`.
///
/// Errors: [`AgentError::InvalidJoinToken`] (never echoes the token).
pub(crate) fn join_token_cluster(token: &str) -> Result<&str, AgentError> {
    let mut parts = token.trim().splitn(3, '.');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(JOIN_TOKEN_PREFIX), Some(cluster), Some(secret))
            if !cluster.is_empty() && !secret.is_empty() =>
        {
            Ok(cluster)
        }
        _ => Err(AgentError::InvalidJoinToken),
    }
}

fn identity_io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> AgentError {
    let path = path.to_path_buf();
    move |source| AgentError::IdentityIo {
        action,
        path,
        source,
    }
}

fn read_optional(path: &Path) -> Result<Option<String>, AgentError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(identity_io("read", path)(error)),
    }
}

/// Reads the identity directory (blocking).
pub(crate) fn load_identity(dir: &Path) -> Result<StoredIdentity, AgentError> {
    let server = read_optional(&dir.join(SERVER_FILE))?
        .map(|text| text.trim().to_string())
        .filter(|text| !text.is_empty());
    let cluster = read_optional(&dir.join(CLUSTER_FILE))?;
    let server_ca_pem = read_optional(&dir.join(SERVER_CA_FILE))?;
    let client_cert_pem = read_optional(&dir.join(CLIENT_CERT_FILE))?;
    let key_path = dir.join(CLIENT_KEY_FILE);
    let mut client_key_pem = match crate::files::read_private(&key_path) {
        Ok(text) => Some(text),
        Err(error) if error.is_not_found() => None,
        Err(crate::files::PrivateFileError::File(error)) => return Err(error.into()),
        Err(too_open) => {
            return Err(AgentError::IdentityIo {
                action: "use",
                path: key_path,
                source: std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    too_open.to_string(),
                ),
            });
        }
    };
    let mut client_cert_pem = client_cert_pem;
    if let Some(pending) = read_optional(&dir.join(PENDING_FILE))?.map(Zeroizing::new)
        && let Some(split) = pending.find(KEY_PEM_BEGIN)
    {
        tracing::warn!(
            dir = %dir.display(),
            "an identity save was interrupted; using the client certificate and key it was writing"
        );
        client_cert_pem = Some(pending[..split].to_string());
        client_key_pem = Some(Zeroizing::new(pending[split..].to_string()));
    }
    match (cluster, server_ca_pem, client_cert_pem, client_key_pem) {
        (Some(cluster), Some(server_ca_pem), Some(client_cert_pem), Some(client_key_pem)) => {
            Ok(StoredIdentity::Complete(ClientIdentity {
                cluster: cluster.trim().to_string(),
                server_ca_pem,
                client_cert_pem,
                client_key_pem,
                server,
            }))
        }
        (None, None, None, None) => Ok(StoredIdentity::Absent),
        (cluster, server_ca, client_cert, client_key) => {
            let mut missing = Vec::new();
            if cluster.is_none() {
                missing.push(CLUSTER_FILE);
            }
            if server_ca.is_none() {
                missing.push(SERVER_CA_FILE);
            }
            if client_cert.is_none() {
                missing.push(CLIENT_CERT_FILE);
            }
            if client_key.is_none() {
                missing.push(CLIENT_KEY_FILE);
            }
            Ok(StoredIdentity::Incomplete(missing))
        }
    }
}

/// Creates the identity directory (0700 when new) and checks that files can
/// be created in it, before a one-time join token is spent (blocking).
pub(crate) fn prepare_identity_dir(dir: &Path) -> Result<(), AgentError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(identity_io("create directory", dir))?;
    let probe = dir.join(format!(".write-probe-{}", files::random_suffix()));
    File::create(&probe).map_err(identity_io("create a file in", dir))?;
    fs::remove_file(&probe).map_err(identity_io("remove", &probe))
}

/// Saves the identity: each file written to a temporary name and renamed,
/// the key with mode 0600, the cluster name last so that a complete
/// `cluster` file means a complete identity, then the enrolling key
/// ([`ENROLLING_KEY_FILE`]) removed (blocking).
///
/// The certificate and key are first written together to one file
/// ([`PENDING_FILE`]), removed once both are in place, so that a crash
/// between the two never leaves a key that does not match its certificate.
pub(crate) fn save_identity(dir: &Path, identity: &ClientIdentity) -> Result<(), AgentError> {
    prepare_identity_dir(dir)?;
    let pending_path = dir.join(PENDING_FILE);
    let pending = Zeroizing::new(format!(
        "{}{}",
        identity.client_cert_pem, *identity.client_key_pem
    ));
    files::replace_atomically(&pending_path, pending.as_bytes(), PRIVATE_MODE)?;
    let server = identity.server.as_ref().map(|server| format!("{server}\n"));
    let cluster = format!("{}\n", identity.cluster);
    let files: [(&str, Option<&[u8]>, u32); 5] = [
        (
            SERVER_FILE,
            server.as_deref().map(str::as_bytes),
            PUBLIC_MODE,
        ),
        (
            CLIENT_KEY_FILE,
            Some(identity.client_key_pem.as_bytes()),
            PRIVATE_MODE,
        ),
        (
            CLIENT_CERT_FILE,
            Some(identity.client_cert_pem.as_bytes()),
            PUBLIC_MODE,
        ),
        (
            SERVER_CA_FILE,
            Some(identity.server_ca_pem.as_bytes()),
            PUBLIC_MODE,
        ),
        (CLUSTER_FILE, Some(cluster.as_bytes()), PUBLIC_MODE),
    ];
    for (name, bytes, mode) in files {
        if let Some(bytes) = bytes {
            files::replace_atomically(&dir.join(name), bytes, mode)?;
        }
    }
    fs::remove_file(&pending_path).map_err(identity_io("remove", &pending_path))?;
    // The enrolling key is now the identity's key.
    let enrolling_key = dir.join(ENROLLING_KEY_FILE);
    match fs::remove_file(&enrolling_key) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(identity_io("remove", &enrolling_key)(error)),
    }
    files::sync_directory(dir)?;
    Ok(())
}

fn endpoint(server: &str) -> Result<Endpoint, AgentError> {
    Endpoint::from_shared(server.to_string())
        .map(|endpoint| {
            endpoint
                .connect_timeout(CONNECT_TIMEOUT)
                .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
                .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
                .keep_alive_while_idle(true)
        })
        .map_err(|source| AgentError::Transport {
            server: server.to_string(),
            source,
        })
}

/// A channel for `Enroll`: TLS verifying the server with `server_ca_pem`,
/// no client certificate. Connects lazily (errors surface on the first call).
pub(crate) fn enrollment_channel(server: &str, server_ca_pem: &str) -> Result<Channel, AgentError> {
    let tls = ClientTlsConfig::new().ca_certificate(TlsCertificate::from_pem(server_ca_pem));
    lazy_channel(server, tls)
}

/// A channel for every other call: mTLS with the cluster's client identity.
/// Connects lazily and reconnects on its own.
pub(crate) fn mtls_channel(server: &str, identity: &ClientIdentity) -> Result<Channel, AgentError> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(TlsCertificate::from_pem(&identity.server_ca_pem))
        .identity(Identity::from_pem(
            &identity.client_cert_pem,
            identity.client_key_pem.as_bytes(),
        ));
    lazy_channel(server, tls)
}

fn lazy_channel(server: &str, tls: ClientTlsConfig) -> Result<Channel, AgentError> {
    let endpoint = endpoint(server)?
        .tls_config(tls)
        .map_err(|source| AgentError::Transport {
            server: server.to_string(),
            source,
        })?;
    Ok(endpoint.connect_lazy())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A complete identity with placeholder texts (shared with the
    /// Kubernetes identity store's tests).
    pub(crate) fn identity() -> ClientIdentity {
        ClientIdentity {
            cluster: "east".into(),
            server_ca_pem: "ca pem".into(),
            client_cert_pem: "cert pem".into(),
            client_key_pem: Zeroizing::new("key pem".into()),
            server: Some("https://trustplane.example:8443".into()),
        }
    }

    #[test]
    fn join_token_names_the_cluster_between_the_first_two_dots() {
        assert_eq!(join_token_cluster("tp1.east.s3cr3t").unwrap(), "east");
        assert_eq!(join_token_cluster("tp1.east.s3c.r3t").unwrap(), "east");
        assert_eq!(join_token_cluster(" tp1.west-2.x\n").unwrap(), "west-2");
    }

    #[test]
    fn malformed_join_tokens_are_refused_without_echo() {
        for token in [
            "",
            "tp1",
            "tp1.east",
            "tp1..secret",
            "tp1.east.",
            "tp2.east.secret",
        ] {
            let error = join_token_cluster(token).unwrap_err();
            assert!(matches!(error, AgentError::InvalidJoinToken), "{token:?}");
        }
        let text = join_token_cluster("tp2.east.very-secret")
            .unwrap_err()
            .to_string();
        assert!(!text.contains("very-secret"));
        assert!(text.contains("trustplane cluster add"));
    }

    #[test]
    fn identity_round_trips_with_a_private_key_file() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("identity");
        assert!(matches!(
            load_identity(&dir).unwrap(),
            StoredIdentity::Absent
        ));
        save_identity(&dir, &identity()).unwrap();
        let StoredIdentity::Complete(loaded) = load_identity(&dir).unwrap() else {
            panic!("identity not complete");
        };
        assert_eq!(loaded.cluster, "east");
        assert_eq!(loaded.server_ca_pem, "ca pem");
        assert_eq!(loaded.client_cert_pem, "cert pem");
        assert_eq!(loaded.client_key_pem.as_str(), "key pem");
        assert_eq!(
            loaded.server.as_deref(),
            Some("https://trustplane.example:8443")
        );
        let mode = |name: &str| fs::metadata(dir.join(name)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(CLIENT_KEY_FILE), 0o600);
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let leftovers: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .filter(|name| name.starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn a_save_interrupted_between_key_and_certificate_loads_the_new_pair() {
        let temp = tempfile::tempdir().unwrap();
        save_identity(temp.path(), &identity()).unwrap();
        assert!(!temp.path().join(PENDING_FILE).exists());
        // The state a crash leaves after the new key replaced the old one
        // but before the new certificate did.
        let pending = "-----BEGIN CERTIFICATE-----\nnew\n-----END CERTIFICATE-----\n-----BEGIN PRIVATE KEY-----\nnewkey\n-----END PRIVATE KEY-----\n";
        fs::write(temp.path().join(PENDING_FILE), pending).unwrap();
        fs::write(
            temp.path().join(CLIENT_KEY_FILE),
            "-----BEGIN PRIVATE KEY-----\nnewkey\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let StoredIdentity::Complete(loaded) = load_identity(temp.path()).unwrap() else {
            panic!("identity not complete");
        };
        assert!(loaded.client_cert_pem.contains("new"), "{loaded:?}");
        assert!(loaded.client_key_pem.contains("newkey"));
        assert!(!loaded.client_cert_pem.contains("PRIVATE KEY"));
        // The next whole save removes the pending pair.
        save_identity(temp.path(), &loaded).unwrap();
        assert!(!temp.path().join(PENDING_FILE).exists());
    }

    #[test]
    fn a_partial_identity_lists_the_missing_files() {
        let temp = tempfile::tempdir().unwrap();
        files::write_new(&temp.path().join(CLIENT_KEY_FILE), b"key", 0o600).unwrap();
        fs::write(temp.path().join(CLIENT_CERT_FILE), "cert").unwrap();
        let StoredIdentity::Incomplete(missing) = load_identity(temp.path()).unwrap() else {
            panic!("expected an incomplete identity");
        };
        assert_eq!(missing, vec![CLUSTER_FILE, SERVER_CA_FILE]);
    }

    #[test]
    fn a_client_key_readable_by_others_is_refused() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("identity");
        save_identity(&dir, &identity()).unwrap();
        let key = dir.join(CLIENT_KEY_FILE);
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        let error = crate::telemetry::error_text(&load_identity(&dir).unwrap_err());
        assert!(
            error.contains(&format!(
                "{} is accessible by group or others (mode 644)",
                key.display()
            )),
            "{error}"
        );
        assert!(
            error.contains(&format!("chmod 600 {}", key.display())),
            "{error}"
        );
    }

    #[test]
    fn identity_debug_redacts_the_key() {
        let text = format!("{:?}", identity());
        assert!(text.contains("east") && text.contains("[redacted]"));
        assert!(!text.contains("key pem"));
    }

    #[test]
    fn an_identity_without_a_server_file_loads_without_a_server() {
        let temp = tempfile::tempdir().unwrap();
        let mut saved = identity();
        saved.server = None;
        save_identity(temp.path(), &saved).unwrap();
        assert!(!temp.path().join(SERVER_FILE).exists());
        let StoredIdentity::Complete(loaded) = load_identity(temp.path()).unwrap() else {
            panic!("identity not complete");
        };
        assert_eq!(loaded, saved);
    }

    #[tokio::test]
    async fn file_store_round_trips_and_reports_an_empty_path() {
        let temp = tempfile::tempdir().unwrap();
        let store = FileIdentityStore::new(temp.path().join("identity"));
        assert!(store.problems().is_empty());
        assert!(matches!(
            store.load().await.unwrap(),
            StoredIdentity::Absent
        ));
        store.prepare().await.unwrap();
        store.save(&identity()).await.unwrap();
        let StoredIdentity::Complete(loaded) = store.load().await.unwrap() else {
            panic!("identity not complete");
        };
        assert_eq!(loaded, identity());
        let empty = FileIdentityStore::new(PathBuf::new());
        assert_eq!(empty.problems(), vec!["identity directory must be set"]);
    }

    #[tokio::test]
    async fn the_enrolling_key_is_private_and_gone_once_the_identity_is_saved() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("identity");
        let store = FileIdentityStore::new(dir.clone());
        assert!(store.load_enrolling_key().await.unwrap().is_none());
        let key = Zeroizing::new("enrolling key pem".to_string());
        store.save_enrolling_key(&key).await.unwrap();
        let mode = fs::metadata(dir.join(ENROLLING_KEY_FILE))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            store.load_enrolling_key().await.unwrap().as_deref(),
            Some(&"enrolling key pem".to_string())
        );
        assert!(
            matches!(store.load().await.unwrap(), StoredIdentity::Absent),
            "an enrolling key alone is no identity"
        );
        store.save(&identity()).await.unwrap();
        assert!(!dir.join(ENROLLING_KEY_FILE).exists());
        assert!(store.load_enrolling_key().await.unwrap().is_none());
        // Saving again (a renewal) without an enrolling key is fine.
        store.save(&identity()).await.unwrap();

        let memory = MemoryIdentityStore::new();
        memory.save_enrolling_key(&key).await.unwrap();
        assert!(memory.load_enrolling_key().await.unwrap().is_some());
        memory.save(&identity()).await.unwrap();
        assert!(memory.load_enrolling_key().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn memory_store_counts_saves() {
        let store = MemoryIdentityStore::new();
        assert!(matches!(
            store.load().await.unwrap(),
            StoredIdentity::Absent
        ));
        store.save(&identity()).await.unwrap();
        assert_eq!(store.saves(), 1);
        assert_eq!(store.identity(), Some(identity()));
    }

    #[tokio::test]
    async fn bad_server_address_is_a_transport_error() {
        let error = enrollment_channel("not a uri", "pem").unwrap_err();
        assert!(matches!(error, AgentError::Transport { .. }), "{error:?}");
    }
}
