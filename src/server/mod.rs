//! The central server: gRPC services over TLS, client authentication by
//! control-plane certificates, authorisation, and the [`Authority`] that
//! holds the state.
//!
//! Files: `core` (the shared state: store, clock, KEK, policy, settings,
//! signer, published bundle), the parts over it — `enrollment` (join tokens,
//! identities), `registry` (clusters, push targets, reports, reissue),
//! `issuance` (intermediates; the one place an issued certificate is
//! recorded), `publication` (bundle versions, watchers), `rotation`, `audit`
//! (the hash chain: entries, the authenticated head, verification) and
//! `audit_trail` (the trail as the server adds to and reads it), `integrity` (MACs on the records that
//! decide trust), `admins` (named admin credentials), with `rotation_view`
//! (its options, status and plan as values) — and
//! `authority` (all of them as one value); `grpc` (the only file that
//! speaks protobuf), `listener` (the accept loop: TLS handshake timeout and
//! connection caps), `tls` (the server certificate, renewed in place),
//! `limits` (every bound, the watch-stream and call-rate counters), `push`
//! (the push-mode driver), `leader` (the lease that picks the one server,
//! of several sharing a store, that advances rotations and runs push mode),
//! `metrics_view` (the state `/metrics` shows, read at each scrape),
//! `init`, `error`.

mod admins;
mod audit;
mod audit_trail;
pub mod authority;
mod core;
mod enrollment;
mod error;
mod grpc;
mod grpc_watch;
pub mod init;
pub mod integrity;
mod issuance;
pub mod leader;
mod limits;
mod listener;
mod metrics_view;
mod publication;
pub mod push;
mod registry;
mod rotation;
mod rotation_vault;
mod rotation_view;
mod tls;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::sync::{mpsc, watch};

pub use self::core::{
    ClusterBundle, Core, PublishedBundle, SPIFFE_REFRESH_HINT, bundle_from_record, bundle_record,
    load_sealed_key, load_signer, validate_cluster_name,
};
pub use audit::{
    ChainSummary, GENESIS_HASH, OFFLINE_ACTOR, Upgraded, cluster_actor, entry_hash, entry_key,
    upgrade_store, verify_chain,
};
pub use audit_trail::{AuditQuery, AuditTrail, SINCE_SLACK_SECONDS};
pub use authority::Authority;
pub use enrollment::{
    ADMIN_CERT_LIFETIME, ADMIN_IDENTITY_PREFIX, CLIENT_CERT_LIFETIME, CLUSTER_IDENTITY_PREFIX,
    Caller, DEFAULT_TOKEN_TTL, Enrolled, Enrollment, MAX_CLIENT_CERT_LIFETIME, RenewedIdentity,
    SERVER_CERT_LIFETIME, cluster_from_token, token_hash,
};
pub use error::ChainError;
pub use error::ServerError;
pub use init::{DataDir, InitOptions, InitOutcome, admin_credential_paths, initialize};
pub use issuance::{Issuance, LocalIssue, SignedIntermediate};
pub use limits::{CallRates, Limits, WatchSlot, WatchStreams};
pub use metrics_view::scrape as scrape_metrics;
pub use publication::Publication;
pub use registry::{ClusterMode, ClusterState, ClusterStatus, Registry, ServerStatus};
pub use rotation::Rotations;
pub use rotation_view::{ClusterAck, PlannedStep, RotationOptions, RotationPlan, RotationStatus};
pub use tls::{ServerIdentity, renewal_time};

pub use crate::clock::{Clock, SystemClock};
use crate::proto::admin_service_server::AdminServiceServer;
use crate::proto::intermediate_service_server::IntermediateServiceServer;
use crate::proto::trust_bundle_service_server::TrustBundleServiceServer;

/// The pause after catching up on a store change notice
/// ([`crate::store::Store::changes`]) before heeding the next one.
const CATCH_UP_PAUSE: std::time::Duration = std::time::Duration::from_millis(200);
/// The largest gRPC message the server decodes (CSRs are limited to 64 KiB
/// separately, with a precise error).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;

