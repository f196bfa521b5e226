use super::*;
use crate::ca::{PrivateKey, unix_to_system_time};
use crate::fixtures::{TRUST_DOMAIN, new_intermediate, profile, root_request};

/// A fixed, whole-second start of every scenario.
const T0: i64 = 1_790_000_000;
const HOUR: u64 = 3600;
const GRACE: Duration = Duration::from_secs(2 * HOUR);
const ACK_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// As long as [`GRACE`]: the longest workload lifetime the grace covers.
const WORKLOAD_LIFETIME: Duration = GRACE;
const INTERMEDIATE_LIFETIME: Duration = Duration::from_secs(365 * 24 * HOUR);

fn at(offset: i64) -> SystemTime {
    unix_to_system_time(T0 + offset)
}

fn seconds(duration: Duration) -> i64 {
    i64::try_from(duration.as_secs()).unwrap()
}

/// A minute after the grace counted from an ack observed at `at(ack)`
/// (the exact boundary has tests of its own).
fn after_grace(ack: i64) -> SystemTime {
    at(ack + seconds(GRACE) + 60)
}

fn options() -> StartOptions {
    StartOptions {
        grace: GRACE,
        ack_timeout: ACK_TIMEOUT,
        excluded: Vec::new(),
        auto_advance: false,
    }
}

fn excluding(cluster: &str) -> StartOptions {
    StartOptions {
        excluded: vec![cluster.to_string()],
        ..options()
    }
}

/// A mesh root and its key.
#[derive(Clone)]
struct Root {
    certificate: Certificate,
    key: PrivateKey,
}

impl Root {
    fn old() -> Root {
        let (certificate, key) = ca::create_root(&root_request(TRUST_DOMAIN), at(0)).unwrap();
        Root { certificate, key }
    }

    fn successor(label: &str) -> Root {
        let (certificate, key) =
            ca::create_successor_root(&root_request(TRUST_DOMAIN), label, at(0)).unwrap();
        Root { certificate, key }
    }

    fn id(&self) -> String {
        self.certificate.serial_hex().unwrap()
    }

    /// A cluster intermediate signed by this root, from a CSR as an agent
    /// sends it: the chain `[intermediate, root]` and the intermediate's key.
    fn issue(&self, cluster: &str, now: SystemTime) -> (Vec<Certificate>, PrivateKey) {
        // rustls-webpki rejects chains carrying URI name constraints.
        let profile = profile(cluster, INTERMEDIATE_LIFETIME, false);
        let (intermediate, key) = new_intermediate(&profile, &self.certificate, &self.key, now);
        (vec![intermediate, self.certificate.clone()], key)
    }

    fn chain(&self, cluster: &str) -> Vec<Certificate> {
        self.issue(cluster, at(0)).0
    }
}

/// What `cluster` reports: it applied `version` and serves `chain`.
fn reported(cluster: &str, version: u64, chain: Vec<Certificate>) -> ClusterView {
    ClusterView {
        name: cluster.into(),
        applied_version: version,
        chain,
        reported_unix: Some(T0),
    }
}

fn never_reported(cluster: &str) -> ClusterView {
    ClusterView {
        name: cluster.into(),
        applied_version: 0,
        chain: Vec::new(),
        reported_unix: None,
    }
}

/// Root A (trusted and signing), root B (the successor) and the stable
/// bundle {A} at version 1.
struct Fixture {
    a: Root,
    b: Root,
    stable: TrustBundle,
}

fn fixture() -> Fixture {
    let a = Root::old();
    let b = Root::successor("B");
    let stable = TrustBundle::new(TRUST_DOMAIN, 1, vec![a.certificate.clone()]).unwrap();
    Fixture { a, b, stable }
}

/// A step's bundle; the step must publish one.
fn published(step: &Step) -> TrustBundle {
    step.bundle.clone().unwrap()
}

impl Fixture {
    fn root(&self, id: &str) -> &Root {
        if self.a.id() == id { &self.a } else { &self.b }
    }

    /// The root that signs in `rotation`'s phase.
    fn signing(&self, rotation: &Rotation) -> &Certificate {
        &self.root(rotation.signing_root_id()).certificate
    }

    fn start_with(&self, clusters: &[ClusterView], options: &StartOptions) -> Step {
        start(
            None,
            &self.stable,
            &self.a.certificate,
            &self.b.certificate,
            clusters,
            options,
            at(0),
        )
        .unwrap()
    }

    /// `trust-new` at version 2, entered at `at(0)`.
    fn trust_new(&self) -> Step {
        self.start_with(&[], &options())
    }

    fn advance(&self, step: &Step, clusters: &[ClusterView], now: SystemTime) -> Step {
        advance(
            &step.rotation,
            &published(step),
            self.signing(&step.rotation),
            clusters,
            now,
        )
        .unwrap()
    }

    /// `sign-new` at version 3, entered at `at(60)`.
    fn sign_new(&self) -> Step {
        self.advance(&self.trust_new(), &[], at(60))
    }

    /// `sign-new` after every ack was seen at `at(120)` and its grace passed,
    /// advanced to `retire-old` (version 4).
    fn retire_old(&self) -> Step {
        let mut sign_new = self.sign_new();
        assert!(sign_new.rotation.observe(&[], &self.b.certificate, at(120)));
        self.advance(&sign_new, &[], after_grace(120))
    }
}

fn gate_closed_summary(result: Result<Step, RotationError>, phase: Phase) -> String {
    match result {
        Err(RotationError::GateClosed {
            phase: closed,
            summary,
        }) if closed == phase => summary,
        other => panic!("expected GateClosed in {phase}, got {other:?}"),
    }
}

fn stranded(result: Result<Step, RotationError>) -> Vec<Stranded> {
    match result {
        Err(RotationError::WouldStrand { stranded, .. }) => stranded,
        other => panic!("expected WouldStrand, got {other:?}"),
    }
}

/// The first second from `at(from)` on at which `attempt` succeeds, and its
/// step; every earlier attempt must be refused for the grace alone.
fn first_allowed(
    from: i64,
    phase: Phase,
    attempt: impl Fn(SystemTime) -> Result<Step, RotationError>,
) -> (i64, Step) {
    let first = gate_closed_summary(attempt(at(from)), phase);
    assert!(first.contains("grace period"), "{first}");
    for offset in from + 1..from + 60 {
        match attempt(at(offset)) {
            Ok(step) => return (offset, step),
            Err(RotationError::GateClosed { summary, .. }) if summary.contains("grace period") => {}
            Err(other) => panic!("at +{offset}s: {other:?}"),
        }
    }
    panic!("still refused a minute after +{from}s")
}

/// A workload certificate issued at `at(issued)` with a lifetime equal to
/// [`GRACE`], under an intermediate from `root`.
fn workload_living_the_grace(root: &Root, issued: i64) -> (Certificate, Vec<Certificate>) {
    let (chain, intermediate_key) = root.issue("east", at(issued));
    let key = PrivateKey::generate(ca::KeyAlgorithm::EcdsaP256).unwrap();
    let leaf = ca::sign_workload(
        &key.public_key_der().unwrap(),
        "spiffe://cluster.local/ns/default/sa/default",
        &chain[0],
        &intermediate_key,
        GRACE,
        at(issued),
    )
    .unwrap();
    (leaf, chain)
}

