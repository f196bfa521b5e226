//! Vault (or OpenBao, same API): one authenticated connection shared by the
//! PKI signer ([`crate::signer`]) and the KV v2 store ([`crate::store`]).
//!
//! Owns: the typed connection settings ([`VaultSettings`]: flags, the
//! conventional `VAULT_*` variables and the `--vault-config` file, merged
//! into a [`VaultConfig`]), login, the current token, and turning
//! a failed call into a [`VaultError`] that names the Vault path and what to
//! do. Does not own: what is stored or signed there.

mod config;
mod error;
pub mod kv;
pub mod pki;

pub use config::VaultSettings;
pub use error::{VaultError, VaultErrorKind, classify, retry};

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::Duration;

use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};
use zeroize::Zeroizing;

/// How to reach and log in to Vault: the settings in force, with every
/// default filled in. Made by [`VaultSettings::load`] from the flags, the
/// conventional `VAULT_*` variables and the `--vault-config` file (in that
/// order of precedence); fields as documented there. Login: `VAULT_TOKEN`
/// if set, else AppRole (`VAULT_ROLE_ID` + `VAULT_SECRET_ID`), else
/// Kubernetes (`--vault-k8s-role`).
#[derive(Clone, Debug)]
pub struct VaultConfig {
    /// Vault's address, e.g. `https://vault.example:8200`.
    pub addr: Option<String>,
    /// A Vault token (renewed before it expires).
    pub token: Option<Secret>,
    /// PEM file of the CA that signed Vault's TLS certificate.
    pub cacert: Option<PathBuf>,
    /// Vault Enterprise / OpenBao namespace (X-Vault-Namespace).
    pub namespace: Option<String>,
    /// AppRole login: the role id (with `secret_id`).
    pub role_id: Option<Secret>,
    /// AppRole login: the secret id (with `role_id`).
    pub secret_id: Option<Secret>,
    /// Mount of the AppRole auth method.
    pub approle_mount: String,
    /// Kubernetes login: the Vault role bound to this pod's service account.
    pub k8s_role: Option<String>,
    /// Kubernetes login: the service-account token (JWT) file.
    pub k8s_jwt_file: PathBuf,
    /// Mount of the Kubernetes auth method.
    pub k8s_mount: String,
    /// PKI mount that holds the mesh root issuer.
    pub pki_mount: String,
    /// KV v2 mount of the `vault-kv` store.
    pub kv_mount: String,
    /// Path prefix under the KV mount for the `vault-kv` store.
    pub kv_prefix: String,
}

impl Default for VaultConfig {
    /// Nothing given: no address, no credentials, the built-in mounts.
    fn default() -> Self {
        VaultSettings::default().resolve()
    }
}

impl VaultConfig {
    /// How this configuration logs in.
    ///
    /// Errors: [`VaultErrorKind::Config`] when no method is complete.
    fn login_method(&self) -> Result<LoginMethod, VaultError> {
        if let Some(token) = &self.token {
            return Ok(LoginMethod::Token(token.clone()));
        }
        match (&self.role_id, &self.secret_id) {
            (Some(role_id), Some(secret_id)) => {
                return Ok(LoginMethod::AppRole {
                    role_id: role_id.clone(),
                    secret_id: secret_id.clone(),
                });
            }
            (Some(_), None) | (None, Some(_)) => {
                return Err(VaultError::config(
                    "AppRole login needs both VAULT_ROLE_ID and VAULT_SECRET_ID (--vault-role-id, --vault-secret-id)",
                ));
            }
            (None, None) => {}
        }
        if let Some(role) = &self.k8s_role {
            return Ok(LoginMethod::Kubernetes { role: role.clone() });
        }
        Err(VaultError::config(
            "no Vault credentials: set VAULT_TOKEN, or VAULT_ROLE_ID and VAULT_SECRET_ID (AppRole), or --vault-k8s-role (Kubernetes auth)",
        ))
    }
}

/// How trustplane logs in to Vault.
#[derive(Clone, Debug)]
enum LoginMethod {
    /// A given token: renewed, never replaced.
    Token(Secret),
    /// AppRole: logs in again when the token cannot be renewed.
    AppRole { role_id: Secret, secret_id: Secret },
    /// Kubernetes auth with the service-account JWT (read at each login,
    /// since the kubelet rotates it).
    Kubernetes { role: String },
}

