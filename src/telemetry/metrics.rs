//! Prometheus metrics (`prometheus-client`, OpenMetrics text), served at
//! `/metrics` on the `--health-listen` listener of `trustplane server` and
//! `trustplane agent`. `docs/metrics.md` is the reference for every name.
//!
//! Two kinds of metric live here:
//! - counters, histograms and event gauges recorded where the event
//!   happens, through the functions of this module (issuance, watch
//!   streams, store and Vault errors, cacerts writes, an agent's last apply
//!   and report). They are process-wide, like the process they describe;
//! - state computed at scrape time from a snapshot the command takes when
//!   it is scraped ([`ServerSnapshot`], [`AgentSnapshot`]), so that the
//!   per-cluster values, the published version and the rotation phase are
//!   always what the store says, on a follower too.
//!
//! Labels come from fixed sets only: `&'static str` values from the error
//! types' `metric_label()`s (`ServerError::label` for issuance outcomes)
//! and the sinks' `kind()`; the scrape-time state adds the cluster name (a
//! validated DNS label) and the trust domain. Recording an event allocates
//! nothing: a label set is a `&'static str` or two.
//!
//! Not here: reading the server's or agent's state (`server::metrics_view`,
//! `agent::health`), which keeps this module free of both.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::rotation::Phase;

/// The `Content-Type` of a scrape answer (OpenMetrics text, which
/// Prometheus asks for and parses).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The outcome label of a successful issuance.
pub const OUTCOME_OK: &str = "ok";

/// Every outcome label `SignIntermediate` records besides [`OUTCOME_OK`]:
/// the labels of `ServerError::label`. Listed so that each series exists
/// (at 0) from the start and an alert on a rate sees the first failure.
pub const ISSUANCE_REFUSALS: &[&str] = &[
    "unauthenticated",
    "permission_denied",
    "not_found",
    "invalid_argument",
    "failed_precondition",
    "certificate",
    "policy",
    "resource_exhausted",
    "signer",
    "store",
    "setup",
];

/// Every `StoreError::metric_label`.
pub const STORE_ERROR_KINDS: &[&str] = &[
    "conflict",
    "locked",
    "backend",
    "unavailable",
    "integrity",
    "corrupt",
];

/// Every `VaultErrorKind::metric_label`.
pub const VAULT_ERROR_KINDS: &[&str] = &[
    "config",
    "unreachable",
    "sealed",
    "permission_denied",
    "not_found",
    "conflict",
    "bad_request",
    "server",
    "invalid",
];

/// Every `SinkError::metric_label`.
pub const SINK_ERROR_KINDS: &[&str] = &[
    "io",
    "unexpected_entry",
    "background",
    "refused",
    "foreign",
    "incompatible",
    "backend",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkLabels {
    sink: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkErrorLabels {
    sink: &'static str,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: &'static str,
}

type HistogramFamily<Labels> = Family<Labels, Histogram, fn() -> Histogram>;

/// 0.5 ms to ~8 s: a local signature takes about a millisecond with its
/// durable write, one through Vault tens of milliseconds.
fn issuance_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 15))
}

/// 1 ms to ~16 s: a directory write with its fsyncs, or an API server
/// round trip (several on a conflict).
fn write_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// The metrics recorded where things happen, and their registries.
struct Events {
    issuances: Family<OutcomeLabels, Counter>,
    issuance_duration: HistogramFamily<OutcomeLabels>,
    watch_streams: Gauge,
    leader: Gauge,
    store_errors: Family<KindLabels, Counter>,
    vault_errors: Family<KindLabels, Counter>,
    write_duration: HistogramFamily<SinkLabels>,
    write_errors: Family<SinkErrorLabels, Counter>,
    agent_last_apply: Gauge<f64, std::sync::atomic::AtomicU64>,
    agent_last_report: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Both commands: build info and cacerts writes (agent, push mode).
    common: Registry,
    server: Registry,
    agent: Registry,
}

static EVENTS: LazyLock<Events> = LazyLock::new(Events::new);

