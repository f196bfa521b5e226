//! Istio's cacerts directory: reading its four files and
//! `trustplane verify`, which checks them the way istiod loads them. The
//! checks themselves are [`crate::ca::check_cacerts`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use zeroize::Zeroizing;

use super::output::{self, Format};
use crate::ca::{self, CacertsFiles, Severity};
use crate::clock::SystemClock;

/// `verify` flags.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The cacerts directory.
    pub dir: PathBuf,
    /// Warn when a certificate expires within this time.
    #[arg(long, default_value = "30d", value_parser = humantime::parse_duration)]
    pub warn_within: Duration,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Format,
}

/// Reads the four cacerts files from a directory (missing ones are None).
pub fn read_cacerts_dir(dir: &Path) -> anyhow::Result<CacertsFiles> {
    if !dir.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    let read = |name: &str| -> anyhow::Result<Option<String>> {
        let path = dir.join(name);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text)),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error).with_context(|| format!("cannot read {}", path.display())),
        }
    };
    Ok(CacertsFiles {
        ca_cert: read("ca-cert.pem")?,
        ca_key: read("ca-key.pem")?.map(Zeroizing::new),
        cert_chain: read("cert-chain.pem")?,
        root_cert: read("root-cert.pem")?,
    })
}

/// `trustplane verify`: prints every check and fails unless istiod would
/// accept the directory.
pub async fn verify(args: VerifyArgs) -> anyhow::Result<()> {
    let files = read_cacerts_dir(&args.dir)?;
    let check = ca::check_cacerts(&files, SystemClock.now(), args.warn_within);
    if args.output == Format::Json {
        let json = serde_json::json!({
            "dir": args.dir.display().to_string(),
            "passed": check.passed(),
            "findings": check.findings,
        });
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        let mut table = output::table(&["CHECK", "RESULT", "DETAIL"]);
        for finding in &check.findings {
            let result = match finding.severity {
                Severity::Ok => "ok",
                Severity::Warning => "WARNING",
                Severity::Error => "ERROR",
            };
            table.add_row(vec![
                finding.check.clone(),
                result.to_string(),
                finding.message.clone(),
            ]);
        }
        println!("{table}");
        println!(
            "{}: {}",
            args.dir.display(),
            if check.passed() {
                "istiod would accept this cacerts set"
            } else {
                "istiod would NOT accept this cacerts set"
            }
        );
    }
    if !check.passed() {
        bail!("verification failed for {}", args.dir.display());
    }
    Ok(())
}
