//! Durable file writes, the one implementation every module uses: a new file
//! created with an exact mode and synced, and a file replaced atomically
//! (temporary file in the same directory, fsync, rename, fsync of the
//! directory), so that a crash leaves the old contents or the new ones,
//! never a mix. Files holding keys are created 0600 through here, and read
//! through [`read_private`], which refuses one that group or others can
//! access (as ssh does).

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

/// Mode of files holding private keys.
pub const PRIVATE_MODE: u32 = 0o600;
/// Mode of files holding certificates and other public data.
pub const PUBLIC_MODE: u32 = 0o644;

/// A file-system operation that failed, with what was done to which path.
#[derive(Debug, thiserror::Error)]
#[error("could not {action} {}", path.display())]
pub struct FileError {
    /// What was being done, e.g. "create", "rename".
    pub action: &'static str,
    /// The path it was done to.
    pub path: PathBuf,
    /// The operating system's error.
    #[source]
    pub source: std::io::Error,
}

/// A private file (a key, the KEK) that cannot be read, or that group or
/// others can access.
#[derive(Debug, thiserror::Error)]
pub enum PrivateFileError {
    /// Opening or reading it failed (`source.source.kind()` is `NotFound`
    /// for a missing file).
    #[error(transparent)]
    File(#[from] FileError),
    /// Group or others have some access: the key may have been read by
    /// someone else already, and is not used.
    #[error(
        "{} is accessible by group or others (mode {mode:03o}); a private key must be readable by its owner only: run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    TooOpen {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

impl PrivateFileError {
    /// Whether the file does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, PrivateFileError::File(error) if error.source.kind() == std::io::ErrorKind::NotFound)
    }
}

/// Reads a file holding a private key or the KEK into a zeroizing buffer,
/// after checking on the open handle (so the file read is the file checked)
/// that neither group nor others have any access to it — or that it is a
/// [read-only group mount](is_read_only_group_mount), which is how a
/// Kubernetes Secret volume reaches a non-root pod.
///
/// Errors: [`PrivateFileError::TooOpen`] naming the file, its mode and the
/// `chmod` that fixes it; [`PrivateFileError::File`] when it cannot be read.
pub fn read_private(path: &Path) -> Result<Zeroizing<String>, PrivateFileError> {
    let mut handle = File::open(path).map_err(failed("open", path))?;
    let metadata = handle.metadata().map_err(failed("read", path))?;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 && !is_read_only_group_mount(&metadata) {
        return Err(PrivateFileError::TooOpen {
            path: path.to_path_buf(),
            mode,
        });
    }
    // Room for the whole file up front: a reallocation could leave an
    // unwiped copy of the key behind.
    let capacity = usize::try_from(metadata.len())
        .unwrap_or(0)
        .saturating_add(1);
    let mut text = Zeroizing::new(String::with_capacity(capacity));
    handle
        .read_to_string(&mut text)
        .map_err(failed("read", path))?;
    Ok(text)
}

/// Whether `metadata` is a file as the kubelet projects a Secret volume into
/// a pod that runs as a non-root user with `fsGroup`: owned by root, no
/// write bit for anyone, readable by its group, no access for others, and
/// the group is one this process is in (the pod's `fsGroup`). The kubelet
/// always adds group read there (`defaultMode: 0400` becomes 0440,
/// kubernetes/kubernetes#57923), and without `fsGroup` a non-root user
/// cannot read the file at all. Only the pod's own processes hold that
/// group, so this is as private as 0600 owned by the process's user.
fn is_read_only_group_mount(metadata: &fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    let mode = metadata.mode() & 0o777;
    if metadata.uid() != 0 || mode & 0o222 != 0 || mode & 0o007 != 0 || mode & 0o040 == 0 {
        return false;
    }
    let group = metadata.gid();
    rustix::process::getegid().as_raw() == group
        || rustix::process::getgroups()
            .map(|groups| groups.iter().any(|member| member.as_raw() == group))
            .unwrap_or(false)
}

/// An error constructor for `action` on `path`, for `map_err`.
pub fn failed(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> FileError {
    let path = path.to_path_buf();
    move |source| FileError {
        action,
        path,
        source,
    }
}

/// Creates `path` (it must not exist) with exactly `mode` whatever the umask,
/// writes `bytes` and syncs the file.
///
/// Errors: [`FileError`] naming the step and the path.
pub fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), FileError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(failed("create", path))?;
    file.set_permissions(Permissions::from_mode(mode))
        .map_err(failed("set permissions on", path))?;
    file.write_all(bytes).map_err(failed("write", path))?;
    file.sync_all().map_err(failed("sync", path))
}

/// Mode of directories holding private files (the data directory, the
/// admin credential).
pub const PRIVATE_DIRECTORY_MODE: u32 = 0o700;

/// Creates `path` and any missing parents with mode 0700, and sets `path`
/// itself to exactly 0700 if it existed: it holds keys, so only its owner
/// may list or enter it.
///
/// Errors: [`FileError`].
pub fn create_private_dir(path: &Path) -> Result<(), FileError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIRECTORY_MODE)
        .create(path)
        .map_err(failed("create directory", path))?;
    fs::set_permissions(path, Permissions::from_mode(PRIVATE_DIRECTORY_MODE))
        .map_err(failed("set permissions on", path))
}

