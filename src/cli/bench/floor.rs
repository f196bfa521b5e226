//! `trustplane bench floor`: what one issuance costs in cryptography alone,
//! the ceiling `bench sign` is measured against. One issuance verifies the
//! CSR's signature, signs the intermediate and verifies the result against
//! the root: one ECDSA P-256 signature and two verifications, here with
//! ring directly on a message the size of an intermediate's TBS.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair as _,
    UnparsedPublicKey,
};
use serde_json::json;

/// The size of an intermediate's to-be-signed part, roughly.
const MESSAGE_BYTES: usize = 600;

/// `bench floor` flags.
#[derive(Debug, clap::Args)]
pub struct FloorArgs {
    /// Threads signing and verifying at once.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// How long to run, e.g. `5s`.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
}

/// Runs `bench floor`: prints `{"bench":"floor","threads","duration_s","count","per_second"}`.
pub async fn run(args: FloorArgs) -> anyhow::Result<serde_json::Value> {
    anyhow::ensure!(args.threads > 0, "--threads must be at least 1");
    let threads = args.threads;
    let duration = args.duration;
    let (count, elapsed) = tokio::task::spawn_blocking(move || measure(threads, duration))
        .await
        .context("the floor threads failed")??;
    let seconds = elapsed.as_secs_f64();
    Ok(json!({
        "bench": "floor",
        "threads": threads,
        "duration_s": seconds,
        "count": count,
        "per_second": if seconds > 0.0 { count as f64 / seconds } else { 0.0 },
    }))
}

/// Runs `threads` threads of sign + two verifies for `duration`; returns the
/// operations done and the wall time they took.
fn measure(threads: usize, duration: Duration) -> anyhow::Result<(u64, Duration)> {
    let random = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &random)
        .map_err(|_| anyhow::anyhow!("ring could not generate a P-256 key"))?;
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &random)
        .map_err(|error| anyhow::anyhow!("ring refused its own P-256 key: {error}"))?;
    let public =
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, key.public_key().as_ref().to_vec());
    let message = vec![0x5a_u8; MESSAGE_BYTES];
    let started = Instant::now();
    let deadline = started + duration;
    let counts = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| -> anyhow::Result<u64> {
                    let mut done = 0_u64;
                    while Instant::now() < deadline {
                        let signature = key
                            .sign(&random, &message)
                            .map_err(|_| anyhow::anyhow!("ring could not sign"))?;
                        for _ in 0..2 {
                            public
                                .verify(&message, signature.as_ref())
                                .map_err(|_| anyhow::anyhow!("ring refused its own signature"))?;
                        }
                        done += 1;
                    }
                    Ok(done)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| {
                worker
                    .join()
                    .map_err(|_| anyhow::anyhow!("a floor thread panicked"))?
            })
            .sum::<anyhow::Result<u64>>()
    })?;
    Ok((counts, started.elapsed()))
}
