//! The Kubernetes objects of the `kubernetes` store: the custom resources
//! (group `trustplane.io`, version `v1alpha1`, one kind per table plus the
//! head), their CRDs, the names of objects, and how a value is kept in an
//! object so that `kubectl get -o yaml` shows it.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResource;
use kube::CustomResourceExt as _;
use kube::discovery::ApiResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::store::Table;
use crate::store::head_commit::records::{Head, KeyRecord};

/// The API group of trustplane's custom resources.
pub const GROUP: &str = "trustplane.io";

/// The label every object of the store carries (`app.kubernetes.io/managed-by`).
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "trustplane");

/// The label naming the table an object belongs to.
pub const TABLE_LABEL: &str = "trustplane.io/table";

/// The name of the one `TrustplaneHead` object.
pub const HEAD_NAME: &str = "trustplane";

/// The Meta key kept as a `TrustplaneRotation` (all other Meta keys are
/// `TrustplaneMeta` objects).
pub const ROTATION_KEY: &str = "rotation";

/// Characters of the key kept readable in an object's name (so that a
/// name, with the Secrets' prefix and the hash, stays a 63-character label).
const READABLE_NAME: usize = 32;

/// A value as an object keeps it: exactly one of the three, or none for a
/// deleted key (a tombstone).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StoredValue {
    /// The value when it is JSON that the API server keeps byte for byte
    /// (sorted keys, no null, integers within int64, no other numbers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_json")]
    pub value: Option<serde_json::Value>,
    /// The value when it is other UTF-8 text (most records: JSON whose
    /// keys are in field order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The value when it is not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base64: Option<String>,
}

fn any_json(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "x-kubernetes-preserve-unknown-fields": true })
}

/// The key's state before the batch that wrote it last.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PreviousSpec {
    /// The batch that wrote it.
    pub seq: u64,
    /// Its version then.
    pub version: u64,
    /// Its value then.
    #[serde(flatten)]
    pub stored: StoredValue,
}

/// A key's object: the original key, the batch that wrote it last, its
/// version and value, and what it held before that batch.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RecordSpec {
    /// The store key (object names are derived from it).
    pub key: String,
    /// The batch that wrote it last.
    pub seq: u64,
    /// The key's version (0 for a deleted key).
    pub version: u64,
    /// Its value.
    #[serde(flatten)]
    pub stored: StoredValue,
    /// The key before batch `seq`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<PreviousSpec>,
}

/// The head: the last committed batch (see `store::head_commit`).
#[derive(CustomResource, Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "trustplane.io",
    version = "v1alpha1",
    kind = "TrustplaneHead",
    plural = "trustplaneheads",
    namespaced,
    doc = "The last batch committed to trustplane's store (its commit point)."
)]
pub struct TrustplaneHeadSpec {
    /// The last batch's sequence number.
    pub seq: u64,
    /// Whether its writes are applied to their objects.
    pub applied: bool,
    /// Its writes.
    pub writes: Vec<WriteSpec>,
    /// Ids of the last batches, newest last.
    #[serde(default)]
    pub recent: Vec<String>,
}

/// One write of the head's batch.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct WriteSpec {
    /// The table.
    pub table: String,
    /// The key.
    pub key: String,
    /// The version after the batch (0: deleted).
    pub version: u64,
    /// The value, base64 (absent: deleted, unless `inKey`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The value is in the key's own object only (sealed key material is
    /// dropped from the head once its batch is applied).
    #[serde(default, rename = "inKey", skip_serializing_if = "std::ops::Not::not")]
    pub in_key: bool,
}

macro_rules! record_kinds {
    ($($spec:ident $kind:tt $plural:tt $doc:tt;)+) => {
        $(
            #[doc = $doc]
            #[derive(CustomResource, Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
            #[kube(group = "trustplane.io", version = "v1alpha1", kind = $kind, plural = $plural, namespaced, doc = $doc)]
            pub struct $spec {
                /// The record.
                #[serde(flatten)]
                pub record: RecordSpec,
            }
        )+
    };
}

