//! Istio's `cacerts` as a Kubernetes Secret ([`KubernetesSink`]), and the
//! Kubernetes client helpers the agent and push mode share ([`connect`],
//! [`connect_with_kubeconfig`], the guarded read-modify-write of one Secret).
//!
//! Every write is one read-modify-write of the whole Secret, guarded by its
//! `resourceVersion` (`replace`, or `create` when absent): a concurrent
//! writer makes the API server answer 409 Conflict, and the write is then
//! re-read and retried a few times with backoff, never forced. Other errors
//! (5xx, unreachable API server, RBAC) go up to the agent loop, which
//! retries with its own backoff and reports them.
//!
//! In the `cacerts` Secret the sink owns only the keys of the two forms
//! istiod reads, the `app.kubernetes.io/managed-by` label and the
//! `trustplane.io/*` annotations; other keys, labels, annotations and
//! metadata are kept as found. A Secret without the managed-by label is
//! someone else's and is left alone unless taking it over was allowed.
//!
//! Not here: the agent's identity Secret (`agent::identity_secret`), leader
//! election (`agent::leader`) and the loops that decide what to write.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use zeroize::{Zeroize, Zeroizing};

use std::sync::Arc;

use crate::kubeconfig::ValidatedKubeconfig;

use super::contract::{
    CA_CERT_FILE, CA_KEY_FILE, CERT_CHAIN_FILE, CacertsMaterial, ClusterSink, ROOT_CERT_FILE,
    SinkError,
};
use crate::ca::{self, CacertsFiles, Certificate};
use crate::clock::{Clock, SystemClock};
use crate::reconcile::Backoff;

pub use super::secret_format::SecretFormat;
pub(crate) use super::secret_format::{OPAQUE_TYPE, TLS_TYPE};

/// The label that marks a Secret as written by trustplane.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// The value of [`MANAGED_BY_LABEL`] (also the field manager of every write).
pub const MANAGER: &str = "trustplane";
/// Annotation: the trust-bundle version of the last write (see
/// [`CacertsMaterial::bundle_version`]).
pub const BUNDLE_VERSION_ANNOTATION: &str = "trustplane.io/bundle-version";
/// Annotation: lowercase hex serial of the intermediate in the Secret.
pub const INTERMEDIATE_SERIAL_ANNOTATION: &str = "trustplane.io/intermediate-serial";
/// Istio's namespace, where istiod mounts `cacerts` from.
pub const DEFAULT_NAMESPACE: &str = "istio-system";
/// The Secret istiod mounts at `/etc/cacerts`.
pub const DEFAULT_SECRET_NAME: &str = "cacerts";
/// The Secret holding the agent's enrollment identity.
pub const IDENTITY_SECRET_NAME: &str = "trustplane-agent-identity";

/// istiod's marker for a `cacerts` Secret it generated itself (with
/// `USE_CACERTS_FOR_SELF_SIGNED_CA` it then treats the Secret as its own
/// self-signed CA and rotates it). Never written; dropped on takeover.
const ISTIO_GENERATED_KEY: &str = "istio-generated";
/// The `kubernetes.io/tls` form's keys.
const TLS_CERT_KEY: &str = "tls.crt";
const TLS_KEY_KEY: &str = "tls.key";
const TLS_CA_KEY: &str = "ca.crt";
/// Every key the sink owns: both forms, so that switching forms leaves no
/// stale key behind (istiod prefers `tls.crt` when it exists).
const OWNED_KEYS: [&str; 7] = [
    CA_CERT_FILE,
    CA_KEY_FILE,
    CERT_CHAIN_FILE,
    ROOT_CERT_FILE,
    TLS_CERT_KEY,
    TLS_KEY_KEY,
    TLS_CA_KEY,
];
/// How long one API call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts of one write while other writers keep causing 409 Conflict.
const WRITE_ATTEMPTS: u32 = 5;
/// Cap of the delay between those attempts (they start at 200 ms).
const CONFLICT_BACKOFF: Duration = Duration::from_secs(2);

/// Where and how [`KubernetesSink`] writes; see [`Default`] for the defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubernetesSinkOptions {
    /// Namespace of the Secret: `istio-system` by default (Deckhouse uses
    /// `d8-istio`).
    pub namespace: String,
    /// Name of the Secret: `cacerts` by default.
    pub secret_name: String,
    /// The keys written.
    pub format: SecretFormat,
    /// Take over a Secret that exists without trustplane's managed-by label
    /// (its unrelated keys, labels and annotations are kept). Without this,
    /// such a Secret is left untouched and the agent reports
    /// [`SinkError::Foreign`] until someone removes or labels it.
    pub adopt_existing: bool,
}

