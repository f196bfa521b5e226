//! The pure parts of the Kubernetes sink: what Secret is
//! written for a given existing Secret and material, and what is read back.
//! Writes against a real API server are exercised by the e2e tests.

use std::time::Duration;

use super::*;
use crate::fixtures::cacerts_material;

fn options(format: SecretFormat, adopt_existing: bool) -> KubernetesSinkOptions {
    KubernetesSinkOptions {
        format,
        adopt_existing,
        ..KubernetesSinkOptions::default()
    }
}

fn bytes(text: &str) -> ByteString {
    ByteString(text.as_bytes().to_vec())
}

fn map(entries: &[(&str, &str)]) -> BTreeMap<String, String> {
    entries
        .iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect()
}

/// An existing Secret with keys, labels and annotations trustplane does not own.
fn existing(managed: bool) -> Secret {
    let mut labels = map(&[("team", "mesh")]);
    if managed {
        labels.insert(MANAGED_BY_LABEL.into(), MANAGER.into());
    }
    Secret {
        metadata: ObjectMeta {
            name: Some("cacerts".into()),
            namespace: Some("istio-system".into()),
            resource_version: Some("4711".into()),
            labels: Some(labels),
            annotations: Some(map(&[("owner", "platform")])),
            ..ObjectMeta::default()
        },
        type_: Some(OPAQUE_TYPE.into()),
        data: Some(
            [
                ("extra.txt".to_string(), bytes("keep me")),
                (CA_CERT_FILE.to_string(), bytes("old cert")),
                (CA_KEY_FILE.to_string(), bytes("old key")),
                (ISTIO_GENERATED_KEY.to_string(), bytes("")),
            ]
            .into_iter()
            .collect(),
        ),
        ..Secret::default()
    }
}

fn text(secret: &Secret, key: &str) -> Option<String> {
    data_text(secret, key)
}

#[test]
fn a_new_secret_holds_the_four_istio_keys_label_and_annotations() {
    let material = cacerts_material(3);
    let secret = desired_cacerts_secret(None, &KubernetesSinkOptions::default(), &material)
        .unwrap()
        .unwrap();
    assert_eq!(secret.metadata.name.as_deref(), Some("cacerts"));
    assert_eq!(secret.metadata.namespace.as_deref(), Some("istio-system"));
    assert_eq!(
        secret.metadata.resource_version, None,
        "create, not replace"
    );
    assert_eq!(secret.type_.as_deref(), Some("Opaque"));
    let keys: Vec<&str> = secret
        .data
        .as_ref()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        vec![
            "ca-cert.pem",
            "ca-key.pem",
            "cert-chain.pem",
            "root-cert.pem"
        ]
    );
    assert_eq!(
        text(&secret, CA_KEY_FILE).as_deref(),
        Some(material.ca_key_pem.as_str())
    );
    assert_eq!(
        text(&secret, CERT_CHAIN_FILE).unwrap(),
        material.cert_chain_pem
    );
    let labels = secret.metadata.labels.as_ref().unwrap();
    assert_eq!(
        labels.get(MANAGED_BY_LABEL).map(String::as_str),
        Some("trustplane")
    );
    let annotations = secret.metadata.annotations.as_ref().unwrap();
    assert_eq!(
        annotations
            .get(BUNDLE_VERSION_ANNOTATION)
            .map(String::as_str),
        Some("3")
    );
    let serial = Certificate::from_pem(&material.ca_cert_pem)
        .unwrap()
        .serial_hex()
        .unwrap();
    assert_eq!(
        annotations.get(INTERMEDIATE_SERIAL_ANNOTATION),
        Some(&serial)
    );
    assert!(secret.string_data.is_none());
}

#[test]
fn a_managed_secret_keeps_what_trustplane_does_not_own_and_its_resource_version() {
    let material = cacerts_material(5);
    let existing = existing(true);
    let secret = desired_cacerts_secret(
        Some(&existing),
        &KubernetesSinkOptions::default(),
        &material,
    )
    .unwrap()
    .unwrap();
    assert_eq!(secret.metadata.resource_version.as_deref(), Some("4711"));
    assert_eq!(text(&secret, "extra.txt").as_deref(), Some("keep me"));
    assert_eq!(text(&secret, CA_CERT_FILE).unwrap(), material.ca_cert_pem);
    assert!(
        text(&secret, ISTIO_GENERATED_KEY).is_none(),
        "istio-generated must never be written"
    );
    let labels = secret.metadata.labels.as_ref().unwrap();
    assert_eq!(labels.get("team").map(String::as_str), Some("mesh"));
    assert_eq!(
        labels.get(MANAGED_BY_LABEL).map(String::as_str),
        Some("trustplane")
    );
    let annotations = secret.metadata.annotations.as_ref().unwrap();
    assert_eq!(
        annotations.get("owner").map(String::as_str),
        Some("platform")
    );
    assert_eq!(
        annotations
            .get(BUNDLE_VERSION_ANNOTATION)
            .map(String::as_str),
        Some("5")
    );
    assert_eq!(secret.type_.as_deref(), Some("Opaque"));
}