impl LoginMethod {
    fn name(&self) -> &'static str {
        match self {
            LoginMethod::Token(_) => "token",
            LoginMethod::AppRole { .. } => "approle",
            LoginMethod::Kubernetes { .. } => "kubernetes",
        }
    }
}

/// What a login or renewal gave: the token's time to live (None: it never
/// expires, e.g. a root token) and whether it may be renewed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenLease {
    /// Time to live from when it was read.
    pub ttl: Option<Duration>,
    /// Whether `renew-self` may extend it.
    pub renewable: bool,
}

/// The least-privilege Vault ACL policy trustplane's token needs, for
/// what is in Vault: with `issuer` (`(pki mount, issuer id)`) sign with and
/// read that mesh root issuer (and a commented block a rotation enables for
/// its duration); with `kv` read and write the `vault-kv` store under the
/// configured KV prefix (create, read, update, list: the store never deletes,
/// a deleted key is a tombstone). Nothing else.
pub fn acl_policy(config: &VaultConfig, issuer: Option<(&str, &str)>, kv: bool) -> String {
    let mut policy = String::new();
    if let Some((pki_mount, issuer_id)) = issuer {
        policy.push_str(&format!(
            r#"# trustplane: sign intermediates with the mesh root issuer and read it
path "{pki_mount}/issuer/{issuer_id}/sign-intermediate" {{
  capabilities = ["update"]
}}
path "{pki_mount}/issuer/{issuer_id}/json" {{
  capabilities = ["read"]
}}
path "{pki_mount}/issuer/{issuer_id}" {{
  capabilities = ["read"]
}}
"#
        ));
    }
    if kv {
        let mount = config.kv_mount.trim_matches('/');
        let prefix = config.kv_prefix.trim_matches('/');
        if !policy.is_empty() {
            policy.push('\n');
        }
        policy.push_str(&format!(
            r#"# trustplane's state (the vault-kv store) under {mount}/{prefix}/
path "{mount}/data/{prefix}/*" {{
  capabilities = ["create", "read", "update"]
}}
path "{mount}/metadata/{prefix}/*" {{
  capabilities = ["list"]
}}
"#
        ));
    }
    if let Some((pki_mount, _)) = issuer {
        policy.push_str(&format!(
            r#"
# Only while a root rotation runs (`trustplane rotate start`), then remove
# it and name the new issuer's id in the three issuer paths above:
# path "{pki_mount}/root/generate/internal" {{ capabilities = ["update"] }}
# path "{pki_mount}/issuer/+/json" {{ capabilities = ["read"] }}
# path "{pki_mount}/issuer/+" {{ capabilities = ["read"] }}
# path "{pki_mount}/issuer/+/sign-intermediate" {{ capabilities = ["update"] }}
"#
        ));
    }
    policy
}

/// A secret string from a flag, the environment or the `--vault-config`
/// file: wiped on drop, never printed by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub Zeroizing<String>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(Secret(Zeroizing::new(text.to_string())))
    }
}

/// A logged-in connection to Vault. Cheap to share; the token inside is
/// swapped when it is renewed or the login is repeated.
pub struct Vault {
    config: VaultConfig,
    method: LoginMethod,
    client: RwLock<Arc<VaultClient>>,
    lease: Mutex<TokenLease>,
    /// When `lease` was read (to tell an expired token from a missing
    /// permission when Vault answers 403 to both).
    lease_read: Mutex<tokio::time::Instant>,
    /// Serialises logins, so a burst of 403s logs in once.
    login_lock: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("addr", &self.config.addr)
            .field("namespace", &self.config.namespace)
            .field("login", &self.method.name())
            .finish_non_exhaustive()
    }
}

