//! Roles: every `AdminService` method called with every role (admin,
//! operator, auditor) and with a cluster certificate, against the one
//! matrix below; named admin credentials minted and revoked.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use tonic::Code;
use tonic::transport::Channel;
use trustplane::cli::connect;
use trustplane::proto;
use trustplane::proto::admin_service_client::AdminServiceClient;
use trustplane::store::records::AdminRole;

/// The matrix, defined once: method → allowed for (admin, operator, auditor).
/// A cluster certificate is refused every method.
const MATRIX: &[(&str, [bool; 3])] = &[
    ("AddCluster", [true, true, false]),
    ("ListClusters", [true, true, true]),
    ("RemoveCluster", [true, true, false]),
    ("Status", [true, true, true]),
    ("ReissueCluster", [true, true, false]),
    ("RotatePlan", [true, true, true]),
    ("RotateStart", [true, true, false]),
    ("RotateStatus", [true, true, true]),
    ("RotateAdvance", [true, true, false]),
    ("RotateAbort", [true, true, false]),
    ("AuditLog", [true, true, true]),
];

/// The `rpc` names of `AdminService` in the proto file.
fn admin_service_methods() -> BTreeSet<String> {
    let proto = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("proto/trustplane/v1/trustplane.proto"),
    )
    .unwrap();
    let start = proto.find("service AdminService {").unwrap();
    let body = &proto[start..start + proto[start..].find("\n}").unwrap()];
    body.lines()
        .filter_map(|line| line.trim().strip_prefix("rpc "))
        .map(|rest| rest.split('(').next().unwrap().trim().to_string())
        .collect()
}

/// Calls `method` with a request that passes authorisation; what happens
/// after (NotFound, FailedPrecondition…) does not matter here.
async fn call(channel: &Channel, method: &str) -> Result<(), tonic::Status> {
    let mut client = AdminServiceClient::new(channel.clone());
    match method {
        "AddCluster" => client
            .add_cluster(proto::AddClusterRequest {
                name: "added-by-role-test".into(),
                ..Default::default()
            })
            .await
            .map(drop),
        "ListClusters" => client
            .list_clusters(proto::ListClustersRequest {})
            .await
            .map(drop),
        "RemoveCluster" => client
            .remove_cluster(proto::RemoveClusterRequest {
                name: "no-such-cluster".into(),
            })
            .await
            .map(drop),
        "Status" => client.status(proto::StatusRequest {}).await.map(drop),
        "ReissueCluster" => client
            .reissue_cluster(proto::ReissueClusterRequest {
                name: "no-such-cluster".into(),
            })
            .await
            .map(drop),
        "RotatePlan" => client
            .rotate_plan(proto::RotatePlanRequest::default())
            .await
            .map(drop),
        "RotateStart" => client
            .rotate_start(proto::RotateStartRequest::default())
            .await
            .map(drop),
        "RotateStatus" => client
            .rotate_status(proto::RotateStatusRequest {})
            .await
            .map(drop),
        "RotateAdvance" => client
            .rotate_advance(proto::RotateAdvanceRequest::default())
            .await
            .map(drop),
        "RotateAbort" => client
            .rotate_abort(proto::RotateAbortRequest::default())
            .await
            .map(drop),
        "AuditLog" => client
            .audit_log(proto::AuditLogRequest {
                limit: 1,
                ..Default::default()
            })
            .await
            .map(drop),
        other => panic!("no test call for AdminService method {other}: add it here and to MATRIX"),
    }
}

