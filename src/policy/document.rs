//! Reading a policy document: YAML text to a [`Policy`], validated whole.
//!
//! The text is parsed into a `serde_yaml_ng::Value` and then walked field by
//! field, so that every problem is found in one pass instead of stopping at
//! the first one, as a derived `Deserialize` would.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::time::Duration;

use serde_yaml_ng::{Mapping, Value};

use super::{Policy, PolicyError, TrustDomainPolicy, format_lifetime};
use crate::ca::KeyAlgorithm;

/// The fields of one trust domain, in the order they are documented.
const TRUST_DOMAIN_FIELDS: [&str; 5] = [
    "organisation",
    "allowed_key_algorithms",
    "default_intermediate_lifetime",
    "max_intermediate_lifetime",
    "name_constraints",
];

/// The top-level fields.
const TOP_LEVEL_FIELDS: [&str; 1] = ["trust_domains"];

/// The SPIFFE specification's limit on a trust domain name.
const MAX_TRUST_DOMAIN_LENGTH: usize = 255;

/// Problems found so far, each prefixed with the document's source.
struct Problems<'a> {
    source: &'a str,
    lines: Vec<String>,
}

impl Problems<'_> {
    fn add(&mut self, path: &str, message: impl Display) {
        self.lines
            .push(format!("{}: {path}: {message}", self.source));
    }

    fn add_document(&mut self, message: impl Display) {
        self.lines.push(format!("{}: {message}", self.source));
    }
}

/// Parses and validates a policy document; see [`Policy::from_yaml`].
pub(super) fn parse(source: &str, text: &str) -> Result<Policy, PolicyError> {
    let mut problems = Problems {
        source,
        lines: Vec::new(),
    };
    // A syntax error stops everything: nothing after it can be trusted.
    let document: Value = match serde_yaml_ng::from_str(text) {
        Ok(document) => document,
        Err(error) => {
            problems.add_document(format!("not valid YAML: {error}"));
            return Err(PolicyError::Invalid {
                problems: problems.lines,
            });
        }
    };
    let trust_domains = read_document(&document, &mut problems);
    if problems.lines.is_empty() {
        Ok(Policy { trust_domains })
    } else {
        Err(PolicyError::Invalid {
            problems: problems.lines,
        })
    }
}

fn read_document(
    document: &Value,
    problems: &mut Problems<'_>,
) -> BTreeMap<String, TrustDomainPolicy> {
    let mut trust_domains = BTreeMap::new();
    let Value::Mapping(top) = document else {
        problems.add_document(format!(
            "expected a mapping with a trust_domains field, found {}",
            describe(document)
        ));
        return trust_domains;
    };
    report_unknown_fields("", top, &TOP_LEVEL_FIELDS, problems);

    let path = "trust_domains";
    let entries = match top.get(path) {
        None => {
            problems.add(path, "missing: at least one trust domain is required");
            return trust_domains;
        }
        Some(Value::Mapping(entries)) => entries,
        Some(other) => {
            problems.add(
                path,
                format!(
                    "expected a mapping from trust domain name to its rules, found {}",
                    describe(other)
                ),
            );
            return trust_domains;
        }
    };
    if entries.is_empty() {
        problems.add(path, "at least one trust domain is required");
    }
    for (name, rules) in entries {
        let Value::String(name) = name else {
            problems.add(
                path,
                format!(
                    "trust domain names must be strings, found {} (quote it)",
                    scalar_text(name)
                ),
            );
            continue;
        };
        let domain_path = format!("{path}.{name}");
        let name_is_valid = check_trust_domain_name(&domain_path, name, problems);
        // The rules are checked even under an invalid name, so that every
        // problem is reported in one pass.
        let rules = read_trust_domain(&domain_path, rules, problems);
        if let (true, Some(rules)) = (name_is_valid, rules) {
            trust_domains.insert(name.clone(), rules);
        }
    }
    trust_domains
}