impl Default for KubernetesSinkOptions {
    /// `istio-system/cacerts`, istio form, foreign Secrets left untouched.
    fn default() -> Self {
        Self {
            namespace: DEFAULT_NAMESPACE.to_string(),
            secret_name: DEFAULT_SECRET_NAME.to_string(),
            format: SecretFormat::Istio,
            adopt_existing: false,
        }
    }
}

/// How a Kubernetes API call failed. Messages never contain Secret data.
#[derive(Debug, thiserror::Error)]
pub enum KubernetesError {
    /// RBAC forbids the call.
    #[error(
        "{message}: grant the agent's ServiceAccount the verbs it needs in this namespace (see the agent RBAC manifest)"
    )]
    Forbidden {
        /// The API server's message.
        message: String,
    },
    /// The API server refused the call (a 4xx other than 403, or a 5xx).
    #[error("{message} (HTTP {code} {reason})")]
    Refused {
        /// The HTTP status code.
        code: u16,
        /// The machine-readable reason, e.g. `Invalid`, `InternalError`.
        reason: String,
        /// The API server's message.
        message: String,
    },
    /// Other writers changed the object before each of our attempts.
    #[error(
        "other writers changed it before each of {attempts} attempts (409 Conflict); not overwritten"
    )]
    Conflict {
        /// How many guarded writes were tried.
        attempts: u32,
    },
    /// The API server did not answer in time.
    #[error("the API server did not answer within {} s", timeout.as_secs())]
    Timeout {
        /// The limit.
        timeout: Duration,
    },
    /// The API server is unreachable or its answer unusable.
    #[error("the Kubernetes API call failed")]
    Client(#[source] Box<kube::Error>),
    /// No usable cluster configuration (kubeconfig or in-cluster).
    #[error("{context}")]
    Config {
        /// What was tried and how to fix it.
        context: String,
        /// kube's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// A Kubernetes client from `kubeconfig` if given, else kube's inference
/// (the in-cluster ServiceAccount, else `KUBECONFIG` or `~/.kube/config`,
/// as `kube::Client::try_default` does). Responses that do not arrive
/// within 30 s fail, so that a stalled API server cannot hang the agent or
/// its leader election.
///
/// Errors: [`KubernetesError::Config`].
pub async fn connect(kubeconfig: Option<&Path>) -> Result<kube::Client, KubernetesError> {
    client_for(config(kubeconfig).await?)
}

/// The configuration [`connect`] builds its client from (with the 30 s
/// response limit).
///
/// Errors: [`KubernetesError::Config`].
pub(crate) async fn config(kubeconfig: Option<&Path>) -> Result<kube::Config, KubernetesError> {
    let mut config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path).map_err(|source| {
                KubernetesError::Config {
                    context: format!("cannot read the kubeconfig {}", path.display()),
                    source: Box::new(source),
                }
            })?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|source| KubernetesError::Config {
                    context: format!("the kubeconfig {} is unusable", path.display()),
                    source: Box::new(source),
                })?
        }
        None => kube::Config::infer()
            .await
            .map_err(|source| KubernetesError::Config {
                context: "no Kubernetes configuration found: run in a pod with a ServiceAccount, set KUBECONFIG or pass --kubeconfig".to_string(),
                source: Box::new(source),
            })?,
    };
    config.read_timeout = Some(CALL_TIMEOUT);
    Ok(config)
}

/// A client from `config` (inside a tokio runtime).
///
/// Errors: [`KubernetesError::Config`].
pub(crate) fn client_for(config: kube::Config) -> Result<kube::Client, KubernetesError> {
    kube::Client::try_from(config).map_err(|source| KubernetesError::Config {
        context: "cannot create a Kubernetes client from the configuration".to_string(),
        source: Box::new(source),
    })
}

