//! Which of several servers sharing one store (`vault-kv`, `kubernetes`) runs the work
//! that must run once: advancing rotations (`tick`, `--auto`) and push
//! mode. A lease in the store ([`crate::store::Store::lease`], named
//! [`LEADER_LEASE`]) names the holder and when its lease ends; the holder
//! renews it, and any other server takes it over by check-and-set once it
//! has expired, so a killed holder is replaced within one lease. On a store
//! only one process opens (the embedded one) this server always leads.
//!
//! Every change the leader makes is still guarded by the store's
//! check-and-set, so two servers that both believe they lead for a moment
//! (a paused holder whose lease ran out) cannot both win a step: one gets
//! a conflict. Lease times come from each server's clock; servers sharing
//! a store keep their clocks in sync (NTP) well within the lease.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::authority::Authority;
use super::core::Core;
use super::error::ServerError;
use super::push::PushController;

/// Name of the lease ([`crate::store::Store::lease`]).
pub const LEADER_LEASE: &str = "leader";

/// The default lease (`--leader-lease`).
pub const DEFAULT_LEASE: Duration = Duration::from_secs(15);

/// This server's side of the lease.
#[derive(Debug)]
pub struct Leadership {
    core: Arc<Core>,
    id: String,
    lease: Duration,
    leading: watch::Sender<bool>,
    /// Until when this server holds the lease it last took or renewed.
    held_until: std::sync::Mutex<Option<u64>>,
}

/// `-<host name>`, or nothing when the host name cannot be read: in a pod it
/// is the pod's name, so `kubectl get lease trustplane-leader` shows which
/// replica leads (the process id is 1 in every pod). Only `[A-Za-z0-9.-]`
/// is kept, at most 63 characters.
fn host_suffix() -> String {
    let name: String = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == '-')
        .take(63)
        .collect();
    if name.is_empty() {
        name
    } else {
        format!("-{name}")
    }
}

fn unix_ms(core: &Core) -> u64 {
    core.now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl Leadership {
    /// This server's leadership over `core`'s store with a lease of
    /// `lease`; not leading until [`Leadership::refresh`] says so.
    ///
    /// Errors: [`ServerError::InvalidArgument`] for a lease under 3 s (the
    /// holder renews once a second at most).
    pub fn new(core: Arc<Core>, lease: Duration) -> Result<Self, ServerError> {
        if lease < Duration::from_secs(3) {
            return Err(ServerError::InvalidArgument(format!(
                "--leader-lease {} is too short: use at least 3s",
                humantime::format_duration(lease)
            )));
        }
        let mut random = [0u8; 8];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random)
            .map_err(|_| ServerError::InvalidArgument("no randomness for the server id".into()))?;
        let id = format!(
            "{}-{}{}",
            std::process::id(),
            hex::encode(random),
            host_suffix()
        );
        Ok(Leadership {
            core,
            id,
            lease,
            leading: watch::Sender::new(false),
            held_until: std::sync::Mutex::new(None),
        })
    }

    /// This server's id in the lease record.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether this server leads now.
    pub fn is_leading(&self) -> bool {
        *self.leading.borrow()
    }

    /// A receiver of whether this server leads.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.leading.subscribe()
    }

    /// Takes, renews or gives up the lease as the record says, and returns
    /// whether this server leads. The holder renews once a third of the
    /// lease has passed; others take over an expired lease by
    /// check-and-set (losing it to a third server is not an error).
    ///
    /// Errors: store errors (then this server stops leading).
    pub fn refresh(&self) -> Result<bool, ServerError> {
        let leading = match self.try_hold() {
            Ok(leading) => leading,
            Err(error) => {
                self.leading
                    .send_if_modified(|leading| std::mem::replace(leading, false));
                crate::telemetry::metrics::record_leader(false);
                return Err(error);
            }
        };
        crate::telemetry::metrics::record_leader(leading);
        let changed = self
            .leading
            .send_if_modified(|current| std::mem::replace(current, leading) != leading);
        if changed {
            if leading {
                tracing::info!(server = %self.id, "this server now runs rotations and push mode (lease taken)");
            } else {
                tracing::info!(server = %self.id, "another server holds the lease; this one serves only");
            }
        }
        Ok(leading)
    }

    fn try_hold(&self) -> Result<bool, ServerError> {
        let now = unix_ms(&self.core);
        let lease_ms = u64::try_from(self.lease.as_millis()).unwrap_or(u64::MAX);
        let mut held_until = self
            .held_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Renew once a third of the lease has passed.
        if let Some(until) = *held_until
            && until.saturating_sub(now) > lease_ms / 3 * 2
        {
            return Ok(true);
        }
        let expires = now.saturating_add(lease_ms);
        let holder = self
            .core
            .store
            .lease(LEADER_LEASE, &self.id, now, expires)?;
        let leading = holder == self.id;
        *held_until = leading.then_some(expires);
        Ok(leading)
    }
}

/// Push mode ([`PushController`]) while this server leads: started when it
/// takes the lease, stopped when it loses it.
#[derive(Debug)]
pub struct PushWhileLeading {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl PushWhileLeading {
    /// Starts following `leading`.
    pub fn spawn(authority: Arc<Authority>, leading: watch::Receiver<bool>) -> Self {
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(follow(authority, leading, stopped));
        PushWhileLeading { stop, task }
    }

    /// Stops push mode (if running) and waits for it.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn follow(
    authority: Arc<Authority>,
    mut leading: watch::Receiver<bool>,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            result = leading.wait_for(|leading| *leading) => {
                if result.is_err() {
                    return;
                }
            }
            _ = stopped.wait_for(|stop| *stop) => return,
        }
        let push = PushController::spawn(authority.clone());
        let stop = tokio::select! {
            _ = leading.wait_for(|leading| !*leading) => false,
            _ = stopped.wait_for(|stop| *stop) => true,
        };
        push.shutdown().await;
        if stop {
            return;
        }
        tracing::info!("push mode stopped: another server leads");
    }
}
