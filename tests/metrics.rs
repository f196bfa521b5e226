//! `/metrics` of the `trustplane server` and `trustplane agent` binaries,
//! scraped over HTTP as Prometheus does: every metric `docs/metrics.md`
//! documents is served with its documented type by the command it names,
//! the exposition is well-formed OpenMetrics text, and the values follow
//! what happens (an enrollment, a refused call, rotation steps).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::binary::{BINARY, Guard, start_server_with};
use common::fleet::{admin_for, advance, start, wait_gate};
use trustplane::cli::connect;
use trustplane::proto;
use trustplane::proto::intermediate_service_client::IntermediateServiceClient;

const DOCS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/metrics.md");
const ALERTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/alerts.yaml");
const README: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");

/// One row of the reference table.
#[derive(Debug)]
struct Documented {
    name: String,
    kind: String,
    served_by: String,
}

/// The rows of `docs/metrics.md`'s table: name, type, served by.
fn documented() -> Vec<Documented> {
    let text = std::fs::read_to_string(DOCS).unwrap();
    let rows: Vec<Documented> = text
        .lines()
        .filter(|line| line.starts_with("| `trustplane_"))
        .map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            Documented {
                name: cells[1].trim_matches('`').to_string(),
                kind: cells[2].to_string(),
                served_by: cells[4].to_string(),
            }
        })
        .collect();
    assert!(rows.len() >= 15, "too few metrics parsed from {DOCS}");
    rows
}

fn free_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// `GET path` over HTTP/1.1: status code, Content-Type and body.
fn http_get(address: &str, path: &str) -> Option<(u16, String, String)> {
    let mut stream = std::net::TcpStream::connect(address).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    let content_type = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_string())
        })
        .unwrap_or_default();
    Some((code, content_type, body.to_string()))
}

/// A parsed exposition: samples by their full series (`name{labels}`) and
/// the type of each family.
struct Scrape {
    text: String,
    samples: BTreeMap<String, f64>,
    types: BTreeMap<String, String>,
}

impl Scrape {
    fn value(&self, series: &str) -> Option<f64> {
        self.samples.get(series).copied()
    }

    fn expect(&self, series: &str) -> f64 {
        self.value(series)
            .unwrap_or_else(|| panic!("no sample {series} in\n{}", self.text))
    }
}

/// The family a sample belongs to, given the families declared so far.
fn family_of<'a>(name: &'a str, types: &BTreeMap<String, String>) -> Option<&'a str> {
    if types.contains_key(name) {
        return Some(name);
    }
    ["_total", "_created", "_bucket", "_sum", "_count", "_info"]
        .iter()
        .filter_map(|suffix| name.strip_suffix(suffix))
        .find(|family| types.contains_key(*family))
}

