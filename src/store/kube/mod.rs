//! The `kubernetes` store: trustplane's state as objects in one namespace
//! of the hub cluster, so that etcd (behind the API server) is the
//! replicated store and several servers share it. Nothing of ours
//! replicates data.
//!
//! The commit protocol is the one of the `vault-kv` store
//! (`store::head_commit`): the API server offers compare-and-swap on one
//! object at a time (an update carrying `metadata.resourceVersion` fails
//! with 409 Conflict when the object changed; a create fails with 409
//! AlreadyExists), so every batch commits through one `TrustplaneHead`
//! object named `trustplane` (its resourceVersion is the check-and-set
//! token; its `seq` is [`Store::generation`]) and is then applied to the
//! key objects, each written guarded by its own resourceVersion. Readers
//! never see half a batch; a server killed between the commit point and
//! the last key write leaves the batch in the head, and the next commit
//! (by any server) rolls it forward.
//!
//! Objects (group `trustplane.io`, version `v1alpha1`, see
//! [`resources`]): a kind per table — Meta key `rotation` is a
//! `TrustplaneRotation`, other Meta keys `TrustplaneMeta`; Roots,
//! Clusters, Certificates, Bundles, Tokens and Audit are
//! `TrustplaneRoot`, `TrustplaneCluster`, `TrustplaneCertificate`,
//! `TrustplaneBundle`, `TrustplaneToken`, `TrustplaneAuditEntry` — whose
//! spec holds the original `key`, the batch `seq` that wrote it, its
//! `version`, its value (JSON as JSON where the API server keeps it byte
//! for byte, else `text`, else `base64`) and `previous`. The `Secrets`
//! table (key material sealed with the KEK) is core/v1 Secrets named
//! `trustplane-secret-...`, labeled `app.kubernetes.io/managed-by=trustplane`
//! and `trustplane.io/table=secrets`. Object names are DNS-1123: a readable
//! part of the key and 12 hex digits of its SHA-256. Leases
//! ([`Store::lease`]) are coordination.k8s.io/v1 Leases `trustplane-<name>`
//! (the leader's: `trustplane-leader`), taken and renewed by
//! resourceVersion check-and-set; the expiry the holder set is kept in the
//! annotation `trustplane.io/expires-unix-ms`.
//!
//! Servers sharing the store watch the head ([`Store::changes`]) and catch
//! up at once when another commits; their once-a-second poll of
//! [`Store::generation`] stays the guarantee.
//!
//! Issuance on every replica: each issued certificate's record is created
//! with `Expect::Absent` through the head, so two replicas can never both
//! record one serial (the second batch conflicts and is retried with a new
//! serial); no forwarding to the leader is needed.
//!
//! A batch (the head's JSON) is limited to [`MAX_BATCH_BYTES`], so that a
//! key object (its value and the previous one) stays well under etcd's
//! 1.5 MiB object limit. Calls that fail transiently (the API server
//! unreachable, 429, 5xx) are retried with backoff, then reported as
//! [`StoreError::Unavailable`] naming the object and what to check; a 403
//! names the verb and resource and the RBAC rule to add; a missing CRD
//! says how to install the CRDs.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DynamicObject, ListParams, ObjectMeta, PostParams};
use kube::discovery::ApiResource;

use super::head_commit::records::{Head, KeyRecord, backend};
use super::head_commit::{HeadStore, Objects, runtime};
use super::{StoreError, Table};

mod lease;
pub mod resources;
mod watch;

pub use lease::lease_name;

use resources::{
    HEAD_NAME, Kind, MANAGED_BY, RecordSpec, TABLE_LABEL, head_of, head_resource, head_spec,
    kind_of, kinds, object_name, record_of, record_spec,
};

/// The largest head (one resolved batch, JSON) the store writes: a key
/// object holds its value and the previous one, so each stays under
/// 1 MiB, below etcd's 1.5 MiB request limit.
pub const MAX_BATCH_BYTES: usize = 512 * 1024;

/// Attempts of one API call while the API server is unreachable or
/// failing (pauses 0.1 s, 0.2 s, 0.4 s, ... between them).
const TRANSIENT_ATTEMPTS: u32 = 6;