#[test]
fn a_foreign_secret_is_refused_unless_adoption_is_allowed() {
    let material = cacerts_material(1);
    let foreign = existing(false);
    let error =
        desired_cacerts_secret(Some(&foreign), &KubernetesSinkOptions::default(), &material)
            .unwrap_err();
    assert!(matches!(error, SinkError::Foreign { .. }), "{error:?}");
    let text_of_error = error.to_string();
    assert!(
        text_of_error.contains("istio-system/cacerts")
            && text_of_error.contains("left untouched; pass --adopt-existing to take it over"),
        "{text_of_error}"
    );

    let adopted = desired_cacerts_secret(
        Some(&foreign),
        &options(SecretFormat::Istio, true),
        &material,
    )
    .unwrap()
    .unwrap();
    assert_eq!(text(&adopted, "extra.txt").as_deref(), Some("keep me"));
    assert!(text(&adopted, ISTIO_GENERATED_KEY).is_none());
    let labels = adopted.metadata.labels.as_ref().unwrap();
    assert_eq!(labels.get("team").map(String::as_str), Some("mesh"));
    assert_eq!(
        labels.get(MANAGED_BY_LABEL).map(String::as_str),
        Some("trustplane")
    );
    assert_eq!(adopted.metadata.resource_version.as_deref(), Some("4711"));
}

#[test]
fn foreign_detection_reads_the_managed_by_label() {
    assert!(is_managed(&existing(true)));
    assert!(!is_managed(&existing(false)));
    let mut other_manager = existing(false);
    other_manager
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert(MANAGED_BY_LABEL.into(), "Helm".into());
    assert!(!is_managed(&other_manager));
    assert!(!is_managed(&Secret::default()));
}

#[test]
fn writing_the_same_set_again_changes_nothing() {
    let material = cacerts_material(2);
    let first = desired_cacerts_secret(
        Some(&existing(true)),
        &KubernetesSinkOptions::default(),
        &material,
    )
    .unwrap()
    .unwrap();
    let again =
        desired_cacerts_secret(Some(&first), &KubernetesSinkOptions::default(), &material).unwrap();
    assert!(again.is_none());
    let mut newer = material.clone();
    newer.bundle_version = 3;
    assert!(
        desired_cacerts_secret(Some(&first), &KubernetesSinkOptions::default(), &newer)
            .unwrap()
            .is_some()
    );
}

#[test]
fn the_tls_form_writes_three_keys_and_drops_the_istio_ones() {
    let material = cacerts_material(4);
    let created = desired_cacerts_secret(None, &options(SecretFormat::Tls, false), &material)
        .unwrap()
        .unwrap();
    assert_eq!(created.type_.as_deref(), Some("kubernetes.io/tls"));
    let keys: Vec<&str> = created
        .data
        .as_ref()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, vec!["ca.crt", "tls.crt", "tls.key"]);
    // A two-level chain: tls.crt is exactly the intermediate, ca.crt the bundle.
    assert_eq!(text(&created, TLS_CERT_KEY).unwrap(), material.ca_cert_pem);
    assert_eq!(text(&created, TLS_CA_KEY).unwrap(), material.root_cert_pem);
    assert_eq!(
        text(&created, TLS_KEY_KEY).as_deref(),
        Some(material.ca_key_pem.as_str())
    );

    // Switching a managed istio-form Secret to tls leaves no istio key behind.
    let switched = desired_cacerts_secret(
        Some(&existing(true)),
        &options(SecretFormat::Tls, false),
        &material,
    )
    .unwrap()
    .unwrap();
    for key in [CA_CERT_FILE, CA_KEY_FILE, CERT_CHAIN_FILE, ROOT_CERT_FILE] {
        assert!(text(&switched, key).is_none(), "{key} left behind");
    }
    assert_eq!(text(&switched, "extra.txt").as_deref(), Some("keep me"));
    assert_eq!(
        switched.type_.as_deref(),
        Some("Opaque"),
        "a type never changes"
    );
}

#[test]
fn tls_crt_carries_the_cas_between_intermediate_and_root() {
    let mut material = cacerts_material(1);
    let middle = "-----BEGIN CERTIFICATE-----\nTUlERExF\n-----END CERTIFICATE-----\n";
    material.cert_chain_pem = format!("{}{middle}{}", material.ca_cert_pem, material.root_cert_pem);
    assert_eq!(
        tls_certificate_pem(&material),
        format!("{}{middle}", material.ca_cert_pem)
    );
}

