//! Typed calls on a Vault / OpenBao PKI mount: the issuer-specific
//! `sign-intermediate`, the issuer's certificate (`issuer/<ref>/json`) and a
//! new internal root (`root/generate/internal`).
//!
//! vaultrs 0.8's requests lack `key_usage` on sign-intermediate and
//! `issuer_name` on root generation, so these endpoints are declared here
//! with the same `rustify` derive vaultrs uses; no parameter is dropped.

use rustify_derive::Endpoint;
use serde::{Deserialize, Serialize};

use super::{Vault, VaultError, classify};

/// The key usages every mesh intermediate carries (trustplane's profile:
/// keyCertSign, cRLSign and digitalSignature).
pub const INTERMEDIATE_KEY_USAGE: [&str; 3] = ["DigitalSignature", "CertSign", "CRLSign"];

/// `POST <mount>/issuer/<issuer>/sign-intermediate`.
#[derive(Clone, Debug, Default, Endpoint)]
#[endpoint(
    path = "{self.mount}/issuer/{self.issuer}/sign-intermediate",
    method = "POST",
    response = "SignIntermediateResponse"
)]
pub struct SignIntermediateRequest {
    /// The PKI mount.
    #[endpoint(skip)]
    pub mount: String,
    /// Issuer id or name (`default` allowed).
    #[endpoint(skip)]
    pub issuer: String,
    /// The cluster's CSR (PEM); only its public key is used.
    pub csr: String,
    /// Subject CN.
    pub common_name: String,
    /// Subject O.
    pub organization: Vec<String>,
    /// Subject L.
    pub locality: Vec<String>,
    /// URI SANs, comma-separated.
    pub uri_sans: String,
    /// Requested lifetime, e.g. `8760h`.
    pub ttl: String,
    /// Always 0: the intermediate may not sign CAs.
    pub max_path_length: i32,
    /// Always false: the subject and SANs come from the profile only.
    pub use_csr_values: bool,
    /// Always true: the CN is not a DNS name.
    pub exclude_cn_from_sans: bool,
    /// Key usages (Vault names).
    pub key_usage: Vec<String>,
    /// How far NotBefore is moved into the past, seconds.
    pub not_before_duration: u64,
    /// Always `pem`.
    pub format: String,
}

/// What `sign-intermediate` returns.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct SignIntermediateResponse {
    /// The intermediate (PEM).
    pub certificate: String,
    /// The issuing CA (PEM).
    pub issuing_ca: String,
    /// The chain Vault builds (PEM blocks; its form varies by version).
    #[serde(default)]
    pub ca_chain: Vec<String>,
    /// Serial, colon-separated hex.
    pub serial_number: String,
}

/// `GET <mount>/issuer/<issuer>/json`.
#[derive(Debug, Default, Endpoint)]
#[endpoint(
    path = "{self.mount}/issuer/{self.issuer}/json",
    response = "IssuerResponse"
)]
pub struct ReadIssuerRequest {
    /// The PKI mount.
    #[endpoint(skip)]
    pub mount: String,
    /// Issuer id or name.
    #[endpoint(skip)]
    pub issuer: String,
}

/// An issuer as `issuer/<ref>/json` (unauthenticated: no key id) or
/// `issuer/<ref>` (authenticated: with its key id and usage) returns it.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct IssuerResponse {
    /// The issuer's certificate (PEM).
    pub certificate: String,
    /// Its id (a UUID).
    pub issuer_id: String,
    /// Its name (may be empty).
    #[serde(default)]
    pub issuer_name: String,
    /// The id of its key; empty when Vault holds no key for it (and in the
    /// `json` form, which never names it).
    #[serde(default)]
    pub key_id: String,
    /// What it may do, e.g. `read-only,issuing-certificates,crl-signing`
    /// (only in the authenticated form).
    #[serde(default)]
    pub usage: String,
}

/// `GET <mount>/issuer/<issuer>`: the issuer with its key id and usage.
#[derive(Debug, Default, Endpoint)]
#[endpoint(
    path = "{self.mount}/issuer/{self.issuer}",
    response = "IssuerResponse"
)]
pub struct ReadIssuerConfigRequest {
    /// The PKI mount.
    #[endpoint(skip)]
    pub mount: String,
    /// Issuer id or name.
    #[endpoint(skip)]
    pub issuer: String,
}

