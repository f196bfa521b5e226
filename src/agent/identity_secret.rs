//! The agent's enrollment identity in a Kubernetes Secret, written with the
//! same guarded read-modify-write as the `cacerts` sink.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::ObjectMeta;
use zeroize::{Zeroize, Zeroizing};

use super::error::AgentError;
use super::identity::{
    CLIENT_CERT_FILE, CLIENT_KEY_FILE, CLUSTER_FILE, ClientIdentity, ENROLLING_KEY_FILE,
    IdentityStore, SERVER_CA_FILE, SERVER_FILE, StoredIdentity,
};
use crate::sink::kube::{
    IDENTITY_SECRET_NAME, KubernetesError, MANAGED_BY_LABEL, MANAGER, OPAQUE_TYPE, Scrubbed,
    SecretObject, data_text,
};

/// The agent's enrollment identity in a Secret (default
/// `trustplane-agent-identity` in the agent's namespace), so that a
/// restarted or rescheduled pod needs no new join token. Keys: `cluster`,
/// `server-ca.pem`, `client.pem`, `client-key.pem`, `server`, and
/// `enrolling-key.pem` only while an enrollment is under way.
pub struct KubernetesIdentityStore {
    secret: SecretObject,
}

impl std::fmt::Debug for KubernetesIdentityStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesIdentityStore")
            .field("secret", &self.secret.describe())
            .finish_non_exhaustive()
    }
}

impl KubernetesIdentityStore {
    /// The Secret [`IDENTITY_SECRET_NAME`] in `namespace`.
    pub fn new(client: kube::Client, namespace: &str) -> Self {
        Self::with_name(client, namespace, IDENTITY_SECRET_NAME)
    }

    /// The Secret `name` in `namespace`.
    pub fn with_name(client: kube::Client, namespace: &str, name: &str) -> Self {
        Self {
            secret: SecretObject::new(client, namespace, name),
        }
    }

    fn failure(&self) -> impl Fn(&'static str, KubernetesError) -> AgentError + '_ {
        |action, source| AgentError::IdentitySecret {
            action,
            namespace: self.secret.namespace.clone(),
            name: self.secret.name.clone(),
            source,
        }
    }
}

#[async_trait::async_trait]
impl IdentityStore for KubernetesIdentityStore {
    fn describe(&self) -> String {
        self.secret.describe()
    }

    async fn load(&self) -> Result<StoredIdentity, AgentError> {
        let secret = self
            .secret
            .get()
            .await
            .map_err(|source| (self.failure())("read", source))?;
        Ok(match secret {
            None => StoredIdentity::Absent,
            Some(secret) => stored_identity(&secret),
        })
    }

    /// A dry-run write of the Secret: fails now, before the join token is
    /// spent, if RBAC or admission would refuse the real one.
    async fn prepare(&self) -> Result<(), AgentError> {
        let existing = self
            .secret
            .get()
            .await
            .map_err(|source| (self.failure())("read", source))?;
        let probe = Scrubbed(desired_identity_secret(
            existing.as_deref(),
            &self.secret,
            Contents::Nothing,
        ));
        let action = if existing.is_some() {
            "check write access (dry-run replace) to"
        } else {
            "check write access (dry-run create) to"
        };
        // A conflict here only means someone wrote meanwhile: access is fine.
        self.secret
            .put(&probe, existing.is_some(), true)
            .await
            .map(|_| ())
            .map_err(|source| (self.failure())(action, source))
    }

    async fn save(&self, identity: &ClientIdentity) -> Result<(), AgentError> {
        self.secret
            .update(self.failure(), |existing| {
                Ok(Some(desired_identity_secret(
                    existing,
                    &self.secret,
                    Contents::Identity(identity),
                )))
            })
            .await
            .map(|_| ())
    }

    async fn load_enrolling_key(&self) -> Result<Option<Zeroizing<String>>, AgentError> {
        let secret = self
            .secret
            .get()
            .await
            .map_err(|source| (self.failure())("read", source))?;
        Ok(secret
            .as_deref()
            .and_then(|secret| data_text(secret, ENROLLING_KEY_FILE))
            .map(Zeroizing::new))
    }

