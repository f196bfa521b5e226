//! The `trustplane` binary end to end, as a user runs it: init, server,
//! cluster add, agent, cluster list, bundle show, verify, issue, demo.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::binary::{BINARY, Guard, start_server};
use common::fixtures::{openssl_rsa_root, openssl_verify};

fn trustplane(args: &[&str]) -> Output {
    Command::new(BINARY)
        .args(args)
        .env_remove("TRUSTPLANE_KEK")
        .output()
        .unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn ok(args: &[&str]) -> String {
    let output = trustplane(args);
    assert!(
        output.status.success(),
        "trustplane {args:?} failed:\n{}",
        text(&output)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn every_command_has_help_with_an_example() {
    let commands: &[&[&str]] = &[
        &["init"],
        &["server"],
        &["agent"],
        &["cluster", "add"],
        &["cluster", "list"],
        &["cluster", "remove"],
        &["cluster", "reissue"],
        &["status"],
        &["rotate", "plan"],
        &["rotate", "start"],
        &["rotate", "status"],
        &["rotate", "advance"],
        &["rotate", "abort"],
        &["audit"],
        &["admin", "add"],
        &["admin", "revoke"],
        &["admin", "list"],
        &["bundle", "show"],
        &["issue"],
        &["verify"],
        &["demo"],
    ];
    for command in commands {
        let mut args = command.to_vec();
        args.push("--help");
        let help = ok(&args);
        assert!(
            help.contains("Example"),
            "`trustplane {}` --help has no example:\n{help}",
            command.join(" ")
        );
    }
}

#[test]
fn init_server_enroll_agent_and_inspect_like_a_user() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let data_arg = data.to_str().unwrap();
    let init = ok(&[
        "init",
        "--data-dir",
        data_arg,
        "--trust-domain",
        "cluster.local",
    ]);
    assert!(init.contains("cluster.local root CA"), "{init}");
    assert!(
        init.contains("Move it off this disk"),
        "init must tell the user to move the KEK:\n{init}"
    );
    use std::os::unix::fs::PermissionsExt;
    for secret in ["kek", "admin/admin-key.pem", "trustplane.redb"] {
        let mode = std::fs::metadata(data.join(secret))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{secret} must be 0600, is {mode:o}");
    }
    for directory in [data.to_path_buf(), data.join("admin")] {
        let mode = std::fs::metadata(&directory).unwrap().permissions().mode() & 0o777;
        assert_eq!(
            mode,
            0o700,
            "{} must be 0700, is {mode:o}",
            directory.display()
        );
    }
    let again = trustplane(&["init", "--data-dir", data_arg]);
    assert!(!again.status.success());
    assert!(
        text(&again).contains("already initialised"),
        "{}",
        text(&again)
    );

    let (_server, url) = start_server(&data, "127.0.0.1:0");
    let add = ok(&[
        "cluster",
        "add",
        "east",
        "--server",
        &url,
        "--data-dir",
        data_arg,
        "-o",
        "json",
    ]);
    let add: serde_json::Value = serde_json::from_str(&add).unwrap();
    let token = add["join_token"].as_str().unwrap().to_string();
    assert!(token.starts_with("tp1.east."));

    let cacerts = work.path().join("east-cacerts");
    let identity = work.path().join("east-identity");
    let _agent = Guard(
        Command::new(BINARY)
            .args(["agent", "--server", &url, "--server-ca"])
            .arg(data.join("control-plane-ca.pem"))
            .arg("--join-token")
            .arg(&token)
            .arg("--identity-dir")
            .arg(&identity)
            .arg("--cacerts-dir")
            .arg(&cacerts)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let listed = loop {
        let listed = ok(&[
            "cluster",
            "list",
            "--server",
            &url,
            "--data-dir",
            data_arg,
            "-o",
            "json",
        ]);
        let json: serde_json::Value = serde_json::from_str(&listed).unwrap();
        let east = &json["clusters"][0];
        if east["applied_bundle_version"] == 1
            && east["intermediate_serial"]
                .as_str()
                .is_some_and(|s| !s.is_empty())
        {
            break json;
        }
        assert!(Instant::now() < deadline, "agent never reported: {listed}");
        std::thread::sleep(Duration::from_millis(300));
    };
    // Both processes hold keys: neither may leave a core dump (the agent
    // has reported by now, so it is past its start).
    for (process, pid) in [("server", _server.0.id()), ("agent", _agent.0.id())] {
        let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
        let core = limits
            .lines()
            .find(|line| line.starts_with("Max core file size"))
            .unwrap();
        assert_eq!(
            core.split_whitespace().collect::<Vec<_>>(),
            ["Max", "core", "file", "size", "0", "0", "bytes"],
            "{process}: {core}"
        );
    }
    assert_eq!(listed["clusters"][0]["state"], "enrolled");

    let table = ok(&["cluster", "list", "--server", &url, "--data-dir", data_arg]);
    assert!(
        table.contains("east") && table.contains("v1 (current)"),
        "{table}"
    );
    let status = ok(&["status", "--server", &url, "--data-dir", data_arg]);
    assert!(status.contains("signing root"), "{status}");
    // `--ca-cert`, the old name of `--server-ca`, still works but is not shown.
    let control_plane_ca = data.join("control-plane-ca.pem");
    let status = ok(&[
        "status",
        "--server",
        &url,
        "--data-dir",
        data_arg,
        "--ca-cert",
        control_plane_ca.to_str().unwrap(),
    ]);
    assert!(status.contains("signing root"), "{status}");
    let help = ok(&["status", "--help"]);
    assert!(
        help.contains("--server-ca") && !help.contains("--ca-cert"),
        "{help}"
    );

    let pem = ok(&[
        "bundle",
        "show",
        "-o",
        "pem",
        "--server",
        &url,
        "--data-dir",
        data_arg,
    ]);
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
    assert_eq!(
        std::fs::read_to_string(cacerts.join("root-cert.pem")).unwrap(),
        pem
    );
    let spiffe = ok(&[
        "bundle",
        "show",
        "-o",
        "spiffe",
        "--server",
        &url,
        "--data-dir",
        data_arg,
    ]);
    let spiffe: serde_json::Value = serde_json::from_str(&spiffe).unwrap();
    assert_eq!(spiffe["spiffe_sequence"], 1);
    assert_eq!(spiffe["keys"][0]["use"], "x509-svid");
    let bundle = ok(&[
        "bundle",
        "show",
        "-o",
        "json",
        "--server",
        &url,
        "--data-dir",
        data_arg,
    ]);
    let bundle: serde_json::Value = serde_json::from_str(&bundle).unwrap();
    assert_eq!(bundle["trust_domain"], "cluster.local", "{bundle}");
    assert_eq!(bundle["version"], 1, "{bundle}");
    assert_eq!(bundle["root_cert_pem"], pem.as_str(), "{bundle}");
    assert!(
        bundle["digest"]
            .as_str()
            .is_some_and(|digest| digest.len() == 64),
        "{bundle}"
    );
    assert_eq!(bundle["spiffe_bundle"], spiffe, "{bundle}");

    let verified = ok(&["verify", cacerts.to_str().unwrap()]);
    assert!(verified.contains("istiod would accept"), "{verified}");
    let mode = std::fs::metadata(cacerts.join("ca-key.pem"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);

    // A broken directory fails verification with a non-zero exit.
    let broken = work.path().join("broken");
    std::fs::create_dir(&broken).unwrap();
    for name in ["ca-cert.pem", "cert-chain.pem", "root-cert.pem"] {
        std::fs::copy(cacerts.join(name), broken.join(name)).unwrap();
    }
    let failed = trustplane(&["verify", broken.to_str().unwrap()]);
    assert!(!failed.status.success());
    assert!(text(&failed).contains("ca-key.pem"), "{}", text(&failed));

    let removed = ok(&[
        "cluster",
        "remove",
        "east",
        "--server",
        &url,
        "--data-dir",
        data_arg,
        "-o",
        "json",
    ]);
    let removed: serde_json::Value = serde_json::from_str(&removed).unwrap();
    assert_eq!(removed, serde_json::json!({"removed": "east"}));
    let listed = ok(&[
        "cluster",
        "list",
        "--server",
        &url,
        "--data-dir",
        data_arg,
        "-o",
        "json",
    ]);
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed["clusters"], serde_json::json!([]), "{listed}");
}

#[test]
fn issue_writes_cacerts_offline_that_verify_accepts() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let data_arg = data.to_str().unwrap();
    ok(&[
        "init",
        "--data-dir",
        data_arg,
        "--key-algorithm",
        "ecdsa-p384",
    ]);
    let out = work.path().join("west");
    let issued = ok(&[
        "issue",
        "--cluster",
        "west",
        "--out",
        out.to_str().unwrap(),
        "--data-dir",
        data_arg,
    ]);
    assert!(
        issued.contains("kubectl create secret generic cacerts"),
        "{issued}"
    );
    let verified = ok(&["verify", out.to_str().unwrap(), "-o", "json"]);
    let json: serde_json::Value = serde_json::from_str(&verified).unwrap();
    assert_eq!(json["passed"], true, "{verified}");

    let north = work.path().join("north");
    let issued = ok(&[
        "issue",
        "--cluster",
        "north",
        "--out",
        north.to_str().unwrap(),
        "--data-dir",
        data_arg,
        "-o",
        "json",
    ]);
    let issued: serde_json::Value = serde_json::from_str(&issued).unwrap();
    assert_eq!(issued["cluster"], "north", "{issued}");
    assert_eq!(issued["out"], north.to_str().unwrap(), "{issued}");
    let mut files: Vec<&str> = issued["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|file| file.as_str().unwrap())
        .collect();
    files.sort_unstable();
    let expected: Vec<String> = [
        "ca-cert.pem",
        "ca-key.pem",
        "cert-chain.pem",
        "root-cert.pem",
    ]
    .iter()
    .map(|name| north.join(name).to_str().unwrap().to_string())
    .collect();
    assert_eq!(files, expected, "{issued}");
    for file in &files {
        assert!(Path::new(file).is_file(), "{file} was not written");
    }
    let serial = issued["intermediate_serial"].as_str().unwrap();
    assert!(
        !serial.is_empty() && serial.chars().all(|c| c.is_ascii_hexdigit()),
        "{issued}"
    );
    let not_after = issued["not_after"].as_str().unwrap();
    let not_after = humantime::parse_rfc3339(not_after).unwrap();
    assert!(not_after > trustplane::clock::SystemClock.now(), "{issued}");
    let verified = ok(&["verify", north.to_str().unwrap(), "-o", "json"]);
    let json: serde_json::Value = serde_json::from_str(&verified).unwrap();
    assert_eq!(json["passed"], true, "{verified}");

    // With the server running, offline issuance refuses clearly.
    let (_server, _url) = start_server(&data, "127.0.0.1:0");
    let refused = trustplane(&[
        "issue",
        "--cluster",
        "x",
        "--out",
        work.path().join("x").to_str().unwrap(),
        "--data-dir",
        data_arg,
    ]);
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("in use by another trustplane process"),
        "{}",
        text(&refused)
    );
}

/// A KEK (32 bytes, base64) and another one.
const KEK: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
const OTHER_KEK: &str = "EEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEE=";

fn trustplane_with_kek(args: &[&str], kek: Option<&str>) -> Output {
    let mut command = Command::new(BINARY);
    command.args(args).env_remove("TRUSTPLANE_KEK");
    if let Some(kek) = kek {
        command.env("TRUSTPLANE_KEK", kek);
    }
    command.output().unwrap()
}

#[test]
fn every_command_finds_the_kek_in_one_order_flag_then_environment_then_data_dir() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let data_arg = data.to_str().unwrap();
    let issue = |cluster: &str| -> Vec<String> {
        let out = work.path().join(cluster);
        [
            "issue",
            "--cluster",
            cluster,
            "--out",
            out.to_str().unwrap(),
            "--data-dir",
            data_arg,
        ]
        .map(String::from)
        .to_vec()
    };
    let run = |args: &[String], kek: Option<&str>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        trustplane_with_kek(&args, kek)
    };

    // init with TRUSTPLANE_KEK seals under it and writes no <data-dir>/kek.
    let init = trustplane_with_kek(&["init", "--data-dir", data_arg, "-o", "json"], Some(KEK));
    assert!(init.status.success(), "{}", text(&init));
    let init: serde_json::Value = serde_json::from_slice(&init.stdout).unwrap();
    assert_eq!(init["kek_file"], serde_json::Value::Null, "{init}");
    assert!(!data.join("kek").exists());

    // The environment is used when no --kek-file is given.
    let issued = run(&issue("east"), Some(KEK));
    assert!(issued.status.success(), "{}", text(&issued));
    // Neither given, and no <data-dir>/kek: refused.
    let refused = run(&issue("west"), None);
    assert!(!refused.status.success(), "{}", text(&refused));
    // The flag wins over the environment.
    let file = work.path().join("kek");
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut handle = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&file)
            .unwrap();
        std::io::Write::write_all(&mut handle, KEK.as_bytes()).unwrap();
    }
    let mut with_flag = issue("north");
    with_flag.extend(["--kek-file".to_string(), file.to_str().unwrap().to_string()]);
    let issued = run(&with_flag, Some(OTHER_KEK));
    assert!(issued.status.success(), "{}", text(&issued));
    // ...and the environment over <data-dir>/kek.
    std::fs::copy(&file, data.join("kek")).unwrap();
    let wrong = run(&issue("south"), Some(OTHER_KEK));
    assert!(!wrong.status.success(), "{}", text(&wrong));
    let issued = run(&issue("south"), None);
    assert!(issued.status.success(), "{}", text(&issued));
}

