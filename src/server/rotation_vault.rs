//! Root rotation with Vault-held roots: root B is an issuer in the
//! signing root's PKI mount (adopted or created there before `start`), and
//! what the operator may do in Vault with a retired root (trustplane never
//! deletes or disables an issuer).

use std::time::Duration;

use super::error::ServerError;
use super::integrity;
use super::rotation::{NEW_ROOT_VALIDITY, Rotations};
use super::rotation_view::RotationOptions;
use crate::ca::{self, Certificate};
use crate::rotation::RotationError;
use crate::store::Table;
use crate::store::records::{RootRecord, VaultIssuer};

impl Rotations {
    /// Where a stored root's key lives in Vault, if it does.
    pub(super) fn vault_issuer_of(&self, id: &str) -> Result<Option<VaultIssuer>, ServerError> {
        Ok(integrity::get_json::<RootRecord>(
            self.core.store.as_ref(),
            &self.core.kek,
            Table::Roots,
            id,
        )?
        .and_then(|(record, _)| record.vault_issuer))
    }

    /// For `rotate start` with a Vault-held signing root or
    /// `--vault-issuer`: reads the named issuer in the signing root's PKI
    /// mount, or creates it there (`root/generate/internal`, the key never
    /// leaves Vault), and returns `options` with the new root filled in.
    /// Other options are returned unchanged.
    ///
    /// Errors: [`ServerError::FailedPrecondition`] without a Vault
    /// connection or during a rotation, [`ServerError::InvalidArgument`]
    /// for an import into Vault mode or an issuer without a key, Vault
    /// errors naming the path.
    pub async fn resolve_vault_root(
        &self,
        mut options: RotationOptions,
    ) -> Result<RotationOptions, ServerError> {
        let signing_id = self.core.signing_root().serial_hex()?;
        let signing_issuer = self.vault_issuer_of(&signing_id)?;
        if signing_issuer.is_none() && options.vault_issuer.is_empty() {
            return Ok(options);
        }
        let vault = self.core.vault().cloned().ok_or_else(|| {
            ServerError::FailedPrecondition(
                "a Vault-held root needs the server to run with VAULT_ADDR and Vault credentials"
                    .into(),
            )
        })?;
        if !options.import_root_pem.is_empty() {
            return Err(ServerError::InvalidArgument(
                "the signing root is held by Vault: a new root is an issuer in Vault too (--vault-issuer), not an imported key".into(),
            ));
        }
        if self
            .core
            .policy
            .trust_domain(&self.core.settings.trust_domain)?
            .name_constraints
        {
            return Err(ServerError::FailedPrecondition(
                crate::signer::vault::NO_URI_NAME_CONSTRAINTS.into(),
            ));
        }
        // Refuse what `start` would refuse before anything is made in Vault.
        self.start_options(&options)?;
        if let Some((rotation, _)) = self.current()?
            && rotation.in_progress()
        {
            return Err(RotationError::InProgress(rotation.phase).into());
        }
        let mount =
            signing_issuer.map_or_else(|| vault.config().pki_mount.clone(), |issuer| issuer.mount);
        let now = self.core.now();
        let name = if options.vault_issuer.is_empty() {
            format!(
                "trustplane-root-{}",
                humantime::format_rfc3339_seconds(now)
                    .to_string()
                    .replace([':', 'T', 'Z'], "")
                    .replace('-', "")
            )
        } else {
            options.vault_issuer.clone()
        };
        // An outage answers Unavailable (retry later); anything else is
        // the operator's to fix and says so (a policy without
        // root/generate, an issuer that cannot sign).
        let vault_error = |error: crate::vault::VaultError| {
            if error.is_transient() {
                ServerError::Signer(crate::signer::SignerError::Vault(error))
            } else {
                ServerError::FailedPrecondition(error.to_string())
            }
        };
        let (certificate_pem, issuer_id, issuer_name) =
            match crate::vault::pki::read_signing_issuer(&vault, &mount, &name).await {
                Ok(issuer) => (issuer.certificate, issuer.issuer_id, issuer.issuer_name),
                Err(error) if error.kind == crate::vault::VaultErrorKind::NotFound => {
                    let key_algorithm =
                        options.key_algorithm.unwrap_or(ca::KeyAlgorithm::EcdsaP256);
                    let validity = if options.root_validity_seconds == 0 {
                        NEW_ROOT_VALIDITY
                    } else {
                        Duration::from_secs(options.root_validity_seconds)
                    };
                    let label = humantime::format_rfc3339_seconds(now).to_string();
                    let created = crate::vault::pki::generate_root(
                        &vault,
                        crate::vault::pki::root_request(
                            &mount,
                            &name,
                            &format!("{} root CA {label}", self.core.settings.trust_domain),
                            &self.core.settings.organisation,
                            &self.core.settings.trust_domain,
                            key_algorithm,
                            validity,
                        ),
                    )
                    .await
                    .map_err(vault_error)?;
                    tracing::info!(mount = %mount, issuer = %created.issuer_id, name = %name, "created a root issuer in Vault for the rotation");
                    options.vault_root_created = true;
                    (created.certificate, created.issuer_id, created.issuer_name)
                }
                Err(error) => return Err(vault_error(error)),
            };
        options.vault_root = Some((
            Certificate::from_pem(&certificate_pem)?,
            VaultIssuer {
                mount,
                issuer_id,
                issuer_name,
            },
        ));
        Ok(options)
    }

    /// What the operator may do in Vault with the old root of `rotation`
    /// once it is retired (trustplane never deletes or disables it).
    pub(super) fn vault_retire_note(
        &self,
        old_root_id: &str,
    ) -> Result<Option<String>, ServerError> {
        Ok(self.vault_issuer_of(old_root_id)?.map(|issuer| {
            format!(
                "the old root stays in Vault as issuer {} ({:?}) in mount {}: trustplane never deletes or disables it. Once no certificate chains to it any more you may stop it signing with `bao write {}/issuer/{} usage=read-only,crl-signing` (POST /v1/{}/issuer/{}), or remove it with `bao delete {}/issuer/{}` (DELETE /v1/{}/issuer/{}; its key stays unless you also delete {}/key/<key id>)",
                issuer.issuer_id,
                issuer.issuer_name,
                issuer.mount,
                issuer.mount,
                issuer.issuer_id,
                issuer.mount,
                issuer.issuer_id,
                issuer.mount,
                issuer.issuer_id,
                issuer.mount,
                issuer.issuer_id,
                issuer.mount,
            )
        }))
    }
}

/// Said when a rotation start fails after `resolve_vault_root` created
/// root B in Vault: the issuer is kept (trustplane never deletes in Vault).
pub(super) fn kept_issuer_note(issuer: &VaultIssuer) -> String {
    format!(
        "the new root issuer {} ({}) was created in Vault and is kept: retry with `--vault-issuer {}` to use it, or delete it with `bao delete {}/issuer/{}`",
        issuer.issuer_name, issuer.issuer_id, issuer.issuer_name, issuer.mount, issuer.issuer_id
    )
}