/// How long one API call may wait for its response (a stalled API server
/// is retried, then reported, instead of holding a commit for minutes).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Objects one list page returns.
const LIST_PAGE: u32 = 500;

/// The annotation of a Lease holding its expiry (Unix milliseconds).
const LEASE_EXPIRES: &str = "trustplane.io/expires-unix-ms";

/// Create and replace with the defaults.
const POST: PostParams = PostParams {
    dry_run: false,
    field_manager: None,
};

/// The Secret data key of a `Secrets` record.
const SECRET_RECORD: &str = "record";

/// The store's place in the cluster: the backend of the head-commit
/// protocol.
#[derive(Clone)]
pub struct KubeObjects {
    client: kube::Client,
    namespace: String,
    server: String,
    /// Changes as the watch on the head sees them.
    changes: Option<tokio::sync::watch::Receiver<u64>>,
}

impl std::fmt::Debug for KubeObjects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeObjects")
            .field("namespace", &self.namespace)
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

/// The store on Kubernetes objects (see the module docs).
pub type KubeStore = HeadStore<KubeObjects>;

impl std::fmt::Debug for KubeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeStore")
            .field("namespace", &self.place.namespace)
            .field("server", &self.place.server)
            .finish_non_exhaustive()
    }
}

/// What one API call came to.
enum Outcome<T> {
    Done(T),
    /// 409: the object changed, or exists already.
    Conflict,
    /// 404: no such object.
    Missing,
}

/// What a call does, for messages: the verb and the resource, and the
/// object's name.
struct Call<'a> {
    verb: &'static str,
    resource: &'a str,
    name: &'a str,
}

fn is_transient(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => {
            matches!(status.code, 429 | 500 | 502 | 503 | 504)
                || status.reason == "ServerTimeout"
                || status.reason == "Timeout"
        }
        kube::Error::SerdeError(_)
        | kube::Error::BuildRequest(_)
        | kube::Error::InferConfig(_)
        | kube::Error::Discovery(_) => false,
        _ => true,
    }
}

