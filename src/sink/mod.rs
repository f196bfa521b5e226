//! Where a cluster's `cacerts` go. The contract ([`ClusterSink`],
//! [`CacertsMaterial`], Istio's file names, the backend-neutral
//! [`SinkError`]) knows no backend; the backends are a directory laid out
//! the way the kubelet's AtomicWriter lays out a Secret volume, a Kubernetes
//! Secret (with the Kubernetes client helpers the agent and push mode share)
//! and an in-memory sink for tests. Every backend writes the four files as
//! one atomic change. `keeper.rs` is the driver half the agent and push mode
//! share: it applies the reconciler's decisions to one sink, and the two
//! differ only in their [`IntermediateSource`].
//!
//! Not here: deciding what to write (`reconcile`) and the loops that run a
//! keeper (`agent`, push mode in `server`).

mod contract;
mod directory;
mod keeper;
pub mod kube;
mod memory;
mod secret_format;

pub use contract::{
    CA_CERT_FILE, CA_KEY_FILE, CERT_CHAIN_FILE, CacertsMaterial, ClusterSink, ROOT_CERT_FILE,
    SinkError,
};
pub use directory::DirectorySink;
pub use keeper::{IntermediateSource, Keeper};
pub use kube::{KubernetesError, KubernetesSink, KubernetesSinkOptions, SecretFormat};
pub use memory::MemorySink;