/// A Kubernetes client from a kubeconfig that passed
/// [`crate::kubeconfig::validate`] (push mode keeps them sealed in the
/// store; the type makes sure no unchecked one reaches kube, whose `exec`
/// and file fields would run and read on the CA host), with the same 30 s
/// response limit as [`connect`].
///
/// Errors: [`KubernetesError::Config`].
pub async fn connect_with_kubeconfig(
    kubeconfig: &ValidatedKubeconfig,
) -> Result<kube::Client, KubernetesError> {
    let parsed = kube::config::Kubeconfig::from_yaml(kubeconfig.text()).map_err(|source| {
        KubernetesError::Config {
            context: "the kubeconfig does not parse".to_string(),
            source: Box::new(source),
        }
    })?;
    let options = kube::config::KubeConfigOptions {
        context: Some(kubeconfig.context().to_string()),
        ..kube::config::KubeConfigOptions::default()
    };
    let mut config = kube::Config::from_custom_kubeconfig(parsed, &options)
        .await
        .map_err(|source| KubernetesError::Config {
            context: "the kubeconfig is unusable".to_string(),
            source: Box::new(source),
        })?;
    config.read_timeout = Some(CALL_TIMEOUT);
    kube::Client::try_from(config).map_err(|source| KubernetesError::Config {
        context: "cannot create a Kubernetes client from the kubeconfig".to_string(),
        source: Box::new(source),
    })
}

/// A Secret whose data is overwritten with zeros when dropped. Best effort:
/// copies made while (de)serializing and by the HTTP stack are not reached.
pub(crate) struct Scrubbed(pub(crate) Secret);

impl std::ops::Deref for Scrubbed {
    type Target = Secret;

    fn deref(&self) -> &Secret {
        &self.0
    }
}

impl Drop for Scrubbed {
    fn drop(&mut self) {
        scrub(&mut self.0);
    }
}

fn scrub(secret: &mut Secret) {
    if let Some(data) = secret.data.as_mut() {
        for value in data.values_mut() {
            value.0.zeroize();
        }
    }
    if let Some(data) = secret.string_data.as_mut() {
        for value in data.values_mut() {
            value.zeroize();
        }
    }
}

/// Whether `secret` carries trustplane's managed-by label.
pub(crate) fn is_managed(secret: &Secret) -> bool {
    secret
        .metadata
        .labels
        .as_ref()
        .and_then(|labels| labels.get(MANAGED_BY_LABEL))
        .is_some_and(|value| value == MANAGER)
}

/// What one guarded write did.
pub(crate) enum Written {
    /// The API server took it.
    Stored,
    /// Someone else wrote first (409: resourceVersion changed, or created
    /// concurrently).
    Conflict,
}

fn classify(error: kube::Error) -> KubernetesError {
    match error {
        kube::Error::Api(status) if status.is_forbidden() => KubernetesError::Forbidden {
            message: status.message,
        },
        kube::Error::Api(status) => KubernetesError::Refused {
            code: status.code,
            reason: status.reason,
            message: status.message,
        },
        other => KubernetesError::Client(Box::new(other)),
    }
}

/// A kube error on one line: the API server's message and status for a
/// refusal (instead of kube's debug form), the cause chain otherwise.
pub(crate) fn describe_kube_error(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => format!(
            "{} (HTTP {} {})",
            status.message, status.code, status.reason
        ),
        other => crate::telemetry::error_text(other),
    }
}

async fn timed<T>(
    future: impl Future<Output = Result<T, kube::Error>>,
) -> Result<Result<T, kube::Error>, KubernetesError> {
    tokio::time::timeout(CALL_TIMEOUT, future)
        .await
        .map_err(|_| KubernetesError::Timeout {
            timeout: CALL_TIMEOUT,
        })
}

/// One named Secret and the guarded read-modify-write on it.
pub(crate) struct SecretObject {
    api: Api<Secret>,
    pub(crate) namespace: String,
    pub(crate) name: String,
}

impl SecretObject {
    /// The Secret `name` in `namespace`, reached through `client`.
    pub(crate) fn new(client: kube::Client, namespace: &str, name: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }

    pub(crate) fn describe(&self) -> String {
        format!("Secret {}/{}", self.namespace, self.name)
    }

    pub(crate) async fn get(&self) -> Result<Option<Scrubbed>, KubernetesError> {
        match timed(self.api.get_opt(&self.name)).await? {
            Ok(secret) => Ok(secret.map(Scrubbed)),
            Err(error) => Err(classify(error)),
        }
    }

