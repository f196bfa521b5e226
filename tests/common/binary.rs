//! The `trustplane` binary as a user runs it: a server process that is
//! killed when its guard drops, so a failing test leaves nothing behind.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// The binary cargo built for these tests.
pub const BINARY: &str = env!("CARGO_BIN_EXE_trustplane");

/// Kills the process when dropped.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `trustplane server` on `data_dir`, listening on `listen`, and
/// returns its guard and the URL it printed first.
pub fn start_server(data_dir: &Path, listen: &str) -> (Guard, String) {
    start_server_with(data_dir, listen, &[], &[], None)
}

/// The same with extra arguments and environment variables, and its
/// stderr (the log) appended to `log` when given.
pub fn start_server_with(
    data_dir: &Path,
    listen: &str,
    args: &[&str],
    env: &[(&str, &str)],
    log: Option<&Path>,
) -> (Guard, String) {
    let stderr = match log {
        Some(path) => Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap(),
        ),
        None => Stdio::null(),
    };
    let mut child = Command::new(BINARY)
        .args(["server", "--listen", listen, "--data-dir"])
        .arg(data_dir)
        .args(args)
        .env_remove("TRUSTPLANE_KEK")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    // Lines before the listening one (e.g. the health endpoint) are skipped.
    while !line.contains("https://") {
        line.clear();
        if reader.read_line(&mut line).unwrap() == 0 {
            panic!("the server exited before it listened");
        }
    }
    let url = line
        .split_whitespace()
        .find(|word| word.starts_with("https://"))
        .unwrap_or_else(|| panic!("no URL in server output {line:?}"))
        .to_string();
    // Keep reading stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut sink = String::new();
        while reader.read_line(&mut sink).unwrap_or(0) > 0 {
            sink.clear();
        }
    });
    (Guard(child), url)
}

/// A `trustplane server` process of a test that runs several, its URL and
/// the file its log goes to.
pub struct LoggedServer {
    /// The process (killed when dropped).
    pub process: Guard,
    /// Its `https://` address.
    pub url: String,
    /// Its stderr.
    pub log: std::path::PathBuf,
}

/// Spawns `server` (a `trustplane server …` command, `--listen` included),
/// its stderr appended to `log`, and reads its first stdout line, which
/// names the address it listens on.
pub fn spawn_logged_server(mut server: Command, log: &Path) -> LoggedServer {
    let mut child = server
        .stdout(Stdio::piped())
        .stderr(Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .unwrap(),
        ))
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let url = line
        .split_whitespace()
        .find(|word| word.starts_with("https://"))
        .unwrap_or_else(|| {
            panic!(
                "no URL in {line:?}; log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            )
        })
        .to_string();
    LoggedServer {
        process: Guard(child),
        url,
        log: log.to_path_buf(),
    }
}
