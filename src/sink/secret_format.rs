//! The two forms of a `cacerts` Secret istiod reads ([`SecretFormat`]), with
//! the one parser of their text form.

/// Type of a Secret the sink creates in the istio form.
pub(crate) const OPAQUE_TYPE: &str = "Opaque";
/// Type of a Secret in the `kubernetes.io/tls` form.
pub(crate) const TLS_TYPE: &str = "kubernetes.io/tls";

/// The form of the `cacerts` Secret; istiod reads either from its mount.
///
/// Text form (flags): `istio`, `tls`.
/// Its text form is parsed in one place ([`std::str::FromStr`]); flags,
/// stored records and the proto enum all go through it or map variants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum SecretFormat {
    /// Istio's own keys `ca-cert.pem`, `ca-key.pem`, `cert-chain.pem`,
    /// `root-cert.pem`; type `Opaque` when created.
    #[default]
    Istio,
    /// The `kubernetes.io/tls` form: `tls.crt` (the intermediate, followed by
    /// any CA between it and the root), `tls.key` (its key) and `ca.crt` (the
    /// trust bundle, i.e. `root-cert.pem`).
    ///
    /// istiod (pilot/pkg/bootstrap/istio_ca.go, `detectSigningCABundle`, with
    /// the names from security/pkg/pki/ca: `TLSSecretCACertFile = "tls.crt"`,
    /// `TLSSecretCAPrivateKeyFile = "tls.key"`, `TLSSecretRootCertFile =
    /// "ca.crt"`) switches to this form whenever `tls.crt` exists, signs with
    /// `tls.crt` + `tls.key`, takes `ca.crt` as the root bundle and builds the
    /// certificate chain as `tls.crt` followed by `ca.crt`. So `tls.crt` must
    /// not repeat the root (it comes from `ca.crt`) but must carry every CA
    /// between the intermediate and the root.
    Tls,
}

impl SecretFormat {
    /// The text form: `istio` or `tls`.
    pub fn as_str(self) -> &'static str {
        match self {
            SecretFormat::Istio => "istio",
            SecretFormat::Tls => "tls",
        }
    }

    /// The Secret type used when the sink creates the Secret.
    pub(crate) fn secret_type(self) -> &'static str {
        match self {
            SecretFormat::Istio => OPAQUE_TYPE,
            SecretFormat::Tls => TLS_TYPE,
        }
    }
}

impl std::fmt::Display for SecretFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<SecretFormat> for String {
    fn from(format: SecretFormat) -> String {
        format.as_str().to_string()
    }
}

impl TryFrom<String> for SecretFormat {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl std::str::FromStr for SecretFormat {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "istio" => Ok(SecretFormat::Istio),
            "tls" => Ok(SecretFormat::Tls),
            other => Err(format!(
                "unknown secret format {other:?}: use istio (ca-cert.pem, ca-key.pem, cert-chain.pem, root-cert.pem) or tls (tls.crt, tls.key, ca.crt)"
            )),
        }
    }
}
