//! The container image as a container runtime sees it: built without a
//! daemon by `deploy/image/build.sh` (a static musl binary, one layer on an
//! empty base with crane, an OCI image layout), then unpacked here from
//! index.json through the manifest to the config and the layers, every blob
//! checked against its digest. The configuration is the Dockerfile's, the
//! filesystem is the one file list with its owners and no shell, and the
//! binary in it runs from that filesystem alone: `chroot` into it as user
//! 65532 (we are root in CI), `trustplane --version`, then `init`, `issue`
//! and `verify` of a cacerts directory, and `trustplane demo` (a server and
//! agents over TLS on loopback).
//!
//! The image is built once per test run (a release build of the musl target
//! in the normal cargo target directory, so a warm run only repacks); every
//! test here shares it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde_json::Value;

const REPOSITORY: &str = env!("CARGO_MANIFEST_DIR");
const BINARY: &str = "usr/local/bin/trustplane";
const USER: &str = "65532:65532";
const NONROOT: u64 = 65532;

/// One entry of the image's filesystem, from its layer's tar header.
#[derive(Debug)]
struct Entry {
    kind: tar::EntryType,
    mode: u32,
    uid: u64,
    gid: u64,
}

/// The built and unpacked image.
struct Image {
    /// The image configuration (the config blob).
    config: Value,
    /// Every path in the layers (relative, no leading `/` or `./`).
    entries: BTreeMap<String, Entry>,
    /// The layers extracted in order.
    rootfs: PathBuf,
}

static IMAGE: OnceLock<Result<Image, String>> = OnceLock::new();

/// The image, built by the first test that asks; a failed build fails every
/// test with its message, without building again.
fn image() -> &'static Image {
    let built = IMAGE.get_or_init(|| {
        std::panic::catch_unwind(build_and_unpack).map_err(|panic| {
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|text| text.to_string()))
                .unwrap_or_else(|| "building the image panicked".into())
        })
    });
    match built {
        Ok(image) => image,
        Err(message) => panic!("the image could not be built or unpacked: {message}"),
    }
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn build_and_unpack() -> Image {
    let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join("image");
    if work.exists() {
        std::fs::remove_dir_all(&work).unwrap();
    }
    std::fs::create_dir_all(&work).unwrap();
    let layout = work.join("layout");
    let script = Path::new(REPOSITORY).join("deploy/image/build.sh");
    let built = Command::new("bash")
        .arg(&script)
        .arg(&layout)
        .current_dir(REPOSITORY)
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{} failed (it installs crane with Go and the musl target; both are required):\n{}",
        script.display(),
        text(&built)
    );

    let index = json(&std::fs::read(layout.join("index.json")).unwrap());
    let layout_version = json(&std::fs::read(layout.join("oci-layout")).unwrap());
    assert_eq!(layout_version["imageLayoutVersion"], "1.0.0");
    let manifests = index["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 1, "one image in the layout: {index}");
    let manifest = json(&blob(&layout, &manifests[0]));
    assert_eq!(
        manifest["mediaType"], "application/vnd.oci.image.manifest.v1+json",
        "an OCI manifest: {manifest}"
    );
    let config = json(&blob(&layout, &manifest["config"]));
    let diff_ids = config["rootfs"]["diff_ids"].as_array().unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), diff_ids.len(), "{manifest}\n{config}");
    assert_eq!(layers.len(), 1, "one layer on the empty base: {manifest}");

    let rootfs = work.join("rootfs");
    std::fs::create_dir_all(&rootfs).unwrap();
    let mut entries = BTreeMap::new();
    for (layer, diff_id) in layers.iter().zip(diff_ids) {
        assert_eq!(
            layer["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip",
            "{layer}"
        );
        let mut tar_bytes = Vec::new();
        flate2::read::GzDecoder::new(blob(&layout, layer).as_slice())
            .read_to_end(&mut tar_bytes)
            .unwrap();
        assert_eq!(
            diff_id.as_str().unwrap(),
            sha256(&tar_bytes),
            "the layer's uncompressed digest is the config's diff_id"
        );
        let mut archive = tar::Archive::new(tar_bytes.as_slice());
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let path = path.trim_start_matches("./").trim_matches('/').to_string();
            assert!(
                !path.contains(".wh."),
                "no whiteouts in a one-layer image: {path}"
            );
            let header = entry.header();
            let previous = entries.insert(
                path.clone(),
                Entry {
                    kind: header.entry_type(),
                    mode: header.mode().unwrap(),
                    uid: header.uid().unwrap(),
                    gid: header.gid().unwrap(),
                },
            );
            assert!(previous.is_none(), "{path} twice in the layer");
        }
        let mut archive = tar::Archive::new(tar_bytes.as_slice());
        archive.set_preserve_permissions(true);
        // Owners as in the image when we may set them (root), so the binary
        // runs as 65532 in a home that 65532 owns, as in a container.
        archive.set_preserve_ownerships(is_root());
        archive.unpack(&rootfs).unwrap();
    }
    Image {
        config,
        entries,
        rootfs,
    }
}

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

