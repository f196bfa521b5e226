//! Process hardening at start: a trustplane process holds private keys (the
//! root key, the KEK, the admin key, an agent's client key) in memory, so it
//! leaves no core dump behind and cannot be ptraced or have its memory read
//! through `/proc/<pid>/mem` by other processes of the same user.
//!
//! Not here: how key files are read (`files::read_private`) and how keys
//! are kept in memory (`Zeroizing` types in `ca` and `signer`).

/// Sets the core-file size limit (soft and hard) to 0 and marks the process
/// not dumpable (`PR_SET_DUMPABLE` 0), which also stops a core-dump pipe
/// handler and same-user ptrace. Called first by the `trustplane` binary;
/// children inherit the limit.
///
/// Errors: the operating system's, naming what failed.
pub fn disable_core_dumps() -> Result<(), HardeningError> {
    rustix::process::setrlimit(
        rustix::process::Resource::Core,
        rustix::process::Rlimit {
            current: Some(0),
            maximum: Some(0),
        },
    )
    .map_err(|source| HardeningError {
        what: "set the core file size limit to 0",
        source: source.into(),
    })?;
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable).map_err(
        |source| HardeningError {
            what: "mark the process not dumpable",
            source: source.into(),
        },
    )
}

/// A hardening step the operating system refused.
#[derive(Debug, thiserror::Error)]
#[error("cannot {what} (it keeps private keys out of core dumps)")]
pub struct HardeningError {
    /// The step.
    pub what: &'static str,
    /// The operating system's error.
    #[source]
    pub source: std::io::Error,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn core_dumps_are_off_after_the_call() {
        disable_core_dumps().unwrap();
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
        let core = limits
            .lines()
            .find(|line| line.starts_with("Max core file size"))
            .unwrap_or_default();
        assert_eq!(
            core.split_whitespace().collect::<Vec<_>>(),
            ["Max", "core", "file", "size", "0", "0", "bytes"],
            "{core}"
        );
        assert_eq!(
            rustix::process::dumpable_behavior().unwrap(),
            rustix::process::DumpableBehavior::NotDumpable
        );
    }
}