/// Where and as what the server listens.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Listen address (port 0 picks a free port).
    pub listen: SocketAddr,
    /// DNS names in the server certificate (besides `localhost`).
    pub dns_names: Vec<String>,
    /// IP addresses in the server certificate (besides 127.0.0.1 and ::1).
    pub ip_addresses: Vec<IpAddr>,
    /// Timeouts, caps and rates.
    pub limits: Limits,
    /// The lease of the server that runs rotations and push mode, when
    /// several share a store ([`leader`]).
    pub leader_lease: std::time::Duration,
}

/// A server running in this process.
#[derive(Debug)]
pub struct RunningServer {
    /// The bound address.
    pub address: SocketAddr,
    /// The shared state.
    pub authority: Arc<Authority>,
    /// The certificate new TLS handshakes get (renewed in place).
    pub identity: Arc<ServerIdentity>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    /// The accept loop; it owns the listening socket.
    accept: tokio::task::JoinHandle<()>,
    push: leader::PushWhileLeading,
    /// Whether this server runs rotations and push mode.
    pub leadership: Arc<leader::Leadership>,
}

impl RunningServer {
    /// The `https://` URL clients use.
    pub fn url(&self) -> String {
        format!("https://{}", self.address)
    }

    /// Stops accepting calls, ends watch streams and waits for the server.
    pub async fn shutdown(self) -> Result<(), ServerError> {
        self.push.shutdown().await;
        let _ = self.shutdown.send(true);
        // The port is free once this returns (a restart may bind it again).
        if let Err(source) = self.accept.await {
            return Err(ServerError::Task {
                task: "accept loop",
                source,
            });
        }
        match self.task.await {
            Ok(result) => Ok(result?),
            Err(source) => Err(ServerError::Task {
                task: "gRPC server",
                source,
            }),
        }
    }

    /// Waits until the server stops by itself (it only stops on error).
    pub async fn wait(&mut self) -> Result<(), ServerError> {
        match (&mut self.task).await {
            Ok(result) => Ok(result?),
            Err(source) => Err(ServerError::Task {
                task: "gRPC server",
                source,
            }),
        }
    }
}

