//! The push-mode kubeconfig validator: the only kubeconfigs the server
//! keeps and uses carry their credentials inline.
//!
//! A kubeconfig is a program as much as a file: `exec` and `auth-provider`
//! run commands, `tokenFile`, `client-key` and `certificate-authority` read
//! local files (the KEK, the store), `proxy-url` and
//! `insecure-skip-tls-verify` hand the connection to someone else. On the CA
//! host none of that is acceptable, so [`validate`] accepts one shape only:
//! exactly one cluster, one user and one context (`current-context` naming
//! it, or absent); the cluster's `server` an `https://` URL with its
//! `certificate-authority-data`; the user's `token`, or
//! `client-certificate-data` with `client-key-data`. Everything else,
//! including fields this module does not know, is refused with an error that
//! names the field (`users[0].user.exec`).
//!
//! The text is parsed as generic YAML so that every field is seen (kube's
//! own `Kubeconfig` type drops the fields it does not know). Pure: no I/O,
//! no clock; it never panics, whatever the input, so it can be fuzzed.
//!
//! Not here: building a client from the validated text
//! (`sink::kube::connect_with_kubeconfig`) and storing it
//! (`server::registry`).

use std::fmt;

use base64::Engine;
use serde_yaml_ng::{Mapping, Value};
use zeroize::Zeroizing;

/// The largest kubeconfig accepted, in bytes.
pub const MAX_KUBECONFIG_BYTES: usize = 256 * 1024;

/// What to do instead, appended to every refusal.
const INLINE_ONLY: &str = "push mode accepts inline credentials only: one cluster with `server` (https) and \
     `certificate-authority-data`, one user with `token` or `client-certificate-data` + \
     `client-key-data`, one context";

/// How the validated kubeconfig authenticates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Credential {
    /// A bearer token (`token`).
    Token,
    /// A client certificate and key (`client-certificate-data` +
    /// `client-key-data`).
    ClientCertificate,
}

/// A kubeconfig that passed [`validate`]: its text (kept in a zeroizing
/// buffer, since it holds a credential) and what was found in it.
#[derive(Clone)]
pub struct ValidatedKubeconfig {
    text: Zeroizing<String>,
    server: String,
    context: String,
    credential: Credential,
}

impl ValidatedKubeconfig {
    /// The kubeconfig text as given (only the accepted fields are in it).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The API server URL (`https://…`).
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The name of its only context.
    pub fn context(&self) -> &str {
        &self.context
    }

    /// How it authenticates.
    pub fn credential(&self) -> Credential {
        self.credential
    }
}

impl fmt::Debug for ValidatedKubeconfig {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("ValidatedKubeconfig")
            .field("server", &self.server)
            .field("context", &self.context)
            .field("credential", &self.credential)
            .field("text", &"[redacted]")
            .finish()
    }
}