record_kinds! {
    TrustplaneMetaSpec "TrustplaneMeta" "trustplanemetas" "A setting of trustplane (CA settings, control-plane CA, chain heads).";
    TrustplaneRotationSpec "TrustplaneRotation" "trustplanerotations" "The state of the root rotation.";
    TrustplaneRootSpec "TrustplaneRoot" "trustplaneroots" "A mesh root.";
    TrustplaneClusterSpec "TrustplaneCluster" "trustplaneclusters" "An enrolled cluster.";
    TrustplaneCertificateSpec "TrustplaneCertificate" "trustplanecertificates" "An issued certificate, by serial.";
    TrustplaneBundleSpec "TrustplaneBundle" "trustplanebundles" "A published trust bundle version.";
    TrustplaneTokenSpec "TrustplaneToken" "trustplanetokens" "A join token (by hash).";
    TrustplaneAuditEntrySpec "TrustplaneAuditEntry" "trustplaneauditentries" "An entry of the audit chain.";
}

/// Where a key lives: one of the custom resource kinds, or a core/v1
/// Secret (the `Secrets` table: sealed key material).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A custom resource of this kind.
    Custom(ApiResource),
    /// A Secret.
    Secret,
}

/// Every CRD of the store, the head's first.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        TrustplaneHead::crd(),
        TrustplaneMeta::crd(),
        TrustplaneRotation::crd(),
        TrustplaneRoot::crd(),
        TrustplaneCluster::crd(),
        TrustplaneCertificate::crd(),
        TrustplaneBundle::crd(),
        TrustplaneToken::crd(),
        TrustplaneAuditEntry::crd(),
    ]
}

/// Every CRD as one YAML stream (`deploy/crds/trustplane.io.yaml`).
///
/// Errors: a CRD that does not serialize (never for these types).
pub fn crds_yaml() -> Result<String, serde_yaml_ng::Error> {
    let mut text = String::from(
        "# trustplane's custom resources (the `kubernetes` store).\n# Generated by `trustplane admin crds`; do not edit.\n",
    );
    for crd in crds() {
        text.push_str("---\n");
        text.push_str(&serde_yaml_ng::to_string(&crd)?);
    }
    Ok(text)
}

/// The head's API resource.
pub fn head_resource() -> ApiResource {
    ApiResource::erase::<TrustplaneHead>(&())
}

/// The kinds that hold `table`'s keys.
pub fn kinds(table: Table) -> Vec<Kind> {
    let custom = |resource| Kind::Custom(resource);
    match table {
        Table::Meta => vec![
            custom(ApiResource::erase::<TrustplaneMeta>(&())),
            custom(ApiResource::erase::<TrustplaneRotation>(&())),
        ],
        Table::Secrets => vec![Kind::Secret],
        Table::Roots => vec![custom(ApiResource::erase::<TrustplaneRoot>(&()))],
        Table::Clusters => vec![custom(ApiResource::erase::<TrustplaneCluster>(&()))],
        Table::Certificates => vec![custom(ApiResource::erase::<TrustplaneCertificate>(&()))],
        Table::Bundles => vec![custom(ApiResource::erase::<TrustplaneBundle>(&()))],
        Table::Tokens => vec![custom(ApiResource::erase::<TrustplaneToken>(&()))],
        Table::Audit => vec![custom(ApiResource::erase::<TrustplaneAuditEntry>(&()))],
    }
}

/// The kind that holds `table`/`key`.
pub fn kind_of(table: Table, key: &str) -> Kind {
    let mut kinds = kinds(table);
    if table == Table::Meta && key == ROTATION_KEY {
        return kinds.swap_remove(1);
    }
    kinds.swap_remove(0)
}

/// The object name of `table`/`key`: a DNS-1123 name, a readable prefix
/// of the key (lowercase letters and digits, runs of anything else as one
/// `-`) and 12 hex digits of the key's SHA-256, so two keys never share a
/// name in practice (and the object's `spec.key` is checked on read).
/// Secrets are prefixed `trustplane-secret-` (they share the namespace
/// with other Secrets).
pub fn object_name(table: Table, key: &str) -> String {
    let mut readable = String::new();
    for character in key.chars() {
        if character.is_ascii_alphanumeric() {
            readable.push(character.to_ascii_lowercase());
        } else if !readable.ends_with('-') {
            readable.push('-');
        }
        if readable.len() >= READABLE_NAME {
            break;
        }
    }
    let readable = readable.trim_matches('-');
    let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    let hash = hex::encode(&digest.as_ref()[..6]);
    let prefix = if table == Table::Secrets {
        "trustplane-secret-"
    } else {
        ""
    };
    if readable.is_empty() {
        format!("{prefix}k-{hash}")
    } else {
        format!("{prefix}{readable}-{hash}")
    }
}

