//! Named admin credentials: minting one for a person or system with a role,
//! revoking one, listing them. Run offline (`trustplane admin add|revoke|
//! list`, with the data directory and the KEK, the server stopped): the
//! store is single-process, and minting needs the control-plane CA key.
//! Each mint and revocation is audited in the transaction that makes it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::audit_trail::AuditTrail;
use super::core::{Core, validate_name};
use super::error::ServerError;
use super::init::{issue_admin_credential, write_admin_credential};
use super::integrity;
use super::issuance::issued_record;
use crate::ca::{Certificate, system_time_to_unix};
use crate::store::records::{self, AdminRecord, AdminRole, IssuedKind};
use crate::store::{Batch, Expect, Table};

/// A credential minted by [`Admins::add`].
#[derive(Clone, Debug)]
pub struct MintedAdmin {
    /// The stored record.
    pub record: AdminRecord,
    /// The client certificate.
    pub certificate: Certificate,
    /// Where the certificate was written.
    pub cert_path: PathBuf,
    /// Where the key was written (0600).
    pub key_path: PathBuf,
}

/// Named admin credentials.
#[derive(Clone, Debug)]
pub struct Admins {
    core: Arc<Core>,
}

impl Admins {
    /// Admin credentials over the shared state.
    pub fn new(core: Arc<Core>) -> Self {
        Self { core }
    }

    /// Every admin record (revoked ones included), by name.
    ///
    /// Errors: store errors.
    pub fn list(&self) -> Result<Vec<AdminRecord>, ServerError> {
        // Meta holds other singletons too: decode the admin keys only.
        let store = self.core.store.as_ref();
        let prefix = records::admin_key("");
        let mut admins = Vec::new();
        for (key, _) in store.list(Table::Meta)? {
            if key.starts_with(&prefix)
                && let Some((record, _)) =
                    integrity::get_json::<AdminRecord>(store, &self.core.kek, Table::Meta, &key)?
            {
                admins.push(record);
            }
        }
        Ok(admins)
    }

    /// Mints a credential for admin `name` with `role`, valid for
    /// `lifetime`: writes its key (0600) and certificate into `out_dir`,
    /// then records it (and its audit entry, by `actor`) in one transaction.
    /// A revoked name may be given a new credential; an active one may not.
    ///
    /// Errors: [`ServerError::InvalidArgument`] for a bad name,
    /// [`ServerError::AlreadyExists`] for an active credential of that name,
    /// file, signing and store errors.
    pub fn add(
        &self,
        audit: &AuditTrail,
        actor: &str,
        name: &str,
        role: AdminRole,
        lifetime: Duration,
        out_dir: &Path,
    ) -> Result<MintedAdmin, ServerError> {
        let core = &self.core;
        validate_name("admin", name)?;
        let key = records::admin_key(name);
        let expect = match integrity::get_json::<AdminRecord>(
            core.store.as_ref(),
            &core.kek,
            Table::Meta,
            &key,
        )? {
            Some((existing, _)) if existing.revoked_unix.is_none() => {
                return Err(ServerError::AlreadyExists(format!(
                    "admin {name:?} already has an active credential ({}, role {}); revoke it first with `trustplane admin revoke {name}`",
                    existing.client_cert_serial, existing.role
                )));
            }
            Some((_, version)) => Expect::Version(version),
            None => Expect::Absent,
        };
        let now = core.now();
        let (certificate, private_key) = issue_admin_credential(
            &core.control_plane_ca,
            &core.control_plane_key,
            name,
            lifetime,
            now,
        )?;
        let serial = certificate.serial_hex()?;
        let record = AdminRecord {
            name: name.to_string(),
            client_cert_serial: serial.clone(),
            created_unix: system_time_to_unix(now),
            role,
            revoked_unix: None,
            not_after_unix: Some(system_time_to_unix(certificate.not_after()?)),
        };
        let batch = integrity::put_json(
            Batch::new(),
            &core.kek,
            Table::Meta,
            &key,
            &record,
            Some(expect),
        )?
        .put_json(
            Table::Certificates,
            &serial,
            &issued_record(&certificate, IssuedKind::ControlPlaneClient, None, now)?,
            Some(Expect::Absent),
        )?;
        let batch = audit.record(
            batch,
            actor,
            "admin-add",
            format!(
                "admin credential {name:?} minted with role {role}: serial {serial}, expires {}",
                humantime::format_rfc3339_seconds(certificate.not_after()?)
            ),
        )?;
        // The files first, the record last: a failed commit leaves files of
        // a certificate that is on no record, which the server refuses.
        let (cert_path, key_path) =
            write_admin_credential(out_dir, name, &certificate, &private_key)?;
        core.store.commit(batch)?;
        Ok(MintedAdmin {
            record,
            certificate,
            cert_path,
            key_path,
        })
    }

    /// Revokes admin `name`'s credential: its serial is refused from then on.
    /// Audited as `actor`.
    ///
    /// Errors: [`ServerError::NotFound`] for an unknown name,
    /// [`ServerError::InvalidArgument`] for one already revoked, store
    /// errors.
    pub fn revoke(
        &self,
        audit: &AuditTrail,
        actor: &str,
        name: &str,
    ) -> Result<AdminRecord, ServerError> {
        let core = &self.core;
        let key = records::admin_key(name);
        let (mut record, version) =
            integrity::get_json::<AdminRecord>(core.store.as_ref(), &core.kek, Table::Meta, &key)?
                .ok_or_else(|| {
                    ServerError::NotFound(format!(
                        "no admin credential named {name:?}; see `trustplane admin list`"
                    ))
                })?;
        if record.revoked_unix.is_some() {
            return Err(ServerError::InvalidArgument(format!(
                "admin credential {name:?} ({}) is already revoked",
                record.client_cert_serial
            )));
        }
        record.revoked_unix = Some(system_time_to_unix(core.now()));
        let batch = integrity::put_json(
            Batch::new(),
            &core.kek,
            Table::Meta,
            &key,
            &record,
            Some(Expect::Version(version)),
        )?;
        let batch = audit.record(
            batch,
            actor,
            "admin-revoke",
            format!(
                "admin credential {name:?} (role {}, serial {}) revoked",
                record.role, record.client_cert_serial
            ),
        )?;
        core.store.commit(batch)?;
        Ok(record)
    }
}