/// Why a kubeconfig was refused. Messages name the field by its path
/// (`users[0].user.exec`) and never quote a credential.
#[derive(Debug, thiserror::Error)]
pub enum KubeconfigError {
    /// Larger than [`MAX_KUBECONFIG_BYTES`].
    #[error("the kubeconfig is {bytes} bytes, more than the {limit} accepted")]
    TooLarge {
        /// Its size.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// Not YAML (or several YAML documents).
    #[error("the kubeconfig does not parse as one YAML document: {source}")]
    Syntax {
        /// The parser's error.
        #[source]
        source: serde_yaml_ng::Error,
    },
    /// A field that is never accepted (a command, a file path, an insecure
    /// or proxy setting, a password, impersonation).
    #[error("{path} is refused: {reason}; {INLINE_ONLY}")]
    Refused {
        /// Where it is, e.g. `users[0].user.exec`.
        path: String,
        /// What it would do.
        reason: &'static str,
    },
    /// A field this validator does not know.
    #[error("{path} is refused: an unknown field; {INLINE_ONLY}")]
    Unknown {
        /// Where it is.
        path: String,
    },
    /// A required field is absent.
    #[error("{path} is missing; {INLINE_ONLY}")]
    Missing {
        /// Where it should be.
        path: String,
    },
    /// A field with a value that is not accepted.
    #[error("{path} is invalid: {reason}")]
    Invalid {
        /// Where it is.
        path: String,
        /// Why.
        reason: String,
    },
}

fn refused(path: String, reason: &'static str) -> KubeconfigError {
    KubeconfigError::Refused { path, reason }
}

fn invalid(path: &str, reason: impl Into<String>) -> KubeconfigError {
    KubeconfigError::Invalid {
        path: path.to_string(),
        reason: reason.into(),
    }
}

/// Fields refused wherever they appear, with what they would do.
fn refusal(field: &str) -> Option<&'static str> {
    Some(match field {
        "exec" => "it runs a command on the CA host",
        "auth-provider" => "an auth provider runs code and reads local files on the CA host",
        "certificate-authority" | "client-certificate" | "client-key" | "tokenFile" => {
            "a file path would make the server read a local file"
        }
        "insecure-skip-tls-verify" => "the API server's certificate must be verified",
        "proxy-url" => "a proxy would see the traffic",
        "username" | "password" => "basic authentication is not accepted",
        "as" | "as-uid" | "as-groups" | "as-user-extra" => "impersonation is not accepted",
        "extensions" => "extensions are not read and not accepted",
        _ => return None,
    })
}

/// Checks that `text` is a push-mode kubeconfig with inline credentials only
/// (see the module docs for the one accepted shape).
///
/// Errors: [`KubeconfigError`] naming the first field refused, missing or
/// invalid.
pub fn validate(text: &str) -> Result<ValidatedKubeconfig, KubeconfigError> {
    if text.len() > MAX_KUBECONFIG_BYTES {
        return Err(KubeconfigError::TooLarge {
            bytes: text.len(),
            limit: MAX_KUBECONFIG_BYTES,
        });
    }
    let document: Value =
        serde_yaml_ng::from_str(text).map_err(|source| KubeconfigError::Syntax { source })?;
    let top = mapping(&document, "the kubeconfig")?;
    let mut current_context = None;
    for (key, value) in top {
        let key = key_text(key, "")?;
        match key {
            "apiVersion" => {
                if string(value, key)? != "v1" {
                    return Err(invalid(key, "must be v1"));
                }
            }
            "kind" => {
                if string(value, key)? != "Config" {
                    return Err(invalid(key, "must be Config"));
                }
            }
            "current-context" => current_context = Some(string(value, key)?),
            "preferences" => {
                if !mapping(value, key)?.is_empty() {
                    return Err(KubeconfigError::Unknown {
                        path: "preferences.*".into(),
                    });
                }
            }
            "clusters" | "users" | "contexts" => {}
            other => return Err(unknown_or_refused(other.to_string(), other)),
        }
    }
    let (cluster_name, cluster) = only_entry(top, "clusters", "cluster")?;
    let (user_name, user) = only_entry(top, "users", "user")?;
    let (context_name, context) = only_entry(top, "contexts", "context")?;

    let server = check_cluster(cluster)?;
    let credential = check_user(user)?;
    check_context(context, cluster_name, user_name)?;
    if let Some(current) = current_context
        && current != context_name
    {
        return Err(invalid(
            "current-context",
            format!("names {current:?}, but the only context is {context_name:?}"),
        ));
    }
    Ok(ValidatedKubeconfig {
        text: Zeroizing::new(text.to_string()),
        server: server.to_string(),
        context: context_name.to_string(),
        credential,
    })
}

fn unknown_or_refused(path: String, field: &str) -> KubeconfigError {
    match refusal(field) {
        Some(reason) => refused(path, reason),
        None => KubeconfigError::Unknown { path },
    }
}

fn mapping<'a>(value: &'a Value, path: &str) -> Result<&'a Mapping, KubeconfigError> {
    value
        .as_mapping()
        .ok_or_else(|| invalid(path, "must be a mapping"))
}