impl KubeObjects {
    /// Runs `request` with retries on transient failures; classifies what
    /// remains.
    async fn call<T, F, Fut>(&self, call: Call<'_>, request: F) -> Result<Outcome<T>, StoreError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, kube::Error>>,
    {
        let mut attempt = 0;
        loop {
            let error = match request().await {
                Ok(answer) => return Ok(Outcome::Done(answer)),
                Err(error) => error,
            };
            attempt += 1;
            if is_transient(&error) && attempt < TRANSIENT_ATTEMPTS {
                tokio::time::sleep(Duration::from_millis(100 << (attempt - 1))).await;
                continue;
            }
            return match error {
                kube::Error::Api(status) if status.code == 409 => Ok(Outcome::Conflict),
                kube::Error::Api(status)
                    if status.code == 404
                        && (status
                            .message
                            .contains("could not find the requested resource")
                            || status.message.contains("page not found")) =>
                {
                    Err(backend(format!(
                        "Kubernetes at {} does not know {}: install trustplane's CRDs (`trustplane admin crds | kubectl apply --server-side -f -`, or deploy/crds/trustplane.io.yaml)",
                        self.server, call.resource
                    )))
                }
                kube::Error::Api(status) if status.code == 404 && call.verb == "create" => {
                    Err(backend(format!(
                        "Kubernetes at {} refused to create {} {} in namespace {}: {} (create the namespace, or pass --store-namespace)",
                        self.server, call.resource, call.name, self.namespace, status.message
                    )))
                }
                kube::Error::Api(status) if status.code == 404 => Ok(Outcome::Missing),
                kube::Error::Api(status) if status.code == 403 => Err(StoreError::Backend {
                    message: format!(
                        "Kubernetes at {} forbids {} {} in namespace {} ({}): give the server's ServiceAccount a Role in {} allowing get, list, watch, create and update on the trustplane.io resources, get, list, create and update on secrets, create on coordination.k8s.io leases and get and update on the lease trustplane-leader (the Helm chart's Role: deploy/helm/trustplane/templates/server-rbac.yaml)",
                        self.server,
                        call.verb,
                        call.resource,
                        self.namespace,
                        status.message,
                        self.namespace
                    ),
                    source: Some(Box::new(kube::Error::Api(status))),
                }),
                error if is_transient(&error) => Err(StoreError::Unavailable {
                    message: format!(
                        "Kubernetes API server {} unreachable or failing ({}) to {} {} {} in namespace {}, after {TRANSIENT_ATTEMPTS} attempts: check that it is up and reachable from here (--kubeconfig, network policies) and try again",
                        self.server,
                        crate::sink::kube::describe_kube_error(&error),
                        call.verb,
                        call.resource,
                        call.name,
                        self.namespace
                    ),
                    source: Some(Box::new(error)),
                }),
                error => Err(StoreError::Backend {
                    message: format!(
                        "Kubernetes at {} refused to {} {} {} in namespace {}: {}",
                        self.server,
                        call.verb,
                        call.resource,
                        call.name,
                        self.namespace,
                        crate::sink::kube::describe_kube_error(&error)
                    ),
                    source: Some(Box::new(error)),
                }),
            };
        }
    }

    fn custom(&self, resource: &ApiResource) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), &self.namespace, resource)
    }

    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn labels(table: Option<Table>) -> BTreeMap<String, String> {
        let mut labels = BTreeMap::from([(MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string())]);
        if let Some(table) = table {
            labels.insert(TABLE_LABEL.to_string(), table.name().to_string());
        }
        labels
    }

    /// Reads a custom object's spec and resourceVersion.
    async fn read_custom<T: serde::de::DeserializeOwned>(
        &self,
        resource: &ApiResource,
        name: &str,
    ) -> Result<Option<(T, String)>, StoreError> {
        let api = self.custom(resource);
        let call = Call {
            verb: "get",
            resource: &resource.plural,
            name,
        };
        match self.call(call, || api.get(name)).await? {
            Outcome::Done(object) => Ok(Some(self.spec_of(resource, object)?)),
            Outcome::Missing | Outcome::Conflict => Ok(None),
        }
    }

    fn spec_of<T: serde::de::DeserializeOwned>(
        &self,
        resource: &ApiResource,
        object: DynamicObject,
    ) -> Result<(T, String), StoreError> {
        let name = object.metadata.name.clone().unwrap_or_default();
        let token = object.metadata.resource_version.clone().unwrap_or_default();
        let spec = object.data.get("spec").cloned().unwrap_or_default();
        let spec = serde_json::from_value(spec).map_err(|error| {
            backend(format!(
                "Kubernetes {}/{name} in namespace {}: not a trustplane record ({error}); was it edited by hand?",
                resource.plural, self.namespace
            ))
        })?;
        Ok((spec, token))
    }

    /// Creates (empty `token`) or replaces (at `token`) a custom object.
    async fn write_custom<T: serde::Serialize>(
        &self,
        resource: &ApiResource,
        name: &str,
        table: Option<Table>,
        spec: &T,
        token: &str,
    ) -> Result<Option<String>, StoreError> {
        let spec = serde_json::to_value(spec).map_err(|error| {
            backend(format!("cannot encode {}/{name}: {error}", resource.plural))
        })?;
        let mut object =
            DynamicObject::new(name, resource).data(serde_json::json!({ "spec": spec }));
        object.metadata.labels = Some(Self::labels(table));
        let api = self.custom(resource);
        let written = if token.is_empty() {
            let call = Call {
                verb: "create",
                resource: &resource.plural,
                name,
            };
            self.call(call, || api.create(&POST, &object)).await?
        } else {
            object.metadata.resource_version = Some(token.to_string());
            let call = Call {
                verb: "update",
                resource: &resource.plural,
                name,
            };
            self.call(call, || api.replace(name, &POST, &object))
                .await?
        };
        Ok(match written {
            Outcome::Done(object) => Some(object.metadata.resource_version.unwrap_or_default()),
            // Replacing an object deleted meanwhile: the token is stale.
            Outcome::Conflict | Outcome::Missing => None,
        })
    }

    fn secret_record(&self, secret: &Secret) -> Result<RecordSpec, StoreError> {
        let name = secret.metadata.name.clone().unwrap_or_default();
        let bytes = secret
            .data
            .as_ref()
            .and_then(|data| data.get(SECRET_RECORD))
            .map(|bytes| bytes.0.as_slice())
            .unwrap_or_default();
        serde_json::from_slice(bytes).map_err(|error| {
            backend(format!(
                "Kubernetes Secret {name} in namespace {}: not a trustplane record ({error}); was it edited by hand?",
                self.namespace
            ))
        })
    }

    fn checked(&self, table: Table, key: &str, spec: RecordSpec) -> Result<KeyRecord, StoreError> {
        if spec.key != key {
            return Err(backend(format!(
                "Kubernetes object {} in namespace {} holds key {:?}, not {key:?} (a name collision or an edit by hand)",
                object_name(table, key),
                self.namespace,
                spec.key
            )));
        }
        record_of(&spec).map_err(|reason| {
            backend(format!(
                "Kubernetes object {} in namespace {}: {reason}",
                object_name(table, key),
                self.namespace
            ))
        })
    }

    async fn list_resource(
        &self,
        resource: &ApiResource,
    ) -> Result<Vec<DynamicObject>, StoreError> {
        let api = self.custom(resource);
        let mut objects = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let mut params = ListParams::default().limit(LIST_PAGE);
            if let Some(token) = &next {
                params = params.continue_token(token);
            }
            let call = Call {
                verb: "list",
                resource: &resource.plural,
                name: "",
            };
            let page = match self.call(call, || api.list(&params)).await? {
                Outcome::Done(page) => page,
                Outcome::Missing | Outcome::Conflict => return Ok(objects),
            };
            objects.extend(page.items);
            match page.metadata.continue_ {
                Some(token) if !token.is_empty() => next = Some(token),
                _ => return Ok(objects),
            }
        }
    }

    async fn list_secrets(&self) -> Result<Vec<Secret>, StoreError> {
        let api = self.secrets();
        let selector = format!(
            "{}={},{TABLE_LABEL}={}",
            MANAGED_BY.0,
            MANAGED_BY.1,
            Table::Secrets.name()
        );
        let mut objects = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let mut params = ListParams::default().labels(&selector).limit(LIST_PAGE);
            if let Some(token) = &next {
                params = params.continue_token(token);
            }
            let call = Call {
                verb: "list",
                resource: "secrets",
                name: "",
            };
            let page = match self.call(call, || api.list(&params)).await? {
                Outcome::Done(page) => page,
                Outcome::Missing | Outcome::Conflict => return Ok(objects),
            };
            objects.extend(page.items);
            match page.metadata.continue_ {
                Some(token) if !token.is_empty() => next = Some(token),
                _ => return Ok(objects),
            }
        }
    }

    /// Fails with the CRD to install, or the RBAC rule to add, when the
    /// store cannot list one of its kinds.
    async fn check_access(&self) -> Result<(), StoreError> {
        let mut resources = vec![head_resource()];
        for table in Table::ALL {
            for kind in kinds(table) {
                if let Kind::Custom(resource) = kind {
                    resources.push(resource);
                }
            }
        }
        for resource in &resources {
            let api = self.custom(resource);
            let call = Call {
                verb: "list",
                resource: &resource.plural,
                name: "",
            };
            let first = ListParams::default().limit(1);
            // A list in any namespace answers (empty) unless the kind is unknown.
            if let Outcome::Missing = self.call(call, || api.list_metadata(&first)).await? {
                return Err(backend(format!(
                    "Kubernetes at {} does not know {}.{}: install trustplane's CRDs (`trustplane admin crds | kubectl apply --server-side -f -`, or deploy/crds/trustplane.io.yaml)",
                    self.server,
                    resource.plural,
                    resources::GROUP
                )));
            }
        }
        Ok(())
    }
}