impl Events {
    fn new() -> Self {
        let mut events = Events {
            issuances: Family::default(),
            issuance_duration: Family::new_with_constructor(issuance_histogram),
            watch_streams: Gauge::default(),
            leader: Gauge::default(),
            store_errors: Family::default(),
            vault_errors: Family::default(),
            write_duration: Family::new_with_constructor(write_histogram),
            write_errors: Family::default(),
            agent_last_apply: Gauge::default(),
            agent_last_report: Gauge::default(),
            common: Registry::default(),
            server: Registry::default(),
            agent: Registry::default(),
        };
        // Series of fixed label sets exist from the start, at 0, so that a
        // rate sees the first event (and the family is served: an empty
        // family is left out of the exposition).
        for outcome in std::iter::once(OUTCOME_OK).chain(ISSUANCE_REFUSALS.iter().copied()) {
            drop(events.issuances.get_or_create(&OutcomeLabels { outcome }));
        }
        drop(events.issuance_duration.get_or_create(&OutcomeLabels {
            outcome: OUTCOME_OK,
        }));
        for &kind in STORE_ERROR_KINDS {
            drop(events.store_errors.get_or_create(&KindLabels { kind }));
        }
        for &kind in VAULT_ERROR_KINDS {
            drop(events.vault_errors.get_or_create(&KindLabels { kind }));
        }
        events.common.register(
            "trustplane_build",
            "The trustplane version running",
            Info::new(VersionLabels {
                version: env!("CARGO_PKG_VERSION"),
            }),
        );
        events.common.register(
            "trustplane_cacerts_write_duration_seconds",
            "Time one atomic write of a cluster's cacerts took, by sink (directory, kubernetes)",
            events.write_duration.clone(),
        );
        events.common.register(
            "trustplane_cacerts_write_errors",
            "Failed cacerts writes, by sink and error kind",
            events.write_errors.clone(),
        );
        events.server.register(
            "trustplane_issuances",
            "SignIntermediate calls answered, by outcome (ok or the refusal's kind)",
            events.issuances.clone(),
        );
        events.server.register(
            "trustplane_issuance_duration_seconds",
            "Time a SignIntermediate call took, by outcome",
            events.issuance_duration.clone(),
        );
        events.server.register(
            "trustplane_watch_streams",
            "WatchBundle streams open now",
            events.watch_streams.clone(),
        );
        events.server.register(
            "trustplane_server_leader",
            "1 while this server holds the lease that runs rotations, --auto and push mode, else 0",
            events.leader.clone(),
        );
        events.server.register(
            "trustplane_store_errors",
            "Store operations that failed, by kind",
            events.store_errors.clone(),
        );
        events.server.register(
            "trustplane_vault_errors",
            "Vault calls that failed (each attempt), by kind",
            events.vault_errors.clone(),
        );
        events.agent.register(
            "trustplane_agent_last_apply_timestamp_seconds",
            "When the agent last brought its cacerts in line with the newest bundle (Unix seconds; 0: not yet)",
            events.agent_last_apply.clone(),
        );
        events.agent.register(
            "trustplane_agent_last_report_timestamp_seconds",
            "When the server last accepted the agent's status report (Unix seconds; 0: not yet)",
            events.agent_last_report.clone(),
        );
        events
    }
}

/// Records one `SignIntermediate` call: `outcome` is [`OUTCOME_OK`] or
/// the refusal's `ServerError::label`.
pub fn record_issuance(outcome: &'static str, took: Duration) {
    let labels = OutcomeLabels { outcome };
    EVENTS.issuances.get_or_create(&labels).inc();
    EVENTS
        .issuance_duration
        .get_or_create(&labels)
        .observe(took.as_secs_f64());
}

/// A `WatchBundle` stream opened.
pub fn watch_stream_opened() {
    EVENTS.watch_streams.inc();
}

/// A `WatchBundle` stream ended.
pub fn watch_stream_closed() {
    EVENTS.watch_streams.dec();
}

/// Whether this server holds the leader lease now.
pub fn record_leader(leading: bool) {
    EVENTS.leader.set(i64::from(leading));
}

/// A store operation failed with an error of `kind`
/// (`StoreError::metric_label`).
pub fn record_store_error(kind: &'static str) {
    EVENTS
        .store_errors
        .get_or_create(&KindLabels { kind })
        .inc();
}

/// A Vault call failed with an error of `kind`
/// (`VaultErrorKind::metric_label`).
pub fn record_vault_error(kind: &'static str) {
    EVENTS
        .vault_errors
        .get_or_create(&KindLabels { kind })
        .inc();
}

/// A sink of `sink` kind (`ClusterSink::kind`) is kept by this process:
/// its write series exist from now on (at 0).
pub fn sink_in_use(sink: &'static str) {
    drop(EVENTS.write_duration.get_or_create(&SinkLabels { sink }));
    for &kind in SINK_ERROR_KINDS {
        drop(
            EVENTS
                .write_errors
                .get_or_create(&SinkErrorLabels { sink, kind }),
        );
    }
}