fn names(stranded: &[Stranded]) -> Vec<&str> {
    stranded
        .iter()
        .map(|stranded| stranded.cluster.as_str())
        .collect()
}

// ---- start ----

#[test]
fn start_from_a_enters_trust_new_with_a_and_b_while_a_still_signs() {
    let fixture = fixture();
    let step = fixture.trust_new();
    let bundle = published(&step);
    assert_eq!(step.rotation.phase, Phase::TrustNew);
    assert_eq!(
        bundle.roots(),
        [fixture.a.certificate.clone(), fixture.b.certificate.clone()]
    );
    assert!(!bundle.is_newest_repeated());
    assert_eq!(bundle.version(), fixture.stable.version() + 1);
    assert_eq!(step.rotation.bundle_version, bundle.version());
    assert_eq!(step.rotation.signing_root_id(), fixture.a.id());
    assert_eq!(step.rotation.signing_root_id(), fixture.a.id());
    assert_eq!(step.rotation.old_root_id, fixture.a.id());
    assert_eq!(step.rotation.new_root_id, fixture.b.id());
    assert_eq!(step.rotation.started_unix, T0);
    assert_eq!(step.rotation.entered_unix, T0);
    assert_eq!(step.rotation.acknowledged_unix, None);
    assert_eq!(step.rotation.grace_seconds, GRACE.as_secs());
    assert_eq!(step.rotation.ack_timeout_seconds, ACK_TIMEOUT.as_secs());
    assert!(!step.rotation.new_root_signed);
    assert!(!step.rotation.aborted);
    assert_eq!(step.rotation.outcome, None);
    assert!(step.rotation.in_progress());
}

#[test]
fn start_is_refused_while_a_rotation_is_in_progress() {
    let fixture = fixture();
    for (previous, phase) in [
        (fixture.trust_new(), Phase::TrustNew),
        (fixture.sign_new(), Phase::SignNew),
        (fixture.retire_old(), Phase::RetireOld),
    ] {
        let result = start(
            Some(&previous.rotation),
            &fixture.stable,
            &fixture.a.certificate,
            &Root::successor("C").certificate,
            &[],
            &options(),
            at(0),
        );
        assert!(
            matches!(result, Err(RotationError::InProgress(found)) if found == phase),
            "{result:?}"
        );
    }
}

#[test]
fn start_is_allowed_after_a_finished_rotation() {
    let fixture = fixture();
    let retire_old = fixture.retire_old();
    let finished = fixture.advance(&retire_old, &[], at(10 * seconds(GRACE)));
    let current = published(&retire_old);
    let next = start(
        Some(&finished.rotation),
        &current,
        &fixture.b.certificate,
        &Root::successor("C").certificate,
        &[],
        &options(),
        at(10 * seconds(GRACE)),
    )
    .unwrap();
    assert_eq!(next.rotation.phase, Phase::TrustNew);
    assert_eq!(next.rotation.old_root_id, fixture.b.id());
    assert_eq!(published(&next).version(), current.version() + 1);
}

#[test]
fn start_is_refused_when_the_new_root_is_already_in_the_bundle() {
    let fixture = fixture();
    let both = fixture
        .stable
        .with_appended(fixture.b.certificate.clone())
        .unwrap();
    for (current, new_root) in [
        (&fixture.stable, &fixture.a.certificate),
        (&both, &fixture.b.certificate),
    ] {
        let result = start(
            None,
            current,
            &fixture.a.certificate,
            new_root,
            &[],
            &options(),
            at(0),
        );
        assert!(
            matches!(&result, Err(RotationError::NewRoot(message)) if message.contains("already in the trust bundle")),
            "{result:?}"
        );
    }
}

#[test]
fn start_is_refused_unless_the_bundle_is_the_signing_root_alone() {
    // Retiring A removes the oldest root; with another root in front of A
    // that would drop the wrong one, so rotation starts only from {A}.
    let fixture = fixture();
    let other = Root::successor("other");
    let with_other = TrustBundle::new(
        "cluster.local",
        1,
        vec![other.certificate.clone(), fixture.a.certificate.clone()],
    )
    .unwrap();
    let result = start(
        None,
        &with_other,
        &fixture.a.certificate,
        &fixture.b.certificate,
        &[],
        &options(),
        at(0),
    );
    assert!(
        matches!(result, Err(RotationError::UnexpectedBundle(2))),
        "{result:?}"
    );
}

#[test]
fn start_is_refused_when_the_new_root_has_expired() {
    let fixture = fixture();
    let after_expiry = fixture.b.certificate.not_after().unwrap() + Duration::from_secs(1);
    let result = start(
        None,
        &fixture.stable,
        &fixture.a.certificate,
        &fixture.b.certificate,
        &[],
        &options(),
        after_expiry,
    );
    assert!(
        matches!(&result, Err(RotationError::NewRoot(message)) if message.contains("expired")),
        "{result:?}"
    );
}

#[test]
fn start_preflight_refuses_a_cluster_whose_chain_verifies_under_neither_root() {
    let fixture = fixture();
    let stray = Root::successor("stray");
    let clusters = [
        reported("east", 1, fixture.a.chain("east")),
        reported("rogue", 1, stray.chain("rogue")),
    ];
    let result = start(
        None,
        &fixture.stable,
        &fixture.a.certificate,
        &fixture.b.certificate,
        &clusters,
        &options(),
        at(0),
    );
    let stranded = stranded(result);
    assert_eq!(names(&stranded), ["rogue"]);
    // Excluded by the operator: not a reason to refuse.
    let step = fixture.start_with(&clusters, &excluding("rogue"));
    assert_eq!(step.rotation.excluded, ["rogue"]);
}

// ---- gate ----

#[test]
fn gate_blocks_a_cluster_that_never_reported() {
    let fixture = fixture();
    let step = fixture.trust_new();
    let gate = step.rotation.gate(
        &[
            reported("east", 2, fixture.a.chain("east")),
            never_reported("west"),
        ],
        &fixture.a.certificate,
        at(1),
    );
    assert_eq!(
        gate.blockers,
        [Blocker {
            cluster: "west".into(),
            reason: BlockReason::NeverReported,
            overdue: false,
        }]
    );
    assert!(!gate.holds());
    assert!(
        gate.summary().contains("west (has never reported)"),
        "{}",
        gate.summary()
    );
}

#[test]
fn gate_blocks_a_cluster_that_applied_an_older_bundle_version() {
    let fixture = fixture();
    let step = fixture.trust_new();
    let gate = step.rotation.gate(
        &[
            reported("east", 1, fixture.a.chain("east")),
            reported("west", 2, fixture.a.chain("west")),
            // A newer version than the phase's also acknowledges it.
            reported("north", 3, fixture.a.chain("north")),
        ],
        &fixture.a.certificate,
        at(1),
    );
    assert_eq!(gate.blockers.len(), 1, "{gate:?}");
    assert_eq!(gate.blockers[0].cluster, "east");
    assert_eq!(
        gate.blockers[0].reason,
        BlockReason::NotApplied {
            applied: 1,
            wanted: 2
        }
    );
    assert!(gate.summary().contains("applied bundle v1, needs v2"));
}

