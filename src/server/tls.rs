//! The server's TLS: its own certificate, renewed before expiry without a
//! restart, and the rustls configuration that verifies client certificates
//! against the control-plane CA on the server's clock.
//!
//! Owns: [`ServerIdentity`] (the certificate new handshakes get), the
//! renewal loop, and [`server_config`]. Does not own: who a verified
//! certificate names (`enrollment::identify`, per call).

use std::net::IpAddr;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use tokio::sync::watch;

use super::authority::Authority;
use super::error::ServerError;
use crate::ca::{Certificate, PrivateKey};
use crate::clock::Clock;

/// After a failed renewal, the next try comes this much later (server
/// clock).
const RENEWAL_RETRY: Duration = Duration::from_secs(60);

/// The names the server certificate carries.
#[derive(Clone, Debug)]
pub struct ServerNames {
    /// DNS names.
    pub dns_names: Vec<String>,
    /// IP addresses.
    pub ip_addresses: Vec<IpAddr>,
}

/// The server certificate new TLS handshakes get; the renewal loop swaps
/// it, connections already open keep theirs.
#[derive(Debug)]
pub struct ServerIdentity {
    current: RwLock<Current>,
    provider: Arc<CryptoProvider>,
}

#[derive(Debug)]
struct Current {
    certificate: Certificate,
    key: Arc<CertifiedKey>,
}

impl ServerIdentity {
    /// Holds `certificate` with its `key`.
    ///
    /// Errors: [`ServerError::Tls`] when rustls cannot use the key.
    pub fn new(
        provider: Arc<CryptoProvider>,
        certificate: Certificate,
        key: &PrivateKey,
    ) -> Result<Self, ServerError> {
        let current = certified(&provider, certificate, key)?;
        Ok(ServerIdentity {
            current: RwLock::new(current),
            provider,
        })
    }

    /// The certificate new handshakes get.
    pub fn certificate(&self) -> Certificate {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .certificate
            .clone()
    }

    /// Makes `certificate` the one new handshakes get.
    ///
    /// Errors: as [`ServerIdentity::new`]; the old one stays then.
    pub fn replace(&self, certificate: Certificate, key: &PrivateKey) -> Result<(), ServerError> {
        let next = certified(&self.provider, certificate, key)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = next;
        Ok(())
    }
}

fn certified(
    provider: &CryptoProvider,
    certificate: Certificate,
    key: &PrivateKey,
) -> Result<Current, ServerError> {
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.pkcs8_der().to_vec()));
    let signing_key = provider
        .key_provider
        .load_private_key(der)
        .map_err(|source| ServerError::Tls { source })?;
    let chain = vec![CertificateDer::from(certificate.der().to_vec())];
    Ok(Current {
        key: Arc::new(CertifiedKey::new(chain, signing_key)),
        certificate,
    })
}

impl ResolvesServerCert for ServerIdentity {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .key
                .clone(),
        )
    }
}

/// The server's clock as rustls's, so that client certificates are checked
/// against the same time as everything else.
#[derive(Debug)]
struct TlsClock(Arc<dyn Clock>);

impl rustls::time_provider::TimeProvider for TlsClock {
    fn current_time(&self) -> Option<UnixTime> {
        Some(UnixTime::since_unix_epoch(
            self.0.now().duration_since(SystemTime::UNIX_EPOCH).ok()?,
        ))
    }
}

/// The rustls configuration: TLS 1.2/1.3 with ring, ALPN `h2`, the
/// certificate from `identity`, client certificates optional (enrollment
/// has none) and, when given, verified against the control-plane CA.
///
/// Errors: [`ServerError::Tls`] when rustls refuses the CA or settings.
pub fn server_config(
    authority: &Authority,
    identity: Arc<ServerIdentity>,
) -> Result<rustls::ServerConfig, ServerError> {
    let provider = identity.provider.clone();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(
            authority.control_plane_ca().der().to_vec(),
        ))
        .map_err(|source| ServerError::Tls { source })?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|error| ServerError::Tls {
            source: rustls::Error::General(error.to_string()),
        })?;
    let clock = Arc::new(TlsClock(authority.core().clock().clone()));
    let mut config = rustls::ServerConfig::builder_with_details(provider, clock)
        .with_safe_default_protocol_versions()
        .map_err(|source| ServerError::Tls { source })?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(identity);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The crypto provider the server uses (ring, as everywhere in trustplane).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Issues a server certificate for `names` off the async workers (it
/// writes the store).
///
/// Errors: as `Enrollment::issue_server_identity`.
pub async fn issue(
    authority: &Arc<Authority>,
    names: &ServerNames,
) -> Result<(Certificate, PrivateKey), ServerError> {
    let authority = authority.clone();
    let names = names.clone();
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        runtime.block_on(
            authority
                .enrollment
                .issue_server_identity(names.dns_names, names.ip_addresses),
        )
    })
    .await
    .map_err(|source| ServerError::Task {
        task: "server certificate",
        source,
    })?
}

/// When a certificate should be replaced: at ⅔ of its lifetime.
///
/// Errors: certificate errors reading its validity.
pub fn renewal_time(certificate: &Certificate) -> Result<SystemTime, ServerError> {
    let not_before = certificate.not_before()?;
    let lifetime = certificate
        .not_after()?
        .duration_since(not_before)
        .unwrap_or_default();
    Ok(not_before + lifetime * 2 / 3)
}

/// Renews the server certificate at ⅔ of its lifetime, on the server's
/// clock, until `stop` turns true. A failed renewal is logged and retried
/// a minute later; the current certificate stays in use meanwhile.
pub async fn renew(
    authority: Arc<Authority>,
    identity: Arc<ServerIdentity>,
    names: ServerNames,
    mut stop: watch::Receiver<bool>,
) {
    let clock = authority.core().clock().clone();
    let mut retry_at: Option<SystemTime> = None;
    loop {
        let due = match retry_at {
            Some(at) => at,
            None => match renewal_time(&identity.certificate()) {
                Ok(at) => at,
                Err(error) => {
                    tracing::warn!(error = %error, "cannot read the server certificate's validity; renewing now");
                    clock.now()
                }
            },
        };
        let wait = due.duration_since(clock.now()).unwrap_or_default();
        tokio::select! {
            () = clock.sleep(wait) => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
        let renewed = issue(&authority, &names)
            .await
            .and_then(|(certificate, key)| {
                let serial = certificate.serial_hex()?;
                identity.replace(certificate, &key)?;
                Ok(serial)
            });
        match renewed {
            Ok(serial) => {
                retry_at = None;
                tracing::info!(serial, "server certificate renewed");
            }
            Err(error) => {
                retry_at = Some(clock.now() + RENEWAL_RETRY);
                tracing::warn!(error = %error, "server certificate renewal failed; retrying in a minute");
            }
        }
    }
}
