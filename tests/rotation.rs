//! Root rotation across many clusters with real agents against a real
//! server (in process on 127.0.0.1, and the `trustplane` binary for the
//! SIGKILL tests). Every cluster's sink is a simulated istiod (see
//! `common::mesh`): after each write it signs a workload certificate and
//! checks every ordered pair of clusters that involves the writer, so the
//! counts below cover every state the mesh passes through, not only the
//! phase boundaries.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::binary::{BINARY, start_server};
use common::fleet::*;
use common::mesh::Mesh;
use trustplane::ca::KeyAlgorithm;
use trustplane::clock::{Clock, SystemClock};
use trustplane::proto;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotation_across_52_clusters_never_breaks_trust_between_any_pair() {
    const CLUSTERS: usize = 52;
    let (server, clock) = in_process_server().await;
    let mut admin = server.admin().await;
    let mesh = Mesh::new(Duration::from_secs(GRACE), clock.clone());
    let mut fleet = Fleet::new(server.url(), server.control_plane_ca_pem.clone());
    for index in 0..CLUSTERS {
        fleet.add(&mut admin, &mesh, &format!("c{index:02}")).await;
    }
    wait_applied(&mut admin, 1, CLUSTERS).await;
    mesh.check_all("stable").await;
    let old_root = server.authority().core().signing_root();

    // One agent is down when the rotation starts: it must block trust-new.
    fleet.stop("c07");
    let started = start(&mut admin).await;
    assert_eq!(started.phase, "trust-new");
    let roots = bundle_roots(&started);
    assert_eq!(roots.len(), 2);
    assert_eq!(roots[0], old_root, "the old root keeps its place and bytes");
    let new_root = roots[1].clone();
    let blocked = wait_until(&mut admin, Some(&clock), "only c07 blocks", |status| {
        status
            .clusters
            .iter()
            .filter(|ack| !ack.acknowledged)
            .count()
            == 1
    })
    .await;
    assert!(!blocked.gate_holds);
    assert!(blocked.blocking.contains("c07"), "{}", blocked.blocking);
    let row = blocked
        .clusters
        .iter()
        .find(|ack| ack.name == "c07")
        .unwrap();
    assert!(
        !row.acknowledged && row.blocking_reason.contains("needs v"),
        "{row:?}"
    );
    let refused = advance(&mut admin).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(refused.message().contains("c07"), "{}", refused.message());
    fleet.restart("c07");
    wait_gate(&mut admin, Some(&clock)).await;
    assert_every_cluster_has(
        &mesh,
        &fleet,
        &started.bundle.as_ref().unwrap().root_cert_pem,
    )
    .await;
    mesh.check_all("trust-new acknowledged").await;

    // sign-new: every cluster gets an intermediate from the new root.
    let signing = advance(&mut admin).await.unwrap();
    assert_eq!(signing.phase, "sign-new");
    let signing_pem = signing.bundle.as_ref().unwrap().root_cert_pem.clone();
    assert_ne!(signing_pem, started.bundle.as_ref().unwrap().root_cert_pem);
    assert!(signing_pem.contains(&started.bundle.as_ref().unwrap().root_cert_pem));
    let acknowledged = wait_until(
        &mut admin,
        Some(&clock),
        "every cluster re-issued from the new root",
        |status| status.clusters.iter().all(|ack| ack.acknowledged),
    )
    .await;
    for ack in &acknowledged.clusters {
        assert_eq!(
            ack.chain_root_serial,
            new_root.serial_hex().unwrap(),
            "{ack:?}"
        );
    }
    let refused = advance(&mut admin).await;
    if let Err(refused) = refused {
        assert!(refused.message().contains("grace"), "{}", refused.message());
    } else {
        panic!("retire-old was allowed before the grace period");
    }
    mesh.check_all("sign-new acknowledged, in grace").await;
    wait_gate(&mut admin, Some(&clock)).await;
    mesh.check_all("sign-new grace over").await;

    // retire-old: only the new root.
    let retiring = advance(&mut admin).await.unwrap();
    assert_eq!(retiring.phase, "retire-old");
    assert_eq!(bundle_roots(&retiring), vec![new_root.clone()]);
    assert_eq!(
        abort(&mut admin).await.unwrap_err().code(),
        tonic::Code::FailedPrecondition
    );
    wait_gate(&mut admin, Some(&clock)).await;
    assert_every_cluster_has(
        &mesh,
        &fleet,
        &retiring.bundle.as_ref().unwrap().root_cert_pem,
    )
    .await;
    mesh.check_all("retire-old acknowledged").await;
    let done = advance(&mut admin).await.unwrap();
    assert_eq!(done.phase, "stable");
    assert_eq!(done.outcome, "completed");
    assert_eq!(server.authority().core().signing_root(), new_root);
    mesh.check_all("stable again").await;

    let checks = assert_no_failures(&mesh).await;
    let summary = mesh.summary().await;
    println!(
        "rotation over {CLUSTERS} clusters: {checks} cross-cluster workload checks, 0 failures; {} root-cert.pem transitions all within Istio's substring rule; {} distinct intermediate serials",
        summary.root_transitions, summary.intermediates
    );
    assert!(
        checks > (CLUSTERS * CLUSTERS * 4) as u64,
        "too few checks: {checks}"
    );
    // Every cluster got one intermediate from each root, no serial twice.
    assert!(summary.intermediates >= 2 * CLUSTERS, "{summary:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn abort_from_each_phase_leaves_every_pair_verifying() {
    const CLUSTERS: usize = 6;
    let (server, clock) = in_process_server().await;
    let mut admin = server.admin().await;
    let mesh = Mesh::new(Duration::from_secs(GRACE), clock.clone());
    let mut fleet = Fleet::new(server.url(), server.control_plane_ca_pem.clone());
    for index in 0..CLUSTERS {
        fleet.add(&mut admin, &mesh, &format!("a{index}")).await;
    }
    wait_applied(&mut admin, 1, CLUSTERS).await;
    let old_root = server.authority().core().signing_root();
    let stable_pem = server
        .authority()
        .publication
        .current()
        .root_cert_pem
        .clone();

    // trust-new → abort: back to {A}.
    start(&mut admin).await;
    wait_gate(&mut admin, Some(&clock)).await;
    let aborted = abort(&mut admin).await.unwrap();
    assert_eq!(
        (aborted.phase.as_str(), aborted.outcome.as_str()),
        ("stable", "aborted")
    );
    assert_eq!(bundle_roots(&aborted), vec![old_root.clone()]);
    assert_eq!(aborted.bundle.as_ref().unwrap().root_cert_pem, stable_pem);
    wait_applied(
        &mut admin,
        aborted.bundle.as_ref().unwrap().version,
        CLUSTERS,
    )
    .await;
    assert_every_cluster_has(&mesh, &fleet, &stable_pem).await;
    mesh.check_all("aborted from trust-new").await;

    // sign-new → abort: back to trust-new, intermediates from A again.
    start(&mut admin).await;
    wait_gate(&mut admin, Some(&clock)).await;
    advance(&mut admin).await.unwrap();
    wait_until(
        &mut admin,
        Some(&clock),
        "every cluster on the new root",
        |status| status.clusters.iter().all(|ack| ack.acknowledged),
    )
    .await;
    mesh.check_all("sign-new").await;
    let back = abort(&mut admin).await.unwrap();
    assert_eq!(back.phase, "trust-new");
    assert_eq!(back.signing_root_serial, old_root.serial_hex().unwrap());
    assert_eq!(bundle_roots(&back).len(), 2);
    let reissued = wait_until(
        &mut admin,
        Some(&clock),
        "every cluster back on the old root",
        |status| status.clusters.iter().all(|ack| ack.acknowledged),
    )
    .await;
    for ack in &reissued.clusters {
        assert_eq!(
            ack.chain_root_serial,
            old_root.serial_hex().unwrap(),
            "{ack:?}"
        );
    }
    mesh.check_all("aborted from sign-new").await;
    // Going back to {A} now would strand workload certificates from B:
    // refused until the grace has passed.
    let early = abort(&mut admin).await.unwrap_err();
    assert_eq!(early.code(), tonic::Code::FailedPrecondition);
    assert!(early.message().contains("grace"), "{}", early.message());
    // Going forward again does not wait for that grace: both roots stay
    // trusted. (Only checked, not taken: expected_phase guards the step.)
    let moved = admin
        .rotate_advance(proto::RotateAdvanceRequest {
            expected_phase: "sign-new".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(moved.message().contains("moved on"), "{}", moved.message());
    let deadline = Instant::now() + Duration::from_secs(60);
    let stable = loop {
        match abort(&mut admin).await {
            Ok(stable) => break stable,
            Err(refused) => {
                assert!(refused.message().contains("grace"), "{}", refused.message());
                assert!(Instant::now() < deadline, "abort to {{A}} never allowed");
                // The grace counts on the server's clock: move it on.
                clock.advance(Duration::from_secs(1));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert_eq!(stable.phase, "stable");
    assert_eq!(bundle_roots(&stable), vec![old_root.clone()]);
    wait_applied(
        &mut admin,
        stable.bundle.as_ref().unwrap().version,
        CLUSTERS,
    )
    .await;
    mesh.check_all("aborted twice").await;

    // retire-old cannot be aborted; finishing works.
    start(&mut admin).await;
    wait_gate(&mut admin, Some(&clock)).await;
    advance(&mut admin).await.unwrap();
    wait_gate(&mut admin, Some(&clock)).await;
    advance(&mut admin).await.unwrap();
    let refused = abort(&mut admin).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(
        refused.message().contains("retire-old"),
        "{}",
        refused.message()
    );
    wait_gate(&mut admin, Some(&clock)).await;
    assert_eq!(advance(&mut admin).await.unwrap().phase, "stable");
    mesh.check_all("completed").await;
    let checks = assert_no_failures(&mesh).await;
    println!("aborts: {checks} cross-cluster workload checks, 0 failures");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn removed_cluster_stops_blocking_and_reissue_replaces_an_intermediate() {
    let (server, clock) = in_process_server().await;
    let mut admin = server.admin().await;
    let mesh = Mesh::new(Duration::from_secs(GRACE), clock.clone());
    let mut fleet = Fleet::new(server.url(), server.control_plane_ca_pem.clone());
    for name in ["r0", "r1", "r2"] {
        fleet.add(&mut admin, &mesh, name).await;
    }
    wait_applied(&mut admin, 1, 3).await;

    // cluster reissue: a new intermediate from the same root.
    let before = mesh.intermediate_serial("r0").await.unwrap();
    admin
        .reissue_cluster(proto::ReissueClusterRequest { name: "r0".into() })
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while mesh.intermediate_serial("r0").await.as_deref() == Some(before.as_str()) {
        assert!(Instant::now() < deadline, "r0 was never re-issued");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let unknown = admin
        .reissue_cluster(proto::ReissueClusterRequest {
            name: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    // A cluster that is down blocks; once removed, it no longer does.
    fleet.stop("r2");
    start(&mut admin).await;
    let blocked = wait_until(&mut admin, Some(&clock), "r2 blocks", |status| {
        status
            .clusters
            .iter()
            .filter(|ack| !ack.acknowledged)
            .count()
            == 1
    })
    .await;
    assert!(blocked.blocking.contains("r2"), "{}", blocked.blocking);
    admin
        .remove_cluster(proto::RemoveClusterRequest { name: "r2".into() })
        .await
        .unwrap();
    mesh.remove("r2").await;
    let open = wait_gate(&mut admin, Some(&clock)).await;
    assert!(open.clusters.iter().all(|ack| ack.name != "r2"));
    advance(&mut admin).await.unwrap();
    let audit = admin
        .audit_log(proto::AuditLogRequest {
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let actions: Vec<&str> = audit
        .entries
        .iter()
        .map(|entry| entry.action.as_str())
        .collect();
    assert!(
        actions.contains(&"cluster-reissue")
            && actions.contains(&"rotate-start")
            && actions.contains(&"rotate-advance"),
        "{actions:?}"
    );
    assert_no_failures(&mesh).await;
}

// ---- the server binary, killed with SIGKILL mid-rotation ----

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn server_killed_during_trust_new_and_sign_new_resumes_the_rotation() {
    common::install_crypto();
    const CLUSTERS: usize = 5;
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let init = Command::new(BINARY)
        .args(["init", "--trust-domain", "cluster.local", "--data-dir"])
        .arg(&data)
        .env_remove("TRUSTPLANE_KEK")
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let (server, url) = start_server(&data, "127.0.0.1:0");
    let listen = url.trim_start_matches("https://").to_string();
    let mut admin = admin_for(&data, &url).await;
    let mesh = Mesh::new(Duration::from_secs(GRACE), SystemClock::shared());
    let control_plane_ca_pem = std::fs::read_to_string(data.join("control-plane-ca.pem")).unwrap();
    let mut fleet = Fleet::new(url.clone(), control_plane_ca_pem);
    for index in 0..CLUSTERS {
        fleet.add(&mut admin, &mesh, &format!("k{index}")).await;
    }
    wait_applied(&mut admin, 1, CLUSTERS).await;

    // Killed in trust-new.
    let started = start(&mut admin).await;
    let trust_new_version = started.bundle.as_ref().unwrap().version;
    sigkill(server);
    let (server, _) = start_server(&data, &listen);
    let mut admin = admin_for(&data, &url).await;
    let resumed = status(&mut admin).await;
    assert_eq!(resumed.phase, "trust-new");
    assert_eq!(resumed.bundle.as_ref().unwrap().version, trust_new_version);
    assert_eq!(
        resumed.bundle.as_ref().unwrap().root_cert_pem,
        started.bundle.as_ref().unwrap().root_cert_pem
    );
    wait_gate(&mut admin, None).await;
    let signing = advance(&mut admin).await.unwrap();
    let sign_new_version = signing.bundle.as_ref().unwrap().version;

    // Killed in sign-new, while agents are re-issuing.
    sigkill(server);
    let (server, _) = start_server(&data, &listen);
    let mut admin = admin_for(&data, &url).await;
    let resumed = status(&mut admin).await;
    assert_eq!(resumed.phase, "sign-new");
    assert_eq!(resumed.bundle.as_ref().unwrap().version, sign_new_version);
    assert_eq!(resumed.signing_root_serial, signing.new_root_serial);
    wait_gate(&mut admin, None).await;
    advance(&mut admin).await.unwrap();
    wait_gate(&mut admin, None).await;
    let done = advance(&mut admin).await.unwrap();
    assert_eq!(
        (done.phase.as_str(), done.outcome.as_str()),
        ("stable", "completed")
    );
    mesh.check_all("after two SIGKILLs").await;
    let checks = assert_no_failures(&mesh).await;
    let summary = mesh.summary().await;
    assert!(summary.intermediates >= 2 * CLUSTERS, "{summary:?}");
    println!(
        "SIGKILL in trust-new and sign-new: rotation completed, {checks} checks, 0 failures, {} intermediates, no serial reused",
        summary.intermediates
    );
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plan_changes_nothing_and_auto_rotation_completes_by_itself() {
    const CLUSTERS: usize = 4;
    let (server, clock) = in_process_server().await;
    let mut admin = server.admin().await;
    let mesh = Mesh::new(Duration::from_secs(GRACE), clock.clone());
    let mut fleet = Fleet::new(server.url(), server.control_plane_ca_pem.clone());
    for index in 0..CLUSTERS {
        fleet.add(&mut admin, &mesh, &format!("p{index}")).await;
    }
    wait_applied(&mut admin, 1, CLUSTERS).await;
    let before = server.authority().publication.current();

    let plan = admin
        .rotate_plan(proto::RotatePlanRequest {
            options: Some(rotation_options()),
        })
        .await
        .unwrap()
        .into_inner();
    let phases: Vec<&str> = plan.steps.iter().map(|step| step.phase.as_str()).collect();
    assert_eq!(phases, ["trust-new", "sign-new", "retire-old"]);
    assert_eq!(
        plan.steps
            .iter()
            .map(|step| step.bundle_version)
            .collect::<Vec<_>>(),
        [
            before.bundle.version() + 1,
            before.bundle.version() + 2,
            before.bundle.version() + 3
        ]
    );
    assert!(plan.preflight_ok, "{:?}", plan.preflight_failures);
    assert_eq!(plan.clusters.len(), CLUSTERS);
    assert!(plan.steps[1].newest_repeated);
    assert_eq!(
        server.authority().publication.current(),
        before,
        "plan changed the bundle"
    );
    assert!(!status(&mut admin).await.has_rotation);
    let excluded = admin
        .rotate_plan(proto::RotatePlanRequest {
            options: Some(proto::RotationOptions {
                exclude_clusters: vec!["nope".into()],
                ..rotation_options()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(excluded.code(), tonic::Code::InvalidArgument);

    let started = admin
        .rotate_start(proto::RotateStartRequest {
            options: Some(proto::RotationOptions {
                auto_advance: true,
                ..rotation_options()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let done = wait_until(
        &mut admin,
        Some(&clock),
        "the automatic rotation completes",
        |status| status.phase == "stable" && status.outcome == "completed",
    )
    .await;
    assert_eq!(done.signing_root_serial, started.new_root_serial);
    wait_applied(&mut admin, done.bundle.as_ref().unwrap().version, CLUSTERS).await;
    assert_every_cluster_has(&mesh, &fleet, &done.bundle.as_ref().unwrap().root_cert_pem).await;
    mesh.check_all("auto").await;
    assert_no_failures(&mesh).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotation_to_an_imported_root_and_refusals_of_bad_imports() {
    let (server, clock) = in_process_server().await;
    let mut admin = server.admin().await;
    let mesh = Mesh::new(Duration::from_secs(GRACE), clock.clone());
    let mut fleet = Fleet::new(server.url(), server.control_plane_ca_pem.clone());
    fleet.add(&mut admin, &mesh, "i0").await;
    wait_applied(&mut admin, 1, 1).await;
    let request = |certificate: &str, key: &str| proto::RotateStartRequest {
        options: Some(proto::RotationOptions {
            import_root_pem: certificate.to_string(),
            import_key_pem: key.to_string(),
            ..rotation_options()
        }),
    };
    let make = |organisation: &str| {
        trustplane::ca::create_root(
            &trustplane::ca::RootRequest {
                organisation: organisation.into(),
                key_algorithm: KeyAlgorithm::EcdsaP384,
                validity: Duration::from_secs(3 * 365 * 24 * 3600),
                ..common::fixtures::root_request(common::fixtures::TRUST_DOMAIN)
            },
            // Made now on the server's clock, which the import checks against.
            clock.now(),
        )
        .unwrap()
    };
    let (imported, imported_key) = make("security team");
    let (_, other_key) = make("someone else");

    // A key that is not the certificate's, a certificate without its key,
    // garbage: each refused with a clear error, nothing started.
    let mismatch = admin
        .rotate_start(request(&imported.to_pem(), &other_key.to_pkcs8_pem()))
        .await
        .unwrap_err();
    assert_eq!(
        mismatch.code(),
        tonic::Code::InvalidArgument,
        "{mismatch:?}"
    );
    let garbage = admin
        .rotate_start(request("not a certificate", &imported_key.to_pkcs8_pem()))
        .await
        .unwrap_err();
    assert_eq!(garbage.code(), tonic::Code::InvalidArgument, "{garbage:?}");
    let keyless = admin
        .rotate_start(proto::RotateStartRequest {
            options: Some(proto::RotationOptions {
                import_key_pem: imported_key.to_pkcs8_pem().to_string(),
                ..rotation_options()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(keyless.code(), tonic::Code::InvalidArgument, "{keyless:?}");
    assert!(!status(&mut admin).await.has_rotation);
    assert_eq!(server.authority().publication.current().bundle.version(), 1);

    // The imported root becomes B; its key is sealed in the store.
    let started = admin
        .rotate_start(request(&imported.to_pem(), &imported_key.to_pkcs8_pem()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(started.new_root_serial, imported.serial_hex().unwrap());
    // A second start while one is under way is refused.
    let again = admin
        .rotate_start(request(&imported.to_pem(), &imported_key.to_pkcs8_pem()))
        .await
        .unwrap_err();
    assert_eq!(again.code(), tonic::Code::FailedPrecondition, "{again:?}");
    for _ in 0..3 {
        wait_gate(&mut admin, Some(&clock)).await;
        advance(&mut admin).await.unwrap();
    }
    assert_eq!(server.authority().core().signing_root(), imported);
    mesh.check_all("imported").await;
    assert_no_failures(&mesh).await;
}