/// Mints a credential for `name` with `role` on the running server's store
/// and returns a channel that presents it.
async fn admin_channel(
    server: &common::TestServer,
    work: &std::path::Path,
    name: &str,
    role: AdminRole,
) -> Channel {
    let authority = server.authority();
    let minted = authority
        .admins
        .add(
            &authority.audit,
            "local:test",
            name,
            role,
            Duration::from_secs(3600),
            work,
        )
        .unwrap();
    assert_eq!(minted.record.role, role);
    let certificate = std::fs::read_to_string(&minted.cert_path).unwrap();
    let key = std::fs::read_to_string(&minted.key_path).unwrap();
    connect(
        &server.url(),
        &server.control_plane_ca_pem,
        Some((&certificate, &key)),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn every_admin_method_is_allowed_or_refused_by_role_as_the_matrix_says() {
    let matrix_methods: BTreeSet<String> =
        MATRIX.iter().map(|(name, _)| name.to_string()).collect();
    assert_eq!(
        matrix_methods,
        admin_service_methods(),
        "MATRIX must name every AdminService method of the proto, and only those"
    );
    let server = common::start_server().await;
    let work = tempfile::tempdir().unwrap();
    let mut callers = Vec::new();
    for (index, role) in AdminRole::ALL.into_iter().enumerate() {
        let name = format!("{role}-person");
        callers.push((
            name.clone(),
            Some(index),
            admin_channel(&server, work.path(), &name, role).await,
        ));
    }
    callers.push(("cluster east".into(), None, server.enroll("east").await));
    let mut checked = 0;
    for (method, allowed) in MATRIX {
        for (name, role_index, channel) in &callers {
            let expected = role_index.is_some_and(|index| allowed[index]);
            let result = call(channel, method).await;
            let refused = matches!(&result, Err(status) if status.code() == Code::PermissionDenied);
            assert_eq!(
                !refused,
                expected,
                "{method} by {name}: expected {}, got {result:?}",
                if expected { "allowed" } else { "refused" }
            );
            if let Err(status) = &result
                && refused
            {
                let message = status.message();
                match role_index {
                    Some(index) => {
                        let role = AdminRole::ALL[*index].as_str();
                        assert!(
                            message.contains(&format!("admin {name:?} has role {role}"))
                                && message.contains("needs role"),
                            "{method} by {name}: {message}"
                        );
                    }
                    None => assert!(message.contains("may not call AdminService"), "{message}"),
                }
            }
            checked += 1;
        }
    }
    assert_eq!(checked, MATRIX.len() * 4);
}

#[tokio::test]
async fn a_revoked_admin_is_refused_and_both_steps_are_audited() {
    let server = common::start_server().await;
    let work = tempfile::tempdir().unwrap();
    let channel = admin_channel(&server, work.path(), "alice", AdminRole::Operator).await;
    call(&channel, "ListClusters").await.unwrap();
    let authority = server.authority();
    // An active name cannot be minted twice.
    let again = authority
        .admins
        .add(
            &authority.audit,
            "local:test",
            "alice",
            AdminRole::Admin,
            Duration::from_secs(3600),
            work.path(),
        )
        .unwrap_err();
    assert!(again.to_string().contains("revoke it first"), "{again}");
    let revoked = authority
        .admins
        .revoke(&authority.audit, "local:test", "alice")
        .unwrap();
    assert!(revoked.revoked_unix.is_some());
    let status = call(&channel, "ListClusters").await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        status.message().contains("\"alice\"") && status.message().contains("revoked"),
        "{}",
        status.message()
    );
    let listed = authority.admins.list().unwrap();
    let names: Vec<_> = listed
        .iter()
        .map(|record| {
            (
                record.name.as_str(),
                record.role,
                record.revoked_unix.is_some(),
            )
        })
        .collect();
    assert_eq!(
        names,
        vec![
            ("admin", AdminRole::Admin, false),
            ("alice", AdminRole::Operator, true)
        ]
    );
    // A revoked name may get a new credential, which works.
    let channel = admin_channel(&server, work.path(), "alice", AdminRole::Auditor).await;
    call(&channel, "Status").await.unwrap();
    let actions: Vec<_> = authority
        .audit
        .entries(&trustplane::server::AuditQuery {
            since_unix: None,
            action: None,
            limit: 100,
        })
        .unwrap()
        .into_iter()
        .filter(|entry| entry.action.starts_with("admin-") && entry.action != "admin-call-refused")
        .map(|entry| (entry.actor, entry.action))
        .collect();
    assert_eq!(
        actions,
        vec![
            ("local:test".to_string(), "admin-add".to_string()),
            ("local:test".to_string(), "admin-revoke".to_string()),
            ("local:test".to_string(), "admin-add".to_string()),
        ]
    );
}