#[test]
fn gate_blocks_a_cluster_whose_chain_ends_at_another_root() {
    let fixture = fixture();
    let trust_new = fixture.trust_new();
    // trust-new: A signs, so a chain ending at B is the wrong signer.
    let gate = trust_new.rotation.gate(
        &[reported("east", 2, fixture.b.chain("east"))],
        &fixture.a.certificate,
        at(1),
    );
    assert_eq!(
        gate.blockers[0].reason,
        BlockReason::WrongSigner {
            chain_root: fixture.b.certificate.subject().unwrap()
        }
    );
    // sign-new: B signs, so a chain still ending at A holds the gate.
    let sign_new = fixture.sign_new();
    let gate = sign_new.rotation.gate(
        &[
            reported("east", 3, fixture.a.chain("east")),
            reported("west", 3, Vec::new()),
        ],
        &fixture.b.certificate,
        at(61),
    );
    assert_eq!(
        gate.blockers
            .iter()
            .map(|blocker| (blocker.cluster.as_str(), blocker.reason.clone()))
            .collect::<Vec<_>>(),
        [
            (
                "east",
                BlockReason::WrongSigner {
                    chain_root: fixture.a.certificate.subject().unwrap()
                }
            ),
            (
                "west",
                BlockReason::WrongSigner {
                    chain_root: "no reported chain".into()
                }
            ),
        ]
    );
}

#[test]
fn gate_never_waits_for_an_excluded_cluster() {
    let fixture = fixture();
    let step = fixture.start_with(&[], &excluding("dark"));
    let gate = step.rotation.gate(
        &[
            reported("east", 2, fixture.a.chain("east")),
            never_reported("dark"),
        ],
        &fixture.a.certificate,
        at(1),
    );
    assert!(gate.blockers.is_empty(), "{gate:?}");
    assert!(gate.holds());
    // Still blocks when it is not excluded.
    let gate =
        fixture
            .trust_new()
            .rotation
            .gate(&[never_reported("dark")], &fixture.a.certificate, at(1));
    assert!(!gate.holds());
}

#[test]
fn gate_marks_blockers_overdue_only_after_the_ack_timeout() {
    let fixture = fixture();
    let step = fixture.trust_new();
    let clusters = [never_reported("west")];
    let timeout = seconds(ACK_TIMEOUT);
    for (offset, overdue) in [(0, false), (timeout, false), (timeout + 1, true)] {
        let gate = step
            .rotation
            .gate(&clusters, &fixture.a.certificate, at(offset));
        assert_eq!(gate.blockers.len(), 1);
        assert_eq!(gate.blockers[0].overdue, overdue, "at +{offset}s");
        assert_eq!(gate.summary().contains("OVERDUE"), overdue);
    }
}

#[test]
fn gate_only_counts_the_clusters_it_is_given() {
    // The server passes enrolled clusters only; a cluster that is not
    // enrolled, or was removed, is absent from the input and never blocks.
    let fixture = fixture();
    let step = fixture.trust_new();
    let enrolled = reported("east", 2, fixture.a.chain("east"));
    let gate = step.rotation.gate(
        std::slice::from_ref(&enrolled),
        &fixture.a.certificate,
        at(1),
    );
    assert!(gate.holds(), "{gate:?}");
    assert_eq!(gate.summary(), "nothing: the gate holds");
    let gate = step.rotation.gate(
        &[enrolled, never_reported("removed")],
        &fixture.a.certificate,
        at(1),
    );
    assert!(!gate.holds());
}

#[test]
fn gate_holds_with_nothing_to_wait_for_when_stable() {
    let fixture = fixture();
    let trust_new = fixture.trust_new();
    let aborted = abort(
        &trust_new.rotation,
        &published(&trust_new),
        &fixture.a.certificate,
        &[],
        at(1),
    )
    .unwrap();
    let gate = aborted
        .rotation
        .gate(&[never_reported("west")], &fixture.a.certificate, at(2));
    assert!(gate.holds(), "{gate:?}");
    let mut rotation = aborted.rotation.clone();
    assert!(!rotation.observe(&[], &fixture.a.certificate, at(2)));
    assert_eq!(rotation, aborted.rotation);
}

// ---- advance ----

#[test]
fn advance_is_refused_with_gate_closed_while_a_cluster_blocks() {
    let fixture = fixture();
    let step = fixture.trust_new();
    let result = advance(
        &step.rotation,
        &published(&step),
        &fixture.a.certificate,
        &[
            reported("east", 2, fixture.a.chain("east")),
            reported("west", 1, fixture.a.chain("west")),
        ],
        at(1),
    );
    let summary = gate_closed_summary(result, Phase::TrustNew);
    assert!(summary.contains("west"), "{summary}");
    assert!(!summary.contains("east"), "{summary}");
}

#[test]
fn advance_and_abort_are_refused_when_no_rotation_is_in_progress() {
    let fixture = fixture();
    let trust_new = fixture.trust_new();
    let aborted = abort(
        &trust_new.rotation,
        &published(&trust_new),
        &fixture.a.certificate,
        &[],
        at(1),
    )
    .unwrap();
    let completed = fixture.advance(&fixture.retire_old(), &[], at(10 * seconds(GRACE)));
    for stable in [&aborted.rotation, &completed.rotation] {
        assert_eq!(stable.phase, Phase::Stable);
        for result in [
            advance(stable, &fixture.stable, &fixture.a.certificate, &[], at(2)),
            abort(stable, &fixture.stable, &fixture.a.certificate, &[], at(2)),
        ] {
            assert!(
                matches!(result, Err(RotationError::NotInProgress)),
                "{result:?}"
            );
        }
    }
}

#[test]
fn advance_from_trust_new_repeats_b_so_the_bytes_change_and_b_signs() {
    let fixture = fixture();
    let trust_new = fixture.trust_new();
    let before = published(&trust_new);
    let clusters = [
        reported("east", 2, fixture.a.chain("east")),
        reported("west", 2, fixture.a.chain("west")),
    ];
    let step = fixture.advance(&trust_new, &clusters, at(60));
    let after = published(&step);
    assert_eq!(step.rotation.phase, Phase::SignNew);
    assert_eq!(after.roots(), before.roots());
    assert_ne!(after.root_cert_pem(), before.root_cert_pem());
    assert!(after.is_newest_repeated());
    assert_eq!(
        after.root_cert_pem(),
        format!(
            "{}{}",
            before.root_cert_pem(),
            fixture.b.certificate.to_pem()
        )
    );
    assert_eq!(after.version(), before.version() + 1);
    assert_eq!(step.rotation.bundle_version, after.version());
    assert_eq!(step.rotation.signing_root_id(), fixture.b.id());
    assert_eq!(step.rotation.signing_root_id(), fixture.b.id());
    assert!(step.rotation.new_root_signed);
    assert_eq!(step.rotation.entered_unix, T0 + 60);
    assert_eq!(step.rotation.started_unix, T0);
    assert_eq!(step.rotation.acknowledged_unix, None);
}

