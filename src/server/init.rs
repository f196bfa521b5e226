//! `trustplane init`: the mesh root, the control-plane CA, the admin
//! credential and the first bundle, written to the store in one transaction.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use zeroize::Zeroizing;

use super::audit;
use super::core::bundle_record;
use super::enrollment::{ADMIN_CERT_LIFETIME, ADMIN_IDENTITY_PREFIX};
use super::error::ServerError;
use super::integrity;
use super::issuance::{audit_issued, issued_record};
use crate::bundle::TrustBundle;
use crate::ca::{
    self, Certificate, ControlPlaneRole, KeyAlgorithm, PrivateKey, system_time_to_unix,
};
use crate::files::{self, PUBLIC_MODE};
use crate::policy::Policy;
use crate::signer::sealed::{Kek, seal, write_private_file};
use crate::store::records::{
    self, AdminRecord, AdminRole, CaSettings, IssuedKind, RootRecord, VaultIssuer,
};
use crate::store::{Batch, Expect, Store, Table};

/// The actor of everything `init` does.
const INIT_ACTOR: &str = "init";

/// Where things live under `--data-dir`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataDir {
    /// The directory.
    pub path: PathBuf,
}

impl DataDir {
    /// Wraps a data directory path.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        DataDir { path: path.into() }
    }
    /// The embedded database.
    pub fn store_path(&self) -> PathBuf {
        self.path.join("trustplane.redb")
    }
    /// The key-encryption key file `init` creates (move it elsewhere).
    pub fn kek_path(&self) -> PathBuf {
        self.path.join("kek")
    }
    /// The control-plane CA certificate (public; agents and admins verify the server with it).
    pub fn control_plane_ca_path(&self) -> PathBuf {
        self.path.join("control-plane-ca.pem")
    }
    /// The directory of admin credentials (`init`'s, and by default those
    /// of `trustplane admin add`).
    pub fn admin_dir(&self) -> PathBuf {
        self.path.join("admin")
    }
    /// The admin client certificate.
    pub fn admin_cert_path(&self) -> PathBuf {
        admin_credential_paths(&self.admin_dir(), "admin").0
    }
    /// The admin client key (0600).
    pub fn admin_key_path(&self) -> PathBuf {
        admin_credential_paths(&self.admin_dir(), "admin").1
    }
}

/// Where the credential of admin `name` lives in `dir`: `<name>.pem` and
/// `<name>-key.pem`.
pub fn admin_credential_paths(dir: &std::path::Path, name: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}-key.pem")),
    )
}

/// A fresh key and a control-plane client certificate for admin `name`,
/// valid for `lifetime` from `now`.
///
/// Errors: key generation and signing errors.
pub(super) fn issue_admin_credential(
    control_plane_ca: &Certificate,
    control_plane_key: &PrivateKey,
    name: &str,
    lifetime: Duration,
    now: SystemTime,
) -> Result<(Certificate, PrivateKey), ServerError> {
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256)?;
    let certificate = ca::issue_control_plane_cert(
        &key.public_key_der()?,
        &ControlPlaneRole::Client {
            uri: format!("{ADMIN_IDENTITY_PREFIX}{name}"),
        },
        control_plane_ca,
        control_plane_key,
        lifetime,
        now,
    )?;
    Ok((certificate, key))
}

/// Writes admin `name`'s credential into `dir` (created 0700 if missing):
/// the key (0600) first, then the certificate. Returns the two paths.
///
/// Errors: [`ServerError::Signer`] naming the file that could not be written.
pub(super) fn write_admin_credential(
    dir: &std::path::Path,
    name: &str,
    certificate: &Certificate,
    key: &PrivateKey,
) -> Result<(PathBuf, PathBuf), ServerError> {
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
        .create(dir)
        .map_err(files::failed("create directory", dir))?;
    let (cert_path, key_path) = admin_credential_paths(dir, name);
    write_private_file(&key_path, key.to_pkcs8_pem().as_bytes())?;
    files::replace_atomically(&cert_path, certificate.to_pem().as_bytes(), PUBLIC_MODE)?;
    Ok((cert_path, key_path))
}

/// What `init` creates.
#[derive(Debug)]
pub struct InitOptions {
    /// Trust domain, e.g. `cluster.local`.
    pub trust_domain: String,
    /// Subject organisation; None takes the policy's.
    pub organisation: Option<String>,
    /// Root key algorithm (ignored on import).
    pub key_algorithm: KeyAlgorithm,
    /// Root validity (ignored on import).
    pub root_validity: Duration,
    /// An existing root to import: certificate PEM and key PEM.
    pub import: Option<(String, Zeroizing<String>)>,
    /// A root held by a Vault PKI issuer (adopted or generated there): its
    /// certificate and where it lives. No root key is stored then.
    pub vault_root: Option<(Certificate, VaultIssuer)>,
    /// The issuance policy.
    pub policy: Policy,
}

