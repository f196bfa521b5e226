//! Issuance policy: which CSRs may be signed for which trust domain, and with
//! what profile. Loaded from `policies/*.yaml`. Pure: parsing text and
//! deciding; the caller reads the file.
//!
//! Owns the policy file format (documented in `policies/default.yaml`) and
//! the issuance decision. Does not verify CSRs (that is `ca`) nor know which
//! cluster is calling (that is `server`'s authorization).

mod document;

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
    #[error(
        "trust domain {0:?} is not in the issuance policy: add it under trust_domains in the policy file (--policy), or use a trust domain the policy names"
    )]
    UnknownTrustDomain(String),
    /// The CSR's key algorithm is not allowed for the trust domain.
    #[error(
        "key algorithm {algorithm} is not allowed for trust domain {trust_domain:?} (allowed: {allowed})"
    )]
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
    /// A requested lifetime of zero.
    #[error("requested lifetime must be longer than zero")]
    ZeroLifetime,
}

impl Policy {
    /// Parses and validates a policy document. `source` (a file name) prefixes
    /// every problem. All problems are reported together.
    ///
    /// Errors: [`PolicyError::Invalid`] listing every problem, each as
    /// `<source>: <field path>: <message>` (a YAML syntax error is a single
    /// problem with its line and column). Unknown fields are problems.
    pub fn from_yaml(source: &str, text: &str) -> Result<Policy, PolicyError> {
        document::parse(source, text)
    }

    /// The shipped default policy.
    pub fn builtin_default() -> Result<Policy, PolicyError> {
        Policy::from_yaml("policies/default.yaml", DEFAULT_POLICY_YAML)
    }

    /// The rules for a trust domain.
    ///
    /// Errors: [`PolicyError::UnknownTrustDomain`].
    pub fn trust_domain(&self, trust_domain: &str) -> Result<&TrustDomainPolicy, PolicyError> {
        self.trust_domains
            .get(trust_domain)
            .ok_or_else(|| PolicyError::UnknownTrustDomain(trust_domain.to_string()))
    }

