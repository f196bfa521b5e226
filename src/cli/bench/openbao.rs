//! `trustplane bench openbao`: the baseline for `bench sign`. OpenBao's
//! (or Vault's) `sign-intermediate` over HTTP at the same concurrency, with
//! the request trustplane's Vault signer sends, through the same client
//! code. CSRs are made before the clock starts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::json;
use tokio::task::JoinSet;

use super::stats::Latencies;
use crate::ca::{self, Certificate, IntermediateProfile, KeyAlgorithm, PrivateKey};
use crate::clock::SystemClock;
use crate::vault::VaultSettings;
use crate::vault::pki::{self, SignIntermediateRequest};
use crate::vault::{Vault, VaultErrorKind};

/// `bench openbao` flags.
#[derive(Debug, clap::Args)]
pub struct OpenbaoArgs {
    /// How to reach OpenBao (--vault-addr, --vault-token, --vault-pki-mount, …).
    #[command(flatten)]
    pub vault: VaultSettings,
    /// The load generator's runtime.
    #[command(flatten)]
    pub runtime: super::ClientRuntime,
    /// The issuer that signs (in --vault-pki-mount).
    #[arg(long, default_value = "bench-root")]
    pub issuer: String,
    /// First enable the PKI mount and create a P-256 root issuer named --issuer, where missing.
    #[arg(long)]
    pub setup: bool,
    /// Calls in flight at once (each caller waits for its answer before the next call).
    #[arg(long, default_value_t = 16)]
    pub callers: usize,
    /// How long to measure, e.g. `10s`.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Calls before the clock starts (connections warm), not measured.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
}

/// Runs `bench openbao`. Prints `{"bench":"openbao", "callers",
/// "duration_s", "count", "per_second", "p50_ms", "p99_ms", "max_ms"}`.
pub async fn run(args: OpenbaoArgs) -> anyhow::Result<serde_json::Value> {
    anyhow::ensure!(args.callers > 0, "--callers must be at least 1");
    let config = args.vault.load()?;
    let mount = config.pki_mount.clone();
    let vault = Vault::connect(config).await?;
    if args.setup {
        setup(&vault, &mount, &args.issuer).await?;
    }
    let issuer = pki::read_issuer(&vault, &mount, &args.issuer)
        .await
        .with_context(|| {
            format!(
                "no issuer {} in {mount}: pass --setup to create it",
                args.issuer
            )
        })?;
    let root_not_after = Certificate::from_pem(&issuer.certificate)?.not_after()?;
    let now = SystemClock.now();
    let mut requests = Vec::with_capacity(args.callers);
    for caller in 0..args.callers {
        let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256)?;
        let cluster = format!("bench-openbao-{caller}");
        let csr = ca::verify_csr(
            ca::create_csr(&key, &format!("{cluster} intermediate CA"))?.as_bytes(),
        )?;
        let profile = IntermediateProfile {
            trust_domain: "cluster.local".into(),
            organisation: "trustplane bench".into(),
            cluster,
            lifetime: Duration::from_secs(24 * 3600),
            name_constraints: false,
        };
        requests.push(Arc::new(crate::signer::vault::request(
            &mount,
            &args.issuer,
            &csr,
            &profile,
            root_not_after,
            now,
        )));
    }
    eprintln!("warming up for {}", humantime::format_duration(args.warmup));
    drive(&vault, &requests, args.warmup).await?;
    eprintln!(
        "measuring {} callers for {}",
        args.callers,
        humantime::format_duration(args.duration)
    );
    let started = Instant::now();
    let latencies = drive(&vault, &requests, args.duration).await?;
    let elapsed = started.elapsed();
    let mut result = json!({
        "bench": "openbao",
        "callers": args.callers,
        "duration_s": elapsed.as_secs_f64(),
    });
    if let (Some(into), serde_json::Value::Object(summary)) = (
        result.as_object_mut(),
        serde_json::to_value(latencies.summary(elapsed))?,
    ) {
        into.extend(summary);
    }
    Ok(result)
}

/// Enables a PKI mount at `mount` (10-year max lease) unless one is there,
/// and creates the P-256 root issuer `issuer` unless it exists.
async fn setup(vault: &Vault, mount: &str, issuer: &str) -> anyhow::Result<()> {
    match pki::read_issuer(vault, mount, issuer).await {
        Ok(_) => return Ok(()),
        Err(error) if error.kind == VaultErrorKind::NotFound => {}
        Err(error) => return Err(error.into()),
    }
    let path = format!("sys/mounts/{mount}");
    let enabled = vault
        .call(&path, pki::ATTEMPTS, |client| {
            let endpoint = vaultrs::api::sys::requests::EnableEngineRequest {
                path: mount.to_string(),
                engine_type: Some("pki".into()),
                config: Some(vaultrs::api::sys::requests::EnableEngineDataConfig {
                    max_lease_ttl: Some("87600h".into()),
                    ..Default::default()
                }),
                ..Default::default()
            };
            async move { vaultrs::api::exec_with_empty(client.as_ref(), endpoint).await }
        })
        .await;
    match enabled {
        Ok(()) => eprintln!("enabled a PKI mount at {mount}"),
        // "path is already in use": the mount is there, only the issuer is not.
        Err(error) if error.kind == VaultErrorKind::BadRequest => {}
        Err(error) => return Err(error.into()),
    }
    pki::generate_root(
        vault,
        pki::root_request(
            mount,
            issuer,
            "trustplane bench root",
            "trustplane bench",
            "cluster.local",
            KeyAlgorithm::EcdsaP256,
            Duration::from_secs(87_000 * 3600),
        ),
    )
    .await?;
    eprintln!("created the root issuer {issuer} in {mount}");
    Ok(())
}

/// Runs every caller for `duration`; caller `i` sends request `i`.
async fn drive(
    vault: &Arc<Vault>,
    requests: &[Arc<SignIntermediateRequest>],
    duration: Duration,
) -> anyhow::Result<Latencies> {
    let deadline = Instant::now() + duration;
    let mut callers = JoinSet::new();
    for request in requests {
        callers.spawn(call_until(vault.clone(), request.clone(), deadline));
    }
    let mut latencies = Latencies::new();
    while let Some(done) = callers.join_next().await {
        latencies.extend(done.context("a bench caller failed")??);
    }
    Ok(latencies)
}

/// One caller: `sign-intermediate` again and again until `deadline`.
async fn call_until(
    vault: Arc<Vault>,
    request: Arc<SignIntermediateRequest>,
    deadline: Instant,
) -> anyhow::Result<Latencies> {
    let mut latencies = Latencies::new();
    loop {
        let started = Instant::now();
        if started >= deadline {
            return Ok(latencies);
        }
        pki::sign_intermediate(&vault, || request.as_ref().clone())
            .await
            .context("sign-intermediate failed during the bench")?;
        latencies.push(started.elapsed());
    }
}
