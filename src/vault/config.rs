//! Where the Vault settings come from: a flag, else its environment
//! variable (the conventional `VAULT_*` name where one exists), else the
//! `--vault-config` YAML file, else the built-in default — merged into the
//! one [`VaultConfig`] the connection uses. The file's keys are the flag
//! names without `--`: one struct ([`VaultSettings`]) declares both, so they
//! cannot drift apart.

use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::{Secret, VaultConfig, VaultError};
use crate::files::{self, PrivateFileError};

/// Mount of the AppRole auth method when none is given.
pub const DEFAULT_APPROLE_MOUNT: &str = "approle";
/// The service-account token file when none is given.
pub const DEFAULT_K8S_JWT_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
/// Mount of the Kubernetes auth method when none is given.
pub const DEFAULT_K8S_MOUNT: &str = "kubernetes";
/// PKI mount when none is given.
pub const DEFAULT_PKI_MOUNT: &str = "pki";
/// KV v2 mount of the `vault-kv` store when none is given.
pub const DEFAULT_KV_MOUNT: &str = "secret";
/// Path prefix of the `vault-kv` store when none is given.
pub const DEFAULT_KV_PREFIX: &str = "trustplane";

/// The Vault settings as given: each field is a flag, its environment
/// variable and a key of the `--vault-config` file (the flag name without
/// `--`), and is `None` when not given there, so that [`VaultSettings::load`]
/// can tell a given value from a default. Login: `VAULT_TOKEN` if set, else
/// AppRole (`VAULT_ROLE_ID` + `VAULT_SECRET_ID`), else Kubernetes
/// (`--vault-k8s-role`).
#[derive(Clone, Debug, Default, PartialEq, Eq, clap::Args, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultSettings {
    /// YAML file of Vault settings; its keys are the --vault-* flag names without the dashes, e.g. `vault-addr: https://vault.example:8200`, `vault-pki-mount: pki`, `vault-kv-prefix: mesh/trustplane`. A flag or its environment variable overrides the file; an unknown key is refused. A file holding vault-token or vault-secret-id must be readable by its owner only (chmod 600).
    #[arg(
        long = "vault-config",
        env = "TRUSTPLANE_VAULT_CONFIG",
        value_name = "FILE"
    )]
    #[serde(skip)]
    pub file: Option<PathBuf>,
    /// Vault's address, e.g. `https://vault.example:8200`.
    #[arg(long = "vault-addr", env = "VAULT_ADDR")]
    #[serde(rename = "vault-addr")]
    pub addr: Option<String>,
    /// A Vault token (renewed before it expires).
    #[arg(long = "vault-token", env = "VAULT_TOKEN", hide_env_values = true)]
    #[serde(rename = "vault-token")]
    pub token: Option<Secret>,
    /// PEM file of the CA that signed Vault's TLS certificate.
    #[arg(long = "vault-cacert", env = "VAULT_CACERT")]
    #[serde(rename = "vault-cacert")]
    pub cacert: Option<PathBuf>,
    /// Vault Enterprise / OpenBao namespace (X-Vault-Namespace).
    #[arg(long = "vault-namespace", env = "VAULT_NAMESPACE")]
    #[serde(rename = "vault-namespace")]
    pub namespace: Option<String>,
    /// AppRole login: the role id (with VAULT_SECRET_ID).
    #[arg(long = "vault-role-id", env = "VAULT_ROLE_ID", hide_env_values = true)]
    #[serde(rename = "vault-role-id")]
    pub role_id: Option<Secret>,
    /// AppRole login: the secret id (with VAULT_ROLE_ID).
    #[arg(
        long = "vault-secret-id",
        env = "VAULT_SECRET_ID",
        hide_env_values = true
    )]
    #[serde(rename = "vault-secret-id")]
    pub secret_id: Option<Secret>,
    /// Mount of the AppRole auth method [default: approle].
    #[arg(long = "vault-approle-mount", env = "TRUSTPLANE_VAULT_APPROLE_MOUNT")]
    #[serde(rename = "vault-approle-mount")]
    pub approle_mount: Option<String>,
    /// Kubernetes login: the Vault role bound to this pod's service account.
    #[arg(long = "vault-k8s-role", env = "TRUSTPLANE_VAULT_K8S_ROLE")]
    #[serde(rename = "vault-k8s-role")]
    pub k8s_role: Option<String>,
    /// Kubernetes login: the service-account token (JWT) file [default: /var/run/secrets/kubernetes.io/serviceaccount/token].
    #[arg(long = "vault-k8s-jwt-file", env = "TRUSTPLANE_VAULT_K8S_JWT_FILE")]
    #[serde(rename = "vault-k8s-jwt-file")]
    pub k8s_jwt_file: Option<PathBuf>,
    /// Mount of the Kubernetes auth method [default: kubernetes].
    #[arg(long = "vault-k8s-mount", env = "TRUSTPLANE_VAULT_K8S_MOUNT")]
    #[serde(rename = "vault-k8s-mount")]
    pub k8s_mount: Option<String>,
    /// PKI mount that holds the mesh root issuer [default: pki].
    #[arg(long = "vault-pki-mount", env = "TRUSTPLANE_VAULT_PKI_MOUNT")]
    #[serde(rename = "vault-pki-mount")]
    pub pki_mount: Option<String>,
    /// KV v2 mount of the `vault-kv` store [default: secret].
    #[arg(long = "vault-kv-mount", env = "TRUSTPLANE_VAULT_KV_MOUNT")]
    #[serde(rename = "vault-kv-mount")]
    pub kv_mount: Option<String>,
    /// Path prefix under the KV mount for the `vault-kv` store [default: trustplane].
    #[arg(long = "vault-kv-prefix", env = "TRUSTPLANE_VAULT_KV_PREFIX")]
    #[serde(rename = "vault-kv-prefix")]
    pub kv_prefix: Option<String>,
}