impl Objects for KubeObjects {
    type Token = String;
    const MAX_BATCH_BYTES: usize = MAX_BATCH_BYTES;
    const NAME: &'static str = "Kubernetes";

    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.changes.clone()
    }

    async fn read_head(&self) -> Result<Option<(Head, String)>, StoreError> {
        Ok(self
            .read_custom(&head_resource(), HEAD_NAME)
            .await?
            .map(|(spec, token)| (head_of(spec), token)))
    }

    async fn write_head(&self, head: &Head, token: &String) -> Result<Option<String>, StoreError> {
        self.write_custom(&head_resource(), HEAD_NAME, None, &head_spec(head), token)
            .await
    }

    async fn read_key(
        &self,
        table: Table,
        key: &str,
    ) -> Result<Option<(KeyRecord, String)>, StoreError> {
        let name = object_name(table, key);
        let found = match kind_of(table, key) {
            Kind::Custom(resource) => self.read_custom::<RecordSpec>(&resource, &name).await?,
            Kind::Secret => {
                let api = self.secrets();
                let call = Call {
                    verb: "get",
                    resource: "secrets",
                    name: &name,
                };
                match self.call(call, || api.get(&name)).await? {
                    Outcome::Done(secret) => Some((
                        self.secret_record(&secret)?,
                        secret.metadata.resource_version.clone().unwrap_or_default(),
                    )),
                    Outcome::Missing | Outcome::Conflict => None,
                }
            }
        };
        match found {
            None => Ok(None),
            Some((spec, token)) => Ok(Some((self.checked(table, key, spec)?, token))),
        }
    }

    async fn write_key(
        &self,
        table: Table,
        key: &str,
        record: &KeyRecord,
        token: &String,
    ) -> Result<Option<String>, StoreError> {
        let name = object_name(table, key);
        let spec = record_spec(key, record)
            .map_err(|reason| backend(format!("cannot write {}/{key}: {reason}", table.name())))?;
        match kind_of(table, key) {
            Kind::Custom(resource) => {
                self.write_custom(&resource, &name, Some(table), &spec, token)
                    .await
            }
            Kind::Secret => {
                let bytes = serde_json::to_vec(&spec)
                    .map_err(|error| backend(format!("cannot encode Secret {name}: {error}")))?;
                let secret = Secret {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        labels: Some(Self::labels(Some(table))),
                        resource_version: (!token.is_empty()).then(|| token.clone()),
                        ..ObjectMeta::default()
                    },
                    type_: Some("Opaque".to_string()),
                    data: Some(BTreeMap::from([(
                        SECRET_RECORD.to_string(),
                        k8s_openapi::ByteString(bytes),
                    )])),
                    ..Secret::default()
                };
                let api = self.secrets();
                let written = if token.is_empty() {
                    let call = Call {
                        verb: "create",
                        resource: "secrets",
                        name: &name,
                    };
                    self.call(call, || api.create(&POST, &secret)).await?
                } else {
                    let call = Call {
                        verb: "update",
                        resource: "secrets",
                        name: &name,
                    };
                    self.call(call, || api.replace(&name, &POST, &secret))
                        .await?
                };
                Ok(match written {
                    Outcome::Done(secret) => {
                        Some(secret.metadata.resource_version.unwrap_or_default())
                    }
                    Outcome::Conflict | Outcome::Missing => None,
                })
            }
        }
    }

    async fn list_keys(&self, table: Table) -> Result<Vec<(String, KeyRecord)>, StoreError> {
        let mut specs: Vec<RecordSpec> = Vec::new();
        for kind in kinds(table) {
            match kind {
                Kind::Custom(resource) => {
                    for object in self.list_resource(&resource).await? {
                        let spec = self.spec_of::<RecordSpec>(&resource, object)?.0;
                        // A Meta key's kind is fixed by its name: an object
                        // of the other kind does not hold the key.
                        if kind_of(table, &spec.key) == Kind::Custom(resource.clone()) {
                            specs.push(spec);
                        }
                    }
                }
                Kind::Secret => {
                    for secret in self.list_secrets().await? {
                        specs.push(self.secret_record(&secret)?);
                    }
                }
            }
        }
        specs
            .into_iter()
            .map(|spec| {
                let key = spec.key.clone();
                Ok((key.clone(), self.checked(table, &key, spec)?))
            })
            .collect()
    }

    async fn lease(
        &self,
        name: &str,
        holder: &str,
        now_unix_ms: u64,
        expires_unix_ms: u64,
    ) -> Result<String, StoreError> {
        self.take_lease(name, holder, now_unix_ms, expires_unix_ms)
            .await
    }

    fn head_name(&self) -> String {
        format!(
            "Kubernetes {}/{HEAD_NAME} in namespace {} at {}",
            head_resource().plural,
            self.namespace,
            self.server
        )
    }

    fn key_name(&self, table: Table, key: &str) -> String {
        let resource = match kind_of(table, key) {
            Kind::Custom(resource) => resource.plural,
            Kind::Secret => "secrets".to_string(),
        };
        format!(
            "Kubernetes {resource}/{} in namespace {}",
            object_name(table, key),
            self.namespace
        )
    }

    fn table_name(&self, table: Table) -> String {
        format!(
            "Kubernetes table {} in namespace {}",
            table.name(),
            self.namespace
        )
    }

    fn too_large(&self, size: usize) -> String {
        format!(
            "a batch of {size} bytes exceeds what one Kubernetes object of the store holds ({MAX_BATCH_BYTES} bytes at {}); nothing was written",
            self.head_name()
        )
    }
}