/// `POST <mount>/root/generate/internal`: a new root whose key never
/// leaves Vault.
#[derive(Debug, Default, Endpoint)]
#[endpoint(
    path = "{self.mount}/root/generate/internal",
    method = "POST",
    response = "GenerateRootResponse"
)]
pub struct GenerateRootRequest {
    /// The PKI mount.
    #[endpoint(skip)]
    pub mount: String,
    /// Name of the new issuer.
    pub issuer_name: String,
    /// Subject CN.
    pub common_name: String,
    /// Subject O.
    pub organization: Vec<String>,
    /// URI SANs, comma-separated.
    pub uri_sans: String,
    /// `ec` or `rsa`.
    pub key_type: String,
    /// 256 / 384 for `ec`.
    pub key_bits: u32,
    /// Validity, e.g. `87600h`.
    pub ttl: String,
    /// Always true: the CN is not a DNS name.
    pub exclude_cn_from_sans: bool,
    /// Always `pem`.
    pub format: String,
}

/// What `root/generate/internal` returns (no key).
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct GenerateRootResponse {
    /// The root (PEM).
    pub certificate: String,
    /// The new issuer's id.
    pub issuer_id: String,
    /// Its name.
    #[serde(default)]
    pub issuer_name: String,
}

/// How many attempts a call gets when Vault is sealed, unreachable or
/// answers 5xx (pauses 0.1 s, 0.2 s, … up to 5 s between them).
pub const ATTEMPTS: u32 = 4;

/// Signs an intermediate with `issuer` (retried on transient failures).
///
/// Errors: [`VaultError`] naming `<mount>/issuer/<issuer>/sign-intermediate`.
pub async fn sign_intermediate(
    vault: &Vault,
    request: impl Fn() -> SignIntermediateRequest,
) -> Result<SignIntermediateResponse, VaultError> {
    let first = request();
    let path = format!("{}/issuer/{}/sign-intermediate", first.mount, first.issuer);
    vault
        .call(&path, ATTEMPTS, |client| {
            let endpoint = request();
            async move { vaultrs::api::exec_with_result(client.as_ref(), endpoint).await }
        })
        .await
}

/// Reads `issuer`'s certificate and ids (retried on transient failures).
///
/// Errors: [`VaultError`] naming `<mount>/issuer/<issuer>/json`
/// ([`super::VaultErrorKind::NotFound`] for an unknown issuer).
pub async fn read_issuer(
    vault: &Vault,
    mount: &str,
    issuer: &str,
) -> Result<IssuerResponse, VaultError> {
    let path = format!("{mount}/issuer/{issuer}/json");
    vault
        .call(&path, ATTEMPTS, |client| {
            let endpoint = ReadIssuerRequest {
                mount: mount.to_string(),
                issuer: issuer.to_string(),
            };
            async move { vaultrs::api::exec_with_result(client.as_ref(), endpoint).await }
        })
        .await
}

/// Reads `issuer` with its key id and usage and checks that it can sign
/// intermediates: Vault holds its key and its usage includes
/// `issuing-certificates` (for adopting an issuer as a mesh root).
///
/// Errors: [`VaultError`] naming `<mount>/issuer/<issuer>`, kind
/// [`super::VaultErrorKind::NotFound`] for an unknown issuer and
/// [`super::VaultErrorKind::BadRequest`] for one that cannot sign.
pub async fn read_signing_issuer(
    vault: &Vault,
    mount: &str,
    issuer: &str,
) -> Result<IssuerResponse, VaultError> {
    let path = format!("{mount}/issuer/{issuer}");
    let answer = vault
        .call(&path, ATTEMPTS, |client| {
            let endpoint = ReadIssuerConfigRequest {
                mount: mount.to_string(),
                issuer: issuer.to_string(),
            };
            async move { vaultrs::api::exec_with_result(client.as_ref(), endpoint).await }
        })
        .await?;
    if answer.key_id.is_empty() {
        return Err(VaultError::new(
            &path,
            super::VaultErrorKind::BadRequest,
            "the issuer has no key in Vault, so it cannot sign: name an issuer with a key (or a new name, for a rotation, to create one)",
        ));
    }
    if !answer
        .usage
        .split(',')
        .any(|usage| usage == "issuing-certificates")
    {
        return Err(VaultError::new(
            &path,
            super::VaultErrorKind::BadRequest,
            format!(
                "the issuer's usage is {:?}, without issuing-certificates: allow it with `bao write {path} usage=read-only,issuing-certificates,crl-signing`",
                answer.usage
            ),
        ));
    }
    Ok(answer)
}

/// Creates a root issuer inside Vault (the key is generated there and never
/// exported). Not retried: a lost answer must not create two roots.
///
/// Errors: [`VaultError`] naming `<mount>/root/generate/internal`.
pub async fn generate_root(
    vault: &Vault,
    request: GenerateRootRequest,
) -> Result<GenerateRootResponse, VaultError> {
    let path = format!("{}/root/generate/internal", request.mount);
    let cell = std::sync::Mutex::new(Some(request));
    vault
        .call(&path, 1, |client| {
            let endpoint = cell
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            async move {
                match endpoint {
                    Some(endpoint) => {
                        vaultrs::api::exec_with_result(client.as_ref(), endpoint).await
                    }
                    None => Err(vaultrs::error::ClientError::ResponseEmptyError),
                }
            }
        })
        .await
}