/// Parses OpenMetrics text strictly enough to catch a malformed answer:
/// `# EOF` last and once, HELP and TYPE before a family's samples, every
/// sample of a declared family with a number for its value, label sets
/// well quoted, and each histogram's buckets cumulative up to `+Inf`, which
/// equals its `_count`.
fn parse(text: &str) -> Scrape {
    assert!(text.ends_with("# EOF\n"), "no final # EOF:\n{text}");
    let body = &text[..text.len() - "# EOF\n".len()];
    assert!(!body.contains("# EOF"), "# EOF before the end:\n{text}");
    let mut samples = BTreeMap::new();
    let mut types = BTreeMap::new();
    let mut helped = Vec::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap();
            assert!(!help.is_empty(), "empty help for {name}");
            helped.push(name.to_string());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(
                helped.last().map(String::as_str) == Some(name),
                "TYPE {name} without HELP first"
            );
            assert!(
                [
                    "counter",
                    "gauge",
                    "histogram",
                    "info",
                    "stateset",
                    "summary",
                    "unknown"
                ]
                .contains(&kind),
                "unknown type {kind} for {name}"
            );
            assert!(
                types.insert(name.to_string(), kind.to_string()).is_none(),
                "{name} declared twice"
            );
            continue;
        }
        assert!(!line.starts_with('#'), "unexpected comment line {line:?}");
        let (series, value) = line.rsplit_once(' ').unwrap();
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        if let Some(labels) = series.strip_prefix(name)
            && !labels.is_empty()
        {
            let inner = labels
                .strip_prefix('{')
                .and_then(|rest| rest.strip_suffix('}'))
                .unwrap_or_else(|| panic!("bad label set in {line:?}"));
            for pair in inner.split("\",").filter(|pair| !pair.is_empty()) {
                let (key, quoted) = pair.split_once('=').unwrap();
                assert!(
                    key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    "bad label name in {line:?}"
                );
                assert!(quoted.starts_with('"'), "unquoted label in {line:?}");
            }
        }
        assert!(
            family_of(name, &types).is_some(),
            "sample {line:?} of an undeclared family"
        );
        let number: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            other => other
                .parse()
                .unwrap_or_else(|_| panic!("value of {line:?} is not a number")),
        };
        assert!(
            samples.insert(series.to_string(), number).is_none(),
            "{series} twice"
        );
    }
    for (family, kind) in &types {
        if kind != "histogram" {
            continue;
        }
        // Per label set (without `le`): buckets non-decreasing, +Inf = count.
        let mut series_of: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for (series, value) in &samples {
            let Some(labels) = series.strip_prefix(&format!("{family}_bucket{{")) else {
                continue;
            };
            let labels = labels.strip_suffix('}').unwrap();
            let mut le = None;
            let mut others = Vec::new();
            for pair in labels.split("\",").filter(|pair| !pair.is_empty()) {
                let (key, value) = pair.split_once('=').unwrap();
                let value = value.trim_matches('"');
                if key == "le" {
                    le = Some(value.to_string());
                } else {
                    others.push(format!("{key}=\"{value}\""));
                }
            }
            let le = le.unwrap_or_else(|| panic!("no le in {series}"));
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or_else(|_| panic!("bad le in {series}"))
            };
            series_of
                .entry(others.join(","))
                .or_default()
                .push((bound, *value));
        }
        for (labels, mut buckets) in series_of {
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            assert!(
                buckets.windows(2).all(|pair| pair[0].1 <= pair[1].1),
                "{family}{{{labels}}} buckets not cumulative"
            );
            let (last_bound, last_count) = *buckets.last().unwrap();
            assert_eq!(
                last_bound,
                f64::INFINITY,
                "{family}{{{labels}}} has no +Inf"
            );
            let count_series = if labels.is_empty() {
                format!("{family}_count")
            } else {
                format!("{family}_count{{{labels}}}")
            };
            assert_eq!(
                samples.get(&count_series).copied(),
                Some(last_count),
                "{count_series} differs from its +Inf bucket"
            );
        }
    }
    Scrape {
        text: text.to_string(),
        samples,
        types,
    }
}

