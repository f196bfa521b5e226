//! Vault's Kubernetes auth against a real kube-apiserver and a real OpenBao:
//! trustplane logs in with a ServiceAccount token (JWT) read from a file,
//! OpenBao checks it with the apiserver's TokenReview API, and the token it
//! gets allows exactly what the role's policy allows. A JWT of a
//! ServiceAccount the role is not bound to is refused, and the file is read
//! again at each login (the kubelet rotates it).

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PostParams;
use kube::{Api, Client};
use trustplane::vault::{Vault, VaultConfig, VaultError, VaultErrorKind, kv};

use crate::common::openbao::OpenBao;
use crate::kube_cluster::{KubeCluster, skip_e2e};

const NAMESPACE: &str = "trustplane-vault";

fn meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        ..ObjectMeta::default()
    }
}

async fn create_service_account(admin: &Client, name: &str) {
    Api::<ServiceAccount>::namespaced(admin.clone(), NAMESPACE)
        .create(
            &PostParams::default(),
            &ServiceAccount {
                metadata: meta(name),
                ..ServiceAccount::default()
            },
        )
        .await
        .unwrap();
}

/// A real, bound ServiceAccount token from the TokenRequest API (audience:
/// the apiserver's own, as a projected token without `audience` has).
async fn service_account_token(admin: &Client, name: &str) -> String {
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![],
            expiration_seconds: Some(3600),
            ..TokenRequestSpec::default()
        },
        ..TokenRequest::default()
    };
    let token = Api::<ServiceAccount>::namespaced(admin.clone(), NAMESPACE)
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .unwrap()
        .status
        .unwrap()
        .token;
    assert!(!token.is_empty(), "TokenRequest for {name} gave no token");
    token
}