fn string<'a>(value: &'a Value, path: &str) -> Result<&'a str, KubeconfigError> {
    value
        .as_str()
        .ok_or_else(|| invalid(path, "must be a string"))
}

fn key_text<'a>(key: &'a Value, parent: &str) -> Result<&'a str, KubeconfigError> {
    key.as_str().ok_or_else(|| {
        invalid(
            if parent.is_empty() { "a key" } else { parent },
            "every key must be a string",
        )
    })
}

/// The name and body of the only entry of list `list` (`clusters`), whose
/// entries are `{name, <body>: {...}}`.
fn only_entry<'a>(
    top: &'a Mapping,
    list: &'static str,
    body: &'static str,
) -> Result<(&'a str, &'a Mapping), KubeconfigError> {
    let entries = top
        .get(list)
        .ok_or_else(|| KubeconfigError::Missing { path: list.into() })?
        .as_sequence()
        .ok_or_else(|| invalid(list, "must be a list"))?;
    let [entry] = entries.as_slice() else {
        return Err(invalid(
            list,
            format!(
                "must have exactly one entry, found {}; {INLINE_ONLY}",
                entries.len()
            ),
        ));
    };
    let path = format!("{list}[0]");
    let entry = mapping(entry, &path)?;
    let mut name = None;
    let mut found = None;
    for (key, value) in entry {
        let key = key_text(key, &path)?;
        let field = format!("{path}.{key}");
        match key {
            "name" => name = Some(string(value, &field)?),
            _ if key == body => found = Some(mapping(value, &field)?),
            other => return Err(unknown_or_refused(field, other)),
        }
    }
    let name = name.ok_or_else(|| KubeconfigError::Missing {
        path: format!("{path}.name"),
    })?;
    if name.is_empty() {
        return Err(invalid(&format!("{path}.name"), "must not be empty"));
    }
    let found = found.ok_or_else(|| KubeconfigError::Missing {
        path: format!("{path}.{body}"),
    })?;
    Ok((name, found))
}

fn check_cluster(cluster: &Mapping) -> Result<&str, KubeconfigError> {
    const PATH: &str = "clusters[0].cluster";
    let mut server = None;
    let mut authority = None;
    for (key, value) in cluster {
        let key = key_text(key, PATH)?;
        let field = format!("{PATH}.{key}");
        match key {
            "server" => server = Some(string(value, &field)?),
            "certificate-authority-data" => authority = Some(string(value, &field)?),
            "tls-server-name" => check_plain(string(value, &field)?, &field)?,
            "disable-compression" => {
                if value.as_bool().is_none() {
                    return Err(invalid(&field, "must be true or false"));
                }
            }
            other => return Err(unknown_or_refused(field, other)),
        }
    }
    let server = server.ok_or_else(|| KubeconfigError::Missing {
        path: format!("{PATH}.server"),
    })?;
    check_server(server, &format!("{PATH}.server"))?;
    let authority = authority.ok_or_else(|| KubeconfigError::Missing {
        path: format!("{PATH}.certificate-authority-data"),
    })?;
    check_pem_data(
        authority,
        &format!("{PATH}.certificate-authority-data"),
        &["CERTIFICATE"],
    )?;
    Ok(server)
}