#[test]
fn sign_new_gate_needs_every_chain_to_end_at_b() {
    let fixture = fixture();
    let sign_new = fixture.sign_new();
    let version = sign_new.rotation.bundle_version;
    let on_a = [
        reported("east", version, fixture.b.chain("east")),
        reported("west", version, fixture.a.chain("west")),
    ];
    let summary = gate_closed_summary(
        advance(
            &sign_new.rotation,
            &published(&sign_new),
            &fixture.b.certificate,
            &on_a,
            at(60 + seconds(GRACE) * 10),
        ),
        Phase::SignNew,
    );
    assert!(
        summary.contains("west (intermediate still chains to"),
        "{summary}"
    );
    let mut rotation = sign_new.rotation.clone();
    assert!(!rotation.observe(&on_a, &fixture.b.certificate, at(100)));
    assert_eq!(rotation.acknowledged_unix, None);
    let on_b = [
        reported("east", version, fixture.b.chain("east")),
        reported("west", version, fixture.b.chain("west")),
    ];
    assert!(
        sign_new
            .rotation
            .gate(&on_b, &fixture.b.certificate, at(100))
            .blockers
            .is_empty()
    );
}

#[test]
fn sign_new_waits_for_the_grace_counted_from_the_first_observed_ack() {
    let fixture = fixture();
    let sign_new = fixture.sign_new();
    let version = sign_new.rotation.bundle_version;
    let clusters = [
        reported("east", version, fixture.b.chain("east")),
        reported("west", version, fixture.b.chain("west")),
    ];
    let mut rotation = sign_new.rotation.clone();
    assert!(rotation.observe(&clusters, &fixture.b.certificate, at(100)));
    let acknowledged = rotation.acknowledged_unix.unwrap();
    assert!(
        (T0 + 100..=T0 + 101).contains(&acknowledged),
        "{acknowledged}"
    );
    // Later observations keep the first moment.
    assert!(!rotation.observe(&clusters, &fixture.b.certificate, at(200)));
    assert_eq!(rotation.acknowledged_unix, Some(acknowledged));

    let bundle = published(&sign_new);
    let attempt = |now| advance(&rotation, &bundle, &fixture.b.certificate, &clusters, now);
    let (opened, step) = first_allowed(100 + seconds(GRACE) - 1, Phase::SignNew, attempt);
    assert_eq!(step.rotation.phase, Phase::RetireOld);
    let summary = gate_closed_summary(attempt(at(opened - 1)), Phase::SignNew);
    assert!(summary.contains("grace period: 1s left"), "{summary}");
    let gate = rotation.gate(&clusters, &fixture.b.certificate, at(opened - 1));
    assert!(gate.blockers.is_empty());
    assert_eq!(gate.grace_left, Duration::from_secs(1));

    // A workload certificate issued under A at the ack, living as long as
    // the grace, is still valid at its notAfter second: the gate opens only
    // once it has expired, and no more than a rounding later.
    let (leaf, chain) = workload_living_the_grace(&fixture.a, 100);
    let roots = [fixture.a.certificate.clone()];
    assert!(ca::verify_leaf_path(&leaf, &chain, &roots, at(100 + seconds(GRACE))).is_ok());
    assert!(ca::verify_leaf_path(&leaf, &chain, &roots, at(opened)).is_err());
    assert!(opened <= 100 + seconds(GRACE) + 2, "opened at +{opened}s");
}

#[test]
fn sign_new_without_an_observed_ack_waits_the_whole_grace() {
    let fixture = fixture();
    let sign_new = fixture.sign_new();
    let much_later = at(60 + 100 * seconds(GRACE));
    let gate = sign_new
        .rotation
        .gate(&[], &fixture.b.certificate, much_later);
    assert!(gate.blockers.is_empty());
    assert!(gate.grace_left >= GRACE, "{gate:?}");
    let summary = gate_closed_summary(
        advance(
            &sign_new.rotation,
            &published(&sign_new),
            &fixture.b.certificate,
            &[],
            much_later,
        ),
        Phase::SignNew,
    );
    assert!(summary.contains("grace period"), "{summary}");
}

#[test]
fn observe_forgets_the_ack_when_a_cluster_stops_acknowledging() {
    let fixture = fixture();
    let sign_new = fixture.sign_new();
    let version = sign_new.rotation.bundle_version;
    let acknowledged = [reported("east", version, fixture.b.chain("east"))];
    let mut rotation = sign_new.rotation.clone();
    assert!(rotation.observe(&acknowledged, &fixture.b.certificate, at(100)));
    let first = rotation.acknowledged_unix.unwrap();
    // East was re-issued from A (e.g. a manual reissue against the old root).
    let regressed = [reported("east", version, fixture.a.chain("east"))];
    assert!(rotation.observe(&regressed, &fixture.b.certificate, at(200)));
    assert_eq!(rotation.acknowledged_unix, None);
    assert!(!rotation.observe(&regressed, &fixture.b.certificate, at(250)));
    // The grace starts over from the next ack.
    assert!(rotation.observe(&acknowledged, &fixture.b.certificate, at(300)));
    assert_eq!(rotation.acknowledged_unix, Some(first + 200));
    let gate = rotation.gate(
        &acknowledged,
        &fixture.b.certificate,
        at(100 + seconds(GRACE) + 60),
    );
    assert!(gate.grace_left >= Duration::from_secs(140), "{gate:?}");
}

#[test]
fn advance_from_sign_new_publishes_b_alone() {
    let fixture = fixture();
    let step = fixture.retire_old();
    let bundle = published(&step);
    assert_eq!(step.rotation.phase, Phase::RetireOld);
    assert_eq!(bundle.roots(), std::slice::from_ref(&fixture.b.certificate));
    assert!(!bundle.is_newest_repeated());
    assert_eq!(bundle.root_cert_pem(), fixture.b.certificate.to_pem());
    assert_eq!(bundle.version(), 4);
    assert_eq!(step.rotation.bundle_version, 4);
    assert_eq!(step.rotation.signing_root_id(), fixture.b.id());
    assert_eq!(step.rotation.signing_root_id(), fixture.b.id());
    assert_eq!(step.rotation.acknowledged_unix, None);
}

#[test]
fn preflight_names_every_cluster_whose_chain_would_not_verify() {
    let fixture = fixture();
    let only_b = TrustBundle::new(TRUST_DOMAIN, 4, vec![fixture.b.certificate.clone()]).unwrap();
    let clusters = [
        reported("east", 3, fixture.b.chain("east")),
        reported("west", 3, fixture.a.chain("west")),
        // A cluster with no known chain cannot be checked (and the gate
        // blocks it instead).
        reported("north", 3, Vec::new()),
    ];
    let stranded = preflight(&only_b, &clusters, at(1));
    assert_eq!(names(&stranded), ["west"]);
    assert!(
        stranded[0].error.contains("does not chain"),
        "{:?}",
        stranded[0]
    );
    let both = TrustBundle::new(
        TRUST_DOMAIN,
        3,
        vec![fixture.a.certificate.clone(), fixture.b.certificate.clone()],
    )
    .unwrap();
    assert!(preflight(&both, &clusters, at(1)).is_empty());
}

