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
    let mut child = Command::new(BINARY)
        .args(["server", "--listen", listen, "--data-dir"])
        .arg(data_dir)
        .env_remove("TRUSTPLANE_KEK")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let url = line
        .split_whitespace()
        .find(|word| word.starts_with("https://"))
        .unwrap_or_else(|| panic!("no URL in server output {line:?}"))
        .to_string();
    (Guard(child), url)
}
