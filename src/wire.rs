//! The typed vocabulary on the wire: conversions between the Rust enums
//! (rotation phase and outcome, cluster state and mode, secret format) and
//! their proto enums, in both directions. The server's gRPC layer and the
//! CLI both use these, so each mapping exists once. Reading prefers the
//! enum field and falls back to the older string field when the enum is
//! unspecified (a peer built before the enums existed).

use crate::proto;
use crate::rotation::{Outcome, Phase};
use crate::sink::SecretFormat;
use crate::store::records::{ClusterMode, ClusterState};

impl From<Phase> for proto::RotationPhase {
    fn from(phase: Phase) -> Self {
        match phase {
            Phase::Stable => proto::RotationPhase::Stable,
            Phase::TrustNew => proto::RotationPhase::TrustNew,
            Phase::SignNew => proto::RotationPhase::SignNew,
            Phase::RetireOld => proto::RotationPhase::RetireOld,
        }
    }
}

impl From<Option<Outcome>> for proto::RotationOutcome {
    fn from(outcome: Option<Outcome>) -> Self {
        match outcome {
            None => proto::RotationOutcome::Unspecified,
            Some(Outcome::Completed) => proto::RotationOutcome::Completed,
            Some(Outcome::Aborted) => proto::RotationOutcome::Aborted,
        }
    }
}

impl From<ClusterMode> for proto::ClusterMode {
    fn from(mode: ClusterMode) -> Self {
        match mode {
            ClusterMode::Agent => proto::ClusterMode::Agent,
            ClusterMode::Push => proto::ClusterMode::Push,
        }
    }
}

impl From<ClusterState> for proto::ClusterState {
    fn from(state: ClusterState) -> Self {
        match state {
            ClusterState::Pending => proto::ClusterState::Pending,
            ClusterState::Enrolled => proto::ClusterState::Enrolled,
        }
    }
}

impl From<SecretFormat> for proto::SecretFormat {
    fn from(format: SecretFormat) -> Self {
        match format {
            SecretFormat::Istio => proto::SecretFormat::Istio,
            SecretFormat::Tls => proto::SecretFormat::Tls,
        }
    }
}

/// The phase in a message: the enum `value` when set, else the older
/// string `text` (both unset: `None`).
///
/// Errors: an unknown enum value or phase name, in words.
pub fn phase(value: i32, text: &str) -> Result<Option<Phase>, String> {
    match proto::RotationPhase::try_from(value) {
        Ok(proto::RotationPhase::Stable) => Ok(Some(Phase::Stable)),
        Ok(proto::RotationPhase::TrustNew) => Ok(Some(Phase::TrustNew)),
        Ok(proto::RotationPhase::SignNew) => Ok(Some(Phase::SignNew)),
        Ok(proto::RotationPhase::RetireOld) => Ok(Some(Phase::RetireOld)),
        Ok(proto::RotationPhase::Unspecified) if text.is_empty() => Ok(None),
        Ok(proto::RotationPhase::Unspecified) => text.parse().map(Some),
        Err(_) => Err(format!("unknown rotation phase value {value}")),
    }
}

/// The outcome in a message: the enum `value` when set, else the older
/// string `text`; `None` while a rotation runs or for an unknown value.
pub fn outcome(value: i32, text: &str) -> Option<Outcome> {
    match proto::RotationOutcome::try_from(value) {
        Ok(proto::RotationOutcome::Completed) => Some(Outcome::Completed),
        Ok(proto::RotationOutcome::Aborted) => Some(Outcome::Aborted),
        _ => [Outcome::Completed, Outcome::Aborted]
            .into_iter()
            .find(|outcome| outcome.as_str() == text),
    }
}

/// The cluster mode in a message: the enum `value` when set, else the
/// older string `text` (anything but `push` is an agent).
pub fn cluster_mode(value: i32, text: &str) -> ClusterMode {
    match proto::ClusterMode::try_from(value) {
        Ok(proto::ClusterMode::Push) => ClusterMode::Push,
        Ok(proto::ClusterMode::Agent) => ClusterMode::Agent,
        _ if text == ClusterMode::Push.as_str() => ClusterMode::Push,
        _ => ClusterMode::Agent,
    }
}

/// The cluster state in a message: the enum `value` when set, else the
/// older string `text` (anything but `enrolled` is pending).
pub fn cluster_state(value: i32, text: &str) -> ClusterState {
    match proto::ClusterState::try_from(value) {
        Ok(proto::ClusterState::Enrolled) => ClusterState::Enrolled,
        Ok(proto::ClusterState::Pending) => ClusterState::Pending,
        _ if text == ClusterState::Enrolled.as_str() => ClusterState::Enrolled,
        _ => ClusterState::Pending,
    }
}

/// The secret format in a message: the enum `value` when set, else the
/// older string `text` (both unset: istio).
///
/// Errors: an unknown enum value or format name, in words.
pub fn secret_format(value: i32, text: &str) -> Result<SecretFormat, String> {
    match proto::SecretFormat::try_from(value) {
        Ok(proto::SecretFormat::Istio) => Ok(SecretFormat::Istio),
        Ok(proto::SecretFormat::Tls) => Ok(SecretFormat::Tls),
        Ok(proto::SecretFormat::Unspecified) if text.is_empty() => Ok(SecretFormat::default()),
        Ok(proto::SecretFormat::Unspecified) => text.parse(),
        Err(_) => Err(format!("unknown secret format value {value}")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn every_phase_round_trips_and_older_strings_are_read() {
        for phase in [
            Phase::Stable,
            Phase::TrustNew,
            Phase::SignNew,
            Phase::RetireOld,
        ] {
            let value: proto::RotationPhase = phase.into();
            assert_eq!(super::phase(value.into(), "").unwrap(), Some(phase));
            assert_eq!(super::phase(0, phase.as_str()).unwrap(), Some(phase));
        }
        assert_eq!(super::phase(0, "").unwrap(), None);
        assert!(super::phase(0, "sideways").is_err());
        assert!(super::phase(99, "").is_err());
    }

    #[test]
    fn outcomes_modes_states_and_formats_round_trip() {
        for outcome in [None, Some(Outcome::Completed), Some(Outcome::Aborted)] {
            let value: proto::RotationOutcome = outcome.into();
            assert_eq!(super::outcome(value.into(), ""), outcome);
            let text = outcome.map(Outcome::as_str).unwrap_or_default();
            assert_eq!(super::outcome(0, text), outcome);
        }
        for mode in [ClusterMode::Agent, ClusterMode::Push] {
            let value: proto::ClusterMode = mode.into();
            assert_eq!(cluster_mode(value.into(), ""), mode);
            assert_eq!(cluster_mode(0, mode.as_str()), mode);
        }
        for state in [ClusterState::Pending, ClusterState::Enrolled] {
            let value: proto::ClusterState = state.into();
            assert_eq!(cluster_state(value.into(), ""), state);
            assert_eq!(cluster_state(0, state.as_str()), state);
        }
        for format in [SecretFormat::Istio, SecretFormat::Tls] {
            let value: proto::SecretFormat = format.into();
            assert_eq!(secret_format(value.into(), "").unwrap(), format);
            assert_eq!(secret_format(0, format.as_str()).unwrap(), format);
        }
        assert_eq!(secret_format(0, "").unwrap(), SecretFormat::Istio);
        assert!(secret_format(0, "yaml").is_err());
    }
}