#[test]
fn the_istio_form_in_a_tls_typed_or_immutable_secret_is_refused() {
    let material = cacerts_material(1);
    let mut tls_typed = existing(true);
    tls_typed.type_ = Some(TLS_TYPE.into());
    let error = desired_cacerts_secret(
        Some(&tls_typed),
        &KubernetesSinkOptions::default(),
        &material,
    )
    .unwrap_err();
    assert!(matches!(error, SinkError::Incompatible { .. }), "{error:?}");
    assert!(error.to_string().contains("--secret-format tls"), "{error}");
    assert!(
        desired_cacerts_secret(
            Some(&tls_typed),
            &options(SecretFormat::Tls, false),
            &material
        )
        .is_ok()
    );

    let mut immutable = existing(true);
    immutable.immutable = Some(true);
    let error = desired_cacerts_secret(
        Some(&immutable),
        &KubernetesSinkOptions::default(),
        &material,
    )
    .unwrap_err();
    assert!(error.to_string().contains("immutable"), "{error}");
}

#[test]
fn reading_back_either_form_gives_a_set_that_passes_the_checks() {
    let material = cacerts_material(1);
    let now = crate::clock::SystemClock.now();
    for format in [SecretFormat::Istio, SecretFormat::Tls] {
        let secret = desired_cacerts_secret(None, &options(format, false), &material)
            .unwrap()
            .unwrap();
        let files = cacerts_files(&secret, format, now).unwrap();
        let check = ca::check_cacerts(&files, now, Duration::ZERO);
        assert!(check.passed(), "{format}: {:?}", check.findings);
        assert_eq!(
            files.ca_cert.as_deref(),
            Some(material.ca_cert_pem.as_str())
        );
        assert_eq!(
            files.cert_chain.as_deref(),
            Some(material.cert_chain_pem.as_str())
        );
        assert_eq!(
            files.root_cert.as_deref(),
            Some(material.root_cert_pem.as_str())
        );
        // The other form's keys are absent: nothing to read.
        let other = match format {
            SecretFormat::Istio => SecretFormat::Tls,
            SecretFormat::Tls => SecretFormat::Istio,
        };
        assert!(cacerts_files(&secret, other, now).is_none());
    }
}

#[test]
fn a_partial_secret_reads_as_partial_files() {
    let mut secret = existing(true);
    secret.data = Some(
        [(CA_CERT_FILE.to_string(), bytes("cert only"))]
            .into_iter()
            .collect(),
    );
    let files = cacerts_files(
        &secret,
        SecretFormat::Istio,
        crate::clock::SystemClock.now(),
    )
    .unwrap();
    assert_eq!(files.ca_cert.as_deref(), Some("cert only"));
    assert!(files.ca_key.is_none() && files.cert_chain.is_none() && files.root_cert.is_none());
}

#[test]
fn secret_format_parses_its_text_form() {
    assert_eq!("istio".parse::<SecretFormat>(), Ok(SecretFormat::Istio));
    assert_eq!("tls".parse::<SecretFormat>(), Ok(SecretFormat::Tls));
    assert!(
        "opaque"
            .parse::<SecretFormat>()
            .unwrap_err()
            .contains("istio")
    );
    assert_eq!(SecretFormat::Tls.to_string(), "tls");
    assert_eq!(SecretFormat::default(), SecretFormat::Istio);
    let defaults = KubernetesSinkOptions::default();
    assert_eq!(
        (defaults.namespace.as_str(), defaults.secret_name.as_str()),
        ("istio-system", "cacerts")
    );
    assert!(!defaults.adopt_existing);
}

#[test]
fn scrubbing_zeroes_the_data() {
    let mut secret = existing(true);
    secret.string_data = Some(map(&[("pending", "secret text")]));
    scrub(&mut secret);
    for value in secret.data.as_ref().unwrap().values() {
        assert!(value.0.iter().all(|byte| *byte == 0));
    }
    for value in secret.string_data.as_ref().unwrap().values() {
        assert!(value.bytes().all(|byte| byte == 0));
    }
}

#[test]
fn kubernetes_errors_say_what_to_do_and_carry_no_data() {
    let forbidden = KubernetesError::Forbidden {
        message: "secrets \"cacerts\" is forbidden".into(),
    };
    assert!(forbidden.to_string().contains("ServiceAccount"));
    let conflict = KubernetesError::Conflict { attempts: 5 };
    assert!(conflict.to_string().contains("409"));
    let sink = SinkError::Backend {
        action: "replace",
        target: "Secret istio-system/cacerts".into(),
        source: Box::new(KubernetesError::Refused {
            code: 500,
            reason: "InternalError".into(),
            message: "etcd is down".into(),
        }),
    };
    assert_eq!(
        crate::telemetry::error_text(&sink),
        "could not replace Secret istio-system/cacerts: etcd is down (HTTP 500 InternalError)"
    );
}
