//! A simulated mesh for rotation tests: every cluster's cacerts sink is a
//! [`CheckingSink`] that, on each write, signs a workload certificate with
//! the cluster's new intermediate (as istiod would) and checks, for every
//! ordered pair of clusters (X, Y) involving the writer, that each live
//! workload certificate of X verifies under Y's current `root-cert.pem`.
//! Workload certificates live `workload_lifetime` (the rotation's grace
//! must be at least that). It also checks Istio's byte rule on every
//! `root-cert.pem` change and that no intermediate serial is seen twice.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use trustplane::ca::{self, CacertsFiles, Certificate, KeyAlgorithm, PrivateKey};
use trustplane::clock::Clock;
use trustplane::sink::{CacertsMaterial, ClusterSink, MemorySink, SinkError};

struct Leaf {
    leaf: Certificate,
    chain: Vec<Certificate>,
    not_after: SystemTime,
}

#[derive(Default)]
struct ClusterState {
    root_cert_pem: String,
    roots: Vec<Certificate>,
    intermediate_serial: String,
    leaves: Vec<Leaf>,
}

#[derive(Default)]
struct MeshState {
    clusters: BTreeMap<String, ClusterState>,
    checks: u64,
    failures: Vec<String>,
    root_transitions: u64,
    /// Intermediate serial → cluster that first wrote it.
    serials: HashMap<String, String>,
}

impl MeshState {
    /// Verifies every live workload certificate of every cluster under
    /// `roots` (those of cluster `to`); returns the checks and failures.
    fn live_leaves_under(
        &self,
        label: &str,
        to: &str,
        roots: &[Certificate],
        now: SystemTime,
    ) -> (u64, Vec<String>) {
        let mut checks = 0;
        let mut failures = Vec::new();
        for (from, source) in &self.clusters {
            for leaf in source.leaves.iter().filter(|leaf| leaf.not_after > now) {
                checks += 1;
                if let Some(failure) = verify(from, leaf, to, roots, now) {
                    failures.push(format!("[{label}] {failure}"));
                }
            }
        }
        (checks, failures)
    }

    fn record(&mut self, checks: u64, failures: Vec<String>) {
        self.checks += checks;
        self.failures.extend(failures);
    }
}

/// The shared view of every simulated cluster.
pub struct Mesh {
    state: tokio::sync::Mutex<MeshState>,
    workload_lifetime: Duration,
    clock: Arc<dyn Clock>,
}

/// Totals so far.
#[derive(Clone, Debug)]
pub struct Summary {
    pub checks: u64,
    pub failures: Vec<String>,
    pub root_transitions: u64,
    pub intermediates: usize,
}

fn verify(
    from: &str,
    leaf: &Leaf,
    to: &str,
    roots: &[Certificate],
    now: SystemTime,
) -> Option<String> {
    ca::verify_leaf_path(&leaf.leaf, &leaf.chain, roots, now)
        .err()
        .map(|error| {
            format!("workload of {from} does not verify under {to}'s root-cert.pem: {error}")
        })
}

impl Mesh {
    /// A mesh whose istiods sign workload certificates living
    /// `workload_lifetime` on `clock` (the server's, so that a grace passed
    /// on a test clock also expires the workload certificates it covers).
    pub fn new(workload_lifetime: Duration, clock: Arc<dyn Clock>) -> Arc<Self> {
        Arc::new(Mesh {
            state: tokio::sync::Mutex::new(MeshState::default()),
            workload_lifetime,
            clock,
        })
    }

    /// A sink for `cluster` that reports into this mesh.
    pub fn sink(self: &Arc<Self>, cluster: &str) -> Arc<CheckingSink> {
        Arc::new(CheckingSink {
            cluster: cluster.to_string(),
            mesh: self.clone(),
            inner: MemorySink::new(),
        })
    }

    /// Records `cluster`'s new cacerts and checks every pair involving it.
    async fn apply(&self, cluster: &str, material: &CacertsMaterial) {
        let now = self.clock.now();
        let mut state = self.state.lock().await;
        let mut failures = Vec::new();
        let roots = Certificate::parse_pem_chain(&material.root_cert_pem).unwrap();
        let chain = Certificate::parse_pem_chain(&material.cert_chain_pem).unwrap();
        let intermediate = Certificate::from_pem(&material.ca_cert_pem).unwrap();
        let key = PrivateKey::from_pem(&material.ca_key_pem).unwrap();
        let serial = intermediate.serial_hex().unwrap();
        {
            let entry = state.clusters.entry(cluster.to_string()).or_default();
            if !entry.root_cert_pem.is_empty() && entry.root_cert_pem != material.root_cert_pem {
                let (old, new) = (&entry.root_cert_pem, &material.root_cert_pem);
                if !(new.contains(old.as_str()) || old.contains(new.as_str())) {
                    failures.push(format!(
                        "{cluster}: root-cert.pem changed in a way istiod (≤ 1.29) refuses: neither old ⊂ new nor new ⊂ old"
                    ));
                }
            }
        }
        if state
            .clusters
            .get(cluster)
            .map(|entry| entry.root_cert_pem != material.root_cert_pem)
            .unwrap_or(true)
        {
            state.root_transitions += 1;
        }
        let new_intermediate = state
            .clusters
            .get(cluster)
            .is_none_or(|entry| entry.intermediate_serial != serial);
        if new_intermediate
            && let Some(previous) = state.serials.insert(serial.clone(), cluster.to_string())
        {
            failures.push(format!(
                "intermediate serial {serial} issued to {cluster} was already seen for {previous}"
            ));
        }
        // A workload certificate from the new intermediate, like istiod
        // signs after reloading cacerts.
        let workload_key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let leaf = ca::sign_workload(
            &workload_key.public_key_der().unwrap(),
            &format!("spiffe://cluster.local/ns/default/sa/{cluster}"),
            &intermediate,
            &key,
            self.workload_lifetime,
            now,
        )
        .unwrap();
        let not_after = leaf.not_after().unwrap();
        {
            let entry = state.clusters.get_mut(cluster).unwrap();
            entry.root_cert_pem = material.root_cert_pem.clone();
            entry.roots = roots;
            entry.intermediate_serial = serial;
            entry.leaves.retain(|leaf| leaf.not_after > now);
            entry.leaves.push(Leaf {
                leaf,
                chain,
                not_after,
            });
        }
        let mut checks = 0;
        let writer = &state.clusters[cluster];
        for (name, other) in &state.clusters {
            for leaf in writer.leaves.iter().filter(|leaf| leaf.not_after > now) {
                checks += 1;
                failures.extend(verify(cluster, leaf, name, &other.roots, now));
            }
            if name == cluster {
                continue;
            }
            for leaf in other.leaves.iter().filter(|leaf| leaf.not_after > now) {
                checks += 1;
                failures.extend(verify(name, leaf, cluster, &writer.roots, now));
            }
        }
        state.record(checks, failures);
    }