/// Whether `name` is a SPIFFE trust domain name; reports the problem if not.
fn check_trust_domain_name(path: &str, name: &str, problems: &mut Problems<'_>) -> bool {
    if name.is_empty() {
        problems.add(path, "a trust domain name must not be empty");
        return false;
    }
    if name.len() > MAX_TRUST_DOMAIN_LENGTH {
        problems.add(
            path,
            format!("a trust domain name must be at most {MAX_TRUST_DOMAIN_LENGTH} characters"),
        );
        return false;
    }
    if !is_trust_domain_name(name) {
        problems.add(
            path,
            format!(
                "{name:?} is not a valid trust domain name \
                 (use lowercase letters, digits, '.', '-' and '_')"
            ),
        );
        return false;
    }
    true
}

/// SPIFFE trust domain syntax: lowercase letters, digits, `.`, `-`, `_`.
pub(super) fn is_trust_domain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_TRUST_DOMAIN_LENGTH
        && name.bytes().all(|byte| {
            byte.is_ascii_lowercase() || byte.is_ascii_digit() || matches!(byte, b'.' | b'-' | b'_')
        })
}

fn read_trust_domain(
    path: &str,
    rules: &Value,
    problems: &mut Problems<'_>,
) -> Option<TrustDomainPolicy> {
    let Value::Mapping(fields) = rules else {
        problems.add(
            path,
            format!(
                "expected a mapping with the fields {}, found {}",
                TRUST_DOMAIN_FIELDS.join(", "),
                describe(rules)
            ),
        );
        return None;
    };
    report_unknown_fields(path, fields, &TRUST_DOMAIN_FIELDS, problems);

    let organisation = read_organisation(path, fields, problems);
    let allowed_key_algorithms = read_key_algorithms(path, fields, problems);
    let default_lifetime = read_lifetime(path, "default_intermediate_lifetime", fields, problems);
    let max_lifetime = read_lifetime(path, "max_intermediate_lifetime", fields, problems);
    let name_constraints = read_name_constraints(path, fields, problems);

    if let (Some(default), Some(max)) = (default_lifetime, max_lifetime)
        && default > max
    {
        problems.add(
            &format!("{path}.default_intermediate_lifetime"),
            format!(
                "{} is longer than max_intermediate_lifetime ({})",
                format_lifetime(default),
                format_lifetime(max)
            ),
        );
        return None;
    }
    Some(TrustDomainPolicy {
        organisation: organisation?,
        allowed_key_algorithms: allowed_key_algorithms?,
        default_lifetime: default_lifetime?,
        max_lifetime: max_lifetime?,
        name_constraints: name_constraints?,
    })
}

fn read_organisation(path: &str, fields: &Mapping, problems: &mut Problems<'_>) -> Option<String> {
    let path = format!("{path}.organisation");
    match fields.get("organisation") {
        None => {
            problems.add(&path, "missing (required): the subject organisation (O=)");
            None
        }
        Some(Value::String(organisation)) if organisation.trim().is_empty() => {
            problems.add(&path, "must not be empty");
            None
        }
        Some(Value::String(organisation)) => Some(organisation.clone()),
        Some(other) => {
            problems.add(
                &path,
                format!("expected a string, found {}", describe(other)),
            );
            None
        }
    }
}