    /// Creates `secret` (when `exists` is false) or replaces it with the
    /// resourceVersion it carries; `dry_run` only asks whether it would work.
    pub(crate) async fn put(
        &self,
        secret: &Secret,
        exists: bool,
        dry_run: bool,
    ) -> Result<Written, KubernetesError> {
        let params = PostParams {
            dry_run,
            field_manager: Some(MANAGER.to_string()),
        };
        let result = if exists {
            timed(self.api.replace(&self.name, &params, secret)).await?
        } else {
            timed(self.api.create(&params, secret)).await?
        };
        match result {
            Ok(stored) => {
                drop(Scrubbed(stored));
                Ok(Written::Stored)
            }
            Err(kube::Error::Api(status)) if status.is_conflict() || status.is_already_exists() => {
                Ok(Written::Conflict)
            }
            Err(error) => Err(classify(error)),
        }
    }

    /// Reads the Secret, asks `desired` what to write given what is there
    /// (`Ok(None)`: nothing to change) and writes it guarded by the
    /// resourceVersion just read. A 409 means another writer came first:
    /// read again, decide again, up to [`WRITE_ATTEMPTS`] times.
    ///
    /// Returns whether something was written. `failure` turns an API error
    /// (with the action that failed) into the caller's error type.
    pub(crate) async fn update<E>(
        &self,
        failure: impl Fn(&'static str, KubernetesError) -> E,
        desired: impl Fn(Option<&Secret>) -> Result<Option<Secret>, E>,
    ) -> Result<bool, E> {
        let mut backoff = Backoff::new(CONFLICT_BACKOFF);
        for attempt in 1..=WRITE_ATTEMPTS {
            let existing = self.get().await.map_err(|source| failure("read", source))?;
            let Some(secret) = desired(existing.as_deref())?.map(Scrubbed) else {
                return Ok(false);
            };
            let (action, exists) = match existing {
                Some(_) => ("replace", true),
                None => ("create", false),
            };
            match self
                .put(&secret, exists, false)
                .await
                .map_err(|source| failure(action, source))?
            {
                Written::Stored => return Ok(true),
                Written::Conflict if attempt < WRITE_ATTEMPTS => {
                    let delay = backoff.next_delay();
                    tracing::info!(
                        secret = %self.describe(),
                        attempt,
                        "another writer changed the Secret first (409 Conflict); reading it again in {:.1} s",
                        delay.as_secs_f64()
                    );
                    tokio::time::sleep(delay).await;
                }
                Written::Conflict => {}
            }
        }
        Err(failure(
            "update",
            KubernetesError::Conflict {
                attempts: WRITE_ATTEMPTS,
            },
        ))
    }
}

/// Keeps Istio's `cacerts` Secret current (see the module docs for what it
/// owns in the Secret and how it writes).
pub struct KubernetesSink {
    secret: SecretObject,
    options: KubernetesSinkOptions,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for KubernetesSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesSink")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl KubernetesSink {
    /// A sink writing the Secret `options.namespace`/`options.secret_name`
    /// through `client`. Nothing is contacted until the first read or write.
    pub fn new(client: kube::Client, options: KubernetesSinkOptions) -> Self {
        Self {
            secret: SecretObject::new(client, &options.namespace, &options.secret_name),
            options,
            clock: SystemClock::shared(),
        }
    }

    /// The same sink reading the time from `clock` (used to pick the root
    /// that completes a `kubernetes.io/tls` chain).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The options it was created with.
    pub fn options(&self) -> &KubernetesSinkOptions {
        &self.options
    }

    fn backend_error(&self) -> impl Fn(&'static str, KubernetesError) -> SinkError + '_ {
        |action, source| SinkError::Backend {
            action,
            target: self.secret.describe(),
            source: Box::new(source),
        }
    }
}

#[async_trait::async_trait]
impl ClusterSink for KubernetesSink {
    fn describe(&self) -> String {
        format!("{} ({} form)", self.secret.describe(), self.options.format)
    }

    fn kind(&self) -> &'static str {
        "kubernetes"
    }

    /// `None` when the Secret is absent, holds none of the keys of the
    /// configured form, or is foreign and may be taken over (the agent then
    /// writes its own set). A foreign Secret that may not be taken over is
    /// [`SinkError::Foreign`]: its files are never adopted.
    async fn read(&self) -> Result<Option<CacertsFiles>, SinkError> {
        let secret = self
            .secret
            .get()
            .await
            .map_err(|source| (self.backend_error())("read", source))?;
        let Some(secret) = secret else {
            return Ok(None);
        };
        if !is_managed(&secret) {
            if !self.options.adopt_existing {
                return Err(foreign(&self.options));
            }
            tracing::info!(
                secret = %self.secret.describe(),
                "the Secret is not managed by trustplane; taking it over (adopt existing): a new intermediate replaces its contents, other keys and labels stay"
            );
            return Ok(None);
        }
        Ok(cacerts_files(
            &secret,
            self.options.format,
            self.clock.now(),
        ))
    }

