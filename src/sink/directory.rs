//! A `cacerts` directory (istiod's `/etc/cacerts`) updated the way the
//! kubelet updates a Secret volume (Kubernetes' AtomicWriter), so that
//! istiod's file watcher never sees a half-written set:
//!
//! ```text
//! DIR/..<unique>/{ca-cert.pem, ca-key.pem, cert-chain.pem, root-cert.pem}
//! DIR/..data       -> ..<unique>          (switched by one rename)
//! DIR/ca-cert.pem  -> ..data/ca-cert.pem  (and the other three alike)
//! ```

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::contract::{
    CA_CERT_FILE, CA_KEY_FILE, CERT_CHAIN_FILE, CacertsMaterial, ClusterSink, ROOT_CERT_FILE,
    SinkError,
};
use crate::ca::CacertsFiles;
use crate::files::{self, PRIVATE_MODE, PUBLIC_MODE};

/// The symlink that names the current timestamped directory.
const DATA_LINK: &str = "..data";
/// The symlink created next to [`DATA_LINK`] and renamed over it.
const DATA_LINK_STAGING: &str = "..data_tmp";

/// A directory holding Istio's four `cacerts` files, written atomically.
#[derive(Clone, Debug)]
pub struct DirectorySink {
    dir: PathBuf,
}

impl DirectorySink {
    /// A sink writing into `dir` (created on first write if missing).
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// The directory this sink writes.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[async_trait::async_trait]
impl ClusterSink for DirectorySink {
    fn describe(&self) -> String {
        format!("directory {}", self.dir.display())
    }

    fn kind(&self) -> &'static str {
        "directory"
    }

    async fn read(&self) -> Result<Option<CacertsFiles>, SinkError> {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || read_files(&dir))
            .await
            .map_err(SinkError::Background)?
    }

    async fn write(&self, material: &CacertsMaterial) -> Result<(), SinkError> {
        let dir = self.dir.clone();
        let material = material.clone();
        // One blocking task does the whole switch, so a caller that stops
        // waiting (agent shutdown) never interrupts it half-way.
        tokio::task::spawn_blocking(move || write_files(&dir, &material))
            .await
            .map_err(SinkError::Background)?
    }
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SinkError {
    let path = path.to_path_buf();
    move |source| SinkError::Io {
        action,
        path,
        source,
    }
}

/// Reads the four user-visible names (through their symlinks), as istiod does.
fn read_files(dir: &Path) -> Result<Option<CacertsFiles>, SinkError> {
    match fs::metadata(dir) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(io_error("inspect", dir)(error)),
        Ok(metadata) if !metadata.is_dir() => {
            return Err(SinkError::UnexpectedEntry {
                path: dir.to_path_buf(),
                found: "not a directory",
            });
        }
        Ok(_) => {}
    }
    let files = CacertsFiles {
        ca_cert: read_optional(&dir.join(CA_CERT_FILE))?,
        ca_key: read_optional(&dir.join(CA_KEY_FILE))?.map(Zeroizing::new),
        cert_chain: read_optional(&dir.join(CERT_CHAIN_FILE))?,
        root_cert: read_optional(&dir.join(ROOT_CERT_FILE))?,
    };
    let nothing = files.ca_cert.is_none()
        && files.ca_key.is_none()
        && files.cert_chain.is_none()
        && files.root_cert.is_none();
    Ok(if nothing { None } else { Some(files) })
}

fn read_optional(path: &Path) -> Result<Option<String>, SinkError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(io_error("read", path)(error)),
    }
}