    /// Decides whether `csr` may be signed as `cluster`'s intermediate and
    /// with what profile. `requested_lifetime` None means the default.
    ///
    /// Errors: [`PolicyError::UnknownTrustDomain`],
    /// [`PolicyError::KeyAlgorithmNotAllowed`], [`PolicyError::ZeroLifetime`],
    /// [`PolicyError::LifetimeTooLong`] (checked in that order).
    pub fn decide(
        &self,
        trust_domain: &str,
        cluster: &str,
        csr: &VerifiedCsr,
        requested_lifetime: Option<Duration>,
    ) -> Result<IntermediateProfile, PolicyError> {
        let rules = self.trust_domain(trust_domain)?;
        let algorithm = csr.public_key.algorithm;
        if !rules.allowed_key_algorithms.contains(&algorithm) {
            return Err(PolicyError::KeyAlgorithmNotAllowed {
                algorithm,
                trust_domain: trust_domain.to_string(),
                allowed: rules
                    .allowed_key_algorithms
                    .iter()
                    .map(|allowed| allowed.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        let lifetime = match requested_lifetime {
            None => rules.default_lifetime,
            Some(requested) if requested.is_zero() => return Err(PolicyError::ZeroLifetime),
            Some(requested) if requested > rules.max_lifetime => {
                return Err(PolicyError::LifetimeTooLong {
                    requested: format_lifetime(requested),
                    max: format_lifetime(rules.max_lifetime),
                });
            }
            Some(requested) => requested,
        };
        Ok(IntermediateProfile {
            trust_domain: trust_domain.to_string(),
            organisation: rules.organisation.clone(),
            cluster: cluster.to_string(),
            lifetime,
            name_constraints: rules.name_constraints,
        })
    }

    /// Whether `name` is a valid SPIFFE trust domain name: 1 to 255 of
    /// lowercase letters, digits, `.`, `-` and `_`.
    pub fn is_trust_domain_name(name: &str) -> bool {
        document::is_trust_domain_name(name)
    }
}

/// A lifetime in the notation policy files use: whole days as `90d`, whole
/// hours as `36h`, anything else in humantime's form (`1m 30s`). The result
/// parses back with `humantime::parse_duration`. (humantime's own formatter
/// counts in 30.44-day months, which turns `61d` into `2months 2h 52m 48s`.)
pub fn format_lifetime(lifetime: Duration) -> String {
    const HOUR: u64 = 60 * 60;
    const DAY: u64 = 24 * HOUR;
    let seconds = lifetime.as_secs();
    if lifetime.subsec_nanos() == 0 && seconds > 0 {
        if seconds.is_multiple_of(DAY) {
            return format!("{}d", seconds / DAY);
        }
        if seconds.is_multiple_of(HOUR) {
            return format!("{}h", seconds / HOUR);
        }
    }
    humantime::format_duration(lifetime).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::PublicKeyInfo;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    const DAY: Duration = Duration::from_secs(24 * 60 * 60);

    fn problems_of(result: Result<Policy, PolicyError>) -> Result<Vec<String>, String> {
        match result {
            Err(PolicyError::Invalid { problems }) => Ok(problems),
            other => Err(format!("expected PolicyError::Invalid, got {other:?}")),
        }
    }

    fn csr(algorithm: KeyAlgorithm) -> VerifiedCsr {
        VerifiedCsr {
            public_key: PublicKeyInfo {
                algorithm,
                bits: 256,
                spki_der: Vec::new(),
            },
            subject: "CN=ignored".to_string(),
            der: Vec::new(),
        }
    }

    fn strict_policy() -> Result<Policy, PolicyError> {
        let text = "
trust_domains:
  mesh.example.org:
    organisation: Example Org
    allowed_key_algorithms: [ecdsa-p256]
    default_intermediate_lifetime: 30d
    max_intermediate_lifetime: 60d
    name_constraints: true
";
        Policy::from_yaml("strict.yaml", text)
    }

    #[test]
    fn default_policy_loads_with_expected_values() -> Result<(), PolicyError> {
        let policy = Policy::builtin_default()?;
        assert_eq!(
            policy.trust_domains.keys().collect::<Vec<_>>(),
            ["cluster.local"]
        );
        let rules = policy.trust_domain("cluster.local")?;
        assert_eq!(rules.organisation, "trustplane");
        assert_eq!(
            rules.allowed_key_algorithms,
            [
                KeyAlgorithm::EcdsaP256,
                KeyAlgorithm::EcdsaP384,
                KeyAlgorithm::Rsa
            ]
        );
        assert_eq!(rules.default_lifetime, 90 * DAY);
        assert_eq!(rules.max_lifetime, 365 * DAY);
        assert!(!rules.name_constraints);
        Ok(())
    }

    #[test]
    fn default_policy_documents_why_name_constraints_are_off() {
        assert!(DEFAULT_POLICY_YAML.contains("rustls-webpki"));
        assert!(DEFAULT_POLICY_YAML.contains("name_constraints: false"));
    }

    #[test]
    fn every_shipped_example_policy_loads() -> Result<(), Box<dyn std::error::Error>> {
        let directory = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/examples");
        let mut loaded = 0;
        for entry in std::fs::read_dir(&directory)? {
            let path = entry?.path();
            if path
                .extension()
                .is_some_and(|extension| extension == "yaml")
            {
                let text = std::fs::read_to_string(&path)?;
                let policy = Policy::from_yaml(&path.display().to_string(), &text)?;
                assert!(!policy.trust_domains.is_empty(), "{}", path.display());
                loaded += 1;
            }
        }
        assert!(
            loaded >= 2,
            "expected at least two examples, found {loaded}"
        );
        Ok(())
    }

    #[test]
    fn strict_example_allows_only_p256_for_30_days() -> Result<(), PolicyError> {
        let policy = Policy::from_yaml(
            "strict-p256-30d.yaml",
            include_str!("../../policies/examples/strict-p256-30d.yaml"),
        )?;
        let rules = policy.trust_domain("mesh.example.org")?;
        assert_eq!(rules.allowed_key_algorithms, [KeyAlgorithm::EcdsaP256]);
        assert_eq!(rules.default_lifetime, 30 * DAY);
        assert_eq!(rules.max_lifetime, 30 * DAY);
        Ok(())
    }

    #[test]
    fn every_problem_in_a_document_is_reported_with_file_and_field() -> TestResult {
        let text = "
trust_domains:
  Bad_Domain:
    organisation: ok
    allowed_key_algorithms: [ecdsa-p256]
    default_intermediate_lifetime: 1d
    max_intermediate_lifetime: 2d
  cluster.local:
    organisation: ''
    allowed_key_algorithms: [ecdsa-p256, dsa]
    default_intermediate_lifetime: 0s
    max_intermediate_lifetime: 9x
    name_constraints: 'yes'
  other.local:
    organisation: Other
    allowed_key_algorithms: []
    default_intermediate_lifetime: 400d
    max_intermediate_lifetime: 365d
";
        let problems = problems_of(Policy::from_yaml("policies/bad.yaml", text))?;
        let expected = [
            "policies/bad.yaml: trust_domains.Bad_Domain: \"Bad_Domain\" is not a valid trust domain name",
            "policies/bad.yaml: trust_domains.cluster.local.organisation: must not be empty",
            "policies/bad.yaml: trust_domains.cluster.local.allowed_key_algorithms[1]: \"dsa\" is not a key algorithm",
            "policies/bad.yaml: trust_domains.cluster.local.default_intermediate_lifetime: must be longer than zero",
            "policies/bad.yaml: trust_domains.cluster.local.max_intermediate_lifetime: \"9x\" is not a duration (e.g. 90d, 2160h)",
            "policies/bad.yaml: trust_domains.cluster.local.name_constraints: expected true or false, found \"yes\"",
            "policies/bad.yaml: trust_domains.other.local.allowed_key_algorithms: must list at least one",
            "policies/bad.yaml: trust_domains.other.local.default_intermediate_lifetime: 400d is longer than max_intermediate_lifetime (365d)",
        ];
        for line in expected {
            assert!(
                problems.iter().any(|problem| problem.starts_with(line)),
                "missing {line:?} in {problems:#?}"
            );
        }
        assert_eq!(problems.len(), expected.len(), "{problems:#?}");
        Ok(())
    }

    #[test]
    fn invalid_error_display_lists_every_problem() {
        let error = PolicyError::Invalid {
            problems: vec!["a.yaml: x: one".into(), "a.yaml: y: two".into()],
        };
        assert_eq!(
            error.to_string(),
            "invalid policy:\n  - a.yaml: x: one\n  - a.yaml: y: two"
        );
    }

    #[test]
    fn unknown_fields_are_named() -> TestResult {
        let text = "
trust_domains:
  cluster.local:
    organisation: trustplane
    allowed_key_algorithms: [ecdsa-p256]
    default_intermediate_lifetime: 90d
    max_intermediate_lifetime: 365d
    max_lifetme: 10d
audit: true
";
        let problems = problems_of(Policy::from_yaml("p.yaml", text))?;
        assert_eq!(problems.len(), 2, "{problems:#?}");
        assert!(problems[0].starts_with("p.yaml: audit: unknown field"));
        assert!(problems[1].starts_with(
            "p.yaml: trust_domains.cluster.local.max_lifetme: unknown field (expected one of: organisation,"
        ));
        Ok(())
    }

    #[test]
    fn missing_fields_are_each_reported() -> TestResult {
        let problems = problems_of(Policy::from_yaml(
            "p.yaml",
            "trust_domains:\n  cluster.local: {}\n",
        ))?;
        for field in [
            "organisation",
            "allowed_key_algorithms",
            "default_intermediate_lifetime",
            "max_intermediate_lifetime",
        ] {
            let prefix = format!("p.yaml: trust_domains.cluster.local.{field}: missing");
            assert!(
                problems.iter().any(|problem| problem.starts_with(&prefix)),
                "missing {prefix:?} in {problems:#?}"
            );
        }
        assert_eq!(problems.len(), 4, "{problems:#?}");
        Ok(())
    }

    #[test]
    fn a_policy_needs_at_least_one_trust_domain() -> TestResult {
        let empty = problems_of(Policy::from_yaml("p.yaml", "trust_domains: {}\n"))?;
        assert_eq!(
            empty,
            ["p.yaml: trust_domains: at least one trust domain is required"]
        );
        let absent = problems_of(Policy::from_yaml("p.yaml", ""))?;
        assert_eq!(absent.len(), 1, "{absent:#?}");
        assert!(absent[0].starts_with("p.yaml: expected a mapping"));
        Ok(())
    }

    #[test]
    fn yaml_syntax_error_is_one_problem_with_its_line() -> TestResult {
        let problems = problems_of(Policy::from_yaml(
            "p.yaml",
            "trust_domains:\n  cluster.local: [unclosed\n",
        ))?;
        assert_eq!(problems.len(), 1, "{problems:#?}");
        assert!(problems[0].starts_with("p.yaml: not valid YAML: "));
        assert!(problems[0].contains("line"), "{}", problems[0]);
        Ok(())
    }

    #[test]
    fn name_constraints_are_off_when_omitted() -> Result<(), PolicyError> {
        let text = "
trust_domains:
  cluster.local:
    organisation: trustplane
    allowed_key_algorithms: [rsa]
    default_intermediate_lifetime: 2160h
    max_intermediate_lifetime: 1y
";
        let policy = Policy::from_yaml("p.yaml", text)?;
        let rules = policy.trust_domain("cluster.local")?;
        assert!(!rules.name_constraints);
        assert_eq!(rules.default_lifetime, 90 * DAY);
        Ok(())
    }

    #[test]
    fn trust_domain_names_follow_spiffe_syntax() {
        for valid in ["cluster.local", "a", "prod-1.example_org"] {
            assert!(Policy::is_trust_domain_name(valid), "{valid}");
        }
        for invalid in [
            "",
            "Cluster.local",
            "a/b",
            "spiffe://a",
            "a b",
            &"a".repeat(256),
        ] {
            assert!(!Policy::is_trust_domain_name(invalid), "{invalid}");
        }
    }

    #[test]
    fn lifetimes_format_in_policy_notation_and_parse_back() -> Result<(), humantime::DurationError>
    {
        for (lifetime, text) in [
            (365 * DAY, "365d"),
            (Duration::from_secs(36 * 60 * 60), "36h"),
            (Duration::from_secs(90), "1m 30s"),
        ] {
            assert_eq!(format_lifetime(lifetime), text);
            assert_eq!(humantime::parse_duration(text)?, lifetime);
        }
        Ok(())
    }

    #[test]
    fn decide_uses_the_default_lifetime_when_none_is_requested() -> TestResult {
        let profile = strict_policy()?.decide(
            "mesh.example.org",
            "east",
            &csr(KeyAlgorithm::EcdsaP256),
            None,
        )?;
        assert_eq!(
            profile,
            IntermediateProfile {
                trust_domain: "mesh.example.org".into(),
                organisation: "Example Org".into(),
                cluster: "east".into(),
                lifetime: 30 * DAY,
                name_constraints: true,
            }
        );
        Ok(())
    }

    #[test]
    fn decide_grants_a_requested_lifetime_up_to_the_maximum() -> TestResult {
        let policy = strict_policy()?;
        for requested in [DAY, 60 * DAY] {
            let profile = policy.decide(
                "mesh.example.org",
                "east",
                &csr(KeyAlgorithm::EcdsaP256),
                Some(requested),
            )?;
            assert_eq!(profile.lifetime, requested);
        }
        Ok(())
    }

    #[test]
    fn decide_refuses_a_lifetime_longer_than_the_maximum() -> TestResult {
        let result = strict_policy()?.decide(
            "mesh.example.org",
            "east",
            &csr(KeyAlgorithm::EcdsaP256),
            Some(61 * DAY),
        );
        let Err(PolicyError::LifetimeTooLong { requested, max }) = result else {
            return Err(format!("expected LifetimeTooLong, got {result:?}").into());
        };
        assert_eq!(requested, "61d");
        assert_eq!(max, "60d");
        Ok(())
    }

    #[test]
    fn decide_refuses_a_zero_lifetime() -> TestResult {
        let result = strict_policy()?.decide(
            "mesh.example.org",
            "east",
            &csr(KeyAlgorithm::EcdsaP256),
            Some(Duration::ZERO),
        );
        assert!(
            matches!(result, Err(PolicyError::ZeroLifetime)),
            "{result:?}"
        );
        Ok(())
    }

    #[test]
    fn decide_refuses_a_key_algorithm_not_allowed() -> TestResult {
        let result =
            strict_policy()?.decide("mesh.example.org", "east", &csr(KeyAlgorithm::Rsa), None);
        let Err(PolicyError::KeyAlgorithmNotAllowed {
            algorithm,
            trust_domain,
            allowed,
        }) = result
        else {
            return Err(format!("expected KeyAlgorithmNotAllowed, got {result:?}").into());
        };
        assert_eq!(algorithm, KeyAlgorithm::Rsa);
        assert_eq!(trust_domain, "mesh.example.org");
        assert_eq!(allowed, "ecdsa-p256");
        Ok(())
    }

    #[test]
    fn decide_refuses_an_unknown_trust_domain() -> TestResult {
        let result =
            strict_policy()?.decide("cluster.local", "east", &csr(KeyAlgorithm::EcdsaP256), None);
        assert!(
            matches!(&result, Err(PolicyError::UnknownTrustDomain(name)) if name == "cluster.local"),
            "{result:?}"
        );
        Ok(())
    }
}