    async fn write(&self, material: &CacertsMaterial) -> Result<(), SinkError> {
        let written = self
            .secret
            .update(self.backend_error(), |existing| {
                desired_cacerts_secret(existing, &self.options, material)
            })
            .await?;
        if !written {
            tracing::debug!(secret = %self.secret.describe(), "the Secret already holds this set");
        }
        Ok(())
    }
}

/// The `cacerts` Secret to write so that it holds `material`, given what
/// exists (`None`: create it). `Ok(None)` when `existing` already holds
/// exactly that. The result carries `existing`'s resourceVersion, so that
/// the write fails if anyone changed the Secret since it was read.
///
/// Errors: [`SinkError::Foreign`] for a Secret trustplane does not manage
/// (unless `adopt_existing`), [`SinkError::Incompatible`] for an immutable
/// Secret or a `kubernetes.io/tls` one asked to hold the istio form.
pub(crate) fn desired_cacerts_secret(
    existing: Option<&Secret>,
    options: &KubernetesSinkOptions,
    material: &CacertsMaterial,
) -> Result<Option<Secret>, SinkError> {
    let incompatible = |reason: &str| SinkError::Incompatible {
        target: secret_description(options),
        reason: reason.to_string(),
    };
    let mut secret = match existing {
        Some(existing) => {
            if !is_managed(existing) && !options.adopt_existing {
                return Err(foreign(options));
            }
            if existing.immutable == Some(true) {
                return Err(incompatible(
                    "it is immutable; delete it and trustplane creates a mutable one",
                ));
            }
            // The type cannot change, and a kubernetes.io/tls Secret must keep
            // tls.crt, which istiod would then read instead of the istio keys.
            if options.format == SecretFormat::Istio && existing.type_.as_deref() == Some(TLS_TYPE)
            {
                return Err(incompatible(
                    "it has type kubernetes.io/tls, which cannot hold the istio form: pass --secret-format tls, or delete the Secret",
                ));
            }
            existing.clone()
        }
        None => Secret {
            metadata: ObjectMeta {
                name: Some(options.secret_name.clone()),
                namespace: Some(options.namespace.clone()),
                ..ObjectMeta::default()
            },
            type_: Some(options.format.secret_type().to_string()),
            ..Secret::default()
        },
    };
    secret.string_data = None;
    let data = secret.data.get_or_insert_with(BTreeMap::new);
    for key in OWNED_KEYS.iter().chain([&ISTIO_GENERATED_KEY]) {
        if let Some(mut old) = data.remove(*key) {
            old.0.zeroize();
        }
    }
    let text = |value: &str| ByteString(value.as_bytes().to_vec());
    match options.format {
        SecretFormat::Istio => {
            data.insert(CA_CERT_FILE.into(), text(&material.ca_cert_pem));
            data.insert(CA_KEY_FILE.into(), text(&material.ca_key_pem));
            data.insert(CERT_CHAIN_FILE.into(), text(&material.cert_chain_pem));
            data.insert(ROOT_CERT_FILE.into(), text(&material.root_cert_pem));
        }
        SecretFormat::Tls => {
            data.insert(TLS_CERT_KEY.into(), text(&tls_certificate_pem(material)));
            data.insert(TLS_KEY_KEY.into(), text(&material.ca_key_pem));
            data.insert(TLS_CA_KEY.into(), text(&material.root_cert_pem));
        }
    }
    secret
        .metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(MANAGED_BY_LABEL.into(), MANAGER.into());
    let annotations = secret
        .metadata
        .annotations
        .get_or_insert_with(BTreeMap::new);
    annotations.insert(
        BUNDLE_VERSION_ANNOTATION.into(),
        material.bundle_version.to_string(),
    );
    match Certificate::from_pem(&material.ca_cert_pem)
        .and_then(|certificate| certificate.serial_hex())
    {
        Ok(serial) => {
            annotations.insert(INTERMEDIATE_SERIAL_ANNOTATION.into(), serial);
        }
        Err(_) => {
            annotations.remove(INTERMEDIATE_SERIAL_ANNOTATION);
        }
    }
    let unchanged = existing.is_some_and(|existing| {
        existing.data == secret.data
            && existing.metadata.labels == secret.metadata.labels
            && existing.metadata.annotations == secret.metadata.annotations
    });
    if unchanged {
        scrub(&mut secret);
        return Ok(None);
    }
    Ok(Some(secret))
}

/// "Secret <namespace>/<name>" for the Secret `options` names.
fn secret_description(options: &KubernetesSinkOptions) -> String {
    format!("Secret {}/{}", options.namespace, options.secret_name)
}

/// The error for a Secret that trustplane does not manage and may not take over.
fn foreign(options: &KubernetesSinkOptions) -> SinkError {
    SinkError::Foreign {
        target: secret_description(options),
        marker: format!("no label {MANAGED_BY_LABEL}={MANAGER}"),
    }
}

/// `tls.crt`: the intermediate followed by the CAs between it and the root
/// (`cert-chain.pem` without its first and last entries). istiod appends
/// `ca.crt` to build the chain, so the root is not repeated here.
fn tls_certificate_pem(material: &CacertsMaterial) -> String {
    let mut text = material.ca_cert_pem.clone();
    let Ok(chain) = pem::parse_many(material.cert_chain_pem.as_bytes()) else {
        return text;
    };
    let between = chain
        .get(1..chain.len().saturating_sub(1))
        .unwrap_or_default();
    for block in between {
        if !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&pem::encode_config(
            block,
            pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
        ));
    }
    text
}

