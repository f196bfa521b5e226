//! The `trustplane` binary.
#![forbid(unsafe_code)]

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // One TLS stack: ring. Installing it fails only if one is already set.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match trustplane::cli::main().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
