//! Vault-backed deployments against a real OpenBao server.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::openbao::OpenBao;
use trustplane::vault::{Secret, Vault, VaultConfig, VaultErrorKind, classify};

fn config(bao: &OpenBao) -> VaultConfig {
    VaultConfig {
        addr: Some(bao.addr.clone()),
        token: Some(bao.token.parse::<Secret>().unwrap()),
        pki_mount: "pki".into(),
        kv_mount: "secret".into(),
        kv_prefix: "trustplane".into(),
        ..VaultConfig::default()
    }
}

#[tokio::test]
async fn a_dev_server_answers_and_a_missing_issuer_is_named() {
    let bao = OpenBao::dev();
    bao.pki_with_root("pki", "mesh-root", "mesh root");
    let vault = Vault::connect(config(&bao)).await.unwrap();
    let path = "pki/issuer/no-such-issuer/json";
    let error = vaultrs::pki::issuer::read(vault.client().as_ref(), "pki", Some("no-such-issuer"))
        .await
        .map_err(|error| classify(path, error))
        .unwrap_err();
    assert_eq!(error.kind, VaultErrorKind::NotFound, "{error}");
    assert!(error.to_string().contains(path), "{error}");
    let issuer = vaultrs::pki::issuer::read(vault.client().as_ref(), "pki", Some("mesh-root"))
        .await
        .unwrap();
    assert!(issuer.certificate.contains("BEGIN CERTIFICATE"));
}