impl Vault {
    /// Connects and logs in (token, AppRole or Kubernetes auth), and keeps
    /// the token alive in a background task: renewed at ⅔ of its TTL,
    /// or (AppRole, Kubernetes) replaced by a new login when it cannot be.
    ///
    /// Errors: [`VaultError`] with kind [`VaultErrorKind::Config`] for
    /// settings that cannot work, and the login's errors.
    pub async fn connect(config: VaultConfig) -> Result<Arc<Vault>, VaultError> {
        let method = config.login_method()?;
        // reqwest takes the process's default rustls provider: ring, the
        // one TLS stack of this crate (main installs it too; idempotent).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let anonymous = Arc::new(client_with_token(&config, "")?);
        let vault = Arc::new(Vault {
            config,
            method,
            client: RwLock::new(anonymous),
            lease: Mutex::new(TokenLease {
                ttl: None,
                renewable: false,
            }),
            lease_read: Mutex::new(tokio::time::Instant::now()),
            login_lock: tokio::sync::Mutex::new(()),
        });
        vault.login().await?;
        tokio::spawn(keep_alive(Arc::downgrade(&vault)));
        Ok(vault)
    }

    /// The client with the current token.
    pub fn client(&self) -> Arc<VaultClient> {
        self.client
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The settings this connection was made with.
    pub fn config(&self) -> &VaultConfig {
        &self.config
    }

    /// The token's lease as last read (login, lookup or renewal).
    pub fn lease(&self) -> TokenLease {
        *self.lease.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Logs in with the configured method and swaps in the new token.
    ///
    /// Errors: [`VaultError`] naming the login path.
    pub async fn login(&self) -> Result<TokenLease, VaultError> {
        let _guard = self.login_lock.lock().await;
        self.login_locked().await
    }

    /// Logs in again after Vault refused `refused` (a client this
    /// connection handed out), unless another call already replaced it
    /// meanwhile: a burst of 403s on one expired token logs in once.
    ///
    /// Errors: as [`Vault::login`].
    async fn login_after_refusal(&self, refused: &Arc<VaultClient>) -> Result<(), VaultError> {
        let _guard = self.login_lock.lock().await;
        if !Arc::ptr_eq(&self.client(), refused) {
            return Ok(());
        }
        self.login_locked().await.map(|_| ())
    }

    /// [`Vault::login`] with `login_lock` held.
    async fn login_locked(&self) -> Result<TokenLease, VaultError> {
        let anonymous = client_with_token(&self.config, "")?;
        let (token, lease) = match &self.method {
            LoginMethod::Token(token) => {
                let client = client_with_token(&self.config, &token.0)?;
                let lease = lookup_self(&client).await?;
                (token.0.clone(), lease)
            }
            LoginMethod::AppRole { role_id, secret_id } => {
                let mount = &self.config.approle_mount;
                let path = format!("auth/{mount}/login");
                let info =
                    vaultrs::auth::approle::login(&anonymous, mount, &role_id.0, &secret_id.0)
                        .await
                        .map_err(|error| classify(&path, error))?;
                (
                    Zeroizing::new(info.client_token),
                    lease_of(info.lease_duration, info.renewable),
                )
            }
            LoginMethod::Kubernetes { role } => {
                let mount = &self.config.k8s_mount;
                let path = format!("auth/{mount}/login");
                let file = &self.config.k8s_jwt_file;
                let jwt = std::fs::read_to_string(file)
                    .map(Zeroizing::new)
                    .map_err(|error| {
                        VaultError::config(format!(
                            "Kubernetes auth: cannot read the service-account token {}: {error}",
                            file.display()
                        ))
                    })?;
                let info = vaultrs::auth::kubernetes::login(&anonymous, mount, role, jwt.trim())
                    .await
                    .map_err(|error| {
                        let mut error = classify(&path, error);
                        // A refused login has no token or policy to blame:
                        // say what Vault checked instead.
                        if error.kind == VaultErrorKind::PermissionDenied {
                            error.detail = format!(
                                "{} (Vault refused the service-account token in {}: check that auth/{mount}/role/{role} binds its ServiceAccount and namespace, and that the file holds a current token)",
                                error.detail,
                                file.display()
                            );
                        }
                        error
                    })?;
                (
                    Zeroizing::new(info.client_token),
                    lease_of(info.lease_duration, info.renewable),
                )
            }
        };
        let client = Arc::new(client_with_token(&self.config, &token)?);
        *self.client.write().unwrap_or_else(PoisonError::into_inner) = client;
        *self.lease.lock().unwrap_or_else(PoisonError::into_inner) = lease;
        self.note_lease_read();
        tracing::info!(method = self.method.name(), ttl = ?lease.ttl, "logged in to Vault");
        Ok(lease)
    }

    /// Renews the current token (`auth/token/renew-self`).
    ///
    /// Errors: [`VaultError`] naming `auth/token/renew-self`.
    pub async fn renew(&self) -> Result<TokenLease, VaultError> {
        let path = "auth/token/renew-self";
        let info = vaultrs::token::renew_self(self.client().as_ref(), None)
            .await
            .map_err(|error| classify(path, error))?;
        let lease = lease_of(info.lease_duration, info.renewable);
        *self.lease.lock().unwrap_or_else(PoisonError::into_inner) = lease;
        self.note_lease_read();
        Ok(lease)
    }

    /// Whether a 403 may be cured by logging in again (AppRole and
    /// Kubernetes; a given token cannot be replaced by trustplane).
    fn note_lease_read(&self) {
        *self
            .lease_read
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = tokio::time::Instant::now();
    }

    /// Whether the token's TTL, as last read, has run out.
    fn token_expired(&self) -> bool {
        let read = *self
            .lease_read
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.lease().ttl.is_some_and(|ttl| read.elapsed() >= ttl)
    }

    fn can_log_in_again(&self) -> bool {
        !matches!(self.method, LoginMethod::Token(_))
    }

    /// Runs `call` on the current client: transient failures are retried
    /// (`attempts` in all, with backoff); a 403 under AppRole or Kubernetes
    /// auth (an expired or revoked token) logs in again once and repeats
    /// the call. Any other failure (a KV check-and-set conflict, a 404, a
    /// 403 with a given token) is returned at once.
    ///
    /// Errors: the call's, classified for `path`; the login's when the
    /// repeated login fails.
    pub async fn call<T, F, Fut>(&self, path: &str, attempts: u32, call: F) -> Result<T, VaultError>
    where
        F: Fn(Arc<VaultClient>) -> Fut,
        Fut: std::future::Future<Output = Result<T, vaultrs::error::ClientError>>,
    {
        self.call_classified(attempts, |client| {
            let pending = call(client);
            async move { pending.await.map_err(|error| classify(path, error)) }
        })
        .await
    }

    /// As [`Vault::call`], for a call that classifies its own errors into
    /// [`VaultError`]s naming its path (the typed KV calls of [`kv`], which
    /// answer a missing secret with `None` and mark KV conflicts).
    ///
    /// Errors: the call's; the login's when the repeated login fails.
    pub async fn call_classified<T, F, Fut>(&self, attempts: u32, call: F) -> Result<T, VaultError>
    where
        F: Fn(Arc<VaultClient>) -> Fut,
        Fut: std::future::Future<Output = Result<T, VaultError>>,
    {
        // The client of the latest attempt: a 403 on it is what may need
        // a new login.
        let used = Mutex::new(self.client());
        let once = || {
            retry(attempts, || {
                let client = self.client();
                *used.lock().unwrap_or_else(PoisonError::into_inner) = client.clone();
                call(client)
            })
        };
        match once().await {
            Err(error)
                if error.kind == VaultErrorKind::PermissionDenied && self.can_log_in_again() =>
            {
                tracing::warn!(error = %error, "Vault refused the token; logging in again");
                let refused = used.lock().unwrap_or_else(PoisonError::into_inner).clone();
                self.login_after_refusal(&refused).await?;
                once().await
            }
            // Vault answers 403 to an expired token as to a missing
            // permission: say which it is when the TTL tells.
            Err(mut error)
                if error.kind == VaultErrorKind::PermissionDenied && self.token_expired() =>
            {
                error.detail = format!(
                    "{} (the token expired: its TTL ran out and it could not be renewed; give trustplane a new token, or log in with AppRole or Kubernetes auth, which log in again by themselves)",
                    error.detail
                );
                Err(error)
            }
            other => other,
        }
    }
}

/// A client for `config` carrying `token`. Every setting is given
/// explicitly, so vaultrs reads no environment variable itself.
fn client_with_token(config: &VaultConfig, token: &str) -> Result<VaultClient, VaultError> {
    let addr = config
        .addr
        .clone()
        .ok_or_else(|| VaultError::config("no Vault address: set VAULT_ADDR or --vault-addr"))?;
    let mut settings = VaultClientSettingsBuilder::default();
    settings
        .address(addr)
        .token(token)
        .verify(true)
        .ca_certs(Vec::new());
    if let Some(cacert) = &config.cacert {
        if !cacert.is_file() {
            return Err(VaultError::config(format!(
                "VAULT_CACERT {}: no such file",
                cacert.display()
            )));
        }
        settings.ca_certs(vec![cacert.display().to_string()]);
    }
    if let Some(namespace) = &config.namespace {
        settings.set_namespace(namespace.clone());
    }
    let settings = settings
        .build()
        .map_err(|error| VaultError::config(format!("Vault client settings: {error}")))?;
    VaultClient::new(settings).map_err(|error| VaultError::config(format!("Vault client: {error}")))
}

fn lease_of(seconds: u64, renewable: bool) -> TokenLease {
    TokenLease {
        ttl: (seconds > 0).then(|| Duration::from_secs(seconds)),
        renewable,
    }
}

/// The token's TTL and renewability (`auth/token/lookup-self`).
async fn lookup_self(client: &VaultClient) -> Result<TokenLease, VaultError> {
    let path = "auth/token/lookup-self";
    let info = vaultrs::token::lookup_self(client)
        .await
        .map_err(|error| classify(path, error))?;
    Ok(lease_of(info.ttl, info.renewable.unwrap_or(false)))
}

/// When to act on a lease of `ttl`: at ⅔ of it, at least a second away.
pub fn renewal_delay(ttl: Duration) -> Duration {
    (ttl * 2 / 3).max(Duration::from_secs(1))
}

/// Keeps the token alive while the [`Vault`] exists: renews at ⅔ of its
/// TTL; when renewal fails or the token is not renewable, logs in again
/// (AppRole, Kubernetes) or warns (a given token: the operator must renew
/// or replace it). Failures are retried after 5 s.
async fn keep_alive(vault: Weak<Vault>) {
    loop {
        let Some(current) = vault.upgrade() else {
            return;
        };
        let lease = current.lease();
        drop(current);
        let Some(ttl) = lease.ttl else { return };
        tokio::time::sleep(renewal_delay(ttl)).await;
        let Some(current) = vault.upgrade() else {
            return;
        };
        let renewed = if lease.renewable {
            current.renew().await
        } else {
            Err(VaultError::new(
                "auth/token/renew-self",
                VaultErrorKind::PermissionDenied,
                "the token is not renewable",
            ))
        };
        match renewed {
            // A renewal capped by the token's max TTL gives less than asked:
            // log in again before it runs out.
            Ok(new)
                if new.ttl.is_some_and(|new_ttl| new_ttl * 3 < ttl)
                    && current.can_log_in_again() =>
            {
                if let Err(error) = current.login().await {
                    tracing::warn!(error = %error, "Vault login failed; retrying in 5 s");
                    pause_after_failure(&current);
                }
            }
            Ok(new) => tracing::debug!(ttl = ?new.ttl, "Vault token renewed"),
            Err(error) if current.can_log_in_again() => {
                tracing::info!(error = %error, "Vault token not renewed; logging in again");
                if let Err(error) = current.login().await {
                    tracing::warn!(error = %error, "Vault login failed; retrying in 5 s");
                    pause_after_failure(&current);
                }
            }
            Err(error) if !lease.renewable || error.kind == VaultErrorKind::PermissionDenied => {
                tracing::warn!(error = %error, "the Vault token cannot be renewed (not renewable, expired or revoked): give trustplane a new renewable token and restart it, or use AppRole or Kubernetes auth");
                return;
            }
            Err(error) => {
                tracing::warn!(error = %error, "the Vault token could not be renewed: renew it or give trustplane a new one (VAULT_TOKEN) before it expires");
                pause_after_failure(&current);
            }
        }
    }
}

/// After a failed renewal or login: a short TTL keeps the next attempt
/// close ([`keep_alive`] sleeps ⅔ of it), at most 5 s away.
fn pause_after_failure(vault: &Vault) {
    let mut lease = vault.lease.lock().unwrap_or_else(PoisonError::into_inner);
    lease.ttl = Some(Duration::from_millis(7500));
    lease.renewable = lease.renewable || vault.can_log_in_again();
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    fn base() -> VaultConfig {
        VaultConfig {
            addr: Some("http://127.0.0.1:1".into()),
            approle_mount: "approle".into(),
            k8s_mount: "kubernetes".into(),
            k8s_jwt_file: PathBuf::from("/nonexistent/token"),
            ..VaultConfig::default()
        }
    }

    #[test]
    fn the_login_method_is_the_token_then_approle_then_kubernetes() {
        let secret = |text: &str| Some(text.parse::<Secret>().unwrap());
        let all = VaultConfig {
            token: secret("t"),
            role_id: secret("r"),
            secret_id: secret("s"),
            k8s_role: Some("k".into()),
            ..base()
        };
        assert_eq!(all.login_method().unwrap().name(), "token");
        let approle = VaultConfig {
            token: None,
            ..all.clone()
        };
        assert_eq!(approle.login_method().unwrap().name(), "approle");
        let kubernetes = VaultConfig {
            role_id: None,
            secret_id: None,
            ..approle
        };
        assert_eq!(kubernetes.login_method().unwrap().name(), "kubernetes");
        let none = base().login_method().unwrap_err();
        assert_eq!(none.kind, VaultErrorKind::Config);
        assert!(none.to_string().contains("VAULT_TOKEN"), "{none}");
        // Secrets never show in Debug.
        let printed = format!(
            "{:?}",
            VaultConfig {
                token: secret("hunter2"),
                ..base()
            }
        );
        assert!(!printed.contains("hunter2"), "{printed}");
    }

    #[tokio::test]
    async fn kubernetes_login_names_an_unreadable_service_account_token() {
        let error = Vault::connect(VaultConfig {
            k8s_role: Some("trustplane".into()),
            ..base()
        })
        .await
        .unwrap_err();
        assert_eq!(error.kind, VaultErrorKind::Config);
        assert!(error.to_string().contains("/nonexistent/token"), "{error}");
    }

    #[test]
    fn renewal_is_at_two_thirds_and_never_sooner_than_a_second() {
        assert_eq!(
            renewal_delay(Duration::from_secs(30)),
            Duration::from_secs(20)
        );
        assert_eq!(
            renewal_delay(Duration::from_millis(600)),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn the_acl_policy_names_the_issuer_and_the_kv_prefix_only() {
        let config = VaultConfig {
            kv_mount: "kv".into(),
            kv_prefix: "/mesh/".into(),
            ..base()
        };
        // Each granted path with its capabilities, comments left out.
        let granted = |policy: &str| -> Vec<(String, String)> {
            let lines: Vec<&str> = policy.lines().collect();
            lines
                .iter()
                .enumerate()
                .filter(|(_, line)| line.starts_with("path "))
                .map(|(index, line)| (line.to_string(), lines[index + 1].trim().to_string()))
                .collect()
        };
        let pair = |path: &str, capabilities: &str| {
            (
                format!("path \"{path}\" {{"),
                format!("capabilities = [{capabilities}]"),
            )
        };
        let issuer = vec![
            pair("pki/issuer/0f1e/sign-intermediate", "\"update\""),
            pair("pki/issuer/0f1e/json", "\"read\""),
            pair("pki/issuer/0f1e", "\"read\""),
        ];
        let store = vec![
            pair("kv/data/mesh/*", "\"create\", \"read\", \"update\""),
            pair("kv/metadata/mesh/*", "\"list\""),
        ];
        let both = acl_policy(&config, Some(("pki", "0f1e")), true);
        assert_eq!(granted(&both), [issuer.clone(), store.clone()].concat());
        assert_eq!(
            granted(&acl_policy(&config, Some(("pki", "0f1e")), false)),
            issuer
        );
        assert_eq!(granted(&acl_policy(&config, None, true)), store);
        // The rotation block is there, commented out, only with an issuer.
        assert!(both.contains("# path \"pki/root/generate/internal\""));
        assert!(!acl_policy(&config, None, true).contains("generate"));
    }
}