fn sha256(bytes: &[u8]) -> String {
    format!(
        "sha256:{}",
        hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes))
    )
}

/// The blob a descriptor points at, checked against its digest and size.
fn blob(layout: &Path, descriptor: &Value) -> Vec<u8> {
    let digest = descriptor["digest"].as_str().unwrap();
    let (algorithm, hex) = digest.split_once(':').unwrap();
    let bytes = std::fs::read(layout.join("blobs").join(algorithm).join(hex)).unwrap();
    assert_eq!(sha256(&bytes), digest, "blob content matches its digest");
    assert_eq!(
        descriptor["size"].as_u64(),
        Some(bytes.len() as u64),
        "{descriptor}"
    );
    bytes
}

/// `trustplane ARGS` from the image's filesystem: as root, chrooted into it
/// as user 65532 in /home/nonroot (nothing of the host is visible, not even
/// /proc or /dev); otherwise the image's binary run directly.
fn run_in_image(image: &Image, args: &[&str]) -> Output {
    if is_root() {
        Command::new("chroot")
            .arg(format!("--userspec={USER}"))
            .arg(&image.rootfs)
            .arg(format!("/{BINARY}"))
            .args(args)
            .env_clear()
            // Where the host's chroot is; inside, the entrypoint is absolute.
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", "/home/nonroot")
            .current_dir(&image.rootfs)
            .output()
            .unwrap()
    } else {
        eprintln!("not root: running the image's binary without chroot");
        Command::new(image.rootfs.join(BINARY))
            .args(args)
            .env_clear()
            .current_dir(image.rootfs.join("home/nonroot"))
            .output()
            .unwrap()
    }
}

