//! Issuing certificates: roots, intermediates, control-plane and workload
//! certificates. Every issued certificate is verified against its issuer
//! before it is returned.

use std::time::{Duration, SystemTime};

use super::{CaError, Certificate, IntermediateProfile, KeyAlgorithm, PrivateKey, VerifiedCsr};

/// What a new mesh root looks like.
#[derive(Clone, Debug)]
pub struct RootRequest {
    /// Trust domain; subject `CN=<td> root CA`, URI SAN `spiffe://<td>`.
    pub trust_domain: String,
    /// Subject organisation.
    pub organisation: String,
    /// ECDSA P-256 (default) or P-384.
    pub key_algorithm: KeyAlgorithm,
    /// Validity from `now` (default 10 years).
    pub validity: Duration,
}

/// Creates a self-signed mesh root: CA:true critical, keyUsage critical
/// keyCertSign+cRLSign, SKI, random 128-bit positive serial.
pub fn create_root(
    request: &RootRequest,
    now: SystemTime,
) -> Result<(Certificate, PrivateKey), CaError> {
    todo!("{request:?}{now:?}")
}

/// Checks an existing root for import: one certificate, CA:true, may sign
/// certificates, key matches, valid at `now`. Errors name the failing check.
pub fn import_root(
    certificate_pem: &str,
    key_pem: &str,
    now: SystemTime,
) -> Result<(Certificate, PrivateKey), CaError> {
    todo!("{}{}{now:?}", certificate_pem.len(), key_pem.len())
}

/// Signs a cluster intermediate for the CSR's public key; every field comes
/// from `profile` (CA:true critical pathLen 0, keyUsage critical
/// keyCertSign+cRLSign+digitalSignature, no EKU, AKI/SKI, random serial,
/// NotBefore `now - 5 min`, NotAfter `min(now + lifetime, issuer expiry)`).
pub fn sign_intermediate(
    csr: &VerifiedCsr,
    profile: &IntermediateProfile,
    issuer: &Certificate,
    issuer_key: &PrivateKey,
    now: SystemTime,
) -> Result<Certificate, CaError> {
    todo!("{csr:?}{profile:?}{issuer:?}{issuer_key:?}{now:?}")
}

/// Creates the control-plane CA (separate from every mesh root).
pub fn create_control_plane_ca(
    organisation: &str,
    validity: Duration,
    now: SystemTime,
) -> Result<(Certificate, PrivateKey), CaError> {
    todo!("{organisation}{validity:?}{now:?}")
}

/// Which control-plane certificate to issue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ControlPlaneRole {
    /// The server: serverAuth, DNS and IP SANs.
    Server {
        /// DNS names.
        dns_names: Vec<String>,
        /// IP addresses.
        ip_addresses: Vec<std::net::IpAddr>,
    },
    /// A client identity (cluster agent or admin): clientAuth, one URI SAN.
    Client {
        /// e.g. `spiffe://trustplane.control/cluster/east`.
        uri: String,
    },
}

/// Issues a control-plane (mTLS) certificate for a public key.
pub fn issue_control_plane_cert(
    spki_der: &[u8],
    role: &ControlPlaneRole,
    issuer: &Certificate,
    issuer_key: &PrivateKey,
    lifetime: Duration,
    now: SystemTime,
) -> Result<Certificate, CaError> {
    todo!("{}{role:?}{issuer:?}{issuer_key:?}{lifetime:?}{now:?}", spki_der.len())
}

/// Issues a workload (leaf) certificate as istiod would: URI SAN
/// `spiffe_id`, serverAuth+clientAuth, CA:false. Used by `demo`, `verify`
/// and tests.
pub fn sign_workload(
    spki_der: &[u8],
    spiffe_id: &str,
    issuer: &Certificate,
    issuer_key: &PrivateKey,
    lifetime: Duration,
    now: SystemTime,
) -> Result<Certificate, CaError> {
    todo!("{}{spiffe_id}{issuer:?}{issuer_key:?}{lifetime:?}{now:?}", spki_der.len())
}