/// Where the `kubernetes` store is.
#[derive(Clone, Debug, Default)]
pub struct KubeStoreConfig {
    /// The kubeconfig file (`None`: in-cluster, else `KUBECONFIG` or
    /// `~/.kube/config`).
    pub kubeconfig: Option<std::path::PathBuf>,
    /// The namespace of the store's objects.
    pub namespace: String,
}

impl KubeStore {
    /// Connects to the API server and opens the store in
    /// `config.namespace`, checking that the CRDs are installed and the
    /// store may list them.
    ///
    /// Errors: [`StoreError::Backend`] for an unusable configuration, a
    /// missing CRD or missing RBAC (each message says what to do);
    /// [`StoreError::Unavailable`] when the API server stays unreachable.
    pub fn open(config: KubeStoreConfig) -> Result<Self, StoreError> {
        let runtime = runtime(KubeObjects::NAME)?;
        let (sender, receiver) = std::sync::mpsc::sync_channel(1);
        runtime.spawn(async move {
            let config_error = |error: crate::sink::kube::KubernetesError| StoreError::Backend {
                message: crate::telemetry::error_text(&error),
                source: Some(Box::new(error)),
            };
            let opened = async {
                let settings = crate::sink::kube::config(config.kubeconfig.as_deref())
                    .await
                    .map_err(config_error)?;
                let server = settings.cluster_url.to_string();
                // The watch idles between commits: no response deadline.
                let mut watching = settings.clone();
                watching.read_timeout = None;
                let mut settings = settings;
                settings.read_timeout = Some(CALL_TIMEOUT);
                let client = crate::sink::kube::client_for(settings).map_err(config_error)?;
                let watch_client = crate::sink::kube::client_for(watching).map_err(config_error)?;
                let objects = KubeObjects {
                    client,
                    namespace: config.namespace,
                    server,
                    changes: None,
                };
                objects.check_access().await?;
                Ok((objects, watch_client))
            };
            let _ = sender.send(opened.await);
        });
        let opened = receiver
            .recv()
            .map_err(|_| backend("the Kubernetes connection task stopped"))
            .and_then(|opened| opened);
        let (mut objects, watch_client) = match opened {
            Ok(opened) => opened,
            Err(error) => {
                // Dropping a runtime blocks, which panics inside another
                // runtime (the server's): the error would be lost to a panic.
                runtime.shutdown_background();
                return Err(error);
            }
        };
        objects.changes = Some(watch::spawn(&runtime, watch_client, &objects.namespace));
        HeadStore::new(objects, runtime)
    }
}

#[cfg(test)]
mod tests;