fn read_key_algorithms(
    path: &str,
    fields: &Mapping,
    problems: &mut Problems<'_>,
) -> Option<Vec<KeyAlgorithm>> {
    let path = format!("{path}.allowed_key_algorithms");
    let entries = match fields.get("allowed_key_algorithms") {
        None => {
            problems.add(
                &path,
                "missing (required): a list of ecdsa-p256, ecdsa-p384, rsa",
            );
            return None;
        }
        Some(Value::Sequence(entries)) => entries,
        Some(other) => {
            problems.add(
                &path,
                format!(
                    "expected a list such as [ecdsa-p256, ecdsa-p384], found {}",
                    describe(other)
                ),
            );
            return None;
        }
    };
    if entries.is_empty() {
        problems.add(
            &path,
            "must list at least one of ecdsa-p256, ecdsa-p384, rsa",
        );
        return None;
    }
    let mut algorithms = Vec::with_capacity(entries.len());
    let mut all_valid = true;
    for (index, entry) in entries.iter().enumerate() {
        let entry_path = format!("{path}[{index}]");
        let parsed = match entry {
            Value::String(text) => text.parse::<KeyAlgorithm>().ok(),
            _ => None,
        };
        match parsed {
            Some(algorithm) if algorithms.contains(&algorithm) => {
                problems.add(&entry_path, format!("{algorithm} is listed twice"));
                all_valid = false;
            }
            Some(algorithm) => algorithms.push(algorithm),
            None => {
                problems.add(
                    &entry_path,
                    format!(
                        "{} is not a key algorithm (use ecdsa-p256, ecdsa-p384 or rsa)",
                        scalar_text(entry)
                    ),
                );
                all_valid = false;
            }
        }
    }
    all_valid.then_some(algorithms)
}

fn read_lifetime(
    path: &str,
    field: &str,
    fields: &Mapping,
    problems: &mut Problems<'_>,
) -> Option<Duration> {
    let path = format!("{path}.{field}");
    let Some(value) = fields.get(field) else {
        problems.add(&path, "missing (required): a duration such as 90d or 2160h");
        return None;
    };
    let parsed = match value {
        Value::String(text) => humantime::parse_duration(text).ok(),
        _ => None,
    };
    match parsed {
        None => {
            problems.add(
                &path,
                format!("{} is not a duration (e.g. 90d, 2160h)", scalar_text(value)),
            );
            None
        }
        Some(lifetime) if lifetime.is_zero() => {
            problems.add(&path, "must be longer than zero");
            None
        }
        Some(lifetime) => Some(lifetime),
    }
}

fn read_name_constraints(
    path: &str,
    fields: &Mapping,
    problems: &mut Problems<'_>,
) -> Option<bool> {
    match fields.get("name_constraints") {
        // Off unless asked for: rustls-based peers reject URI name constraints.
        None => Some(false),
        Some(Value::Bool(enabled)) => Some(*enabled),
        Some(other) => {
            problems.add(
                &format!("{path}.name_constraints"),
                format!("expected true or false, found {}", scalar_text(other)),
            );
            None
        }
    }
}

/// Reports every key of `fields` not in `known`, naming it.
fn report_unknown_fields(
    path: &str,
    fields: &Mapping,
    known: &[&str],
    problems: &mut Problems<'_>,
) {
    for key in fields.keys() {
        match key {
            Value::String(name) if known.contains(&name.as_str()) => {}
            Value::String(name) => {
                let field_path = if path.is_empty() {
                    name.clone()
                } else {
                    format!("{path}.{name}")
                };
                problems.add(
                    &field_path,
                    format!("unknown field (expected one of: {})", known.join(", ")),
                );
            }
            other => {
                let location = if path.is_empty() { "(top level)" } else { path };
                problems.add(
                    location,
                    format!(
                        "unknown field {} (expected one of: {})",
                        scalar_text(other),
                        known.join(", ")
                    ),
                );
            }
        }
    }
}

/// What kind of YAML value this is, for "expected X, found Y" messages.
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "nothing (null)".to_string(),
        Value::Bool(_) | Value::Number(_) | Value::String(_) => {
            format!("the value {}", scalar_text(value))
        }
        Value::Sequence(_) => "a list".to_string(),
        Value::Mapping(_) => "a mapping".to_string(),
        Value::Tagged(tagged) => format!("a value tagged {}", tagged.tag),
    }
}

/// A short rendering of a value: strings quoted, other scalars as written.
fn scalar_text(value: &Value) -> String {
    match value {
        Value::Null => "null".to_string(),
        Value::Bool(flag) => flag.to_string(),
        Value::Number(number) => number.to_string(),
        Value::String(text) => format!("{text:?}"),
        Value::Sequence(_) => "a list".to_string(),
        Value::Mapping(_) => "a mapping".to_string(),
        Value::Tagged(tagged) => format!("a value tagged {}", tagged.tag),
    }
}