#[test]
fn advance_to_retire_old_is_held_by_the_gate_for_a_cluster_still_on_a() {
    let fixture = fixture();
    let sign_new = fixture.sign_new();
    let clusters = [reported("west", 3, fixture.a.chain("west"))];
    let summary = gate_closed_summary(
        advance(
            &sign_new.rotation,
            &published(&sign_new),
            &fixture.b.certificate,
            &clusters,
            at(60 + 10 * seconds(GRACE)),
        ),
        Phase::SignNew,
    );
    assert!(summary.contains("west"), "{summary}");
}

#[test]
fn a_chain_that_ends_at_b_but_does_not_verify_under_b_blocks_sign_new_and_fails_preflight() {
    // A cluster that swapped its root file but still serves an intermediate
    // from A: its chain ends at B but does not verify. The sign-new gate
    // blocks it by name (so the grace never starts), and the pre-flight of
    // {B} would name it too.
    let fixture = fixture();
    let mut sign_new = fixture.sign_new();
    let mut mixed = fixture.a.chain("west");
    mixed[1] = fixture.b.certificate.clone();
    let clusters = [
        reported("east", 3, fixture.b.chain("east")),
        reported("west", 3, mixed),
    ];
    assert!(
        !sign_new
            .rotation
            .observe(&clusters, &fixture.b.certificate, at(100))
    );
    let gate = sign_new
        .rotation
        .gate(&clusters, &fixture.b.certificate, at(100));
    assert_eq!(gate.blockers.len(), 1, "{gate:?}");
    assert_eq!(gate.blockers[0].cluster, "west");
    assert!(
        matches!(gate.blockers[0].reason, BlockReason::InvalidChain { .. }),
        "{gate:?}"
    );
    let result = advance(
        &sign_new.rotation,
        &published(&sign_new),
        &fixture.b.certificate,
        &clusters,
        after_grace(100),
    );
    assert!(gate_closed_summary(result, Phase::SignNew).contains("west"));
    let retire = published(&sign_new).with_oldest_removed().unwrap();
    assert_eq!(
        names(&preflight(&retire, &clusters, after_grace(100))),
        ["west"]
    );
}

#[test]
fn retire_old_names_an_excluded_cluster_it_strands_without_refusing() {
    // Excluded clusters do not hold the pre-flight or the gates: publishing
    // {B} goes ahead although the excluded cluster's chain does not verify
    // under it, and the step names it (the server warns and audits it).
    let fixture = fixture();
    let trust_new = fixture.start_with(&[], &excluding("dark"));
    let mut sign_new = fixture.advance(&trust_new, &[], at(60));
    let clusters = [
        reported("east", 3, fixture.b.chain("east")),
        reported("dark", 1, fixture.a.chain("dark")),
    ];
    assert!(
        sign_new
            .rotation
            .observe(&clusters, &fixture.b.certificate, at(100))
    );
    let step = fixture.advance(&sign_new, &clusters, after_grace(100));
    let bundle = published(&step);
    assert_eq!(bundle.roots(), std::slice::from_ref(&fixture.b.certificate));
    assert_eq!(names(&step.excluded_stranded), ["dark"]);
    assert_eq!(names(&preflight(&bundle, &clusters, at(101))), ["dark"]);
}

#[test]
fn advance_from_retire_old_completes_without_publishing() {
    let fixture = fixture();
    let retire_old = fixture.retire_old();
    let clusters = [reported("east", 4, fixture.b.chain("east"))];
    let now = after_grace(200);
    let step = fixture.advance(&retire_old, &clusters, now);
    assert!(step.bundle.is_none());
    assert_eq!(step.rotation.phase, Phase::Stable);
    assert!(!step.rotation.in_progress());
    assert_eq!(step.rotation.outcome, Some(Outcome::Completed));
    assert_eq!(step.rotation.signing_root_id(), fixture.b.id());
    assert_eq!(step.rotation.signing_root_id(), fixture.b.id());
    assert_eq!(step.rotation.bundle_version, 4);
    assert!(!step.rotation.aborted);
}

#[test]
fn retire_old_gate_needs_the_bundle_with_b_alone_applied() {
    let fixture = fixture();
    let retire_old = fixture.retire_old();
    let result = advance(
        &retire_old.rotation,
        &published(&retire_old),
        &fixture.b.certificate,
        &[reported("east", 3, fixture.b.chain("east"))],
        after_grace(200),
    );
    let summary = gate_closed_summary(result, Phase::RetireOld);
    assert!(summary.contains("applied bundle v3, needs v4"), "{summary}");
}

// ---- abort ----

#[test]
fn abort_from_trust_new_returns_to_a_alone() {
    let fixture = fixture();
    let trust_new = fixture.trust_new();
    // B never signed, so nothing is waited for.
    let step = abort(
        &trust_new.rotation,
        &published(&trust_new),
        &fixture.a.certificate,
        &[never_reported("west")],
        at(1),
    )
    .unwrap();
    let bundle = published(&step);
    assert_eq!(step.rotation.phase, Phase::Stable);
    assert_eq!(bundle.roots(), std::slice::from_ref(&fixture.a.certificate));
    assert_eq!(bundle.root_cert_pem(), fixture.stable.root_cert_pem());
    assert_eq!(bundle.version(), 3);
    assert_eq!(step.rotation.outcome, Some(Outcome::Aborted));
    assert!(step.rotation.aborted);
    assert_eq!(step.rotation.signing_root_id(), fixture.a.id());
    assert_eq!(step.rotation.signing_root_id(), fixture.a.id());
}

#[test]
fn abort_from_sign_new_returns_to_plain_a_and_b_signed_by_a() {
    let fixture = fixture();
    let sign_new = fixture.sign_new();
    // Allowed at once, whatever the clusters report: both roots stay trusted.
    let step = abort(
        &sign_new.rotation,
        &published(&sign_new),
        &fixture.b.certificate,
        &[
            reported("east", 3, fixture.b.chain("east")),
            reported("west", 2, fixture.a.chain("west")),
        ],
        at(61),
    )
    .unwrap();
    let bundle = published(&step);
    assert_eq!(step.rotation.phase, Phase::TrustNew);
    assert_eq!(
        bundle.root_cert_pem(),
        format!(
            "{}{}",
            fixture.a.certificate.to_pem(),
            fixture.b.certificate.to_pem()
        )
    );
    assert_eq!(
        bundle.root_cert_pem(),
        published(&fixture.trust_new()).root_cert_pem()
    );
    assert!(!bundle.is_newest_repeated());
    assert_eq!(bundle.version(), 4);
    assert_eq!(step.rotation.bundle_version, 4);
    assert_eq!(step.rotation.signing_root_id(), fixture.a.id());
    assert_eq!(step.rotation.signing_root_id(), fixture.a.id());
    assert!(step.rotation.aborted);
    assert!(step.rotation.new_root_signed);
    assert_eq!(step.rotation.outcome, None);
}