/// Whether the API server keeps `value` byte for byte: no null (dropped
/// from objects), no number but an int64 (Go may rewrite others).
fn kept_exactly(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::Null => false,
        serde_json::Value::Bool(_) | serde_json::Value::String(_) => true,
        serde_json::Value::Number(number) => number.is_i64(),
        serde_json::Value::Array(items) => items.iter().all(kept_exactly),
        serde_json::Value::Object(fields) => fields.values().all(kept_exactly),
    }
}

/// How an object keeps `bytes` (see [`StoredValue`]).
pub fn store_value(bytes: &[u8]) -> StoredValue {
    if let Ok(parsed) = serde_json::from_slice::<serde_json::Value>(bytes)
        && kept_exactly(&parsed)
        && serde_json::to_vec(&parsed).is_ok_and(|canonical| canonical == bytes)
    {
        return StoredValue {
            value: Some(parsed),
            ..StoredValue::default()
        };
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => StoredValue {
            text: Some(text.to_string()),
            ..StoredValue::default()
        },
        Err(_) => StoredValue {
            base64: Some(STANDARD.encode(bytes)),
            ..StoredValue::default()
        },
    }
}

/// The bytes [`store_value`] kept; `Ok(None)` for a tombstone.
///
/// Errors: a `base64` field that is not base64 (the message says why).
pub fn load_value(stored: &StoredValue) -> Result<Option<Vec<u8>>, String> {
    if let Some(value) = &stored.value {
        return serde_json::to_vec(value)
            .map(Some)
            .map_err(|error| format!("its value does not serialize: {error}"));
    }
    if let Some(text) = &stored.text {
        return Ok(Some(text.as_bytes().to_vec()));
    }
    match &stored.base64 {
        Some(encoded) => STANDARD
            .decode(encoded)
            .map(Some)
            .map_err(|error| format!("its base64 value does not decode: {error}")),
        None => Ok(None),
    }
}

/// The head's spec for the protocol's head.
pub(crate) fn head_spec(head: &Head) -> TrustplaneHeadSpec {
    TrustplaneHeadSpec {
        seq: head.seq,
        applied: head.applied,
        writes: head
            .writes
            .iter()
            .map(|write| WriteSpec {
                table: write.table.clone(),
                key: write.key.clone(),
                version: write.version,
                value: write.value.clone(),
                in_key: write.in_key,
            })
            .collect(),
        recent: head.recent.clone(),
    }
}

/// The protocol's head from the head's spec.
pub(crate) fn head_of(spec: TrustplaneHeadSpec) -> Head {
    Head {
        seq: spec.seq,
        applied: spec.applied,
        writes: spec
            .writes
            .into_iter()
            .map(|write| crate::store::head_commit::records::Write {
                table: write.table,
                key: write.key,
                version: write.version,
                value: write.value,
                in_key: write.in_key,
            })
            .collect(),
        recent: spec.recent,
    }
}

/// A key object's spec for the protocol's record of `key`.
///
/// Errors: a record value that is not base64 (never: the protocol wrote it).
pub(crate) fn record_spec(key: &str, record: &KeyRecord) -> Result<RecordSpec, String> {
    let stored = |value: &Option<String>| -> Result<StoredValue, String> {
        match value {
            None => Ok(StoredValue::default()),
            Some(encoded) => STANDARD
                .decode(encoded)
                .map(|bytes| store_value(&bytes))
                .map_err(|error| format!("a value that is not base64: {error}")),
        }
    };
    Ok(RecordSpec {
        key: key.to_string(),
        seq: record.seq,
        version: record.version,
        stored: stored(&record.value)?,
        previous: match &record.previous {
            None => None,
            Some(previous) => Some(PreviousSpec {
                seq: previous.seq,
                version: previous.version,
                stored: stored(&previous.value)?,
            }),
        },
    })
}

/// The protocol's record from a key object's spec.
///
/// Errors: as [`load_value`].
pub(crate) fn record_of(spec: &RecordSpec) -> Result<KeyRecord, String> {
    let encoded = |stored: &StoredValue| -> Result<Option<String>, String> {
        Ok(load_value(stored)?.map(|bytes| STANDARD.encode(bytes)))
    };
    Ok(KeyRecord {
        seq: spec.seq,
        version: spec.version,
        value: encoded(&spec.stored)?,
        previous: match &spec.previous {
            None => None,
            Some(previous) => Some(Box::new(KeyRecord {
                seq: previous.seq,
                version: previous.version,
                value: encoded(&previous.stored)?,
                previous: None,
            })),
        },
    })
}
