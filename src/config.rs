//! Where trustplane's settings come from, and the one module that reads the
//! process environment.
//!
//! Owns: every `std::env` read of our own outside tests and clap (the
//! key-encryption key given as `TRUSTPLANE_KEK`, the temporary directory),
//! and the one lookup order for the key-encryption key ([`kek_source`]).
//! Libraries read their own conventional variables themselves: `RUST_LOG`
//! (tracing's filter) and `KUBECONFIG` (kube's configuration inference).
//!
//! Does not own: flags. Every flag `--foo-bar` that may also come from the
//! environment is declared in `cli` with clap's `env = "TRUSTPLANE_FOO_BAR"`,
//! so a flag and its environment variable always share one name, one default
//! and one help text. Nor does it parse or check values: the KEK's form is
//! checked by [`crate::signer::sealed::Kek`].

use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

pub use crate::signer::sealed::KEK_ENV;

/// Environment variables an earlier release read, and the names that
/// replaced them (one flag, one variable, one name).
pub const RENAMED_VARIABLES: &[(&str, &str)] = &[
    ("TRUSTPLANE_CA_CERT", "TRUSTPLANE_SERVER_CA"),
    ("TRUSTPLANE_LOG", "TRUSTPLANE_LOG_LEVEL"),
    ("TRUSTPLANE_SERVER_NAMES", "TRUSTPLANE_SERVER_NAME"),
    ("POD_NAME", "TRUSTPLANE_LEASE_HOLDER"),
];

/// The renamed variables that are set in this process's environment, as
/// `(old, new)`: they are no longer read, so the caller warns about each.
#[allow(clippy::disallowed_methods)] // the one module that reads the environment
pub fn renamed_variables_in_use() -> Vec<(&'static str, &'static str)> {
    RENAMED_VARIABLES
        .iter()
        .copied()
        .filter(|(old, new)| std::env::var_os(old).is_some() && std::env::var_os(new).is_none())
        .collect()
}

/// The name of the local OS user running this process (`USER`, else
/// `LOGNAME`), or `local`: the actor of offline commands in the audit trail.
#[allow(clippy::disallowed_methods)] // the one module that reads the environment
pub fn local_user() -> String {
    ["USER", "LOGNAME"]
        .iter()
        .filter_map(|name| std::env::var(name).ok())
        .map(|name| name.trim().to_string())
        .find(|name| !name.is_empty())
        .map_or_else(|| "local".to_string(), |name| format!("local:{name}"))
}

/// Where the key-encryption key (KEK) comes from; the first that applies wins:
///
/// 1. `--kek-file <file>` (or its environment form `TRUSTPLANE_KEK_FILE`);
/// 2. the KEK itself, base64, in the environment variable `TRUSTPLANE_KEK`;
/// 3. the file `<data-dir>/kek` (`init` and `demo` create it when missing).
#[derive(Clone, PartialEq, Eq)]
pub enum KekSource {
    /// The KEK is in this file (given, or the default `<data-dir>/kek`).
    File(PathBuf),
    /// The KEK's text, from [`KEK_ENV`]; wiped on drop.
    Environment(Zeroizing<String>),
}

impl std::fmt::Debug for KekSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KekSource::File(path) => f.debug_tuple("File").field(path).finish(),
            KekSource::Environment(_) => f.write_str("Environment([redacted])"),
        }
    }
}

impl KekSource {
    /// Applies the lookup order to values already read: `kek_file` (the
    /// flag), then `environment` (the value of [`KEK_ENV`]), then
    /// `default_file`. Pure.
    pub fn choose(
        kek_file: Option<&Path>,
        environment: Option<Zeroizing<String>>,
        default_file: &Path,
    ) -> KekSource {
        match (kek_file, environment) {
            (Some(path), _) => KekSource::File(path.to_path_buf()),
            (None, Some(text)) => KekSource::Environment(text),
            (None, None) => KekSource::File(default_file.to_path_buf()),
        }
    }
}

/// The one KEK lookup order ([`KekSource`]): `kek_file` if given, else
/// [`KEK_ENV`] if set, else `default_file` (`<data-dir>/kek`).
pub fn kek_source(kek_file: Option<&Path>, default_file: &Path) -> KekSource {
    // Read only when no file is given, so the secret is not copied for nothing.
    let environment = match kek_file {
        Some(_) => None,
        None => kek_from_environment(),
    };
    KekSource::choose(kek_file, environment, default_file)
}

/// The value of [`KEK_ENV`], if it is set and valid Unicode.
#[allow(clippy::disallowed_methods)] // the one module that reads the environment
fn kek_from_environment() -> Option<Zeroizing<String>> {
    std::env::var(KEK_ENV).ok().map(Zeroizing::new)
}

/// The directory for temporary files (`TMPDIR`, else `/tmp`).
pub fn temporary_directory() -> PathBuf {
    std::env::temp_dir()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(value: &str) -> Option<Zeroizing<String>> {
        Some(Zeroizing::new(value.to_string()))
    }

    #[test]
    fn the_flag_wins_over_the_environment_and_the_default() {
        let source = KekSource::choose(
            Some(Path::new("/secrets/kek")),
            text("from-env"),
            Path::new("data/kek"),
        );
        assert_eq!(source, KekSource::File(PathBuf::from("/secrets/kek")));
    }

    #[test]
    fn the_environment_wins_over_the_default_file() {
        let source = KekSource::choose(None, text("from-env"), Path::new("data/kek"));
        assert_eq!(
            source,
            KekSource::Environment(Zeroizing::new("from-env".into()))
        );
    }

    #[test]
    fn the_default_file_is_last() {
        let source = KekSource::choose(None, None, Path::new("data/kek"));
        assert_eq!(source, KekSource::File(PathBuf::from("data/kek")));
    }

    #[test]
    fn debug_never_shows_the_key() {
        let shown = format!(
            "{:?}",
            KekSource::Environment(Zeroizing::new("secret".into()))
        );
        assert!(!shown.contains("secret"), "{shown}");
    }
}