#[test]
fn init_imports_an_existing_rsa_root() {
    let work = tempfile::tempdir().unwrap();
    // Istio's tools/certs write PKCS#1 ("RSA PRIVATE KEY"), as this does.
    let (cert, pkcs1) = openssl_rsa_root(work.path());
    let data = work.path().join("data");
    let init = ok(&[
        "init",
        "--data-dir",
        data.to_str().unwrap(),
        "--import-root",
        cert.to_str().unwrap(),
        "--import-key",
        pkcs1.to_str().unwrap(),
    ]);
    assert!(init.contains("root (imported)"), "{init}");
    let out = work.path().join("east");
    ok(&[
        "issue",
        "--cluster",
        "east",
        "--out",
        out.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    let verified = ok(&["verify", out.to_str().unwrap()]);
    assert!(verified.contains("istiod would accept"), "{verified}");
    let (openssl_passed, openssl_output) = openssl_verify(
        work.path(),
        &[
            "-CAfile",
            cert.to_str().unwrap(),
            out.join("ca-cert.pem").to_str().unwrap(),
        ],
    );
    assert!(openssl_passed, "{openssl_output}");
}

#[test]
fn demo_proves_cross_cluster_trust_and_exits_zero() {
    let output = trustplane(&["demo"]);
    let printed = text(&output);
    assert!(output.status.success(), "demo failed:\n{printed}");
    assert!(printed.contains("trusted ✓"), "{printed}");
    assert!(printed.contains("rejected ✓"), "{printed}");
    assert!(printed.contains("OK: east and west"), "{printed}");
}

#[test]
fn rotate_commands_drive_a_rotation_like_a_user() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let data_arg = data.to_str().unwrap();
    ok(&[
        "init",
        "--data-dir",
        data_arg,
        "--trust-domain",
        "cluster.local",
    ]);
    let (_server, url) = start_server(&data, "127.0.0.1:0");
    let connection = ["--server", url.as_str(), "--data-dir", data_arg];
    let with = |args: &[&str]| -> Vec<String> {
        args.iter()
            .chain(connection.iter())
            .map(|arg| (*arg).to_string())
            .collect()
    };
    let run = |args: &[&str]| {
        let args = with(args);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        trustplane(&refs)
    };
    let must = |args: &[&str]| {
        let output = run(args);
        assert!(
            output.status.success(),
            "trustplane {args:?} failed:\n{}",
            text(&output)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let add: serde_json::Value =
        serde_json::from_str(&must(&["cluster", "add", "east", "-o", "json"])).unwrap();
    let token = add["join_token"].as_str().unwrap().to_string();
    let cacerts = work.path().join("east-cacerts");
    let _agent = Guard(
        Command::new(BINARY)
            .args(["agent", "--server", &url, "--server-ca"])
            .arg(data.join("control-plane-ca.pem"))
            .arg("--join-token")
            .arg(&token)
            .arg("--identity-dir")
            .arg(work.path().join("east-identity"))
            .arg("--cacerts-dir")
            .arg(&cacerts)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

    let plan = must(&["rotate", "plan", "--grace", "2s"]);
    for phase in ["trust-new", "sign-new", "retire-old"] {
        assert!(plan.contains(phase), "{plan}");
    }
    let status: serde_json::Value =
        serde_json::from_str(&must(&["rotate", "status", "-o", "json"])).unwrap();
    assert_eq!(status["phase"], "stable");
    let nothing = run(&["rotate", "abort"]);
    assert!(!nothing.status.success());
    assert!(text(&nothing).contains("no rotation"), "{}", text(&nothing));

    must(&["rotate", "start", "--grace", "2s", "--ack-timeout", "1m"]);
    let table = must(&["rotate", "status"]);
    assert!(
        table.contains("trust-new") && table.contains("east"),
        "{table}"
    );
    // With --log-format json, the progress lines are log events too:
    // stderr stays one JSON object per line.
    let mut progress = Vec::new();
    for _ in 0..3 {
        let advanced = run(&[
            "rotate",
            "advance",
            "--wait",
            "--timeout",
            "2m",
            "--poll",
            "200ms",
            "--log-format",
            "json",
        ]);
        assert!(advanced.status.success(), "{}", text(&advanced));
        for line in String::from_utf8_lossy(&advanced.stderr).lines() {
            let event: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|error| panic!("not a JSON log line ({error}): {line:?}"));
            progress.push(event["message"].as_str().unwrap_or_default().to_string());
        }
    }
    assert!(
        progress
            .iter()
            .any(|message| message.starts_with("waiting: ")),
        "no progress event while waiting on the grace: {progress:?}"
    );
    let done: serde_json::Value =
        serde_json::from_str(&must(&["rotate", "status", "-o", "json"])).unwrap();
    assert_eq!(done["phase"], "stable", "{done}");
    assert_eq!(done["outcome"], "completed", "{done}");
    let audit = must(&["audit"]);
    assert!(
        audit.contains("rotate-start") && audit.contains("rotate-advance"),
        "{audit}"
    );
    // The agent follows: its cacerts verify and trust the new root only.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let roots = std::fs::read_to_string(cacerts.join("root-cert.pem")).unwrap_or_default();
        let pem = ok(&[
            "bundle",
            "show",
            "-o",
            "pem",
            "--server",
            &url,
            "--data-dir",
            data_arg,
        ]);
        if roots == pem {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the agent never applied the final bundle"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let verified = ok(&["verify", cacerts.to_str().unwrap()]);
    assert!(verified.contains("istiod would accept"), "{verified}");
}

#[test]
fn admin_add_list_revoke_name_people_with_roles_offline() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let data_arg = data.to_str().unwrap();
    ok(&["init", "--data-dir", data_arg]);
    let out = work.path().join("alice");
    let added = ok(&[
        "admin",
        "add",
        "alice",
        "--role",
        "auditor",
        "--data-dir",
        data_arg,
        "--out",
        out.to_str().unwrap(),
        "-o",
        "json",
    ]);
    let added: serde_json::Value = serde_json::from_str(&added).unwrap();
    assert_eq!(added["role"], "auditor");
    use std::os::unix::fs::PermissionsExt as _;
    let key_mode = std::fs::metadata(out.join("alice-key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);
    assert!(out.join("control-plane-ca.pem").exists());
    let bad = trustplane(&[
        "admin",
        "add",
        "bob",
        "--role",
        "root",
        "--data-dir",
        data_arg,
    ]);
    assert!(!bad.status.success());

    let (server, url) = start_server(&data, "127.0.0.1:0");
    let as_alice = |command: &[&str]| {
        let mut args = command.to_vec();
        let (cert, key, ca) = (
            out.join("alice.pem"),
            out.join("alice-key.pem"),
            out.join("control-plane-ca.pem"),
        );
        let paths = [
            cert.to_str().unwrap().to_string(),
            key.to_str().unwrap().to_string(),
            ca.to_str().unwrap().to_string(),
        ];
        args.extend([
            "--server",
            &url,
            "--data-dir",
            data_arg,
            "--admin-cert",
            &paths[0],
            "--admin-key",
            &paths[1],
            "--server-ca",
            &paths[2],
        ]);
        trustplane(&args)
    };
    let status = as_alice(&["status"]);
    assert!(status.status.success(), "{}", text(&status));
    let refused = as_alice(&["cluster", "add", "east"]);
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("admin \"alice\" has role auditor"),
        "{}",
        text(&refused)
    );
    drop(server);

    let list = ok(&["admin", "list", "--data-dir", data_arg, "-o", "json"]);
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    let roles: Vec<_> = list["admins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|admin| {
            (
                admin["name"].as_str().unwrap().to_string(),
                admin["role"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        roles,
        [
            ("admin".into(), "admin".into()),
            ("alice".into(), "auditor".into())
        ]
    );
    let table = ok(&["admin", "list", "--data-dir", data_arg]);
    assert!(
        table.contains("alice") && table.contains("auditor"),
        "{table}"
    );
    ok(&["admin", "revoke", "alice", "--data-dir", data_arg]);
    let again = trustplane(&["admin", "revoke", "alice", "--data-dir", data_arg]);
    assert!(text(&again).contains("already revoked"), "{}", text(&again));

    let (_server, url2) = start_server(&data, "127.0.0.1:0");
    let mut args = vec!["status".to_string()];
    args.extend([
        "--server".into(),
        url2.clone(),
        "--data-dir".into(),
        data_arg.into(),
    ]);
    args.extend([
        "--admin-cert".into(),
        out.join("alice.pem").to_str().unwrap().into(),
    ]);
    args.extend([
        "--admin-key".into(),
        out.join("alice-key.pem").to_str().unwrap().into(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let revoked = trustplane(&args);
    assert!(!revoked.status.success());
    assert!(text(&revoked).contains("revoked"), "{}", text(&revoked));
}

/// `--log-format json`: every line on stderr is one JSON object with the
/// documented fields, and an event's own fields are at its top level; the
/// default stays text.
#[test]
fn log_format_json_writes_one_object_per_line_with_the_documented_fields() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let data = data.to_str().unwrap();
    let init_json = || {
        Command::new(BINARY)
            .args(["--log-format", "json", "init", "--data-dir", data])
            .args(["--trust-domain", "cluster.local"])
            .env_remove("TRUSTPLANE_KEK")
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    };
    let output = init_json();
    assert!(output.status.success(), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(!lines.is_empty(), "init logged nothing");
    let mut audit_entries = 0;
    for line in &lines {
        let event: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|error| panic!("not one JSON object ({error}): {line}"));
        for field in ["timestamp", "level", "target", "message"] {
            assert!(event.get(field).is_some(), "no {field:?} in {line}");
        }
        let timestamp = event["timestamp"].as_str().unwrap();
        assert!(
            humantime::parse_rfc3339(timestamp).is_ok(),
            "timestamp {timestamp:?} is not RFC 3339 UTC"
        );
        if event["message"] == "audit entry" {
            audit_entries += 1;
            assert_eq!(event["target"], "trustplane::audit", "{line}");
            assert_eq!(event["level"], "INFO", "{line}");
            assert!(
                event["action"].is_string(),
                "the event's fields at the top: {line}"
            );
            assert!(event["seq"].is_u64(), "{line}");
        }
    }
    assert!(audit_entries >= 1, "no audit entry among {lines:?}");

    // A command that fails says so in the same form.
    let output = init_json();
    assert!(
        !output.status.success(),
        "a second init of the same directory"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr.lines().last().expect("the failure is reported");
    let event: serde_json::Value = serde_json::from_str(last)
        .unwrap_or_else(|error| panic!("not one JSON object ({error}): {last}"));
    assert_eq!(event["level"], "ERROR", "{last}");
    assert_eq!(event["message"], "command failed", "{last}");
    assert!(
        event["error"]
            .as_str()
            .is_some_and(|error| !error.is_empty()),
        "{last}"
    );

    // The default is text: the same command logs lines that are not JSON.
    let again = work.path().join("again");
    let output = Command::new(BINARY)
        .args(["init", "--data-dir", again.to_str().unwrap()])
        .args(["--trust-domain", "cluster.local"])
        .env_remove("TRUSTPLANE_KEK")
        .env_remove("RUST_LOG")
        .env_remove("TRUSTPLANE_LOG_FORMAT")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let first = stderr.lines().next().expect("init logged nothing");
    assert!(
        serde_json::from_str::<serde_json::Value>(first).is_err(),
        "text by default: {first}"
    );
    assert!(first.contains("audit entry"), "{first}");
}

/// `deploy/crds/trustplane.io.yaml` is what `trustplane admin crds` prints
/// now (the CRDs of `--store kubernetes`, generated from the Rust types).
#[test]
fn the_committed_crds_are_what_admin_crds_prints() {
    let printed = ok(&["admin", "crds"]);
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/crds/trustplane.io.yaml"
    );
    let committed = std::fs::read_to_string(path).unwrap();
    assert!(
        printed == committed,
        "deploy/crds/trustplane.io.yaml is stale: run `cargo run -- admin crds > deploy/crds/trustplane.io.yaml` and commit it"
    );
    for kind in [
        "TrustplaneHead",
        "TrustplaneCertificate",
        "TrustplaneAuditEntry",
    ] {
        assert!(printed.contains(&format!("kind: {kind}")), "{kind}");
    }
}

#[test]
fn a_server_whose_vault_kv_store_cannot_open_exits_with_the_reason_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let kek = dir.path().join("kek");
    std::fs::write(&kek, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n").unwrap();
    std::fs::set_permissions(&kek, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    // Port 1 on loopback: nothing listens, so Vault is unreachable.
    let output = Command::new(BINARY)
        .args(["server", "--store", "vault-kv", "--listen", "127.0.0.1:0"])
        .args(["--vault-addr", "http://127.0.0.1:1", "--vault-token", "t"])
        .arg("--kek-file")
        .arg(&kek)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env_remove("TRUSTPLANE_KEK")
        .env_remove("VAULT_ADDR")
        .env_remove("VAULT_TOKEN")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("127.0.0.1:1"), "{stderr}");
    assert!(stderr.contains("check VAULT_ADDR"), "{stderr}");
}