#[test]
fn abort_from_retire_old_is_refused() {
    let fixture = fixture();
    let retire_old = fixture.retire_old();
    let result = abort(
        &retire_old.rotation,
        &published(&retire_old),
        &fixture.b.certificate,
        &[],
        at(10 * seconds(GRACE)),
    );
    assert!(
        matches!(result, Err(RotationError::CannotAbort)),
        "{result:?}"
    );
}

#[test]
fn abort_to_a_after_b_signed_waits_for_reissue_from_a_and_the_grace() {
    let fixture = fixture();
    let sign_new = fixture.sign_new();
    let back = abort(
        &sign_new.rotation,
        &published(&sign_new),
        &fixture.b.certificate,
        &[],
        at(100),
    )
    .unwrap();
    let bundle = published(&back);
    let version = bundle.version();
    let mut rotation = back.rotation.clone();

    // Still serving intermediates from B: refused.
    let on_b = [
        reported("east", version, fixture.a.chain("east")),
        reported("west", version, fixture.b.chain("west")),
    ];
    let summary = gate_closed_summary(
        abort(&rotation, &bundle, &fixture.a.certificate, &on_b, at(200)),
        Phase::TrustNew,
    );
    assert!(summary.contains("west"), "{summary}");
    assert!(summary.contains("re-issued from the old root"), "{summary}");

    // Every cluster back on A, but the grace has not started.
    let on_a = [
        reported("east", version, fixture.a.chain("east")),
        reported("west", version, fixture.a.chain("west")),
    ];
    let summary = gate_closed_summary(
        abort(&rotation, &bundle, &fixture.a.certificate, &on_a, at(300)),
        Phase::TrustNew,
    );
    assert!(summary.contains("grace period"), "{summary}");

    assert!(rotation.observe(&on_a, &fixture.a.certificate, at(300)));
    let attempt = |now| abort(&rotation, &bundle, &fixture.a.certificate, &on_a, now);
    let (opened, stable) = first_allowed(300 + seconds(GRACE) - 1, Phase::TrustNew, attempt);
    let summary = gate_closed_summary(attempt(at(opened - 1)), Phase::TrustNew);
    assert!(summary.contains("grace period: 1s left"), "{summary}");
    // Workload certificates under B issued up to the ack have expired.
    let (leaf, chain) = workload_living_the_grace(&fixture.b, 300);
    let roots = [fixture.b.certificate.clone()];
    assert!(ca::verify_leaf_path(&leaf, &chain, &roots, at(300 + seconds(GRACE))).is_ok());
    assert!(ca::verify_leaf_path(&leaf, &chain, &roots, at(opened)).is_err());
    assert!(opened <= 300 + seconds(GRACE) + 2, "opened at +{opened}s");
    assert_eq!(stable.rotation.phase, Phase::Stable);
    assert_eq!(stable.rotation.outcome, Some(Outcome::Aborted));
    assert_eq!(
        published(&stable).roots(),
        std::slice::from_ref(&fixture.a.certificate)
    );
    assert_eq!(stable.rotation.signing_root_id(), fixture.a.id());
    assert_eq!(stable.rotation.signing_root_id(), fixture.a.id());
}

// ---- Istio's byte rule ----

/// istiod (<= 1.29) takes a new `root-cert.pem` only when the old bytes are
/// a substring of the new or the other way round, and pushes it only when
/// the bytes change.
fn assert_istio_accepts_each_change(published: &[String]) {
    assert!(published.len() >= 2);
    for (index, pair) in published.windows(2).enumerate() {
        let (before, after) = (&pair[0], &pair[1]);
        assert_ne!(before, after, "change {index} keeps the bytes");
        assert!(
            after.contains(before.as_str()) || before.contains(after.as_str()),
            "change {index} breaks the substring rule:\n{before}\n{after}"
        );
    }
}

#[test]
fn a_whole_rotation_satisfies_istios_byte_rule() {
    let fixture = fixture();
    let trust_new = fixture.trust_new();
    let sign_new = fixture.advance(&trust_new, &[], at(60));
    let retire_old = fixture.retire_old();
    let finished = fixture.advance(&retire_old, &[], at(10 * seconds(GRACE)));
    assert!(finished.bundle.is_none());
    assert_istio_accepts_each_change(&[
        fixture.stable.root_cert_pem(),
        published(&trust_new).root_cert_pem(),
        published(&sign_new).root_cert_pem(),
        published(&retire_old).root_cert_pem(),
    ]);
}

#[test]
fn aborting_from_trust_new_satisfies_istios_byte_rule() {
    let fixture = fixture();
    let trust_new = fixture.trust_new();
    let aborted = abort(
        &trust_new.rotation,
        &published(&trust_new),
        &fixture.a.certificate,
        &[],
        at(1),
    )
    .unwrap();
    assert_istio_accepts_each_change(&[
        fixture.stable.root_cert_pem(),
        published(&trust_new).root_cert_pem(),
        published(&aborted).root_cert_pem(),
    ]);
}

#[test]
fn aborting_from_sign_new_satisfies_istios_byte_rule() {
    let fixture = fixture();
    let trust_new = fixture.trust_new();
    let sign_new = fixture.sign_new();
    let back = abort(
        &sign_new.rotation,
        &published(&sign_new),
        &fixture.b.certificate,
        &[],
        at(100),
    )
    .unwrap();
    let mut rotation = back.rotation.clone();
    assert!(rotation.observe(&[], &fixture.a.certificate, at(200)));
    let stable = abort(
        &rotation,
        &published(&back),
        &fixture.a.certificate,
        &[],
        after_grace(200),
    )
    .unwrap();
    assert_istio_accepts_each_change(&[
        fixture.stable.root_cert_pem(),
        published(&trust_new).root_cert_pem(),
        published(&sign_new).root_cert_pem(),
        published(&back).root_cert_pem(),
        published(&stable).root_cert_pem(),
    ]);

    // Trying again after the abort: sign-new once more, then through.
    let mut again = back.rotation.clone();
    assert!(again.observe(&[], &fixture.a.certificate, at(200)));
    let again = Step {
        rotation: again,
        bundle: back.bundle.clone(),
        excluded_stranded: Vec::new(),
    };
    let sign_new_again = fixture.advance(&again, &[], after_grace(200));
    assert_eq!(sign_new_again.rotation.phase, Phase::SignNew);
    let mut signed = sign_new_again.clone();
    let acknowledged = 400 + seconds(GRACE);
    assert!(
        signed
            .rotation
            .observe(&[], &fixture.b.certificate, at(acknowledged))
    );
    let retire_old = fixture.advance(&signed, &[], after_grace(acknowledged));
    assert_istio_accepts_each_change(&[
        published(&back).root_cert_pem(),
        published(&sign_new_again).root_cert_pem(),
        published(&retire_old).root_cert_pem(),
    ]);
    assert_eq!(published(&retire_old).version(), 6);
}