/// One cacerts write to a sink of `sink` kind took `took`; `error` is the
/// failure's `SinkError::metric_label`, if it failed.
pub fn record_cacerts_write(sink: &'static str, took: Duration, error: Option<&'static str>) {
    EVENTS
        .write_duration
        .get_or_create(&SinkLabels { sink })
        .observe(took.as_secs_f64());
    if let Some(kind) = error {
        EVENTS
            .write_errors
            .get_or_create(&SinkErrorLabels { sink, kind })
            .inc();
    }
}

/// The agent brought its cacerts in line with the newest bundle at
/// `unix_seconds`.
pub fn record_agent_apply(unix_seconds: f64) {
    EVENTS.agent_last_apply.set(unix_seconds);
}

/// The server accepted the agent's status report at `unix_seconds`.
pub fn record_agent_report(unix_seconds: f64) {
    EVENTS.agent_last_report.set(unix_seconds);
}

/// The server's state at one scrape.
#[derive(Clone, Debug, Default)]
pub struct ServerSnapshot {
    /// The trust domain served.
    pub trust_domain: String,
    /// The bundle version published now.
    pub bundle_version: u64,
    /// The rotation phase (`Stable` when none is under way).
    pub phase: Phase,
    /// Seconds since the phase was entered (`None`: no rotation ever).
    pub phase_seconds: Option<i64>,
    /// Seconds the phase has waited for clusters to acknowledge it (0 when
    /// every cluster has, or no rotation is under way).
    pub gate_wait_seconds: i64,
    /// Every enrolled cluster.
    pub clusters: Vec<ClusterSample>,
}

/// One enrolled cluster at one scrape.
#[derive(Clone, Debug, Default)]
pub struct ClusterSample {
    /// The cluster name (a DNS label).
    pub name: String,
    /// Seconds until the intermediate it reported in use expires (`None`:
    /// it reported none).
    pub intermediate_expiry_seconds: Option<i64>,
    /// The bundle version it reported applied (0: none).
    pub applied_bundle_version: u64,
    /// Seconds since its last status report, or since it was registered
    /// when it never reported.
    pub report_age_seconds: i64,
}

/// The agent's state at one scrape.
#[derive(Clone, Debug, Default)]
pub struct AgentSnapshot {
    /// The bundle version written to the sink (0: none yet).
    pub applied_bundle_version: u64,
    /// Seconds until the intermediate in use expires (`None`: none yet).
    pub intermediate_expiry_seconds: Option<i64>,
    /// Whether `/readyz` answers 200.
    pub ready: bool,
}

/// The one label of a scrape-time sample, e.g. `[("cluster", "east")]`.
type Label<'a> = [(&'static str, &'a str); 1];

/// Encodes one gauge without labels (no sample when `value` is `None`).
fn gauge<Value: prometheus_client::encoding::EncodeGaugeValue + std::fmt::Debug>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: Option<Value>,
) -> Result<(), std::fmt::Error> {
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    match value {
        Some(value) => ConstGauge::new(value).encode(metric),
        None => Ok(()),
    }
}

/// Encodes one gauge family with a sample per `(labels, value)`.
fn gauge_family<Labels, Value>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels, Value)>,
) -> Result<(), std::fmt::Error>
where
    Labels: EncodeLabelSet,
    Value: prometheus_client::encoding::EncodeGaugeValue + std::fmt::Debug,
{
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in samples {
        ConstGauge::new(value).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

fn cluster_label(cluster: &ClusterSample) -> Label<'_> {
    [("cluster", cluster.name.as_str())]
}

impl Collector for ServerSnapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        gauge_family(
            &mut encoder,
            "trustplane_bundle_published_version",
            "The trust-bundle version the server publishes now.",
            [(
                [("trust_domain", self.trust_domain.as_str())],
                self.bundle_version,
            )],
        )?;
        gauge_family(
            &mut encoder,
            "trustplane_rotation_phase",
            "1 for the current root-rotation phase, 0 for the others.",
            [
                Phase::Stable,
                Phase::TrustNew,
                Phase::SignNew,
                Phase::RetireOld,
            ]
            .map(|phase| ([("phase", phase.as_str())], i64::from(phase == self.phase))),
        )?;
        gauge(
            &mut encoder,
            "trustplane_rotation_phase_seconds",
            "Seconds since the current rotation phase was entered (absent before the first rotation).",
            self.phase_seconds,
        )?;
        gauge(
            &mut encoder,
            "trustplane_rotation_gate_wait_seconds",
            "Seconds the current rotation phase has waited for every cluster to acknowledge it (0 when acknowledged or stable).",
            Some(self.gate_wait_seconds),
        )?;
        gauge_family(
            &mut encoder,
            "trustplane_cluster_intermediate_expiry_seconds",
            "Seconds until the intermediate a cluster reported in use expires.",
            self.clusters.iter().filter_map(|cluster| {
                cluster
                    .intermediate_expiry_seconds
                    .map(|seconds| (cluster_label(cluster), seconds))
            }),
        )?;
        gauge_family(
            &mut encoder,
            "trustplane_cluster_applied_bundle_version",
            "The trust-bundle version a cluster last reported applied (0: none).",
            self.clusters
                .iter()
                .map(|cluster| (cluster_label(cluster), cluster.applied_bundle_version)),
        )?;
        gauge_family(
            &mut encoder,
            "trustplane_cluster_report_age_seconds",
            "Seconds since a cluster's last status report (since it was registered when it never reported).",
            self.clusters
                .iter()
                .map(|cluster| (cluster_label(cluster), cluster.report_age_seconds)),
        )
    }
}