/// What `init` did.
#[derive(Debug)]
pub struct InitOutcome {
    /// The mesh root.
    pub root: Certificate,
    /// Whether the root was imported.
    pub imported: bool,
    /// The control-plane CA.
    pub control_plane_ca: Certificate,
}

/// Who holds a mesh root's key.
#[derive(Clone, Copy, Debug)]
pub enum RootKey<'key> {
    /// trustplane: sealed with the KEK in the store.
    Sealed(&'key PrivateKey),
    /// A Vault PKI issuer; trustplane never sees the key.
    Vault(&'key VaultIssuer),
}

/// Adds a mesh root to `batch`: its record (with its MAC), its key sealed
/// with `kek` (as `root-key/<id>`) or the Vault issuer that holds it, and
/// its issued-certificate record, each only if absent, and its
/// `certificate-issue` audit entry by `actor`.
/// Returns the batch and the root's id (its hex serial).
pub fn put_root(
    batch: Batch,
    kek: &Kek,
    actor: &str,
    root: &Certificate,
    key: RootKey<'_>,
    imported: bool,
    now: SystemTime,
) -> Result<(Batch, String), ServerError> {
    let id = root.serial_hex()?;
    let key_name = format!("root-key/{id}");
    let record = RootRecord {
        id: id.clone(),
        certificate_pem: root.to_pem(),
        key_secret: matches!(key, RootKey::Sealed(_)).then(|| key_name.clone()),
        created_unix: system_time_to_unix(now),
        imported,
        vault_issuer: match key {
            RootKey::Vault(issuer) => Some(issuer.clone()),
            RootKey::Sealed(_) => None,
        },
    };
    let mut batch =
        integrity::put_json(batch, kek, Table::Roots, &id, &record, Some(Expect::Absent))?;
    if let RootKey::Sealed(key) = key {
        batch = batch.put(
            Table::Secrets,
            &key_name,
            seal(kek, &key_name, key.pkcs8_der())?,
            Some(Expect::Absent),
        );
    }
    let batch = batch.put_json(
        Table::Certificates,
        &id,
        &issued_record(root, IssuedKind::Root, None, now)?,
        Some(Expect::Absent),
    )?;
    let batch = audit_issued(batch, kek, now, actor, root, IssuedKind::Root, None)?;
    Ok((batch, id))
}

/// Checks a root read from Vault: a self-signed CA that may sign
/// certificates and is valid at `now`.
///
/// Errors: [`ServerError::Certificate`] saying what is wrong.
pub fn check_vault_root(root: &Certificate, now: SystemTime) -> Result<(), ServerError> {
    root.require_ca()?;
    ca::verify_issued(root, root, now)?;
    Ok(())
}

/// Creates (or imports) the mesh root, the control-plane CA and the admin
/// credential, seals both CA keys with `kek`, and commits everything plus
/// bundle version 1 in one store transaction. Files written: the
/// control-plane CA certificate and the admin credential (key 0600).
/// Errors when the store is already initialised.
pub fn initialize(
    store: &dyn Store,
    kek: &Kek,
    data_dir: &DataDir,
    options: &InitOptions,
    now: SystemTime,
) -> Result<InitOutcome, ServerError> {
    if store.get(Table::Meta, records::CA_SETTINGS_KEY)?.is_some() {
        return Err(ServerError::AlreadyExists(format!(
            "{} is already initialised; use another --data-dir, or delete it to start over (this destroys the root key)",
            data_dir.path.display()
        )));
    }
    let domain_policy = options.policy.trust_domain(&options.trust_domain)?;
    let organisation = options
        .organisation
        .clone()
        .unwrap_or_else(|| domain_policy.organisation.clone());
    let (root, root_key, imported) = match (&options.vault_root, &options.import) {
        (Some(_), Some(_)) => {
            return Err(ServerError::InvalidArgument(
                "a root held by Vault cannot be imported too: import it into Vault and adopt the issuer".into(),
            ));
        }
        (Some((root, _)), None) => {
            check_vault_root(root, now)?;
            (root.clone(), None, false)
        }
        (None, Some((certificate_pem, key_pem))) => {
            let (root, key) = ca::import_root(certificate_pem, key_pem, now)?;
            (root, Some(key), true)
        }
        (None, None) => {
            let (root, key) = ca::create_root(
                &ca::RootRequest {
                    trust_domain: options.trust_domain.clone(),
                    organisation: organisation.clone(),
                    key_algorithm: options.key_algorithm,
                    validity: options.root_validity,
                },
                now,
            )?;
            (root, Some(key), false)
        }
    };
    let (control_plane_ca, control_plane_key) = ca::create_control_plane_ca(
        &organisation,
        Duration::from_secs(10 * 365 * 24 * 3600),
        now,
    )?;
    let (admin_certificate, admin_key) = issue_admin_credential(
        &control_plane_ca,
        &control_plane_key,
        "admin",
        ADMIN_CERT_LIFETIME,
        now,
    )?;

    let root_id = root.serial_hex()?;
    let bundle = TrustBundle::new(&options.trust_domain, 1, vec![root.clone()])?;
    let bundle_record = bundle_record(&bundle, now);
    let settings = CaSettings {
        trust_domain: options.trust_domain.clone(),
        organisation,
        created_unix: system_time_to_unix(now),
        control_plane_ca_pem: control_plane_ca.to_pem(),
        signing_root_id: root_id.clone(),
    };
    let admin_record = AdminRecord {
        name: "admin".into(),
        client_cert_serial: admin_certificate.serial_hex()?,
        created_unix: system_time_to_unix(now),
        role: AdminRole::Admin,
        revoked_unix: None,
        not_after_unix: Some(system_time_to_unix(admin_certificate.not_after()?)),
    };
    let held = match (&root_key, &options.vault_root) {
        (Some(key), _) => RootKey::Sealed(key),
        (None, Some((_, issuer))) => RootKey::Vault(issuer),
        (None, None) => return Err(ServerError::NoLocalKey),
    };
    let (batch, _) = put_root(Batch::new(), kek, INIT_ACTOR, &root, held, imported, now)?;
    let batch = integrity::put_json(
        batch,
        kek,
        Table::Meta,
        records::CA_SETTINGS_KEY,
        &settings,
        Some(Expect::Absent),
    )?;
    let batch = integrity::put_json(
        batch,
        kek,
        Table::Meta,
        &records::admin_key("admin"),
        &admin_record,
        None,
    )?
    .put(
        Table::Secrets,
        records::CONTROL_PLANE_KEY_SECRET,
        seal(
            kek,
            records::CONTROL_PLANE_KEY_SECRET,
            control_plane_key.pkcs8_der(),
        )?,
        Some(Expect::Absent),
    );
    let batch = integrity::put_json(
        batch,
        kek,
        Table::Bundles,
        &options.trust_domain,
        &bundle_record,
        Some(Expect::Absent),
    )?;
    let batch = integrity::put_json(
        batch,
        kek,
        Table::Bundles,
        &records::bundle_history_key(&options.trust_domain, 1),
        &bundle_record,
        Some(Expect::Absent),
    )?
    .put_json(
        Table::Certificates,
        control_plane_ca.serial_hex()?,
        &issued_record(&control_plane_ca, IssuedKind::ControlPlaneCa, None, now)?,
        Some(Expect::Absent),
    )?
    .put_json(
        Table::Certificates,
        admin_certificate.serial_hex()?,
        &issued_record(
            &admin_certificate,
            IssuedKind::ControlPlaneClient,
            None,
            now,
        )?,
        Some(Expect::Absent),
    )?;
    let batch = audit_issued(
        batch,
        kek,
        now,
        INIT_ACTOR,
        &control_plane_ca,
        IssuedKind::ControlPlaneCa,
        None,
    )?;
    let batch = audit_issued(
        batch,
        kek,
        now,
        INIT_ACTOR,
        &admin_certificate,
        IssuedKind::ControlPlaneClient,
        None,
    )?;
    let batch = audit::append(
        batch,
        kek,
        system_time_to_unix(now),
        INIT_ACTOR,
        "init",
        format!(
            "trust domain {}, {} root {}, control-plane CA {}, admin credential \"admin\" ({}), bundle version 1",
            options.trust_domain,
            match &options.vault_root {
                Some((_, issuer)) => format!(
                    "Vault-held (issuer {} {:?} in mount {})",
                    issuer.issuer_id, issuer.issuer_name, issuer.mount
                ),
                None if imported => "imported".into(),
                None => "new".into(),
            },
            root_id,
            control_plane_ca.serial_hex()?,
            admin_certificate.serial_hex()?
        ),
    );
    // The files first, the store last: a crash before the commit leaves an
    // uninitialised store (running `init` again overwrites the files); once
    // the commit is done, the admin credential is already on disk. Only one
    // process can hold the store open, so no other `init` races this one.
    write_admin_credential(
        &data_dir.admin_dir(),
        "admin",
        &admin_certificate,
        &admin_key,
    )?;
    let ca_path = data_dir.control_plane_ca_path();
    files::replace_atomically(&ca_path, control_plane_ca.to_pem().as_bytes(), PUBLIC_MODE)?;
    store.commit(batch)?;
    Ok(InitOutcome {
        root,
        imported,
        control_plane_ca,
    })
}