#[test]
fn phases_have_their_kebab_case_names() {
    for (phase, name) in [
        (Phase::Stable, "stable"),
        (Phase::TrustNew, "trust-new"),
        (Phase::SignNew, "sign-new"),
        (Phase::RetireOld, "retire-old"),
    ] {
        assert_eq!(phase.to_string(), name);
        assert_eq!(
            serde_json::to_string(&phase).unwrap(),
            format!("\"{name}\"")
        );
    }
    let fixture = fixture();
    let rotation = fixture.sign_new().rotation;
    let text = serde_json::to_string(&rotation).unwrap();
    assert_eq!(serde_json::from_str::<Rotation>(&text).unwrap(), rotation);
}

// ---- a simulated mesh ----

/// A workload certificate and the chain its proxy sends with it
/// (`[intermediate, root]` of its cluster when it was issued).
struct Workload {
    leaf: Certificate,
    chain: Vec<Certificate>,
}

/// One cluster of the simulated mesh.
struct Member {
    name: String,
    chain: Vec<Certificate>,
    intermediate_key: PrivateKey,
    /// The bundle it applied last (its istiod's and proxies' roots).
    applied: TrustBundle,
    workloads: Vec<Workload>,
}

/// Clusters that each apply bundles and get intermediates one at a time;
/// after every single change every live workload certificate of every
/// cluster is verified under the roots every cluster applied last.
struct Mesh {
    fixture: Fixture,
    members: Vec<Member>,
    clock: i64,
    checks: usize,
    failures: Vec<String>,
}

const CLUSTERS: [&str; 5] = ["east", "west", "north", "south", "central"];

impl Mesh {
    /// Every cluster enrolled on A, applied {A} and issued a workload.
    fn new() -> Mesh {
        let fixture = fixture();
        let members = CLUSTERS
            .iter()
            .map(|name| {
                let (chain, intermediate_key) = fixture.a.issue(name, at(0));
                Member {
                    name: name.to_string(),
                    chain,
                    intermediate_key,
                    applied: fixture.stable.clone(),
                    workloads: Vec::new(),
                }
            })
            .collect();
        let mut mesh = Mesh {
            fixture,
            members,
            clock: 0,
            checks: 0,
            failures: Vec::new(),
        };
        mesh.renew_workloads();
        mesh
    }

    fn now(&self) -> SystemTime {
        at(self.clock)
    }

    fn wait(&mut self, duration: Duration) {
        self.clock += seconds(duration);
    }

    fn views(&self) -> Vec<ClusterView> {
        self.members
            .iter()
            .map(|member| ClusterView {
                name: member.name.clone(),
                applied_version: member.applied.version(),
                chain: member.chain.clone(),
                reported_unix: Some(T0 + self.clock),
            })
            .collect()
    }

    fn signing(&self, rotation: &Rotation) -> Certificate {
        self.fixture.signing(rotation).clone()
    }

    /// Cluster `index`'s istiod signs a workload certificate from its
    /// current intermediate, living [`WORKLOAD_LIFETIME`].
    fn issue_workload(&mut self, index: usize) {
        let now = self.now();
        let member = &mut self.members[index];
        let key = PrivateKey::generate(ca::KeyAlgorithm::EcdsaP256).unwrap();
        let leaf = ca::sign_workload(
            &key.public_key_der().unwrap(),
            &format!("spiffe://{TRUST_DOMAIN}/ns/{}/sa/default", member.name),
            &member.chain[0],
            &member.intermediate_key,
            WORKLOAD_LIFETIME,
            now,
        )
        .unwrap();
        member.workloads.push(Workload {
            leaf,
            chain: member.chain.clone(),
        });
    }

    /// Every istiod renews its workloads from its current intermediate.
    fn renew_workloads(&mut self) {
        for index in 0..self.members.len() {
            self.issue_workload(index);
        }
        self.check("renewed workloads");
    }

    /// Cluster `index` applies `bundle`.
    fn apply(&mut self, index: usize, bundle: &TrustBundle) {
        self.members[index].applied = bundle.clone();
        let label = format!("{} applied v{}", self.members[index].name, bundle.version());
        self.check(&label);
    }

    /// Cluster `index` gets a new intermediate from `root`. Its istiod signs
    /// one last workload from the old intermediate at that very second (the
    /// latest a certificate under the old root can be issued), then one
    /// from the new.
    fn reissue(&mut self, index: usize, root: &Certificate) {
        let root = if *root == self.fixture.a.certificate {
            self.fixture.a.clone()
        } else {
            self.fixture.b.clone()
        };
        self.issue_workload(index);
        let (chain, intermediate_key) = root.issue(&self.members[index].name, self.now());
        self.members[index].chain = chain;
        self.members[index].intermediate_key = intermediate_key;
        self.issue_workload(index);
        let label = format!(
            "{} re-issued from {}",
            self.members[index].name,
            root.certificate.subject().unwrap()
        );
        self.check(&label);
    }

    /// Every ordered pair (X, Y): each live workload of X, sent with X's
    /// chain, verifies under the roots Y applied last.
    fn check(&mut self, label: &str) {
        let now = self.now();
        for issuer in &self.members {
            // A certificate is valid up to and including its notAfter second.
            let live = issuer
                .workloads
                .iter()
                .filter(|workload| workload.leaf.not_after().unwrap() >= now);
            for workload in live {
                for verifier in &self.members {
                    self.checks += 1;
                    if let Err(error) = ca::verify_leaf_path(
                        &workload.leaf,
                        &workload.chain,
                        verifier.applied.roots(),
                        now,
                    ) {
                        self.failures.push(format!(
                            "{label} (+{}s): {} workload not trusted by {}: {error}",
                            self.clock, issuer.name, verifier.name
                        ));
                    }
                }
            }
        }
    }

    /// Every cluster applies `bundle`, one at a time, starting at once.
    fn roll_out(&mut self, bundle: &TrustBundle) {
        for index in 0..self.members.len() {
            self.apply(index, bundle);
            self.wait(Duration::from_secs(30));
        }
    }

    /// Waits out `duration`, istiod renewing workloads every half lifetime.
    fn wait_renewing(&mut self, duration: Duration) {
        let mut left = duration;
        while !left.is_zero() {
            let wait = left.min(WORKLOAD_LIFETIME / 2);
            self.wait(wait);
            left -= wait;
            self.renew_workloads();
        }
    }

    /// Records every ack with `observe` now, then waits (renewing workloads)
    /// until the gate holds, to the second; returns the rotation to step
    /// from at `self.now()`.
    fn wait_out_the_grace(&mut self, rotation: &Rotation, signing: &Certificate) -> Rotation {
        let mut rotation = rotation.clone();
        let acknowledged = self.clock;
        assert!(rotation.observe(&self.views(), signing, self.now()));
        loop {
            // Leaving sign-new forward, or trust-new back to {A} after an
            // abort: both wait for the grace.
            let gate = if rotation.phase == Phase::TrustNew {
                rotation.abort_gate(&self.views(), signing, self.now())
            } else {
                rotation.gate(&self.views(), signing, self.now())
            };
            assert!(gate.blockers.is_empty(), "{gate:?}");
            if gate.holds() {
                break;
            }
            if gate.grace_left > Duration::from_secs(60) {
                self.wait_renewing(gate.grace_left - Duration::from_secs(60));
            } else {
                self.wait(Duration::from_secs(1));
            }
        }
        assert!(self.clock >= acknowledged + seconds(GRACE));
        rotation
    }
}