impl Collector for AgentSnapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        gauge(
            &mut encoder,
            "trustplane_agent_applied_bundle_version",
            "The trust-bundle version the agent wrote to its sink (0: none yet).",
            Some(self.applied_bundle_version),
        )?;
        gauge(
            &mut encoder,
            "trustplane_agent_intermediate_expiry_seconds",
            "Seconds until the intermediate in the sink expires (absent before the first one).",
            self.intermediate_expiry_seconds,
        )?;
        gauge(
            &mut encoder,
            "trustplane_agent_ready",
            "1 while /readyz answers 200, else 0.",
            Some(i64::from(self.ready)),
        )
    }
}

/// Encodes `registries` and `state` (when there is one) as one OpenMetrics
/// exposition ending in `# EOF`.
fn exposition(registries: &[&Registry], state: Option<Box<dyn Collector>>) -> String {
    let mut text = String::new();
    let mut encoded = registries.iter().try_for_each(|registry| {
        prometheus_client::encoding::text::encode_registry(&mut text, registry)
    });
    if let (Ok(()), Some(state)) = (&encoded, state) {
        let mut scraped = Registry::default();
        scraped.register_collector(state);
        encoded = prometheus_client::encoding::text::encode_registry(&mut text, &scraped);
    }
    // Writing to a String cannot fail; a collector that did would leave a
    // partial family, so say so rather than serve it.
    if encoded.is_err() {
        tracing::error!("encoding the metrics failed");
        text.clear();
    }
    let _ = prometheus_client::encoding::text::encode_eof(&mut text);
    text
}

/// The server's `/metrics` answer: its events, and the state in `snapshot`
/// (without it, e.g. when the store could not be read, only the events:
/// `trustplane_store_errors_total` counts the failure).
pub fn server_exposition(snapshot: Option<ServerSnapshot>) -> String {
    exposition(
        &[&EVENTS.common, &EVENTS.server],
        snapshot.map(|snapshot| Box::new(snapshot) as Box<dyn Collector>),
    )
}