fn write_files(dir: &Path, material: &CacertsMaterial) -> Result<(), SinkError> {
    fs::create_dir_all(dir).map_err(io_error("create directory", dir))?;
    let data_link = dir.join(DATA_LINK);
    let previous = match fs::read_link(&data_link) {
        Ok(target) => Some(target),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
        Err(error) => return Err(io_error("read symlink", &data_link)(error)),
    };

    let (generation_name, generation_dir) = create_generation_dir(dir)?;
    let contents: [(&str, &str, u32); 4] = [
        (CA_CERT_FILE, &material.ca_cert_pem, PUBLIC_MODE),
        (CA_KEY_FILE, &material.ca_key_pem, PRIVATE_MODE),
        (CERT_CHAIN_FILE, &material.cert_chain_pem, PUBLIC_MODE),
        (ROOT_CERT_FILE, &material.root_cert_pem, PUBLIC_MODE),
    ];
    for (name, text, mode) in contents {
        files::write_new(&generation_dir.join(name), text.as_bytes(), mode)?;
    }
    files::sync_directory(&generation_dir)?;

    // The atomic switch: a new symlink renamed over `..data`.
    let staging = dir.join(DATA_LINK_STAGING);
    remove_if_present(&staging)?;
    symlink(&generation_name, &staging).map_err(io_error("create symlink", &staging))?;
    fs::rename(&staging, &data_link).map_err(io_error("rename", &staging))?;

    for (name, _, _) in contents {
        ensure_visible_link(dir, name)?;
    }
    files::sync_directory(dir)?;
    remove_stale_generations(dir, &generation_name, previous.as_deref())
}

/// Creates `DIR/..<random>` and returns its name and path.
fn create_generation_dir(dir: &Path) -> Result<(String, PathBuf), SinkError> {
    let mut attempt = 0;
    loop {
        let name = format!("..{}", files::random_suffix());
        let path = dir.join(&name);
        match fs::DirBuilder::new().create(&path) {
            Ok(()) => {
                fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
                    .map_err(io_error("set permissions on", &path))?;
                return Ok((name, path));
            }
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists && attempt < 8 => {
                attempt += 1;
            }
            Err(error) => return Err(io_error("create directory", &path)(error)),
        }
    }
}

fn remove_if_present(path: &Path) -> Result<(), SinkError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(io_error("remove", path)(error)),
    }
}

/// Makes `DIR/<name>` a symlink to `..data/<name>`. A regular file left by
/// an older tool is replaced by renaming a new symlink over it, so the name
/// never disappears.
fn ensure_visible_link(dir: &Path, name: &str) -> Result<(), SinkError> {
    let visible = dir.join(name);
    let target = Path::new(DATA_LINK).join(name);
    match fs::symlink_metadata(&visible) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            symlink(&target, &visible).map_err(io_error("create symlink", &visible))
        }
        Err(error) => Err(io_error("inspect", &visible)(error)),
        Ok(metadata) if metadata.is_dir() => Err(SinkError::UnexpectedEntry {
            path: visible,
            found: "a directory",
        }),
        Ok(metadata) => {
            if metadata.file_type().is_symlink()
                && fs::read_link(&visible).map_err(io_error("read symlink", &visible))? == target
            {
                return Ok(());
            }
            let staging = dir.join(format!("..{name}_tmp"));
            remove_if_present(&staging)?;
            symlink(&target, &staging).map_err(io_error("create symlink", &staging))?;
            fs::rename(&staging, &visible).map_err(io_error("rename", &staging))
        }
    }
}

