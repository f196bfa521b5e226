//! Issuance policy: which CSRs may be signed for which trust domain, and with
//! what profile. Loaded from `policies/*.yaml`. Pure: parsing text and
//! deciding; the caller reads the file.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::ca::{IntermediateProfile, KeyAlgorithm, VerifiedCsr};

/// The policy shipped as `policies/default.yaml`.
pub const DEFAULT_POLICY_YAML: &str = include_str!("../../policies/default.yaml");

/// Issuance policy for every trust domain the server serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Per trust domain.
    pub trust_domains: BTreeMap<String, TrustDomainPolicy>,
}

/// Issuance rules for one trust domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustDomainPolicy {
    /// Subject organisation for roots and intermediates.
    pub organisation: String,
    /// Key algorithms accepted in intermediate CSRs.
    pub allowed_key_algorithms: Vec<KeyAlgorithm>,
    /// Intermediate lifetime when none is requested.
    pub default_lifetime: Duration,
    /// Longest intermediate lifetime that may be requested.
    pub max_lifetime: Duration,
    /// Add URI + DNS name constraints (off by default; see default.yaml).
    pub name_constraints: bool,
}

/// A policy file problem (with file and field) or a refused request.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The policy file is invalid; every problem found is listed.
    #[error("invalid policy:\n{}", .problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// One line each: `<file>: <field>: <message>`.
        problems: Vec<String>,
    },
    /// The trust domain is not in the policy.
    #[error("trust domain {0:?} is not in the issuance policy")]
    UnknownTrustDomain(String),
    /// The CSR's key algorithm is not allowed for the trust domain.
    #[error("key algorithm {algorithm} is not allowed for trust domain {trust_domain:?} (allowed: {allowed})")]
    KeyAlgorithmNotAllowed {
        /// The CSR's algorithm.
        algorithm: KeyAlgorithm,
        /// The trust domain.
        trust_domain: String,
        /// The allowed list, comma separated.
        allowed: String,
    },
    /// The requested lifetime exceeds the maximum.
    #[error("requested lifetime {requested} exceeds the policy maximum {max}")]
    LifetimeTooLong {
        /// Requested, human readable.
        requested: String,
        /// Maximum, human readable.
        max: String,
    },
}

impl Policy {
    /// Parses and validates a policy document. `source` (a file name) prefixes
    /// every problem. All problems are reported together.
    pub fn from_yaml(source: &str, text: &str) -> Result<Policy, PolicyError> {
        todo!("{source}{}", text.len())
    }

    /// The shipped default policy.
    pub fn builtin_default() -> Result<Policy, PolicyError> {
        Policy::from_yaml("policies/default.yaml", DEFAULT_POLICY_YAML)
    }

    /// The rules for a trust domain.
    pub fn trust_domain(&self, trust_domain: &str) -> Result<&TrustDomainPolicy, PolicyError> {
        self.trust_domains
            .get(trust_domain)
            .ok_or_else(|| PolicyError::UnknownTrustDomain(trust_domain.to_string()))
    }

    /// Decides whether `csr` may be signed as `cluster`'s intermediate and
    /// with what profile. `requested_lifetime` None means the default.
    pub fn decide(
        &self,
        trust_domain: &str,
        cluster: &str,
        csr: &VerifiedCsr,
        requested_lifetime: Option<Duration>,
    ) -> Result<IntermediateProfile, PolicyError> {
        todo!("{trust_domain}{cluster}{csr:?}{requested_lifetime:?}")
    }
}