impl VaultSettings {
    /// The settings in force: each from its flag, else its environment
    /// variable (clap has put either in `self`), else the `--vault-config`
    /// file, else the built-in default. Call it once per command, where the
    /// Vault connection or the `vault-kv` store is opened.
    ///
    /// Errors: [`VaultErrorKind::Config`](super::VaultErrorKind::Config) when
    /// the file cannot be read or parsed (an unknown key is named, with the
    /// valid ones), or holds `vault-token` or `vault-secret-id` while group
    /// or others may read it.
    pub fn load(&self) -> Result<VaultConfig, VaultError> {
        let file = match &self.file {
            Some(path) => read_settings_file(path)?,
            None => VaultSettings::default(),
        };
        Ok(self.clone().over(file).resolve())
    }

    /// `self`'s values, and `lower`'s where `self` has none.
    fn over(self, lower: VaultSettings) -> VaultSettings {
        VaultSettings {
            file: self.file.or(lower.file),
            addr: self.addr.or(lower.addr),
            token: self.token.or(lower.token),
            cacert: self.cacert.or(lower.cacert),
            namespace: self.namespace.or(lower.namespace),
            role_id: self.role_id.or(lower.role_id),
            secret_id: self.secret_id.or(lower.secret_id),
            approle_mount: self.approle_mount.or(lower.approle_mount),
            k8s_role: self.k8s_role.or(lower.k8s_role),
            k8s_jwt_file: self.k8s_jwt_file.or(lower.k8s_jwt_file),
            k8s_mount: self.k8s_mount.or(lower.k8s_mount),
            pki_mount: self.pki_mount.or(lower.pki_mount),
            kv_mount: self.kv_mount.or(lower.kv_mount),
            kv_prefix: self.kv_prefix.or(lower.kv_prefix),
        }
    }

