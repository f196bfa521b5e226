//! trustplane: a certificate authority and trust-bundle distribution service
//! for Istio multicluster meshes.
//!
//! One central server issues each cluster its own intermediate CA from a CSR
//! made inside the cluster, publishes the federated trust bundle over gRPC,
//! and keeps every cluster's Istio `cacerts` current through an agent.
//!
//! The crate has a pure core (`ca`, `policy`, `bundle`, `rotation`,
//! `reconcile`: values in, values out, no I/O, no clock) and I/O at the
//! edges (`sink`, `store`, `signer`, `vault`, `server`, `agent`, `cli`,
//! `telemetry`).
//! Time is read through one [`clock::Clock`], the environment in [`config`],
//! durable files are written through [`files`], and the typed vocabulary
//! meets the proto enums in [`wire`].
#![forbid(unsafe_code)]

pub mod agent;
pub mod bundle;
pub mod ca;
pub mod cli;
pub mod clock;
pub mod config;
pub mod files;
#[doc(hidden)]
pub mod fuzzing;
pub mod hardening;
pub mod kubeconfig;
pub mod policy;
pub mod reconcile;
pub mod rotation;
pub mod server;
pub mod signer;
pub mod sink;
pub mod store;
pub mod telemetry;
pub mod vault;
pub mod wire;

// The test fixtures shared with the integration tests name the crate
// `trustplane`, as those tests do.
#[cfg(test)]
extern crate self as trustplane;
#[cfg(test)]
#[path = "../tests/common/fixtures.rs"]
pub(crate) mod fixtures;

pub mod proto_codec;

/// Generated gRPC types and service stubs for `proto/trustplane/v1`.
pub mod proto {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("trustplane.v1");
}

pub use agent::{
    AgentConfig, AgentError, AgentHandle, AgentStatus, IdentityStore, KubernetesIdentityStore,
    LeaseOptions,
};
pub use bundle::TrustBundle;
pub use ca::{
    CaError, Certificate, IntermediateProfile, KeyAlgorithm, PrivateKey, PublicKeyInfo, VerifiedCsr,
};
pub use clock::{Clock, SystemClock, TestClock};
pub use policy::{Policy, PolicyError, TrustDomainPolicy};
pub use signer::{LocalSigner, RootSigner, SignerError, VaultSigner};
pub use sink::{
    CacertsMaterial, ClusterSink, DirectorySink, KubernetesSink, KubernetesSinkOptions, MemorySink,
    SecretFormat, SinkError,
};
pub use store::{MemoryStore, RedbStore, Store, StoreError, VaultKvStore};
