//! The `trustplane` binary.
#![forbid(unsafe_code)]

/// Exit status of a process whose stdout reader went away (128 + SIGPIPE).
const EXIT_BROKEN_PIPE: i32 = 141;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // `trustplane bundle show -o pem | head -1` closes stdout early; `println!`
    // then panics. Like other Unix tools, end quietly instead.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.contains("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(EXIT_BROKEN_PIPE);
        }
        default_hook(info);
    }));
    // Before any key is read: no core dump may hold one.
    if let Err(error) = trustplane::hardening::disable_core_dumps() {
        eprintln!("error: {}", trustplane::telemetry::error_text(&error));
        return std::process::ExitCode::FAILURE;
    }
    // One TLS stack: ring. Installing it fails only if one is already set.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match trustplane::cli::main().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            trustplane::telemetry::report_failure(&error);
            std::process::ExitCode::FAILURE
        }
    }
}