/// Writes `token` to `path` (0600, replacing what is there), as the kubelet
/// writes a projected token.
fn write_token(path: &Path, token: &str) {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    file.write_all(token.as_bytes()).unwrap();
    assert_eq!(
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

/// Reads `trustplane/probe` in KV `secret/` through `vault` (its policy
/// allows exactly that); a 403 there logs in again once.
async fn read_probe(vault: &Vault) -> Result<String, VaultError> {
    let entry = vault
        .call_classified(1, |client| async move {
            kv::read(&client, "secret", "trustplane/probe").await
        })
        .await?
        .unwrap();
    Ok(entry.data["value"].as_str().unwrap().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_auth_logs_in_with_a_service_account_token_file() {
    if skip_e2e() {
        return;
    }
    let cluster = KubeCluster::start("vault-k8s").await.unwrap();
    let admin = cluster.admin_client().await.unwrap();
    Api::<Namespace>::all(admin.clone())
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: meta(NAMESPACE),
                ..Namespace::default()
            },
        )
        .await
        .unwrap();
    // trustplane's ServiceAccount, another one the role is not bound to,
    // and the reviewer OpenBao calls TokenReview with (system:auth-delegator,
    // as Vault's documentation sets it up).
    for name in ["trustplane", "other", "vault-auth"] {
        create_service_account(&admin, name).await;
    }
    Api::<ClusterRoleBinding>::all(admin.clone())
        .create(
            &PostParams::default(),
            &ClusterRoleBinding {
                metadata: meta("vault-auth-delegator"),
                role_ref: RoleRef {
                    api_group: "rbac.authorization.k8s.io".into(),
                    kind: "ClusterRole".into(),
                    name: "system:auth-delegator".into(),
                },
                subjects: Some(vec![Subject {
                    kind: "ServiceAccount".into(),
                    name: "vault-auth".into(),
                    namespace: Some(NAMESPACE.into()),
                    ..Subject::default()
                }]),
            },
        )
        .await
        .unwrap();
    let reviewer_jwt = service_account_token(&admin, "vault-auth").await;

    let bao = OpenBao::dev();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("kube-ca.pem");
    std::fs::write(&ca_file, cluster.ca_pem()).unwrap();
    let policy_file = dir.path().join("policy.hcl");
    std::fs::write(
        &policy_file,
        "path \"secret/data/trustplane/probe\" {\n  capabilities = [\"read\"]\n}\n",
    )
    .unwrap();
    bao.bao(&[
        "policy",
        "write",
        "trustplane-probe",
        policy_file.to_str().unwrap(),
    ]);
    bao.bao(&["kv", "put", "secret/trustplane/probe", "value=reached"]);
    bao.bao(&["kv", "put", "secret/trustplane/other", "value=hidden"]);
    bao.bao(&["auth", "enable", "kubernetes"]);
    bao.bao(&[
        "write",
        "auth/kubernetes/config",
        &format!("kubernetes_host={}", cluster.server_url()),
        &format!("kubernetes_ca_cert=@{}", ca_file.display()),
        &format!("token_reviewer_jwt={reviewer_jwt}"),
    ]);
    bao.bao(&[
        "write",
        "auth/kubernetes/role/trustplane",
        "bound_service_account_names=trustplane",
        &format!("bound_service_account_namespaces={NAMESPACE}"),
        "token_policies=trustplane-probe",
        "token_ttl=10m",
    ]);

    let jwt_file = dir.path().join("token");
    let first_jwt = service_account_token(&admin, "trustplane").await;
    write_token(&jwt_file, &first_jwt);
    let config = VaultConfig {
        addr: Some(bao.addr.clone()),
        token: None,
        k8s_role: Some("trustplane".into()),
        k8s_jwt_file: jwt_file.clone(),
        k8s_mount: "kubernetes".into(),
        ..VaultConfig::default()
    };

    // The real login: OpenBao reviewed the JWT with the apiserver.
    let vault = Vault::connect(config.clone()).await.unwrap();
    let lease = vault.lease();
    println!("Kubernetes login: Vault token lease {lease:?}");
    assert!(
        lease.ttl.is_some_and(|ttl| ttl.as_secs() <= 600) && lease.renewable,
        "{lease:?}"
    );
    let (status, lookup) = bao.http(
        "POST",
        "auth/token/lookup",
        Some(&serde_json::json!({"token": vault.client().settings.token}).to_string()),
    );
    assert_eq!(status, 200, "{lookup}");
    assert_eq!(
        lookup["data"]["meta"]["service_account_name"], "trustplane",
        "{lookup}"
    );
    assert_eq!(
        lookup["data"]["meta"]["service_account_namespace"], NAMESPACE,
        "{lookup}"
    );
    assert_eq!(
        lookup["data"]["policies"],
        serde_json::json!(["default", "trustplane-probe"]),
        "{lookup}"
    );
    // What the policy allows works; nothing more.
    assert_eq!(read_probe(&vault).await.unwrap(), "reached");
    let beyond = vault
        .call_classified(1, |client| async move {
            kv::read(&client, "secret", "trustplane/other").await
        })
        .await
        .unwrap_err();
    assert_eq!(beyond.kind, VaultErrorKind::PermissionDenied, "{beyond}");

    // A real JWT of a ServiceAccount the role is not bound to is refused,
    // naming the login path.
    let other_file = dir.path().join("other-token");
    write_token(&other_file, &service_account_token(&admin, "other").await);
    let refused = Vault::connect(VaultConfig {
        k8s_jwt_file: other_file.clone(),
        ..config.clone()
    })
    .await
    .unwrap_err();
    println!("unbound ServiceAccount: {refused}");
    assert_eq!(refused.kind, VaultErrorKind::PermissionDenied, "{refused}");
    assert_eq!(refused.path, "auth/kubernetes/login", "{refused}");
    let text = refused.to_string();
    assert!(
        text.contains("auth/kubernetes/login")
            && text.contains("auth/kubernetes/role/trustplane binds its ServiceAccount"),
        "{text}"
    );

    // The file is read at each login. Revoke the Vault token, so the next
    // call logs in again: with the unbound JWT in the file, that login is
    // refused; with a fresh trustplane JWT, it succeeds and the call works.
    let revoke = |token: String| {
        let (status, body) = bao.http(
            "POST",
            "auth/token/revoke",
            Some(&serde_json::json!({ "token": token }).to_string()),
        );
        assert_eq!(status, 204, "{body}");
    };
    let first_vault_token = vault.client().settings.token.clone();
    revoke(first_vault_token.clone());
    std::fs::copy(&other_file, &jwt_file).unwrap();
    let relogin_refused = read_probe(&vault).await.unwrap_err();
    println!("re-login with the unbound JWT in the file: {relogin_refused}");
    assert_eq!(
        relogin_refused.kind,
        VaultErrorKind::PermissionDenied,
        "{relogin_refused}"
    );
    assert_eq!(
        relogin_refused.path, "auth/kubernetes/login",
        "{relogin_refused}"
    );

    let second_jwt = service_account_token(&admin, "trustplane").await;
    assert_ne!(second_jwt, first_jwt);
    write_token(&jwt_file, &second_jwt);
    assert_eq!(read_probe(&vault).await.unwrap(), "reached");
    let second_vault_token = vault.client().settings.token.clone();
    assert_ne!(
        second_vault_token, first_vault_token,
        "the revoked Vault token was not replaced by a new login"
    );
    println!("re-login with a fresh JWT from the file: the KV read works again");
}