fn in_image_ok(image: &Image, args: &[&str]) -> String {
    let output = run_in_image(image, args);
    assert!(
        output.status.success(),
        "trustplane {args:?} in the image failed:\n{}",
        text(&output)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The path `path` inside the image as the binary sees it: absolute under
/// chroot, else in the unpacked tree.
fn image_path(image: &Image, path: &str) -> String {
    if is_root() {
        format!("/{path}")
    } else {
        image.rootfs.join(path).to_string_lossy().into_owned()
    }
}

#[test]
fn image_config_runs_the_binary_as_non_root_with_only_an_entrypoint() {
    let config = &image().config;
    assert_eq!(config["os"], "linux", "{config}");
    assert_eq!(config["architecture"], "amd64", "{config}");
    let run = &config["config"];
    assert_eq!(run["User"], USER, "{config}");
    assert_eq!(
        run["Entrypoint"],
        serde_json::json!(["/usr/local/bin/trustplane"]),
        "{config}"
    );
    assert!(run["Cmd"].is_null(), "no Cmd: {config}");
    assert_eq!(run["WorkingDir"], "/home/nonroot", "{config}");
}

#[test]
fn image_filesystem_is_the_binary_its_user_and_ca_bundle_and_no_shell() {
    let image = image();
    let paths: Vec<&str> = image.entries.keys().map(String::as_str).collect();
    assert_eq!(
        paths,
        [
            "etc",
            "etc/group",
            "etc/passwd",
            "etc/ssl",
            "etc/ssl/certs",
            "etc/ssl/certs/ca-certificates.crt",
            "home",
            "home/nonroot",
            "tmp",
            "usr",
            "usr/local",
            "usr/local/bin",
            "usr/local/bin/trustplane",
        ],
        "exactly the files deploy/image/rootfs.sh lays out"
    );
    for shell in ["bin/sh", "bin/bash", "usr/bin/sh", "bin/busybox"] {
        assert!(!image.entries.contains_key(shell), "{shell} in the image");
        assert!(!image.rootfs.join(shell).exists(), "{shell} in the rootfs");
    }
    for (path, entry) in &image.entries {
        let owner = if path == "home/nonroot" { NONROOT } else { 0 };
        assert_eq!((entry.uid, entry.gid), (owner, owner), "owner of {path}");
        assert!(
            entry.kind.is_file() || entry.kind.is_dir(),
            "{path}: only files and directories, no links"
        );
    }
    let mode = |path: &str| image.entries[path].mode & 0o7777;
    assert_eq!(mode(BINARY), 0o755);
    assert_eq!(mode("home/nonroot"), 0o700);
    assert_eq!(mode("tmp"), 0o1777);
    assert_eq!(mode("etc/passwd"), 0o644);

    let passwd = std::fs::read_to_string(image.rootfs.join("etc/passwd")).unwrap();
    assert!(
        passwd
            .lines()
            .any(|line| line == "nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin"),
        "{passwd}"
    );
    let group = std::fs::read_to_string(image.rootfs.join("etc/group")).unwrap();
    assert!(
        group.lines().any(|line| line == "nonroot:x:65532:"),
        "{group}"
    );
    let bundle =
        std::fs::read_to_string(image.rootfs.join("etc/ssl/certs/ca-certificates.crt")).unwrap();
    assert!(
        bundle.matches("-----BEGIN CERTIFICATE-----").count() > 10,
        "a CA bundle with the public roots"
    );
}

/// The Dockerfile's final stage says what the crane-built image has.
#[test]
fn image_config_matches_the_dockerfiles_final_stage() {
    let dockerfile = std::fs::read_to_string(Path::new(REPOSITORY).join("Dockerfile")).unwrap();
    let final_stage = dockerfile
        .rsplit_once("\nFROM ")
        .map(|(_, stage)| stage)
        .unwrap();
    assert!(final_stage.starts_with("scratch"), "{final_stage}");
    let instruction = |name: &str| -> Vec<String> {
        final_stage
            .lines()
            .filter_map(|line| line.strip_prefix(name))
            .filter_map(|rest| rest.strip_prefix(' '))
            .map(|rest| rest.trim().to_string())
            .collect()
    };
    let run = &image().config["config"];
    assert_eq!(instruction("USER"), [run["User"].as_str().unwrap()]);
    assert_eq!(
        instruction("WORKDIR"),
        [run["WorkingDir"].as_str().unwrap()]
    );
    let entrypoint: Vec<Value> = instruction("ENTRYPOINT")
        .iter()
        .map(|exec_form| serde_json::from_str(exec_form).unwrap())
        .collect();
    assert_eq!(entrypoint, [run["Entrypoint"].clone()]);
    let labels: BTreeMap<String, String> = instruction("LABEL")
        .iter()
        .map(|label| {
            let (key, value) = label.split_once('=').unwrap();
            (key.to_string(), serde_json::from_str(value).unwrap())
        })
        .collect();
    let image_labels: BTreeMap<String, String> =
        serde_json::from_value(run["Labels"].clone()).unwrap();
    assert_eq!(labels, image_labels);
    assert!(labels.contains_key("org.opencontainers.image.title"));
    assert!(instruction("ENV").is_empty() && run["Env"].is_null());
}

/// An ELF with no program interpreter (PT_INTERP) and no shared library
/// (DT_NEEDED) needs nothing from the filesystem to start.
#[test]
fn binary_in_the_image_is_static() {
    let elf = std::fs::read(image().rootfs.join(BINARY)).unwrap();
    assert_eq!(&elf[..4], b"\x7fELF", "an ELF file");
    assert_eq!(elf[4], 2, "64-bit");
    assert_eq!(elf[5], 1, "little-endian");
    let u16_at = |at: usize| u16::from_le_bytes(elf[at..at + 2].try_into().unwrap());
    let u32_at = |at: usize| u32::from_le_bytes(elf[at..at + 4].try_into().unwrap());
    let u64_at = |at: usize| u64::from_le_bytes(elf[at..at + 8].try_into().unwrap());
    assert_eq!(u16_at(18), 62, "x86-64 (EM_X86_64)");
    let program_headers = u64_at(32) as usize;
    let header_size = u16_at(54) as usize;
    let count = u16_at(56) as usize;
    assert!(count > 0);
    for index in 0..count {
        let header = program_headers + index * header_size;
        let kind = u32_at(header);
        assert_ne!(kind, 3, "a PT_INTERP: the binary needs a dynamic loader");
        if kind == 2 {
            // PT_DYNAMIC (a static PIE relocates itself): no DT_NEEDED (1).
            let offset = u64_at(header + 8) as usize;
            let size = u64_at(header + 32) as usize;
            for entry in (offset..offset + size).step_by(16) {
                let tag = u64_at(entry);
                if tag == 0 {
                    break;
                }
                assert_ne!(tag, 1, "a DT_NEEDED: the binary needs a shared library");
            }
        }
    }
}

#[test]
fn binary_in_the_image_prints_its_version_and_verifies_cacerts_it_issued() {
    let image = image();
    let version = in_image_ok(image, &["--version"]);
    assert_eq!(
        version.trim(),
        format!("trustplane {}", env!("CARGO_PKG_VERSION"))
    );

    // The whole offline flow, run by 65532 in its home: a CA, an
    // intermediate for one cluster written as Istio's cacerts, and verify.
    let data = image_path(image, "home/nonroot/data");
    let cacerts = image_path(image, "home/nonroot/west");
    in_image_ok(image, &["init", "--data-dir", &data]);
    in_image_ok(
        image,
        &[
            "issue",
            "--cluster",
            "west",
            "--out",
            &cacerts,
            "--data-dir",
            &data,
        ],
    );
    let verified = in_image_ok(image, &["verify", &cacerts, "-o", "json"]);
    let verified: Value = serde_json::from_str(&verified).unwrap();
    assert_eq!(verified["passed"], true, "{verified}");

    // verify checks: the chain of another cluster's cacerts does not match
    // this key.
    let east = image_path(image, "home/nonroot/east");
    in_image_ok(
        image,
        &[
            "issue",
            "--cluster",
            "east",
            "--out",
            &east,
            "--data-dir",
            &data,
        ],
    );
    let west = image.rootfs.join("home/nonroot/west");
    std::fs::copy(
        image.rootfs.join("home/nonroot/east/ca-key.pem"),
        west.join("ca-key.pem"),
    )
    .unwrap();
    let failed = run_in_image(image, &["verify", &cacerts]);
    assert!(
        !failed.status.success(),
        "verify accepted a key that is not its certificate's:\n{}",
        text(&failed)
    );
    assert!(
        text(&failed).contains("ca-key.pem does not belong to ca-cert.pem"),
        "{}",
        text(&failed)
    );
}

/// The server, the agents and TLS between them, from the image: `trustplane
/// demo` runs the whole flow on loopback, in the image's /tmp.
#[test]
fn binary_in_the_image_runs_the_demo_server_and_agents() {
    let demo = in_image_ok(image(), &["demo"]);
    assert!(
        demo.lines()
            .any(|line| line.starts_with("OK: east and west each hold their own intermediate")),
        "{demo}"
    );
}