    /// The configuration with the built-in defaults where nothing was given.
    pub(super) fn resolve(self) -> VaultConfig {
        let or = |value: Option<String>, default: &str| value.unwrap_or_else(|| default.into());
        VaultConfig {
            addr: self.addr,
            token: self.token,
            cacert: self.cacert,
            namespace: self.namespace,
            role_id: self.role_id,
            secret_id: self.secret_id,
            approle_mount: or(self.approle_mount, DEFAULT_APPROLE_MOUNT),
            k8s_role: self.k8s_role,
            k8s_jwt_file: self
                .k8s_jwt_file
                .unwrap_or_else(|| PathBuf::from(DEFAULT_K8S_JWT_FILE)),
            k8s_mount: or(self.k8s_mount, DEFAULT_K8S_MOUNT),
            pki_mount: or(self.pki_mount, DEFAULT_PKI_MOUNT),
            kv_mount: or(self.kv_mount, DEFAULT_KV_MOUNT),
            kv_prefix: or(self.kv_prefix, DEFAULT_KV_PREFIX),
        }
    }

    /// The first secret key the file form holds, if any.
    fn secret_key(&self) -> Option<&'static str> {
        if self.token.is_some() {
            Some("vault-token")
        } else if self.secret_id.is_some() {
            Some("vault-secret-id")
        } else {
            None
        }
    }
}

/// Reads a `--vault-config` file. A file that group or others may read is
/// accepted only when it holds no secret (`vault-token`, `vault-secret-id`):
/// the same check as for key files ([`files::read_private`]).
fn read_settings_file(path: &Path) -> Result<VaultSettings, VaultError> {
    let unreadable = |error: &dyn std::fmt::Display| {
        VaultError::config(format!(
            "cannot read the Vault settings file (--vault-config) {}: {error}",
            path.display()
        ))
    };
    match files::read_private(path) {
        Ok(text) => parse_settings(path, &text),
        Err(PrivateFileError::TooOpen { mode, .. }) => {
            let text = std::fs::read_to_string(path)
                .map(Zeroizing::new)
                .map_err(|error| unreadable(&error))?;
            let settings = parse_settings(path, &text)?;
            match settings.secret_key() {
                Some(key) => Err(VaultError::config(format!(
                    "the Vault settings file {path} holds {key} but group or others may read it (mode {mode:03o}): run `chmod 600 {path}`, or give the secret as {variable} instead",
                    path = path.display(),
                    variable = if key == "vault-token" {
                        "VAULT_TOKEN"
                    } else {
                        "VAULT_SECRET_ID"
                    },
                ))),
                None => Ok(settings),
            }
        }
        Err(PrivateFileError::File(error)) => {
            Err(unreadable(&format_args!("{error}: {}", error.source)))
        }
    }
}

/// Parses the YAML `text` of the file at `path`: a mapping of flag names
/// (without `--`) to values; an empty file gives no settings.
fn parse_settings(path: &Path, text: &str) -> Result<VaultSettings, VaultError> {
    let parsed: Option<VaultSettings> = serde_yaml_ng::from_str(text).map_err(|error| {
        VaultError::config(format!(
            "the Vault settings file (--vault-config) {}: {error}",
            path.display()
        ))
    })?;
    Ok(parsed.unwrap_or_default())
}