fn check_user(user: &Mapping) -> Result<Credential, KubeconfigError> {
    const PATH: &str = "users[0].user";
    let mut token = None;
    let mut certificate = None;
    let mut key = None;
    for (name, value) in user {
        let name = key_text(name, PATH)?;
        let field = format!("{PATH}.{name}");
        match name {
            "token" => token = Some(string(value, &field)?),
            "client-certificate-data" => certificate = Some(string(value, &field)?),
            "client-key-data" => key = Some(string(value, &field)?),
            other => return Err(unknown_or_refused(field, other)),
        }
    }
    match (token, certificate, key) {
        (Some(token), None, None) => {
            if token.trim().is_empty() {
                return Err(invalid(&format!("{PATH}.token"), "must not be empty"));
            }
            check_plain(token, &format!("{PATH}.token"))?;
            Ok(Credential::Token)
        }
        (None, Some(certificate), Some(key)) => {
            check_pem_data(
                certificate,
                &format!("{PATH}.client-certificate-data"),
                &["CERTIFICATE"],
            )?;
            check_pem_data(
                key,
                &format!("{PATH}.client-key-data"),
                &["PRIVATE KEY", "EC PRIVATE KEY", "RSA PRIVATE KEY"],
            )?;
            Ok(Credential::ClientCertificate)
        }
        (None, Some(_), None) => Err(KubeconfigError::Missing {
            path: format!("{PATH}.client-key-data"),
        }),
        (None, None, Some(_)) => Err(KubeconfigError::Missing {
            path: format!("{PATH}.client-certificate-data"),
        }),
        (None, None, None) => Err(KubeconfigError::Missing {
            path: format!("{PATH}.token"),
        }),
        (Some(_), _, _) => Err(invalid(
            PATH,
            "give either `token` or `client-certificate-data` + `client-key-data`, not both",
        )),
    }
}

fn check_context(
    context: &Mapping,
    cluster_name: &str,
    user_name: &str,
) -> Result<(), KubeconfigError> {
    const PATH: &str = "contexts[0].context";
    let mut cluster = None;
    let mut user = None;
    for (key, value) in context {
        let key = key_text(key, PATH)?;
        let field = format!("{PATH}.{key}");
        match key {
            "cluster" => cluster = Some(string(value, &field)?),
            "user" => user = Some(string(value, &field)?),
            "namespace" => check_plain(string(value, &field)?, &field)?,
            other => return Err(unknown_or_refused(field, other)),
        }
    }
    for (field, value, expected) in [
        ("cluster", cluster, cluster_name),
        ("user", user, user_name),
    ] {
        let path = format!("{PATH}.{field}");
        match value {
            None => return Err(KubeconfigError::Missing { path }),
            Some(value) if value != expected => {
                return Err(invalid(
                    &path,
                    format!("names {value:?}, but the only {field} is {expected:?}"),
                ));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// No whitespace or control characters (they have no place in a URL, a
/// token or a name, and would hide what is printed).
fn check_plain(value: &str, path: &str) -> Result<(), KubeconfigError> {
    if value
        .chars()
        .any(|character| character.is_control() || character.is_whitespace())
    {
        return Err(invalid(
            path,
            "must not contain whitespace or control characters",
        ));
    }
    Ok(())
}

/// An `https://host[:port][/path]` URL without user information.
fn check_server(server: &str, path: &str) -> Result<(), KubeconfigError> {
    check_plain(server, path)?;
    let rest = server
        .get(..8)
        .filter(|scheme| scheme.eq_ignore_ascii_case("https://"))
        .and_then(|_| server.get(8..))
        .ok_or_else(|| invalid(path, "must be an https:// URL"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.is_empty() {
        return Err(invalid(path, "must name a host after https://"));
    }
    if authority.contains('@') {
        return Err(invalid(path, "must not carry user information (user@host)"));
    }
    Ok(())
}

/// Base64 of PEM holding at least one block, every block tagged one of
/// `tags`.
fn check_pem_data(data: &str, path: &str, tags: &[&str]) -> Result<(), KubeconfigError> {
    let decoded = Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .map_err(|_| invalid(path, "must be base64 (standard alphabet, padded)"))?,
    );
    let blocks =
        pem::parse_many(decoded.as_slice()).map_err(|_| invalid(path, "must be base64 of PEM"))?;
    if blocks.is_empty() {
        return Err(invalid(path, "holds no PEM block"));
    }
    if let Some(block) = blocks.iter().find(|block| !tags.contains(&block.tag())) {
        return Err(invalid(
            path,
            format!(
                "holds a PEM block {:?}; expected {}",
                block.tag(),
                tags.join(" or ")
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
