//! The store's leases ([`Store::lease`]) as coordination.k8s.io Leases.

use std::collections::BTreeMap;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta};

use super::resources::object_name;
use super::{Call, KubeObjects, LEASE_EXPIRES, Outcome, POST};
#[cfg(doc)]
use crate::store::Store;
use crate::store::{StoreError, Table};

impl KubeObjects {
    /// [`Store::lease`]: a coordination.k8s.io Lease `trustplane-<name>`, changed by
    /// resourceVersion check-and-set; losing it twice in a row answers who
    /// won.
    pub(super) async fn take_lease(
        &self,
        name: &str,
        holder: &str,
        now_unix_ms: u64,
        expires_unix_ms: u64,
    ) -> Result<String, StoreError> {
        let object = lease_name(name);
        let api: Api<Lease> = Api::namespaced(self.client.clone(), &self.namespace);
        let read = || async {
            let call = Call {
                verb: "get",
                resource: "leases",
                name: &object,
            };
            Ok::<_, StoreError>(match self.call(call, || api.get(&object)).await? {
                Outcome::Done(lease) => Some(lease),
                Outcome::Missing | Outcome::Conflict => None,
            })
        };
        let holder_of = |lease: &Lease| -> (String, u64) {
            let holder = lease
                .spec
                .as_ref()
                .and_then(|spec| spec.holder_identity.clone())
                .unwrap_or_default();
            let expires = lease
                .metadata
                .annotations
                .as_ref()
                .and_then(|annotations| annotations.get(LEASE_EXPIRES))
                .and_then(|text| text.parse().ok())
                .unwrap_or(0);
            (holder, expires)
        };
        for _ in 0..2 {
            let current = read().await?;
            let mut token = None;
            if let Some(current) = &current {
                let (current_holder, expires) = holder_of(current);
                if current_holder != holder && expires > now_unix_ms {
                    return Ok(current_holder);
                }
                token = current.metadata.resource_version.clone();
            }
            let renew = micro_time(now_unix_ms);
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(object.clone()),
                    labels: Some(Self::labels(None)),
                    annotations: Some(BTreeMap::from([(
                        LEASE_EXPIRES.to_string(),
                        expires_unix_ms.to_string(),
                    )])),
                    resource_version: token.clone(),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(holder.to_string()),
                    lease_duration_seconds: Some(
                        i32::try_from(expires_unix_ms.saturating_sub(now_unix_ms).div_ceil(1000))
                            .unwrap_or(i32::MAX),
                    ),
                    renew_time: renew,
                    ..LeaseSpec::default()
                }),
            };
            let written = match token {
                None => {
                    let call = Call {
                        verb: "create",
                        resource: "leases",
                        name: &object,
                    };
                    self.call(call, || api.create(&POST, &lease)).await?
                }
                Some(_) => {
                    let call = Call {
                        verb: "update",
                        resource: "leases",
                        name: &object,
                    };
                    self.call(call, || api.replace(&object, &POST, &lease))
                        .await?
                }
            };
            if let Outcome::Done(_) = written {
                return Ok(holder.to_string());
            }
        }
        Ok(read()
            .await?
            .map(|lease| holder_of(&lease).0)
            .unwrap_or_default())
    }
}

/// `now_unix_ms` as a Lease's renew time.
fn micro_time(now_unix_ms: u64) -> Option<MicroTime> {
    let millis = i64::try_from(now_unix_ms).ok()?;
    let timestamp = k8s_openapi::jiff::Timestamp::from_millisecond(millis).ok()?;
    Some(MicroTime(timestamp))
}

/// The Lease of the store lease `name`: `trustplane-<name>` (the leader's
/// is `trustplane-leader`), or a hashed name for a name that is no DNS label.
pub fn lease_name(name: &str) -> String {
    if !name.is_empty()
        && name.len() <= 40
        && name
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-')
    {
        format!("trustplane-{name}")
    } else {
        format!("trustplane-{}", object_name(Table::Meta, name))
    }
}