/// The agent's `/metrics` answer: its events and the state in `snapshot`.
pub fn agent_exposition(snapshot: AgentSnapshot) -> String {
    exposition(&[&EVENTS.common, &EVENTS.agent], Some(Box::new(snapshot)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn sample(text: &str, name_and_labels: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(name_and_labels)?.strip_prefix(' '))
            .map(|value| value.parse().unwrap())
    }

    #[test]
    fn the_server_state_is_encoded_per_cluster_and_phase() {
        let text = server_exposition(Some(ServerSnapshot {
            trust_domain: "cluster.local".into(),
            bundle_version: 3,
            phase: Phase::SignNew,
            phase_seconds: Some(42),
            gate_wait_seconds: 7,
            clusters: vec![
                ClusterSample {
                    name: "east".into(),
                    intermediate_expiry_seconds: Some(3600),
                    applied_bundle_version: 3,
                    report_age_seconds: 5,
                },
                ClusterSample {
                    name: "west".into(),
                    intermediate_expiry_seconds: None,
                    applied_bundle_version: 0,
                    report_age_seconds: 90,
                },
            ],
        }));
        assert!(text.ends_with("# EOF\n"), "{text}");
        let expect = [
            (
                "trustplane_bundle_published_version{trust_domain=\"cluster.local\"}",
                3.0,
            ),
            ("trustplane_rotation_phase{phase=\"sign-new\"}", 1.0),
            ("trustplane_rotation_phase{phase=\"stable\"}", 0.0),
            ("trustplane_rotation_phase_seconds", 42.0),
            ("trustplane_rotation_gate_wait_seconds", 7.0),
            (
                "trustplane_cluster_intermediate_expiry_seconds{cluster=\"east\"}",
                3600.0,
            ),
            (
                "trustplane_cluster_applied_bundle_version{cluster=\"west\"}",
                0.0,
            ),
            (
                "trustplane_cluster_report_age_seconds{cluster=\"west\"}",
                90.0,
            ),
            ("trustplane_issuances_total{outcome=\"policy\"}", 0.0),
        ];
        for (name, value) in expect {
            assert_eq!(sample(&text, name), Some(value), "{name} in\n{text}");
        }
        assert_eq!(
            sample(
                &text,
                "trustplane_cluster_intermediate_expiry_seconds{cluster=\"west\"}"
            ),
            None
        );
        assert!(!text.contains("trustplane_agent_"), "{text}");
    }

    #[test]
    fn events_are_counted_under_their_labels() {
        let before = server_exposition(None);
        let count = |text: &str| {
            sample(
                text,
                "trustplane_issuance_duration_seconds_count{outcome=\"signer\"}",
            )
            .unwrap_or(0.0)
        };
        record_issuance("signer", Duration::from_millis(3));
        record_store_error("unavailable");
        record_cacerts_write("memory", Duration::from_millis(1), Some("refused"));
        let after = server_exposition(None);
        assert_eq!(count(&after), count(&before) + 1.0, "{after}");
        assert!(
            sample(
                &after,
                "trustplane_store_errors_total{kind=\"unavailable\"}"
            )
            .unwrap()
                >= 1.0
        );
        assert!(
            sample(
                &after,
                "trustplane_cacerts_write_errors_total{sink=\"memory\",kind=\"refused\"}"
            )
            .unwrap()
                >= 1.0
        );
        assert!(
            after.contains("trustplane_build_info{version=\""),
            "{after}"
        );
        // State is absent without a snapshot; the families of events are not.
        assert!(!after.contains("trustplane_rotation_phase"), "{after}");
    }

    #[test]
    fn every_store_error_has_a_listed_metric_label() {
        use crate::store::StoreError;
        let corrupt = serde_json::from_str::<u8>("x").unwrap_err();
        let labels: Vec<&str> = [
            StoreError::Conflict {
                table: "t",
                key: "k".into(),
                expected: String::new(),
                found: String::new(),
            },
            StoreError::Locked { path: "p".into() },
            StoreError::Backend {
                message: "m".into(),
                source: None,
            },
            StoreError::Unavailable {
                message: "m".into(),
                source: None,
            },
            StoreError::Integrity {
                table: "t",
                key: "k".into(),
                reason: "r".into(),
            },
            StoreError::Corrupt {
                table: "t",
                key: "k".into(),
                source: corrupt,
            },
        ]
        .iter()
        .map(StoreError::metric_label)
        .collect();
        assert_eq!(labels, STORE_ERROR_KINDS);
    }

    #[tokio::test]
    async fn every_sink_error_has_a_listed_metric_label() {
        use crate::sink::SinkError;
        let task = tokio::spawn(std::future::pending::<()>());
        task.abort();
        let cancelled = task.await.unwrap_err();
        let labels: Vec<&str> = [
            SinkError::Io {
                action: "write",
                path: "p".into(),
                source: std::io::Error::other("x"),
            },
            SinkError::UnexpectedEntry {
                path: "p".into(),
                found: "a directory",
            },
            SinkError::Background(cancelled),
            SinkError::Refused("r".into()),
            SinkError::Foreign {
                target: "t".into(),
                marker: "m".into(),
            },
            SinkError::Incompatible {
                target: "t".into(),
                reason: "r".into(),
            },
            SinkError::Backend {
                action: "replace",
                target: "t".into(),
                source: "x".into(),
            },
        ]
        .iter()
        .map(SinkError::metric_label)
        .collect();
        assert_eq!(labels, SINK_ERROR_KINDS);
    }

    #[test]
    fn the_agent_state_is_encoded_without_server_families() {
        let text = agent_exposition(AgentSnapshot {
            applied_bundle_version: 4,
            intermediate_expiry_seconds: Some(100),
            ready: true,
        });
        assert_eq!(
            sample(&text, "trustplane_agent_applied_bundle_version"),
            Some(4.0)
        );
        assert_eq!(
            sample(&text, "trustplane_agent_intermediate_expiry_seconds"),
            Some(100.0)
        );
        assert_eq!(sample(&text, "trustplane_agent_ready"), Some(1.0));
        assert!(!text.contains("trustplane_issuances"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