/// Scrapes `address`'s `/metrics` (retrying while the listener comes up).
fn scrape(address: &str) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some((code, content_type, body)) = http_get(address, "/metrics") {
            assert_eq!(code, 200, "{body}");
            assert!(
                content_type.starts_with("application/openmetrics-text"),
                "{content_type}"
            );
            return parse(&body);
        }
        assert!(
            Instant::now() < deadline,
            "{address}/metrics never answered"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Scrapes until `condition` holds (up to 60 s).
async fn scrape_until(address: &str, what: &str, condition: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let current = scrape(address);
        if condition(&current) {
            return current;
        }
        assert!(
            Instant::now() < deadline,
            "never reached: {what}; last scrape:\n{}",
            current.text
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Checks that every metric documented for `role` is served with its
/// documented type, and none documented for the other role.
fn assert_documented(scrape: &Scrape, role: &str) {
    for metric in documented() {
        let family = match metric.kind.as_str() {
            "counter" => metric.name.strip_suffix("_total").unwrap(),
            "info" => metric.name.strip_suffix("_info").unwrap(),
            _ => metric.name.as_str(),
        };
        // "both", "server", "agent", or e.g. "agent; server in push mode"
        // (required of the agent, allowed of the server).
        let required = metric.served_by == "both" || metric.served_by.starts_with(role);
        let allowed = required || metric.served_by.contains(role);
        match scrape.types.get(family) {
            Some(kind) if allowed => assert_eq!(
                kind, &metric.kind,
                "{} is documented as {} but served as {kind}",
                metric.name, metric.kind
            ),
            None if required => panic!(
                "{} is documented for the {role} but not served:\n{}",
                metric.name, scrape.text
            ),
            Some(_) => panic!("{} is documented for the other command only", metric.name),
            None => {}
        }
    }
    for family in scrape.types.keys() {
        assert!(
            documented().iter().any(|metric| metric.name == *family
                || metric.name == format!("{family}_total")
                || metric.name == format!("{family}_info")),
            "{family} is served by the {role} but not documented in {DOCS}"
        );
    }
}

fn init(data: &Path) {
    let init = Command::new(BINARY)
        .args(["init", "--trust-domain", "cluster.local", "--data-dir"])
        .arg(data)
        .env_remove("TRUSTPLANE_KEK")
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
}

/// Starts `trustplane agent` for a directory sink, logging to `log`.
fn start_agent(work: &Path, url: &str, token: &str, health: &str, log: &Path) -> Guard {
    let stderr = std::fs::File::create(log).unwrap();
    let child = Command::new(BINARY)
        .args(["agent", "--server", url, "--server-ca"])
        .arg(work.join("data/control-plane-ca.pem"))
        .args(["--join-token", token, "--health-listen", health])
        .arg("--identity-dir")
        .arg(work.join("identity"))
        .arg("--cacerts-dir")
        .arg(work.join("cacerts"))
        .env_remove("TRUSTPLANE_JOIN_TOKEN")
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    Guard(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_and_agent_serve_every_documented_metric_and_the_values_follow_events() {
    common::install_crypto();
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    init(&data);
    let server_health = free_address();
    let (_server, url) = start_server_with(
        &data,
        "127.0.0.1:0",
        &["--health-listen", &server_health],
        &[],
        None,
    );
    let domain = "trust_domain=\"cluster.local\"";
    let published = format!("trustplane_bundle_published_version{{{domain}}}");

    // A fresh server: state and zeroed counters, no cluster yet.
    let fresh = scrape(&server_health);
    assert_documented(&fresh, "server");
    assert_eq!(fresh.expect(&published), 1.0);
    assert_eq!(
        fresh.expect("trustplane_rotation_phase{phase=\"stable\"}"),
        1.0
    );
    assert_eq!(
        fresh.expect("trustplane_rotation_phase{phase=\"trust-new\"}"),
        0.0
    );
    assert_eq!(fresh.value("trustplane_rotation_phase_seconds"), None);
    assert_eq!(fresh.expect("trustplane_rotation_gate_wait_seconds"), 0.0);
    assert_eq!(
        fresh.expect("trustplane_issuances_total{outcome=\"ok\"}"),
        0.0
    );
    assert_eq!(fresh.expect("trustplane_watch_streams"), 0.0);
    assert_eq!(fresh.expect("trustplane_server_leader"), 1.0);
    assert!(!fresh.text.contains("cluster=\""), "{}", fresh.text);

    // An enrolled agent: it watches, is issued an intermediate, writes and reports.
    let mut admin = admin_for(&data, &url).await;
    let token = admin
        .add_cluster(proto::AddClusterRequest {
            name: "east".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .join_token;
    let agent_health = free_address();
    let agent_log = work.path().join("agent.log");
    let agent_process = start_agent(work.path(), &url, &token, &agent_health, &agent_log);
    let agent = scrape_until(&agent_health, "the agent applied v1", |scrape| {
        scrape.value("trustplane_agent_applied_bundle_version") == Some(1.0)
            && scrape.value("trustplane_agent_last_report_timestamp_seconds") > Some(0.0)
    })
    .await;
    assert_documented(&agent, "agent");
    let expiry = agent.expect("trustplane_agent_intermediate_expiry_seconds");
    assert!(expiry > 3600.0, "{expiry}");
    assert!(agent.expect("trustplane_agent_last_apply_timestamp_seconds") > 1.7e9);
    assert_eq!(agent.expect("trustplane_agent_ready"), 1.0);
    assert!(
        agent.expect("trustplane_cacerts_write_duration_seconds_count{sink=\"directory\"}") >= 1.0
    );
    assert!(
        !agent.text.contains("trustplane_issuances"),
        "{}",
        agent.text
    );

    let enrolled = scrape_until(&server_health, "east reported v1", |scrape| {
        scrape.value("trustplane_cluster_applied_bundle_version{cluster=\"east\"}") == Some(1.0)
    })
    .await;
    assert!(enrolled.expect("trustplane_issuances_total{outcome=\"ok\"}") >= 1.0);
    assert!(enrolled.expect("trustplane_issuance_duration_seconds_count{outcome=\"ok\"}") >= 1.0);
    assert_eq!(enrolled.expect("trustplane_watch_streams"), 1.0);
    let server_expiry =
        enrolled.expect("trustplane_cluster_intermediate_expiry_seconds{cluster=\"east\"}");
    assert!(
        (server_expiry - expiry).abs() < 120.0,
        "{server_expiry} vs {expiry}"
    );
    assert!(enrolled.expect("trustplane_cluster_report_age_seconds{cluster=\"east\"}") < 60.0);

    // A refused SignIntermediate (an admin may not ask for one) is counted
    // under its outcome.
    let refused_before =
        enrolled.expect("trustplane_issuances_total{outcome=\"permission_denied\"}");
    let read = |name: &str| std::fs::read_to_string(data.join(name)).unwrap();
    let admin_channel = connect(
        &url,
        &read("control-plane-ca.pem"),
        Some((&read("admin/admin.pem"), &read("admin/admin-key.pem"))),
    )
    .await
    .unwrap();
    let refusal = IntermediateServiceClient::new(admin_channel)
        .sign_intermediate(proto::SignIntermediateRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refusal.code(), tonic::Code::PermissionDenied);
    let after_refusal = scrape(&server_health);
    assert_eq!(
        after_refusal.expect("trustplane_issuances_total{outcome=\"permission_denied\"}"),
        refused_before + 1.0
    );
    assert!(
        after_refusal
            .expect("trustplane_issuance_duration_seconds_count{outcome=\"permission_denied\"}")
            >= 1.0
    );

    // The agent goes away: its watch stream closes, and the rotation started
    // now waits on its gate until the agent is back and acknowledges.
    drop(agent_process);
    scrape_until(&server_health, "the watch stream closed", |scrape| {
        scrape.value("trustplane_watch_streams") == Some(0.0)
    })
    .await;

    // Rotation steps move the published version, the phase and the agent.
    let issued_before = after_refusal.expect("trustplane_issuances_total{outcome=\"ok\"}");
    let started = start(&mut admin).await;
    assert_eq!(started.phase, "trust-new");
    let trust_new = scrape(&server_health);
    assert_eq!(trust_new.expect(&published), 2.0);
    assert_eq!(
        trust_new.expect("trustplane_rotation_phase{phase=\"trust-new\"}"),
        1.0
    );
    assert_eq!(
        trust_new.expect("trustplane_rotation_phase{phase=\"stable\"}"),
        0.0
    );
    assert!(
        trust_new
            .value("trustplane_rotation_phase_seconds")
            .is_some()
    );
    let waiting = scrape_until(&server_health, "the gate waited 2 s", |scrape| {
        scrape.value("trustplane_rotation_gate_wait_seconds") >= Some(2.0)
    })
    .await;
    assert!(
        waiting.expect("trustplane_rotation_gate_wait_seconds")
            <= waiting.expect("trustplane_rotation_phase_seconds"),
        "{}",
        waiting.text
    );
    assert_eq!(
        waiting.expect("trustplane_cluster_applied_bundle_version{cluster=\"east\"}"),
        1.0
    );
    let _agent = start_agent(work.path(), &url, &token, &agent_health, &agent_log);
    scrape_until(&agent_health, "the restarted agent applied v2", |scrape| {
        scrape.value("trustplane_agent_applied_bundle_version") == Some(2.0)
    })
    .await;
    wait_gate(&mut admin, None).await;
    let acknowledged = scrape_until(&server_health, "trust-new acknowledged", |scrape| {
        scrape.value("trustplane_cluster_applied_bundle_version{cluster=\"east\"}") == Some(2.0)
            && scrape.value("trustplane_rotation_gate_wait_seconds") == Some(0.0)
    })
    .await;
    assert!(acknowledged.expect("trustplane_rotation_phase_seconds") >= 2.0);
    assert_eq!(acknowledged.expect("trustplane_watch_streams"), 1.0);

    let signing = advance(&mut admin).await.unwrap();
    assert_eq!(signing.phase, "sign-new");
    let sign_new = scrape_until(&agent_health, "the agent applied v3", |scrape| {
        scrape.value("trustplane_agent_applied_bundle_version") == Some(3.0)
    })
    .await;
    // The restarted agent wrote twice: v2's roots, then v3's new intermediate.
    assert!(
        sign_new.expect("trustplane_cacerts_write_duration_seconds_count{sink=\"directory\"}")
            >= 2.0,
        "{}",
        sign_new.text
    );
    let reissued = scrape_until(
        &server_health,
        "east re-issued from the new root",
        |scrape| scrape.value("trustplane_issuances_total{outcome=\"ok\"}") > Some(issued_before),
    )
    .await;
    assert_eq!(reissued.expect(&published), 3.0);
    assert_eq!(
        reissued.expect("trustplane_rotation_phase{phase=\"sign-new\"}"),
        1.0
    );
    assert_eq!(
        reissued.value("trustplane_store_errors_total{kind=\"integrity\"}"),
        Some(0.0),
        "{}",
        reissued.text
    );
    let log = std::fs::read_to_string(&agent_log).unwrap_or_default();
    assert!(!log.contains("cannot continue"), "{log}");
}

/// The example rules are a Prometheus rule file whose every expression
/// parses as PromQL and uses documented metrics only.
#[test]
fn example_alerts_are_promql_rule_groups_over_documented_metrics() {
    let names: Vec<String> = documented().into_iter().map(|metric| metric.name).collect();
    let rules: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(ALERTS).unwrap()).unwrap();
    let groups = rules["groups"].as_sequence().unwrap();
    let mut alerts = Vec::new();
    for group in groups {
        assert!(group["name"].as_str().is_some(), "{group:?}");
        for rule in group["rules"].as_sequence().unwrap() {
            let alert = rule["alert"].as_str().unwrap();
            let expr = rule["expr"].as_str().unwrap();
            if let Err(error) = promql_parser::parser::parse(expr) {
                panic!("{alert}: its expr is not PromQL: {error}\n{expr}");
            }
            assert!(rule["annotations"]["summary"].as_str().is_some(), "{alert}");
            let used: Vec<&str> = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|word| word.starts_with("trustplane_"))
                .collect();
            assert!(!used.is_empty(), "{alert} uses no trustplane metric");
            for name in used {
                assert!(
                    names.iter().any(|documented| documented == name),
                    "{alert} uses {name}, which docs/metrics.md does not document"
                );
            }
            alerts.push(alert.to_string());
        }
    }
    for wanted in [
        "TrustplaneIntermediateExpiringSoon",
        "TrustplaneClusterNotReporting",
        "TrustplaneRotationStuck",
        "TrustplaneIssuanceErrors",
    ] {
        assert!(
            alerts.iter().any(|alert| alert == wanted),
            "{wanted} missing"
        );
    }
    let documented_alerts = std::fs::read_to_string(DOCS).unwrap();
    for alert in &alerts {
        assert!(
            documented_alerts.contains(&format!("`{alert}`")),
            "{alert} is not listed in docs/metrics.md"
        );
    }
}

/// The README's short table names exactly the documented metrics, each
/// with the same type and the same "served by".
#[test]
fn readme_lists_exactly_the_documented_metrics() {
    let readme = std::fs::read_to_string(README).unwrap();
    let section = readme
        .split("\n## Metrics\n")
        .nth(1)
        .unwrap()
        .split("\n## ")
        .next()
        .unwrap();
    let listed: Vec<(String, String, String)> = section
        .lines()
        .filter(|line| line.starts_with("| `trustplane_"))
        .map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            (
                cells[1].trim_matches('`').to_string(),
                cells[2].to_string(),
                cells[4].to_string(),
            )
        })
        .collect();
    let documented: Vec<(String, String, String)> = documented()
        .into_iter()
        .map(|metric| (metric.name, metric.kind, metric.served_by))
        .collect();
    assert_eq!(listed, documented);
}
