//! Istio's own CA code (`tests/interop/istio`, built once with Go): does
//! istiod accept a `cacerts` directory, and does the workload certificate
//! it signs verify under a set of roots (Go's `crypto/x509`)?
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Builds (once) and returns Istio's CA interop program.
pub fn istio_interop() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/istio/build.sh");
        let output = Command::new(&script).output().unwrap();
        assert!(
            output.status.success(),
            "cannot build Istio's CA interop program with {} (needs Go and the Go module proxy):\n{}",
            script.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8(output.stdout).unwrap();
        PathBuf::from(stdout.lines().last().unwrap().trim())
    })
}

pub fn run(binary: &Path, args: &[&str]) -> Result<String, String> {
    let output = Command::new(binary)
        .args(args)
        .output()
        .map_err(|error| error.to_string())?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if output.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

/// Istio's CA code loads `cacerts_dir` as istiod does and signs a workload
/// certificate for `spiffe_id`, writing leaf + chain to `out`.
pub fn istio_sign(cacerts_dir: &Path, spiffe_id: &str, out: &Path) -> Result<String, String> {
    run(
        istio_interop(),
        &[
            "sign",
            "--cacerts",
            cacerts_dir.to_str().unwrap(),
            "--spiffe-id",
            spiffe_id,
            "--out",
            out.to_str().unwrap(),
        ],
    )
}

/// Go's `crypto/x509` verifies the leaf chain in `chain` under the roots in
/// `roots` (and checks the leaf's SPIFFE ID when given).
pub fn istio_verify(chain: &Path, roots: &Path, spiffe_id: Option<&str>) -> Result<String, String> {
    let mut args = vec![
        "verify",
        "--chain",
        chain.to_str().unwrap(),
        "--roots",
        roots.to_str().unwrap(),
    ];
    if let Some(spiffe_id) = spiffe_id {
        args.extend(["--spiffe-id", spiffe_id]);
    }
    run(istio_interop(), &args)
}