    /// Checks every ordered pair (every live workload certificate of X
    /// under Y's current roots); returns the number of checks made.
    pub async fn check_all(&self, label: &str) -> u64 {
        let now = self.clock.now();
        let mut state = self.state.lock().await;
        let (checks, failures) = state
            .clusters
            .iter()
            .map(|(to, target)| state.live_leaves_under(label, to, &target.roots, now))
            .fold((0, Vec::new()), |(checks, mut failures), (more, found)| {
                failures.extend(found);
                (checks + more, failures)
            });
        state.record(checks, failures);
        checks
    }

    /// Verifies every live workload certificate of every simulated cluster
    /// under `roots` (another cluster's `root-cert.pem`, e.g. a real one).
    pub async fn verify_all_under(
        &self,
        label: &str,
        verifier: &str,
        roots: &[Certificate],
    ) -> u64 {
        let now = self.clock.now();
        let mut state = self.state.lock().await;
        let (checks, failures) = state.live_leaves_under(label, verifier, roots, now);
        state.record(checks, failures);
        checks
    }

    /// Verifies a workload certificate from outside (e.g. signed by a real
    /// cluster's istiod code) under every simulated cluster's roots.
    pub async fn verify_under_all(
        &self,
        label: &str,
        signer: &str,
        leaf: &Certificate,
        chain: &[Certificate],
    ) -> u64 {
        let now = self.clock.now();
        let mut state = self.state.lock().await;
        let external = Leaf {
            leaf: leaf.clone(),
            chain: chain.to_vec(),
            not_after: now,
        };
        let mut checks = 0;
        let mut failures = Vec::new();
        for (to, target) in &state.clusters {
            checks += 1;
            if let Some(failure) = verify(signer, &external, to, &target.roots, now) {
                failures.push(format!("[{label}] {failure}"));
            }
        }
        state.record(checks, failures);
        checks
    }

    /// The summary, after asserting that no pair check failed (each
    /// failure listed).
    pub async fn assert_no_failures(&self) -> Summary {
        let summary = self.summary().await;
        assert!(
            summary.failures.is_empty(),
            "{} failed checks out of {}:\n{}",
            summary.failures.len(),
            summary.checks,
            summary.failures.join("\n")
        );
        summary
    }

    pub async fn summary(&self) -> Summary {
        let state = self.state.lock().await;
        Summary {
            checks: state.checks,
            failures: state.failures.clone(),
            root_transitions: state.root_transitions,
            intermediates: state.serials.len(),
        }
    }

    /// Drops a cluster that left the mesh (`cluster remove`): its trust no
    /// longer matters and its workloads no longer talk to the others.
    pub async fn remove(&self, cluster: &str) {
        self.state.lock().await.clusters.remove(cluster);
    }

    /// The `root-cert.pem` `cluster` has now.
    pub async fn root_cert_pem(&self, cluster: &str) -> Option<String> {
        self.state
            .lock()
            .await
            .clusters
            .get(cluster)
            .map(|entry| entry.root_cert_pem.clone())
    }

    /// The serial of the intermediate `cluster` has now.
    pub async fn intermediate_serial(&self, cluster: &str) -> Option<String> {
        self.state
            .lock()
            .await
            .clusters
            .get(cluster)
            .map(|entry| entry.intermediate_serial.clone())
    }
}

/// A cluster's in-memory cacerts that report every write to the [`Mesh`].
pub struct CheckingSink {
    cluster: String,
    mesh: Arc<Mesh>,
    inner: MemorySink,
}

#[async_trait::async_trait]
impl ClusterSink for CheckingSink {
    fn describe(&self) -> String {
        format!("simulated cluster {}", self.cluster)
    }

    async fn read(&self) -> Result<Option<CacertsFiles>, SinkError> {
        self.inner.read().await
    }

    async fn write(&self, material: &CacertsMaterial) -> Result<(), SinkError> {
        self.inner.write(material).await?;
        self.mesh.apply(&self.cluster, material).await;
        Ok(())
    }
}