/// The request for a new root issuer `name` in `mount`: subject
/// `O=<organisation>, CN=<common_name>`, URI SAN `spiffe://<trust domain>`,
/// the key type of `key_algorithm` (ECDSA P-256/P-384, RSA 2048), valid for
/// `validity`.
pub fn root_request(
    mount: &str,
    name: &str,
    common_name: &str,
    organisation: &str,
    trust_domain: &str,
    key_algorithm: crate::ca::KeyAlgorithm,
    validity: std::time::Duration,
) -> GenerateRootRequest {
    use crate::ca::KeyAlgorithm;
    let (key_type, key_bits) = match key_algorithm {
        KeyAlgorithm::EcdsaP256 => ("ec", 256),
        KeyAlgorithm::EcdsaP384 => ("ec", 384),
        KeyAlgorithm::Rsa => ("rsa", 2048),
    };
    GenerateRootRequest {
        mount: mount.to_string(),
        issuer_name: name.to_string(),
        common_name: common_name.to_string(),
        organization: vec![organisation.to_string()],
        uri_sans: format!("spiffe://{trust_domain}"),
        key_type: key_type.into(),
        key_bits,
        ttl: format!("{}s", validity.as_secs()),
        exclude_cn_from_sans: true,
        format: "pem".into(),
    }
}

/// `GET sys/health`, asked to answer 200 in every state so the state is
/// read from the body (vaultrs' own response type needs a field OpenBao
/// does not send).
#[derive(Debug, Default, Endpoint)]
#[endpoint(path = "sys/health", response = "HealthResponse")]
pub struct HealthRequest {
    /// Answer 200 on a standby.
    #[endpoint(query)]
    pub standbyok: bool,
    /// Status code for a sealed server.
    #[endpoint(query)]
    pub sealedcode: u16,
    /// Status code for an uninitialised server.
    #[endpoint(query)]
    pub uninitcode: u16,
}

/// What `sys/health` says.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct HealthResponse {
    /// Initialised.
    #[serde(default)]
    pub initialized: bool,
    /// Sealed.
    #[serde(default)]
    pub sealed: bool,
    /// A standby node.
    #[serde(default)]
    pub standby: bool,
    /// Its version.
    #[serde(default)]
    pub version: String,
}

/// Whether Vault is ready to sign: `sys/health` says initialised, unsealed
/// (active or standby). Returns a one-line state for `/readyz`.
///
/// Errors: the state that is not ready, with what to do.
pub async fn health(vault: &Vault) -> Result<String, String> {
    let endpoint = HealthRequest {
        standbyok: true,
        sealedcode: 200,
        uninitcode: 200,
    };
    // sys/health is unauthenticated and refused inside a namespace: ask
    // the root namespace, without a token.
    let settings = super::VaultConfig {
        namespace: None,
        ..vault.config().clone()
    };
    let client =
        super::client_with_token(&settings, "").map_err(|error| format!("vault: {error}"))?;
    match vaultrs::api::exec_with_no_result(&client, endpoint).await {
        Ok(health) if !health.initialized => {
            Err("vault: not initialised (`bao operator init`)".into())
        }
        Ok(health) if health.sealed => Err(format!(
            "vault {}: sealed; unseal it (`bao operator unseal` / `vault operator unseal`)",
            health.version
        )),
        Ok(health) if health.standby => Ok(format!("vault {}: standby, unsealed", health.version)),
        Ok(health) => Ok(format!("vault {}: active, unsealed", health.version)),
        Err(error) => Err(format!("vault: {}", classify("sys/health", error))),
    }
}

/// `issuer`'s certificate, checked to be the one `expected` (PEM of the
/// root the store records).
///
/// Errors: [`VaultError`] from the read; kind
/// [`super::VaultErrorKind::Invalid`] naming the path when Vault's
/// certificate differs.
pub async fn check_issuer(
    vault: &Vault,
    mount: &str,
    issuer: &str,
    expected_der: &[u8],
) -> Result<IssuerResponse, VaultError> {
    let answer = read_issuer(vault, mount, issuer).await?;
    let path = format!("{mount}/issuer/{issuer}/json");
    let der = pem::parse(answer.certificate.trim()).map_err(|error| {
        VaultError::new(
            &path,
            super::VaultErrorKind::Invalid,
            format!("the issuer certificate is not PEM: {error}"),
        )
    })?;
    if der.contents() != expected_der {
        return Err(VaultError::new(
            &path,
            super::VaultErrorKind::Invalid,
            "Vault's issuer certificate is not the root trustplane's store records: the issuer was replaced or re-imported; point --vault-pki-mount and the store at the same issuer, or restore the issuer",
        ));
    }
    Ok(answer)
}