/// Replaces `path` with `bytes` in one rename, the new file created with
/// exactly `mode`; the directory is synced afterwards so that the rename is
/// durable. A reader sees the old contents or the new ones, never a mix.
///
/// Errors: [`FileError`]; the temporary file is removed on failure.
pub fn replace_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), FileError> {
    let directory = parent_directory(path);
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .ok_or_else(|| FileError {
            action: "write",
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name"),
        })?;
    let temporary = directory.join(format!(".{name}.{}.tmp", random_suffix()));
    let result = write_new(&temporary, bytes, mode)
        .and_then(|()| fs::rename(&temporary, path).map_err(failed("rename", &temporary)))
        .and_then(|()| sync_directory(directory));
    if result.is_err() {
        // Best effort: the error being returned matters more than this one.
        let _ = fs::remove_file(&temporary);
    }
    result
}

/// Makes a creation or rename in `directory` durable.
///
/// Errors: [`FileError`].
pub fn sync_directory(directory: &Path) -> Result<(), FileError> {
    File::open(directory)
        .and_then(|handle| handle.sync_all())
        .map_err(failed("sync directory", directory))
}

/// The directory holding `path` (`.` for a bare file name).
pub fn parent_directory(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// 16 random hex digits for a temporary name (uniqueness is also enforced
/// by `create_new`, so a failing RNG only risks a clash that is refused).
pub fn random_suffix() -> String {
    let mut bytes = [0u8; 8];
    if SystemRandom::new().fill(&mut bytes).is_err() {
        bytes = u64::from(std::process::id()).to_le_bytes();
    }
    hex::encode(bytes)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_new_file_gets_exactly_its_mode_and_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        write_new(&path, b"secret", PRIVATE_MODE).unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(fs::read(&path).unwrap(), b"secret");
        let error = write_new(&path, b"other", PRIVATE_MODE).unwrap_err();
        assert_eq!(error.action, "create");
        assert_eq!(fs::read(&path).unwrap(), b"secret");
    }

    #[test]
    fn replacing_swaps_the_contents_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cert.pem");
        replace_atomically(&path, b"one", PUBLIC_MODE).unwrap();
        replace_atomically(&path, b"two", PRIVATE_MODE).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(mode(&path), 0o600);
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn a_private_file_open_to_group_or_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        write_new(&path, b"secret", 0o644).unwrap();
        let error = read_private(&path).unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains(&format!(
                "{} is accessible by group or others (mode 644)",
                path.display()
            )),
            "{message}"
        );
        assert!(
            message.contains(&format!("chmod 600 {}", path.display())),
            "{message}"
        );
        for mode in [0o640, 0o604, 0o660, 0o601] {
            fs::set_permissions(&path, Permissions::from_mode(mode)).unwrap();
            assert!(
                matches!(read_private(&path), Err(PrivateFileError::TooOpen { mode: found, .. }) if found == mode)
            );
        }
        fs::set_permissions(&path, Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_private(&path).unwrap().as_str(), "secret");
        fs::set_permissions(&path, Permissions::from_mode(0o400)).unwrap();
        assert_eq!(read_private(&path).unwrap().as_str(), "secret");
        assert!(
            read_private(&dir.path().join("absent"))
                .unwrap_err()
                .is_not_found()
        );
    }

    #[test]
    fn a_read_only_group_mount_like_a_kubernetes_secret_volume_is_read() {
        use std::os::unix::fs::{MetadataExt, chown};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek");
        write_new(&path, b"secret", 0o440).unwrap();
        let owner = fs::metadata(&path).unwrap().uid();
        assert_eq!(
            owner, 0,
            "this test needs root (as CI runs) to make a root-owned file like the kubelet's"
        );
        // root:<our group> 0440, as the kubelet leaves it with fsGroup.
        assert_eq!(read_private(&path).unwrap().as_str(), "secret");
        // Any write bit, any access for others, or a group we are not in: refused.
        for mode in [0o460, 0o444, 0o640, 0o441] {
            fs::set_permissions(&path, Permissions::from_mode(mode)).unwrap();
            assert!(
                matches!(read_private(&path), Err(PrivateFileError::TooOpen { mode: found, .. }) if found == mode),
                "mode {mode:o} was read"
            );
        }
        fs::set_permissions(&path, Permissions::from_mode(0o440)).unwrap();
        let stranger = 54_321;
        assert!(
            !rustix::process::getgroups()
                .unwrap()
                .iter()
                .any(|group| group.as_raw() == stranger)
        );
        chown(&path, None, Some(stranger)).unwrap();
        assert!(matches!(
            read_private(&path),
            Err(PrivateFileError::TooOpen { mode: 0o440, .. })
        ));
        // Owned by someone else than root: refused, even in our group.
        chown(
            &path,
            Some(stranger),
            Some(rustix::process::getegid().as_raw()),
        )
        .unwrap();
        assert!(matches!(
            read_private(&path),
            Err(PrivateFileError::TooOpen { mode: 0o440, .. })
        ));
    }

    #[test]
    fn private_directories_are_0700_new_or_existing() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a").join("b");
        create_private_dir(&nested).unwrap();
        assert_eq!(mode(&nested), 0o700);
        assert_eq!(mode(&dir.path().join("a")), 0o700);
        fs::set_permissions(&nested, Permissions::from_mode(0o755)).unwrap();
        create_private_dir(&nested).unwrap();
        assert_eq!(mode(&nested), 0o700);
    }

    #[test]
    fn a_failed_replacement_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir").join("file");
        let error = replace_atomically(&path, b"x", PUBLIC_MODE).unwrap_err();
        assert_eq!(error.action, "create");
        assert!(error.to_string().contains("missing-dir"));
    }
}