/// Removes the previous generation and any generation a crashed or
/// interrupted write left behind; keeps `current`.
fn remove_stale_generations(
    dir: &Path,
    current: &str,
    previous: Option<&Path>,
) -> Result<(), SinkError> {
    let entries = fs::read_dir(dir).map_err(io_error("list", dir))?;
    for entry in entries {
        let entry = entry.map_err(io_error("list", dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with("..") || name == current || name == DATA_LINK {
            continue;
        }
        let path = entry.path();
        let is_real_dir = fs::symlink_metadata(&path)
            .map(|metadata| metadata.is_dir())
            .unwrap_or(false);
        if is_real_dir {
            fs::remove_dir_all(&path).map_err(io_error("remove", &path))?;
        }
    }
    if let Some(previous) = previous {
        tracing::debug!(previous = %previous.display(), current, "switched cacerts generation");
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use super::*;

    fn material(marker: &str) -> CacertsMaterial {
        CacertsMaterial {
            ca_cert_pem: format!(
                "-----BEGIN CERTIFICATE-----\n{marker}\n-----END CERTIFICATE-----\n"
            ),
            ca_key_pem: Zeroizing::new(format!(
                "-----BEGIN PRIVATE KEY-----\n{marker}\n-----END PRIVATE KEY-----\n"
            )),
            cert_chain_pem: format!(
                "-----BEGIN CERTIFICATE-----\n{marker}\n-----END CERTIFICATE-----\nchain\n"
            ),
            root_cert_pem: format!(
                "-----BEGIN CERTIFICATE-----\n{marker}\n-----END CERTIFICATE-----\nroot\n"
            ),
            bundle_version: 1,
        }
    }

    fn generations(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .filter(|name| name.starts_with("..") && name != DATA_LINK)
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn read_of_a_missing_directory_is_none() {
        let temp = tempfile::tempdir().unwrap();
        let sink = DirectorySink::new(temp.path().join("absent"));
        assert!(sink.read().await.unwrap().is_none());
        let empty = DirectorySink::new(temp.path().to_path_buf());
        assert!(empty.read().await.unwrap().is_none());
        assert_eq!(
            empty.describe(),
            format!("directory {}", temp.path().display())
        );
    }

    #[tokio::test]
    async fn read_returns_partial_sets() {
        let temp = tempfile::tempdir().unwrap();
        fs::write(temp.path().join(CA_CERT_FILE), "cert only").unwrap();
        let sink = DirectorySink::new(temp.path().to_path_buf());
        let files = sink.read().await.unwrap().unwrap();
        assert_eq!(files.ca_cert.as_deref(), Some("cert only"));
        assert!(files.ca_key.is_none() && files.cert_chain.is_none() && files.root_cert.is_none());
    }

    #[tokio::test]
    async fn write_then_read_returns_the_same_set() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("cacerts");
        let sink = DirectorySink::new(dir.clone());
        let written = material("first");
        sink.write(&written).await.unwrap();
        let files = sink.read().await.unwrap().unwrap();
        assert_eq!(files.ca_cert.as_deref(), Some(written.ca_cert_pem.as_str()));
        assert_eq!(
            files.ca_key.as_deref(),
            Some(&written.ca_key_pem.to_string())
        );
        assert_eq!(
            files.cert_chain.as_deref(),
            Some(written.cert_chain_pem.as_str())
        );
        assert_eq!(
            files.root_cert.as_deref(),
            Some(written.root_cert_pem.as_str())
        );
        for name in [CA_CERT_FILE, CA_KEY_FILE, CERT_CHAIN_FILE, ROOT_CERT_FILE] {
            let link = fs::read_link(dir.join(name)).unwrap();
            assert_eq!(link, Path::new(DATA_LINK).join(name));
        }
    }

    #[tokio::test]
    async fn second_write_switches_generation_and_removes_the_old_one() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().to_path_buf();
        let sink = DirectorySink::new(dir.clone());
        sink.write(&material("one")).await.unwrap();
        let first = fs::read_link(dir.join(DATA_LINK)).unwrap();
        assert_eq!(generations(&dir), vec![first.to_str().unwrap().to_string()]);

        sink.write(&material("two")).await.unwrap();
        let second = fs::read_link(dir.join(DATA_LINK)).unwrap();
        assert_ne!(first, second);
        assert!(!dir.join(&first).exists(), "old generation must be removed");
        assert_eq!(
            generations(&dir),
            vec![second.to_str().unwrap().to_string()]
        );
        let files = sink.read().await.unwrap().unwrap();
        assert_eq!(files.ca_cert.unwrap(), material("two").ca_cert_pem);
    }

    #[tokio::test]
    async fn key_file_is_owner_only_and_certificates_are_world_readable() {
        let temp = tempfile::tempdir().unwrap();
        let sink = DirectorySink::new(temp.path().to_path_buf());
        sink.write(&material("modes")).await.unwrap();
        let mode = |name: &str| {
            fs::metadata(temp.path().join(name))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode(CA_KEY_FILE), 0o600);
        assert_eq!(mode(CA_CERT_FILE), 0o644);
        assert_eq!(mode(CERT_CHAIN_FILE), 0o644);
        assert_eq!(mode(ROOT_CERT_FILE), 0o644);
    }

    #[tokio::test]
    async fn regular_file_layout_is_converted_to_symlinks() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().to_path_buf();
        for name in [CA_CERT_FILE, CA_KEY_FILE, CERT_CHAIN_FILE, ROOT_CERT_FILE] {
            fs::write(dir.join(name), format!("old {name}")).unwrap();
        }
        let sink = DirectorySink::new(dir.clone());
        let before = sink.read().await.unwrap().unwrap();
        assert_eq!(before.ca_cert.as_deref(), Some("old ca-cert.pem"));

        sink.write(&material("new")).await.unwrap();
        for name in [CA_CERT_FILE, CA_KEY_FILE, CERT_CHAIN_FILE, ROOT_CERT_FILE] {
            let metadata = fs::symlink_metadata(dir.join(name)).unwrap();
            assert!(
                metadata.file_type().is_symlink(),
                "{name} must be a symlink"
            );
            assert_eq!(
                fs::read_link(dir.join(name)).unwrap(),
                Path::new(DATA_LINK).join(name)
            );
        }
        let after = sink.read().await.unwrap().unwrap();
        assert_eq!(after.root_cert.unwrap(), material("new").root_cert_pem);
        let leftovers: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .filter(|name| name.ends_with("_tmp"))
            .collect();
        assert!(
            leftovers.is_empty(),
            "staging links left behind: {leftovers:?}"
        );
    }

    #[tokio::test]
    async fn leftovers_of_an_interrupted_write_are_cleaned_up() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().to_path_buf();
        let sink = DirectorySink::new(dir.clone());
        sink.write(&material("one")).await.unwrap();
        fs::create_dir(dir.join("..1.deadbeef")).unwrap();
        symlink("..1.deadbeef", dir.join(DATA_LINK_STAGING)).unwrap();
        sink.write(&material("two")).await.unwrap();
        let current = fs::read_link(dir.join(DATA_LINK)).unwrap();
        assert_eq!(
            generations(&dir),
            vec![current.to_str().unwrap().to_string()]
        );
    }

    #[tokio::test]
    async fn a_directory_in_place_of_a_file_is_reported() {
        let temp = tempfile::tempdir().unwrap();
        fs::create_dir(temp.path().join(CA_CERT_FILE)).unwrap();
        let sink = DirectorySink::new(temp.path().to_path_buf());
        let error = sink.write(&material("x")).await.unwrap_err();
        assert!(
            matches!(error, SinkError::UnexpectedEntry { .. }),
            "{error:?}"
        );
    }

    /// A reader that resolves `..data` once and reads the four files from
    /// that generation (how an atomic reader sees the directory) never sees
    /// files from two different writes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_reader_never_sees_a_mixed_set() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().to_path_buf();
        let sink = DirectorySink::new(dir.clone());
        sink.write(&material("marker-0000")).await.unwrap();

        let done = Arc::new(AtomicBool::new(false));
        let consistent_reads = Arc::new(AtomicUsize::new(0));
        let reader = {
            let (dir, done, consistent_reads) =
                (dir.clone(), done.clone(), consistent_reads.clone());
            std::thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    let Ok(generation) = fs::read_link(dir.join(DATA_LINK)) else {
                        continue;
                    };
                    let snapshot = dir.join(generation);
                    let texts: Result<Vec<String>, _> =
                        [CA_CERT_FILE, CA_KEY_FILE, CERT_CHAIN_FILE, ROOT_CERT_FILE]
                            .iter()
                            .map(|name| fs::read_to_string(snapshot.join(name)))
                            .collect();
                    // The writer removed this generation while we read: not a
                    // mixed set, just a stale snapshot.
                    let Ok(texts) = texts else { continue };
                    let markers: Vec<&str> = texts
                        .iter()
                        .map(|text| text.lines().nth(1).unwrap_or(""))
                        .collect();
                    assert!(
                        markers.iter().all(|marker| *marker == markers[0]),
                        "mixed set: {markers:?}"
                    );
                    assert!(markers[0].starts_with("marker-"));
                    consistent_reads.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        for round in 1..=200 {
            sink.write(&material(&format!("marker-{round:04}")))
                .await
                .unwrap();
        }
        done.store(true, Ordering::Relaxed);
        reader.join().unwrap();
        assert!(consistent_reads.load(Ordering::Relaxed) > 0);
        let files = sink.read().await.unwrap().unwrap();
        assert!(files.ca_cert.unwrap().contains("marker-0200"));
        assert_eq!(generations(&dir).len(), 1);
    }
}
