//! trustplane: a certificate authority and trust-bundle distribution service
//! for Istio multicluster meshes.
//!
//! One central server issues each cluster its own intermediate CA from a CSR
//! made inside the cluster, publishes the federated trust bundle over gRPC,
//! and keeps every cluster's Istio `cacerts` current through an agent.
//!
//! The crate has a pure core (`ca`, `policy`, `bundle`, `rotation`: values
//! in, values out, no I/O, no clock) and I/O at the edges (`store`, `signer`,
//! `server`, `agent`, `cli`, `telemetry`).
#![forbid(unsafe_code)]

pub mod agent;
pub mod bundle;
pub mod ca;
pub mod cli;
pub mod config;
pub mod policy;
pub mod rotation;
pub mod server;
pub mod signer;
pub mod store;
pub mod telemetry;

/// Generated gRPC types and service stubs for `proto/trustplane/v1`.
pub mod proto {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("trustplane.v1");
}

pub use agent::{
    AgentConfig, AgentError, AgentHandle, AgentStatus, CacertsMaterial, ClusterSink, DirectorySink,
    IdentityStore, KubernetesIdentityStore, KubernetesSink, KubernetesSinkOptions, LeaseOptions,
    MemorySink, SecretFormat, SinkError,
};
pub use bundle::TrustBundle;
pub use ca::{
    CaError, Certificate, IntermediateProfile, KeyAlgorithm, PrivateKey, PublicKeyInfo, VerifiedCsr,
};
pub use policy::{Policy, PolicyError, TrustDomainPolicy};
pub use signer::{LocalSigner, RootSigner, SignerError};
pub use store::{MemoryStore, RedbStore, Store, StoreError};
