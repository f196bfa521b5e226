//! `trustplane init`: the mesh root, the control-plane CA, the admin
//! credential and the first bundle, written to the store in one transaction.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use zeroize::Zeroizing;

use super::core::bundle_record;
use super::enrollment::{ADMIN_IDENTITY_PREFIX, CLIENT_CERT_LIFETIME};
use super::error::ServerError;
use super::issuance::issued_record;
use crate::bundle::TrustBundle;
use crate::ca::{
    self, Certificate, ControlPlaneRole, KeyAlgorithm, PrivateKey, system_time_to_unix,
};
use crate::files::{self, PUBLIC_MODE};
use crate::policy::Policy;
use crate::signer::sealed::{Kek, seal, write_private_file};
use crate::store::records::{self, AdminRecord, CaSettings, IssuedKind, RootRecord};
use crate::store::{Batch, Expect, Store, Table};

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
    /// The admin client certificate.
    pub fn admin_cert_path(&self) -> PathBuf {
        self.path.join("admin").join("admin.pem")
    }
    /// The admin client key (0600).
    pub fn admin_key_path(&self) -> PathBuf {
        self.path.join("admin").join("admin-key.pem")
    }
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

/// Adds a mesh root to `batch`: its record, its key sealed with `kek`
/// (as `root-key/<id>`) and its issued-certificate record, each only if
/// absent. Returns the batch and the root's id (its hex serial).
pub fn put_root(
    batch: Batch,
    kek: &Kek,
    root: &Certificate,
    key: &PrivateKey,
    imported: bool,
    now: SystemTime,
) -> Result<(Batch, String), ServerError> {
    let id = root.serial_hex()?;
    let key_name = format!("root-key/{id}");
    let record = RootRecord {
        id: id.clone(),
        certificate_pem: root.to_pem(),
        key_secret: Some(key_name.clone()),
        created_unix: system_time_to_unix(now),
        imported,
    };
    let batch = batch
        .put_json(Table::Roots, &id, &record, Some(Expect::Absent))?
        .put(
            Table::Secrets,
            &key_name,
            seal(kek, &key_name, key.pkcs8_der())?,
            Some(Expect::Absent),
        )
        .put_json(
            Table::Certificates,
            &id,
            &issued_record(root, IssuedKind::Root, None, now)?,
            Some(Expect::Absent),
        )?;
    Ok((batch, id))
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
    let (root, root_key, imported) = match &options.import {
        Some((certificate_pem, key_pem)) => {
            let (root, key) = ca::import_root(certificate_pem, key_pem, now)?;
            (root, key, true)
        }
        None => {
            let (root, key) = ca::create_root(
                &ca::RootRequest {
                    trust_domain: options.trust_domain.clone(),
                    organisation: organisation.clone(),
                    key_algorithm: options.key_algorithm,
                    validity: options.root_validity,
                },
                now,
            )?;
            (root, key, false)
        }
    };
    let (control_plane_ca, control_plane_key) = ca::create_control_plane_ca(
        &organisation,
        Duration::from_secs(10 * 365 * 24 * 3600),
        now,
    )?;
    let admin_key = PrivateKey::generate(KeyAlgorithm::EcdsaP256)?;
    let admin_certificate = ca::issue_control_plane_cert(
        &admin_key.public_key_der()?,
        &ControlPlaneRole::Client {
            uri: format!("{ADMIN_IDENTITY_PREFIX}admin"),
        },
        &control_plane_ca,
        &control_plane_key,
        CLIENT_CERT_LIFETIME,
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
    };
    let (batch, _) = put_root(Batch::new(), kek, &root, &root_key, imported, now)?;
    let batch = batch
        .put_json(
            Table::Meta,
            records::CA_SETTINGS_KEY,
            &settings,
            Some(Expect::Absent),
        )?
        .put_json(
            Table::Meta,
            records::admin_key("admin"),
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
        )
        .put_json(
            Table::Bundles,
            &options.trust_domain,
            &bundle_record,
            Some(Expect::Absent),
        )?
        .put_json(
            Table::Bundles,
            records::bundle_history_key(&options.trust_domain, 1),
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
    // The files first, the store last: a crash before the commit leaves an
    // uninitialised store (running `init` again overwrites the files); once
    // the commit is done, the admin credential is already on disk. Only one
    // process can hold the store open, so no other `init` races this one.
    let admin_dir = data_dir.path.join("admin");
    files::create_private_dir(&admin_dir)?;
    write_private_file(
        &data_dir.admin_key_path(),
        admin_key.to_pkcs8_pem().as_bytes(),
    )?;
    write_private_file(
        &data_dir.admin_cert_path(),
        admin_certificate.to_pem().as_bytes(),
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