pub(crate) fn data_text(secret: &Secret, key: &str) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone()).ok()
}

/// The `cacerts` files `secret` holds in `format`, as istiod would read
/// them; `None` when it holds none of that form's keys. For the tls form,
/// `ca-cert.pem` is the first certificate of `tls.crt` and `cert-chain.pem`
/// is `tls.crt` followed by the root of `ca.crt` that issued its last
/// certificate (checked at `now`), i.e. the istio form of the same set.
pub(crate) fn cacerts_files(
    secret: &Secret,
    format: SecretFormat,
    now: SystemTime,
) -> Option<CacertsFiles> {
    let files = match format {
        SecretFormat::Istio => CacertsFiles {
            ca_cert: data_text(secret, CA_CERT_FILE),
            ca_key: data_text(secret, CA_KEY_FILE).map(Zeroizing::new),
            cert_chain: data_text(secret, CERT_CHAIN_FILE),
            root_cert: data_text(secret, ROOT_CERT_FILE),
        },
        SecretFormat::Tls => {
            let certificate = data_text(secret, TLS_CERT_KEY);
            let root_cert = data_text(secret, TLS_CA_KEY);
            CacertsFiles {
                ca_cert: certificate.as_deref().map(first_certificate_pem),
                ca_key: data_text(secret, TLS_KEY_KEY).map(Zeroizing::new),
                cert_chain: certificate
                    .as_deref()
                    .map(|certificate| istio_chain(certificate, root_cert.as_deref(), now)),
                root_cert,
            }
        }
    };
    let nothing = files.ca_cert.is_none()
        && files.ca_key.is_none()
        && files.cert_chain.is_none()
        && files.root_cert.is_none();
    (!nothing).then_some(files)
}

/// The first certificate of `text` in canonical PEM (or `text` itself when
/// it does not parse, for the checks to report).
fn first_certificate_pem(text: &str) -> String {
    match Certificate::parse_pem_chain(text) {
        Ok(certificates) => certificates
            .first()
            .map_or_else(|| text.to_string(), Certificate::to_pem),
        Err(_) => text.to_string(),
    }
}

/// `tls.crt` followed by the root from `ca.crt` that issued its last
/// certificate, if one did.
fn istio_chain(tls_certificate: &str, roots: Option<&str>, now: SystemTime) -> String {
    let mut chain = tls_certificate.to_string();
    let last = Certificate::parse_pem_chain(tls_certificate)
        .ok()
        .and_then(|mut certificates| certificates.pop());
    let roots = roots
        .and_then(|roots| Certificate::parse_pem_chain(roots).ok())
        .unwrap_or_default();
    if let Some(last) = last
        && let Some(root) = roots
            .iter()
            .find(|root| ca::verify_issued(&last, root, now).is_ok())
    {
        if !chain.ends_with('\n') {
            chain.push('\n');
        }
        chain.push_str(&root.to_pem());
    }
    chain
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests;