/// Binds `config.listen`, issues a fresh server certificate from the
/// control-plane CA (renewed at ⅔ of its lifetime while the server runs),
/// and serves the three services over TLS within `config.limits`. Client
/// certificates are optional at the TLS layer (enrollment has none) and
/// required by every call except `Enroll`.
///
/// Errors: [`ServerError::InvalidArgument`] for limits that cannot work,
/// [`ServerError::Listen`], and certificate, store and TLS errors.
pub async fn start(
    authority: Arc<Authority>,
    config: &ServerConfig,
) -> Result<RunningServer, ServerError> {
    let limits = config.limits.clone();
    let problems = limits.problems();
    if !problems.is_empty() {
        return Err(ServerError::InvalidArgument(problems.join("; ")));
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServerError::Listen {
            address: config.listen,
            source,
        })?;
    let address = listener
        .local_addr()
        .map_err(|source| ServerError::Listen {
            address: config.listen,
            source,
        })?;
    let mut dns_names = vec!["localhost".to_string()];
    dns_names.extend(config.dns_names.iter().cloned());
    let mut ip_addresses: Vec<IpAddr> = vec![
        IpAddr::from([127, 0, 0, 1]),
        IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
    ];
    ip_addresses.extend(config.ip_addresses.iter().copied());
    if !address.ip().is_unspecified() && !ip_addresses.contains(&address.ip()) {
        ip_addresses.push(address.ip());
    }
    let names = tls::ServerNames {
        dns_names,
        ip_addresses,
    };
    let (certificate, key) = tls::issue(&authority, &names).await?;
    let identity = Arc::new(ServerIdentity::new(tls::provider(), certificate, &key)?);
    drop(key);
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls::server_config(
        &authority,
        identity.clone(),
    )?));
    let (shutdown, shutdown_receiver) = watch::channel(false);
    let rates = Arc::new(CallRates::new(&limits, authority.core().clock().clone()));
    let bundle_api = grpc::BundleApi {
        authority: authority.clone(),
        shutdown: shutdown_receiver.clone(),
        watches: Arc::new(WatchStreams::new(limits.max_watch_streams_per_identity)),
    };
    let intermediate_api = grpc::IntermediateApi {
        authority: authority.clone(),
        rates: rates.clone(),
    };
    let admin_api = grpc::AdminApi {
        authority: authority.clone(),
    };
    let router = tonic::transport::Server::builder()
        .timeout(limits.request_timeout)
        .max_concurrent_streams(limits.max_concurrent_streams)
        .http2_keepalive_interval(Some(limits.http2_keepalive_interval))
        .http2_keepalive_timeout(Some(limits.http2_keepalive_timeout))
        .add_service(
            TrustBundleServiceServer::new(bundle_api).max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            IntermediateServiceServer::new(intermediate_api)
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            AdminServiceServer::new(admin_api).max_decoding_message_size(MAX_MESSAGE_BYTES),
        );
    // Handshaken connections wait here for tonic; the accept loop is the
    // only sender, so tonic's incoming stream ends when the loop does.
    let (connections, incoming) = mpsc::channel(64);
    let accept = tokio::spawn(listener::accept(
        listener,
        acceptor,
        limits.clone(),
        connections,
        shutdown_receiver.clone(),
    ));
    tokio::spawn(tls::renew(
        authority.clone(),
        identity.clone(),
        names,
        shutdown_receiver.clone(),
    ));
    let mut stop = shutdown_receiver;
    let task = tokio::spawn(async move {
        router
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::ReceiverStream::new(incoming),
                async move {
                    let _ = stop.wait_for(|stopped| *stopped).await;
                },
            )
            .await
    });
    tracing::info!(%address, "trustplane server listening (TLS)");
    let leadership = Arc::new(leader::Leadership::new(
        authority.core().clone(),
        config.leader_lease,
    )?);
    {
        let leadership = leadership.clone();
        match tokio::task::spawn_blocking(move || leadership.refresh()).await {
            Ok(result) => {
                result?;
            }
            Err(source) => {
                return Err(ServerError::Task {
                    task: "leader lease",
                    source,
                });
            }
        }
    }
    let push = leader::PushWhileLeading::spawn(authority.clone(), leadership.subscribe());
    // Once a second, off the request path: catches up with what other
    // servers sharing the store changed, takes or renews the lease, and
    // (leading) notes when every cluster acknowledged a rotation phase and
    // runs `--auto` steps; once a minute it forgets the rate allowances of
    // clusters that are idle again.
    let ticker_authority = authority.clone();
    let ticker_leadership = leadership.clone();
    let mut ticker_stop = shutdown.subscribe();
    tokio::spawn(async move {
        let mut ticks: u64 = 0;
        loop {
            tokio::select! {
                // A polling cadence, not a span of time: gates compare
                // against the authority's clock.
                () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                _ = ticker_stop.changed() => break,
            }
            ticks += 1;
            if ticks.is_multiple_of(60) {
                rates.forget_idle();
            }
            let authority = ticker_authority.clone();
            let leadership = ticker_leadership.clone();
            let tick = move || {
                if let Err(error) = authority.core().refresh() {
                    tracing::warn!(error = %error, "catching up with the shared store failed");
                }
                if leadership.refresh()? {
                    authority.rotation.tick()?;
                }
                Ok::<(), ServerError>(())
            };
            match tokio::task::spawn_blocking(tick).await {
                Ok(Err(error)) => tracing::warn!(error = %error, "rotation check failed"),
                Err(error) => tracing::warn!(error = %error, "rotation check task failed"),
                Ok(Ok(())) => {}
            }
        }
    });
    // Between ticks: a store that watches itself (`kubernetes`) says when
    // another server committed, and this one catches up at once (its
    // watchers get a new version within a round trip, not a second).
    if let Some(mut changes) = authority.core().store.changes() {
        let core = authority.core().clone();
        let mut changes_stop = shutdown.subscribe();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    changed = changes.changed() => {
                        if changed.is_err() {
                            break;
                        }
                    }
                    _ = changes_stop.changed() => break,
                }
                let core = core.clone();
                match tokio::task::spawn_blocking(move || core.refresh()).await {
                    Ok(Err(error)) => {
                        tracing::warn!(error = %error, "catching up with the shared store failed");
                    }
                    Err(error) => tracing::warn!(error = %error, "catch-up task failed"),
                    Ok(Ok(_)) => {}
                }
                // A few catch-ups a second at most, whatever the commit rate.
                tokio::time::sleep(CATCH_UP_PAUSE).await;
            }
        });
    }
    Ok(RunningServer {
        address,
        push,
        leadership,
        authority,
        identity,
        shutdown,
        task,
        accept,
    })
}
