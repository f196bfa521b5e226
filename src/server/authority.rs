//! The central CA as one value: the shared [`Core`] and the parts split by
//! responsibility over it. Each part returns domain types; `grpc.rs` alone
//! speaks protobuf.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::admins::Admins;
use super::audit_trail::AuditTrail;
use super::core::Core;
use super::enrollment::Enrollment;
use super::error::ServerError;
use super::issuance::Issuance;
use super::publication::Publication;
use super::registry::Registry;
use super::rotation::Rotations;
use crate::ca::Certificate;
use crate::clock::Clock;
use crate::policy::Policy;
use crate::signer::sealed::Kek;
use crate::store::Store;

/// The central CA: one shared core, five responsibilities.
#[derive(Debug)]
pub struct Authority {
    core: Arc<Core>,
    /// Join tokens, enrollment and caller identities.
    pub enrollment: Enrollment,
    /// Registered clusters, push targets, status reports, reissue requests.
    pub registry: Registry,
    /// Intermediates from CSRs and with keys made here.
    pub issuance: Issuance,
    /// Bundle versions and their watchers.
    pub publication: Publication,
    /// Root rotation.
    pub rotation: Rotations,
    /// The audit trail.
    pub audit: AuditTrail,
    /// Named admin credentials.
    pub admins: Admins,
}

impl Authority {
    /// Opens an initialised store: unseals the signing root key and the
    /// control-plane CA key with `kek` and loads the current bundle.
    ///
    /// Errors: as [`Core::open`].
    pub fn open(
        store: Arc<dyn Store>,
        kek: &Kek,
        policy: Policy,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ServerError> {
        Self::open_with_vault(store, kek, policy, clock, None)
    }

    /// [`Authority::open`] with a Vault connection (roots held by Vault PKI).
    ///
    /// Errors: as [`Core::open_with_vault`].
    pub fn open_with_vault(
        store: Arc<dyn Store>,
        kek: &Kek,
        policy: Policy,
        clock: Arc<dyn Clock>,
        vault: Option<Arc<crate::vault::Vault>>,
    ) -> Result<Self, ServerError> {
        let core = Arc::new(Core::open_with_vault(store, kek, policy, clock, vault)?);
        Ok(Self {
            enrollment: Enrollment::new(core.clone()),
            registry: Registry::new(core.clone()),
            issuance: Issuance::new(core.clone()),
            publication: Publication::new(core.clone()),
            rotation: Rotations::new(core.clone()),
            audit: AuditTrail::new(core.clone()),
            admins: Admins::new(core.clone()),
            core,
        })
    }

    /// The same, issuing agent client certificates for `lifetime`
    /// (`trustplane server --client-cert-lifetime`).
    ///
    /// Errors: as [`Enrollment::with_client_cert_lifetime`].
    pub fn with_client_cert_lifetime(self, lifetime: Duration) -> Result<Self, ServerError> {
        Ok(Self {
            enrollment: self.enrollment.with_client_cert_lifetime(lifetime)?,
            ..self
        })
    }

    /// The shared state (store, clock, signer, published bundle).
    pub fn core(&self) -> &Arc<Core> {
        &self.core
    }

    /// The current time of the server's clock.
    pub fn now(&self) -> SystemTime {
        self.core.now()
    }

    /// The trust domain served.
    pub fn trust_domain(&self) -> &str {
        self.core.trust_domain()
    }

    /// The control-plane CA certificate (clients verify the server with it).
    pub fn control_plane_ca(&self) -> &Certificate {
        self.core.control_plane_ca()
    }
}