/// Read from the `--vault-config` file: the text goes straight into a
/// zeroizing buffer.
impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(|text| Secret(Zeroizing::new(text)))
    }
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use clap::{CommandFactory, Parser};

    use super::*;
    use crate::vault::VaultErrorKind;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        vault: VaultSettings,
    }

    fn parse(args: &[&str]) -> VaultSettings {
        Cli::try_parse_from(std::iter::once("trustplane").chain(args.iter().copied()))
            .unwrap()
            .vault
    }

    fn file_with(dir: &Path, text: &str, mode: u32) -> PathBuf {
        let path = dir.join("vault.yaml");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    fn secret(text: &str) -> Option<Secret> {
        Some(text.parse().unwrap())
    }

    #[test]
    fn a_flag_overrides_the_file_which_overrides_the_default() {
        let dir = tempfile::tempdir().unwrap();
        let file = file_with(
            dir.path(),
            "vault-addr: https://from-file:8200\nvault-pki-mount: file-pki\nvault-kv-prefix: file/prefix\nvault-token: file-token\n",
            0o600,
        );
        let file = file.to_str().unwrap();
        let config = parse(&["--vault-config", file, "--vault-pki-mount", "flag-pki"])
            .load()
            .unwrap();
        assert_eq!(config.pki_mount, "flag-pki");
        assert_eq!(config.addr.as_deref(), Some("https://from-file:8200"));
        assert_eq!(config.kv_prefix, "file/prefix");
        assert_eq!(config.token, secret("file-token"));
        // Neither flag nor file: the built-in default.
        assert_eq!(config.kv_mount, DEFAULT_KV_MOUNT);
        assert_eq!(config.approle_mount, DEFAULT_APPROLE_MOUNT);
        assert_eq!(config.k8s_jwt_file, PathBuf::from(DEFAULT_K8S_JWT_FILE));
        // A flag equal to the default still beats the file: clap sets no
        // default of its own, so "given" is never confused with "defaulted".
        let config = parse(&["--vault-config", file, "--vault-pki-mount", "pki"])
            .load()
            .unwrap();
        assert_eq!(config.pki_mount, "pki");
    }

    #[test]
    fn nothing_given_is_none_until_resolved_and_then_the_defaults() {
        // (Assumes the test's environment sets no TRUSTPLANE_VAULT_* mount.)
        let given = parse(&[]);
        assert_eq!(given.pki_mount, None);
        assert_eq!(given.kv_mount, None);
        assert_eq!(given.kv_prefix, None);
        assert_eq!(given.approle_mount, None);
        assert_eq!(given.k8s_mount, None);
        assert_eq!(given.k8s_jwt_file, None);
        let config = VaultSettings::default().load().unwrap();
        assert_eq!(
            (
                config.pki_mount.as_str(),
                config.kv_mount.as_str(),
                config.kv_prefix.as_str(),
                config.approle_mount.as_str(),
                config.k8s_mount.as_str(),
            ),
            ("pki", "secret", "trustplane", "approle", "kubernetes")
        );
        let default = VaultConfig::default();
        assert_eq!(default.pki_mount, config.pki_mount);
        assert_eq!(default.k8s_jwt_file, config.k8s_jwt_file);
    }

    #[test]
    fn a_given_value_takes_the_place_of_a_lower_one_field_by_field() {
        let higher = VaultSettings {
            token: secret("higher"),
            kv_mount: Some("higher-kv".into()),
            ..VaultSettings::default()
        };
        let lower = VaultSettings {
            token: secret("lower"),
            secret_id: secret("lower-secret"),
            kv_mount: Some("lower-kv".into()),
            namespace: Some("team".into()),
            ..VaultSettings::default()
        };
        let merged = higher.over(lower).resolve();
        assert_eq!(merged.token, secret("higher"));
        assert_eq!(merged.kv_mount, "higher-kv");
        assert_eq!(merged.secret_id, secret("lower-secret"));
        assert_eq!(merged.namespace.as_deref(), Some("team"));
        assert_eq!(merged.role_id, None);
    }

    #[test]
    fn the_file_keys_are_exactly_the_flag_names() {
        let flags: Vec<String> = Cli::command()
            .get_arguments()
            .filter_map(|argument| argument.get_long())
            .filter(|long| *long != "vault-config")
            .map(str::to_string)
            .collect();
        assert_eq!(flags.len(), 13, "{flags:?}");
        // Every flag name is a valid key...
        let dir = tempfile::tempdir().unwrap();
        for flag in &flags {
            let path = file_with(dir.path(), &format!("{flag}: value\n"), 0o600);
            parse_settings(&path, &std::fs::read_to_string(&path).unwrap())
                .unwrap_or_else(|error| panic!("{flag}: {error}"));
        }
        // ... and serde lists exactly those as the valid keys.
        let error = parse_settings(&dir.path().join("x.yaml"), "vault-adress: x\n").unwrap_err();
        let text = error.to_string();
        let listed: Vec<String> = text
            .split("expected one of ")
            .nth(1)
            .unwrap()
            .split(", ")
            .map(|key| key.trim_matches(|c: char| c == '`' || !c.is_ascii_graphic()))
            .map(|key| key.split('`').next().unwrap().to_string())
            .collect();
        let mut listed_sorted = listed.clone();
        listed_sorted.sort();
        let mut flags_sorted = flags.clone();
        flags_sorted.sort();
        assert_eq!(listed_sorted, flags_sorted, "{text}");
    }

    #[test]
    fn an_unknown_key_is_refused_naming_it_and_the_valid_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = file_with(
            dir.path(),
            "vault-addr: https://vault:8200\nvault-adress: x\n",
            0o644,
        );
        let error = parse(&["--vault-config", path.to_str().unwrap()])
            .load()
            .unwrap_err();
        assert_eq!(error.kind, VaultErrorKind::Config);
        let text = error.to_string();
        assert!(text.contains("unknown field `vault-adress`"), "{text}");
        assert!(text.contains("`vault-addr`"), "{text}");
        assert!(text.contains("`vault-kv-prefix`"), "{text}");
        assert!(text.contains(path.to_str().unwrap()), "{text}");
        // The file's own flag is no key of the file.
        let nested = file_with(dir.path(), "vault-config: other.yaml\n", 0o644);
        let error = parse(&["--vault-config", nested.to_str().unwrap()])
            .load()
            .unwrap_err();
        assert!(
            error.to_string().contains("unknown field `vault-config`"),
            "{error}"
        );
    }

    #[test]
    fn a_file_with_a_secret_must_be_private_and_one_without_need_not_be() {
        let dir = tempfile::tempdir().unwrap();
        for (key, variable) in [
            ("vault-token", "VAULT_TOKEN"),
            ("vault-secret-id", "VAULT_SECRET_ID"),
        ] {
            let path = file_with(
                dir.path(),
                &format!("vault-addr: https://vault:8200\n{key}: hunter2\n"),
                0o640,
            );
            let error = parse(&["--vault-config", path.to_str().unwrap()])
                .load()
                .unwrap_err();
            assert_eq!(error.kind, VaultErrorKind::Config);
            let text = error.to_string();
            assert!(text.contains(key), "{text}");
            assert!(text.contains("mode 640"), "{text}");
            assert!(
                text.contains(&format!("chmod 600 {}", path.display())),
                "{text}"
            );
            assert!(text.contains(variable), "{text}");
            assert!(!text.contains("hunter2"), "{text}");
            // Private, it is used.
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            let config = parse(&["--vault-config", path.to_str().unwrap()])
                .load()
                .unwrap();
            assert_eq!(
                config.token.or(config.secret_id),
                secret("hunter2"),
                "{key}"
            );
        }
        // No secret: a world-readable file is fine.
        let public = file_with(dir.path(), "vault-addr: https://vault:8200\n", 0o644);
        let config = parse(&["--vault-config", public.to_str().unwrap()])
            .load()
            .unwrap();
        assert_eq!(config.addr.as_deref(), Some("https://vault:8200"));
        // The secrets from the file never show in Debug.
        assert!(
            !format!(
                "{:?}",
                parse_settings(&public, "vault-token: hunter2").unwrap()
            )
            .contains("hunter2")
        );
    }

    #[test]
    fn a_missing_or_empty_file_is_said_plainly() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("absent.yaml");
        let error = parse(&["--vault-config", missing.to_str().unwrap()])
            .load()
            .unwrap_err();
        assert_eq!(error.kind, VaultErrorKind::Config);
        assert!(
            error.to_string().contains(missing.to_str().unwrap()),
            "{error}"
        );
        assert!(error.to_string().contains("--vault-config"), "{error}");
        let empty = file_with(dir.path(), "# nothing yet\n", 0o644);
        assert_eq!(
            parse(&["--vault-config", empty.to_str().unwrap()])
                .load()
                .unwrap()
                .pki_mount,
            DEFAULT_PKI_MOUNT
        );
        let wrong_type = file_with(dir.path(), "vault-kv-prefix: [a, b]\n", 0o644);
        let error = parse(&["--vault-config", wrong_type.to_str().unwrap()])
            .load()
            .unwrap_err();
        assert!(error.to_string().contains("vault-kv-prefix"), "{error}");
    }
}
