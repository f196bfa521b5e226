//! Enrollment: load the saved identity, or trade the one-time join token
//! and a CSR for the agent's client certificate and save it. The key is
//! saved before `Enroll` is called, so that an agent killed before it saved
//! the answer repeats `Enroll` with the same token and key (which the
//! server answers again) instead of being stranded with a spent token.

use tokio::sync::watch;

use super::config::{AgentConfig, AgentStatus};
use super::error::{AgentError, call, certificate_error};
use super::identity::{self, ClientIdentity, IdentityStore, StoredIdentity};
use crate::ca::{self, Certificate, KeyAlgorithm, PrivateKey};
use crate::proto::EnrollRequest;
use crate::proto::intermediate_service_client::IntermediateServiceClient;
use crate::reconcile::Backoff;
use crate::telemetry::error_text;

/// Whether a gRPC code on `Enroll` means the token will never work.
pub(crate) fn enrollment_refused(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::PermissionDenied
            | tonic::Code::Unauthenticated
            | tonic::Code::InvalidArgument
            | tonic::Code::NotFound
    )
}

/// The key of an enrollment that never saved its identity, or a new one,
/// saved (0600 / in the identity Secret) before the token is sent.
///
/// Errors: the store cannot be read or written, key generation failed.
async fn enrolling_key(store: &dyn IdentityStore) -> Result<PrivateKey, AgentError> {
    if let Some(pem) = store.load_enrolling_key().await? {
        match PrivateKey::from_pem(&pem) {
            Ok(key) => {
                tracing::info!(
                    identity = %store.describe(),
                    "an earlier enrollment did not save its identity; enrolling again with its key"
                );
                return Ok(key);
            }
            Err(error) => tracing::warn!(
                identity = %store.describe(),
                error = %error_text(&error),
                "the saved enrolling key is unreadable; enrolling with a new key"
            ),
        }
    }
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256)
        .map_err(certificate_error("could not generate the client key"))?;
    store.save_enrolling_key(&key.to_pkcs8_pem()).await?;
    Ok(key)
}

/// Loads the identity (recording a new server URL in it), or enrolls with
/// the join token and saves it.
pub(crate) async fn obtain_identity(
    config: &AgentConfig,
    store: &dyn IdentityStore,
    status: &watch::Sender<AgentStatus>,
) -> Result<ClientIdentity, AgentError> {
    match store.load().await? {
        StoredIdentity::Complete(mut identity) => {
            if let Some(token) = &config.join_token
                && identity::join_token_cluster(token)
                    .is_ok_and(|cluster| cluster != identity.cluster)
            {
                tracing::warn!(
                    cluster = %identity.cluster,
                    "ignoring the join token: it names another cluster and an identity already exists"
                );
            }
            if identity.server.as_deref() != Some(config.server.as_str()) {
                identity.server = Some(config.server.clone());
                // Only a convenience for the next start: the identity works without it.
                if let Err(error) = store.save(&identity).await {
                    tracing::warn!(
                        identity = %store.describe(),
                        error = %error_text(&error),
                        "could not record the server URL with the identity"
                    );
                }
            }
            return Ok(identity);
        }
        StoredIdentity::Absent => {}
        StoredIdentity::Incomplete(missing) => {
            if config.join_token.is_none() {
                return Err(AgentError::IncompleteIdentity {
                    location: store.describe(),
                    missing: missing.join(", "),
                });
            }
            tracing::warn!(
                identity = %store.describe(),
                missing = %missing.join(", "),
                "the identity is incomplete; enrolling again with the join token"
            );
        }
    }
    let token = config
        .join_token
        .as_ref()
        .ok_or_else(|| AgentError::NoIdentity {
            location: store.describe(),
        })?;
    let cluster = identity::join_token_cluster(token)?.to_string();
    let server_ca_pem = config
        .server_ca_pem
        .clone()
        .ok_or(AgentError::MissingServerCa)?;
    Certificate::parse_pem_chain(&server_ca_pem)
        .map_err(certificate_error("the server CA is not a PEM certificate"))?;
    status.send_modify(|current| current.cluster.clone_from(&cluster));
    // Fail on an unwritable store before the one-time token is spent.
    store.prepare().await?;

    let key = enrolling_key(store).await?;
    let csr = ca::create_csr(&key, &format!("trustplane agent {cluster}"))
        .map_err(certificate_error("could not create the client CSR"))?;
    let servers = config.servers();
    let mut server_index = 0;
    let server_at = |index: usize| {
        servers
            .get(index)
            .map_or(config.server.as_str(), String::as_str)
    };
    let mut client = IntermediateServiceClient::new(identity::enrollment_channel(
        server_at(server_index),
        &server_ca_pem,
    )?);
    let mut backoff = Backoff::new(config.max_backoff);
    let response = loop {
        let request = EnrollRequest {
            cluster: cluster.clone(),
            join_token: token.to_string(),
            client_csr_pem: csr.clone(),
        };
        match call("Enroll", client.enroll(request)).await {
            Ok(response) => break response,
            Err(AgentError::Rpc { source, .. }) if enrollment_refused(source.code()) => {
                return Err(AgentError::EnrollmentRefused {
                    message: source.message().to_string(),
                });
            }
            Err(error) => {
                let text = error_text(&error);
                let delay = backoff.next_delay();
                tracing::warn!(
                    error = %text,
                    server = %server_at(server_index),
                    "enrollment failed; retrying in {:.1} s",
                    delay.as_secs_f64()
                );
                status.send_modify(|current| current.last_error = Some(text));
                config.clock.sleep(delay).await;
                // Several replicas: try the next one.
                if servers.len() > 1 {
                    server_index = (server_index + 1) % servers.len();
                    client = IntermediateServiceClient::new(identity::enrollment_channel(
                        server_at(server_index),
                        &server_ca_pem,
                    )?);
                }
            }
        }
    };
    Certificate::parse_pem_chain(&response.client_cert_pem).map_err(certificate_error(
        "the server sent an unusable client certificate",
    ))?;
    let server_ca_pem = if response.control_plane_ca_pem.trim().is_empty() {
        server_ca_pem
    } else {
        response.control_plane_ca_pem
    };
    let identity = ClientIdentity {
        cluster,
        server_ca_pem,
        client_cert_pem: response.client_cert_pem,
        client_key_pem: key.to_pkcs8_pem(),
        server: Some(config.server.clone()),
    };
    store.save(&identity).await?;
    status.send_modify(|current| current.last_error = None);
    tracing::info!(
        cluster = %identity.cluster,
        trust_domain = %response.trust_domain,
        identity = %store.describe(),
        "enrolled; identity saved"
    );
    Ok(identity)
}
