//! Typed KV v2 calls the `vault-kv` store needs: a read that returns the
//! secret's KV version with its data, a write with check-and-set, a list.
//! Every error names the Vault path (`<mount>/data/<path>`).

use serde_json::Value;
use vaultrs::api::kv2::requests::{
    ListSecretsRequest, ReadSecretRequest, SetSecretRequest, SetSecretRequestOptions,
};
use vaultrs::client::VaultClient;
use vaultrs::error::ClientError;

use super::error::kind_and_detail;
use super::{VaultError, VaultErrorKind};

/// A KV v2 secret's current data and its KV version (Vault's own counter).
#[derive(Clone, Debug, PartialEq)]
pub struct KvEntry {
    /// The secret's data (a JSON object).
    pub data: Value,
    /// The KV version of this data (1 for the first write).
    pub version: u64,
}

/// As [`super::classify`], and a mount that is still upgrading to KV v2 (a 400
/// for a few seconds after `secrets enable kv-v2`) is transient.
fn classify_kv(path: &str, error: ClientError) -> VaultError {
    let (mut kind, detail) = kind_and_detail(&error);
    if kind == VaultErrorKind::BadRequest
        && detail.contains("Upgrading from non-versioned to versioned data")
    {
        kind = VaultErrorKind::Server;
    }
    VaultError::new(path, kind, detail)
}

/// The path a data call on `path` uses, as errors name it.
pub fn data_path(mount: &str, path: &str) -> String {
    format!("{mount}/data/{path}")
}

/// The current version of the secret at `path`, or `None` when there is
/// none (never written, or its newest version deleted).
///
/// Errors: [`VaultError`] naming `<mount>/data/<path>`; a missing mount is
/// [`VaultErrorKind::NotFound`] with Vault's words.
pub async fn read(
    client: &VaultClient,
    mount: &str,
    path: &str,
) -> Result<Option<KvEntry>, VaultError> {
    let full = data_path(mount, path);
    let endpoint = ReadSecretRequest::builder()
        .mount(mount)
        .path(path)
        .build()
        .map_err(|error| VaultError::config(format!("KV read request for {full}: {error}")))?;
    match vaultrs::api::exec_with_result(client, endpoint).await {
        Ok(response) => Ok(Some(KvEntry {
            data: response.data,
            version: response.metadata.version,
        })),
        // A missing secret is a 404 without messages; a missing mount or
        // route is a 404 that says so, and stays an error.
        Err(ClientError::APIError { code: 404, errors }) if errors.is_empty() => Ok(None),
        Err(error) => Err(classify_kv(&full, error)),
    }
}

/// Writes `data` at `path` if the secret's KV version is `cas` (0: only if
/// there is no secret yet) and returns the new KV version.
///
/// Errors: [`VaultErrorKind::Conflict`] when another writer came first;
/// other [`VaultError`]s naming `<mount>/data/<path>`.
pub async fn write(
    client: &VaultClient,
    mount: &str,
    path: &str,
    data: Value,
    cas: u64,
) -> Result<u64, VaultError> {
    let full = data_path(mount, path);
    let cas = u32::try_from(cas).map_err(|_| {
        VaultError::new(
            &full,
            VaultErrorKind::Invalid,
            format!("KV version {cas} exceeds what check-and-set accepts"),
        )
    })?;
    let endpoint = SetSecretRequest::builder()
        .mount(mount)
        .path(path)
        .data(data)
        .options(SetSecretRequestOptions { cas })
        .build()
        .map_err(|error| VaultError::config(format!("KV write request for {full}: {error}")))?;
    vaultrs::api::exec_with_result(client, endpoint)
        .await
        .map(|metadata| metadata.version)
        .map_err(|error| classify_kv(&full, error))
}

/// The names directly under the folder `path` (folders end in `/`); empty
/// when there is nothing there.
///
/// Errors: [`VaultError`] naming `<mount>/metadata/<path>`.
pub async fn list(
    client: &VaultClient,
    mount: &str,
    path: &str,
) -> Result<Vec<String>, VaultError> {
    let full = format!("{mount}/metadata/{path}");
    let endpoint = ListSecretsRequest::builder()
        .mount(mount)
        .path(path)
        .build()
        .map_err(|error| VaultError::config(format!("KV list request for {full}: {error}")))?;
    match vaultrs::api::exec_with_result(client, endpoint).await {
        Ok(response) => Ok(response.keys),
        Err(ClientError::APIError { code: 404, errors }) if errors.is_empty() => Ok(Vec::new()),
        Err(error) => Err(classify_kv(&full, error)),
    }
}
