//! Bench clusters: registered with the admin credential and enrolled like
//! agents, so that a bench calls the server exactly as agents do.

use std::sync::Arc;

use anyhow::Context as _;
use tokio::task::JoinSet;
use tonic::transport::Channel;
use zeroize::Zeroizing;

use super::super::client::{AdminConnection, connect, status_error};
use crate::ca::{self, KeyAlgorithm, PrivateKey};
use crate::proto;
use crate::proto::admin_service_client::AdminServiceClient;
use crate::proto::intermediate_service_client::IntermediateServiceClient;

/// Registrations and enrollments in flight at once.
const CONCURRENCY: usize = 16;

/// One enrolled bench cluster: its name and control-plane client identity.
pub struct BenchCluster {
    /// The cluster name (`<prefix>-<n>`).
    pub name: String,
    /// The client certificate the server issued at enrollment (PEM).
    pub client_cert_pem: String,
    /// Its key (PKCS#8 PEM).
    pub client_key_pem: Zeroizing<String>,
    /// The control-plane CA that verifies the server.
    pub server_ca_pem: String,
}

impl BenchCluster {
    /// A new mTLS connection (its own TCP and TLS connection) as this cluster.
    pub async fn connect(&self, server: &str) -> anyhow::Result<Channel> {
        connect(
            server,
            &self.server_ca_pem,
            Some((&self.client_cert_pem, &self.client_key_pem)),
        )
        .await
    }
}

/// Registers `count` clusters `<prefix>-0..` (one left by an earlier run is
/// removed and added again, so a bench can run twice against one server)
/// and enrolls each with a new P-256 client key, 16 at a time. Prints
/// progress to stderr every 1 000.
pub async fn enroll(
    admin: &AdminConnection,
    prefix: &str,
    count: usize,
) -> anyhow::Result<Vec<BenchCluster>> {
    let server: Arc<str> = admin.server_url().into();
    let server_ca_pem: Arc<str> = admin.server_ca_pem()?.into();
    let admin_channel = admin.connect().await?;
    let enroll_channel = connect(&server, &server_ca_pem, None).await?;
    let mut enrolled = Vec::with_capacity(count);
    let mut tasks = JoinSet::new();
    let mut next = 0;
    while enrolled.len() < count {
        while next < count && tasks.len() < CONCURRENCY {
            let name = format!("{prefix}-{next}");
            tasks.spawn(enroll_one(
                AdminServiceClient::new(admin_channel.clone()),
                IntermediateServiceClient::new(enroll_channel.clone()),
                name,
            ));
            next += 1;
        }
        let Some(done) = tasks.join_next().await else {
            break;
        };
        enrolled.push(done.context("an enrollment task failed")??);
        if enrolled.len() % 1000 == 0 {
            eprintln!("enrolled {} of {count} bench clusters", enrolled.len());
        }
    }
    enrolled.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(enrolled)
}

async fn enroll_one(
    mut admin: AdminServiceClient<Channel>,
    mut intermediate: IntermediateServiceClient<Channel>,
    name: String,
) -> anyhow::Result<BenchCluster> {
    if let Err(status) = admin
        .remove_cluster(proto::RemoveClusterRequest { name: name.clone() })
        .await
        && status.code() != tonic::Code::NotFound
    {
        return Err(status_error(status))
            .with_context(|| format!("removing the earlier bench cluster {name}"));
    }
    let added = admin
        .add_cluster(proto::AddClusterRequest {
            name: name.clone(),
            ..Default::default()
        })
        .await
        .map_err(status_error)
        .with_context(|| format!("adding bench cluster {name}"))?
        .into_inner();
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256)?;
    let csr = ca::create_csr(&key, &format!("trustplane agent {name}"))?;
    let response = intermediate
        .enroll(proto::EnrollRequest {
            cluster: name.clone(),
            join_token: added.join_token,
            client_csr_pem: csr,
        })
        .await
        .map_err(status_error)
        .with_context(|| format!("enrolling bench cluster {name}"))?
        .into_inner();
    Ok(BenchCluster {
        name,
        client_cert_pem: response.client_cert_pem,
        client_key_pem: key.to_pkcs8_pem(),
        server_ca_pem: response.control_plane_ca_pem,
    })
}