#[test]
fn every_workload_stays_trusted_by_every_cluster_through_a_whole_rotation() {
    let mut mesh = Mesh::new();
    mesh.wait(Duration::from_secs(60));

    // trust-new: {A, B}, A still signs.
    let trust_new = start(
        None,
        &mesh.fixture.stable,
        &mesh.fixture.a.certificate,
        &mesh.fixture.b.certificate,
        &mesh.views(),
        &options(),
        mesh.now(),
    )
    .unwrap();
    let bundle = published(&trust_new);
    mesh.roll_out(&bundle);
    let signing = mesh.signing(&trust_new.rotation);
    assert_eq!(signing, mesh.fixture.a.certificate);
    assert!(
        trust_new
            .rotation
            .gate(&mesh.views(), &signing, mesh.now())
            .holds()
    );

    // sign-new: {A, B, B}, every cluster re-issued from B.
    let sign_new = advance(
        &trust_new.rotation,
        &bundle,
        &signing,
        &mesh.views(),
        mesh.now(),
    )
    .unwrap();
    let bundle = published(&sign_new);
    let signing = mesh.signing(&sign_new.rotation);
    assert_eq!(signing, mesh.fixture.b.certificate);
    for index in 0..mesh.members.len() {
        let gate = sign_new.rotation.gate(&mesh.views(), &signing, mesh.now());
        assert_eq!(gate.blockers.len(), mesh.members.len() - index);
        mesh.wait(Duration::from_secs(30));
        mesh.apply(index, &bundle);
        mesh.reissue(index, &signing);
    }
    let rotation = mesh.wait_out_the_grace(&sign_new.rotation, &signing);

    // retire-old: {B}, from the first second the grace allows.
    let retire_old = advance(&rotation, &bundle, &signing, &mesh.views(), mesh.now()).unwrap();
    let bundle = published(&retire_old);
    assert_eq!(
        bundle.roots(),
        std::slice::from_ref(&mesh.fixture.b.certificate)
    );
    mesh.roll_out(&bundle);
    mesh.wait_renewing(WORKLOAD_LIFETIME);

    let finished = advance(
        &retire_old.rotation,
        &bundle,
        &signing,
        &mesh.views(),
        mesh.now(),
    )
    .unwrap();
    assert_eq!(finished.rotation.outcome, Some(Outcome::Completed));

    assert!(mesh.failures.is_empty(), "{:#?}", mesh.failures);
    // 5 clusters, at least one live workload each, checked against every
    // cluster after each of 25+ changes.
    assert!(mesh.checks >= 25 * 25, "only {} checks", mesh.checks);
}

#[test]
fn every_workload_stays_trusted_by_every_cluster_through_an_abort_from_sign_new() {
    let mut mesh = Mesh::new();
    mesh.wait(Duration::from_secs(60));
    let trust_new = start(
        None,
        &mesh.fixture.stable,
        &mesh.fixture.a.certificate,
        &mesh.fixture.b.certificate,
        &mesh.views(),
        &options(),
        mesh.now(),
    )
    .unwrap();
    mesh.roll_out(&published(&trust_new));
    let signing = mesh.signing(&trust_new.rotation);
    let sign_new = advance(
        &trust_new.rotation,
        &published(&trust_new),
        &signing,
        &mesh.views(),
        mesh.now(),
    )
    .unwrap();

    // Three of five clusters re-issued from B, then the operator aborts.
    let bundle = published(&sign_new);
    let signing = mesh.signing(&sign_new.rotation);
    for index in 0..3 {
        mesh.wait(Duration::from_secs(30));
        mesh.apply(index, &bundle);
        mesh.reissue(index, &signing);
    }
    let back = abort(
        &sign_new.rotation,
        &bundle,
        &signing,
        &mesh.views(),
        mesh.now(),
    )
    .unwrap();
    let bundle = published(&back);
    let signing = mesh.signing(&back.rotation);
    assert_eq!(signing, mesh.fixture.a.certificate);
    // Every cluster applies {A, B} and is re-issued from A; those on B go
    // last, so the last certificate under B is issued at the ack.
    for index in (0..mesh.members.len()).rev() {
        mesh.wait(Duration::from_secs(30));
        mesh.apply(index, &bundle);
        mesh.reissue(index, &signing);
    }
    let result = abort(&back.rotation, &bundle, &signing, &mesh.views(), mesh.now());
    assert!(gate_closed_summary(result, Phase::TrustNew).contains("grace period"));
    let rotation = mesh.wait_out_the_grace(&back.rotation, &signing);

    // stable: {A}, from the first second the grace allows.
    let stable = abort(&rotation, &bundle, &signing, &mesh.views(), mesh.now()).unwrap();
    let bundle = published(&stable);
    assert_eq!(
        bundle.roots(),
        std::slice::from_ref(&mesh.fixture.a.certificate)
    );
    mesh.roll_out(&bundle);
    mesh.wait_renewing(WORKLOAD_LIFETIME);

    assert!(mesh.failures.is_empty(), "{:#?}", mesh.failures);
    assert!(mesh.checks >= 25 * 25, "only {} checks", mesh.checks);
}

#[test]
fn the_simulation_detects_a_cluster_dropping_a_root_too_early() {
    // Control for the two tests above: a cluster that applies {B} while
    // workloads under A are live no longer trusts them.
    let mut mesh = Mesh::new();
    let only_b =
        TrustBundle::new(TRUST_DOMAIN, 2, vec![mesh.fixture.b.certificate.clone()]).unwrap();
    mesh.apply(0, &only_b);
    assert_eq!(mesh.failures.len(), CLUSTERS.len(), "{:#?}", mesh.failures);
    assert!(
        mesh.failures
            .iter()
            .all(|failure| failure.contains("not trusted by east")),
        "{:#?}",
        mesh.failures
    );
}

#[test]
fn the_simulation_detects_dropping_the_old_root_at_the_last_second_of_the_grace() {
    // Control for the grace: a workload issued under A at the ack lives
    // through the second `ack + grace`, so {B} cannot be applied then.
    let mut mesh = Mesh::new();
    let both = mesh
        .fixture
        .stable
        .with_appended(mesh.fixture.b.certificate.clone())
        .unwrap();
    for index in 0..CLUSTERS.len() {
        mesh.apply(index, &both);
    }
    mesh.wait(Duration::from_secs(60));
    let b = mesh.fixture.b.certificate.clone();
    for index in 0..CLUSTERS.len() {
        mesh.reissue(index, &b);
    }
    mesh.wait(GRACE);
    let only_b = both.with_oldest_removed().unwrap();
    mesh.apply(0, &only_b);
    assert_eq!(mesh.failures.len(), CLUSTERS.len(), "{:#?}", mesh.failures);
    mesh.failures.clear();
    mesh.wait(Duration::from_secs(1));
    mesh.apply(1, &only_b);
    assert!(mesh.failures.is_empty(), "{:#?}", mesh.failures);
}