    async fn save_enrolling_key(&self, key_pem: &Zeroizing<String>) -> Result<(), AgentError> {
        self.secret
            .update(self.failure(), |existing| {
                Ok(Some(desired_identity_secret(
                    existing,
                    &self.secret,
                    Contents::EnrollingKey(key_pem),
                )))
            })
            .await
            .map(|_| ())
    }
}

/// What [`desired_identity_secret`] writes.
enum Contents<'a> {
    /// Only the managed-by label (a dry run).
    Nothing,
    /// The key of an enrollment under way.
    EnrollingKey(&'a Zeroizing<String>),
    /// The whole identity (the enrolling key dropped).
    Identity(&'a ClientIdentity),
}

/// The identity Secret holding `contents`, keeping whatever else
/// `existing` holds.
fn desired_identity_secret(
    existing: Option<&Secret>,
    object: &SecretObject,
    contents: Contents<'_>,
) -> Secret {
    let mut secret = existing.cloned().unwrap_or_else(|| Secret {
        metadata: ObjectMeta {
            name: Some(object.name.clone()),
            namespace: Some(object.namespace.clone()),
            ..ObjectMeta::default()
        },
        type_: Some(OPAQUE_TYPE.to_string()),
        ..Secret::default()
    });
    secret.string_data = None;
    secret
        .metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(MANAGED_BY_LABEL.into(), MANAGER.into());
    let text = |value: &str| ByteString(value.as_bytes().to_vec());
    if let Contents::EnrollingKey(key_pem) = contents {
        let data = secret.data.get_or_insert_with(BTreeMap::new);
        if let Some(mut old) = data.insert(ENROLLING_KEY_FILE.to_string(), text(key_pem)) {
            old.0.zeroize();
        }
    }
    if let Contents::Identity(identity) = contents {
        let data = secret.data.get_or_insert_with(BTreeMap::new);
        if let Some(mut old) = data.remove(ENROLLING_KEY_FILE) {
            old.0.zeroize();
        }
        let entries = [
            (CLUSTER_FILE, text(&identity.cluster)),
            (SERVER_CA_FILE, text(&identity.server_ca_pem)),
            (CLIENT_CERT_FILE, text(&identity.client_cert_pem)),
            (CLIENT_KEY_FILE, text(&identity.client_key_pem)),
        ];
        for (key, value) in entries {
            if let Some(mut old) = data.insert(key.to_string(), value) {
                old.0.zeroize();
            }
        }
        match &identity.server {
            Some(server) => {
                data.insert(SERVER_FILE.to_string(), text(server));
            }
            None => {
                data.remove(SERVER_FILE);
            }
        }
    }
    secret
}

/// The identity in an identity Secret.
fn stored_identity(secret: &Secret) -> StoredIdentity {
    let cluster = data_text(secret, CLUSTER_FILE)
        .map(|text| text.trim().to_string())
        .filter(|text| !text.is_empty());
    let server_ca_pem = data_text(secret, SERVER_CA_FILE);
    let client_cert_pem = data_text(secret, CLIENT_CERT_FILE);
    let client_key_pem = data_text(secret, CLIENT_KEY_FILE).map(Zeroizing::new);
    let server = data_text(secret, SERVER_FILE)
        .map(|text| text.trim().to_string())
        .filter(|text| !text.is_empty());
    match (cluster, server_ca_pem, client_cert_pem, client_key_pem) {
        (Some(cluster), Some(server_ca_pem), Some(client_cert_pem), Some(client_key_pem)) => {
            StoredIdentity::Complete(ClientIdentity {
                cluster,
                server_ca_pem,
                client_cert_pem,
                client_key_pem,
                server,
            })
        }
        (None, None, None, None) => StoredIdentity::Absent,
        (cluster, server_ca_pem, client_cert_pem, client_key_pem) => {
            let missing = [
                (CLUSTER_FILE, cluster.is_none()),
                (SERVER_CA_FILE, server_ca_pem.is_none()),
                (CLIENT_CERT_FILE, client_cert_pem.is_none()),
                (CLIENT_KEY_FILE, client_key_pem.is_none()),
            ]
            .into_iter()
            .filter_map(|(name, absent)| absent.then_some(name))
            .collect();
            StoredIdentity::Incomplete(missing)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::super::identity::tests::identity;
    use super::*;

    fn bytes(text: &str) -> ByteString {
        ByteString(text.as_bytes().to_vec())
    }

    fn text(secret: &Secret, key: &str) -> Option<String> {
        data_text(secret, key)
    }

    fn identity_object() -> SecretObject {
        // Building an Api needs a client; none is contacted in these tests.
        let config = kube::Config::new("https://127.0.0.1:1".parse().unwrap());
        SecretObject::new(
            kube::Client::try_from(config).unwrap(),
            "istio-system",
            IDENTITY_SECRET_NAME,
        )
    }

    #[tokio::test]
    async fn the_identity_secret_round_trips_and_keeps_other_keys() {
        let object = identity_object();
        let created = desired_identity_secret(None, &object, Contents::Identity(&identity()));
        assert_eq!(
            created.metadata.name.as_deref(),
            Some("trustplane-agent-identity")
        );
        let StoredIdentity::Complete(loaded) = stored_identity(&created) else {
            panic!("identity not complete");
        };
        assert_eq!(loaded, identity());

        let mut with_extra = created.clone();
        with_extra
            .data
            .as_mut()
            .unwrap()
            .insert("note".into(), bytes("kept"));
        with_extra.metadata.resource_version = Some("12".into());
        let mut moved = identity();
        moved.server = Some("https://elsewhere:8443".into());
        let updated =
            desired_identity_secret(Some(&with_extra), &object, Contents::Identity(&moved));
        assert_eq!(text(&updated, "note").as_deref(), Some("kept"));
        assert_eq!(
            text(&updated, SERVER_FILE).as_deref(),
            Some("https://elsewhere:8443")
        );
        assert_eq!(updated.metadata.resource_version.as_deref(), Some("12"));

        let probe = desired_identity_secret(None, &object, Contents::Nothing);
        assert!(probe.data.is_none(), "a dry run carries no identity");
    }

    #[tokio::test]
    async fn the_enrolling_key_is_kept_until_the_identity_replaces_it() {
        let object = identity_object();
        let key = Zeroizing::new("enrolling key pem".to_string());
        let enrolling = desired_identity_secret(None, &object, Contents::EnrollingKey(&key));
        assert_eq!(
            text(&enrolling, ENROLLING_KEY_FILE).as_deref(),
            Some("enrolling key pem")
        );
        assert!(
            matches!(stored_identity(&enrolling), StoredIdentity::Absent),
            "an enrolling key alone is no identity"
        );
        let saved =
            desired_identity_secret(Some(&enrolling), &object, Contents::Identity(&identity()));
        assert!(text(&saved, ENROLLING_KEY_FILE).is_none());
        assert!(matches!(
            stored_identity(&saved),
            StoredIdentity::Complete(_)
        ));
    }

    #[test]
    fn a_partial_identity_secret_lists_what_is_missing() {
        let secret = Secret {
            data: Some(
                [
                    (CLIENT_CERT_FILE.to_string(), bytes("cert")),
                    (CLIENT_KEY_FILE.to_string(), bytes("key")),
                ]
                .into_iter()
                .collect(),
            ),
            ..Secret::default()
        };
        let StoredIdentity::Incomplete(missing) = stored_identity(&secret) else {
            panic!("expected an incomplete identity");
        };
        assert_eq!(missing, vec![CLUSTER_FILE, SERVER_CA_FILE]);
        assert!(matches!(
            stored_identity(&Secret::default()),
            StoredIdentity::Absent
        ));
    }
}
