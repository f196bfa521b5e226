use base64::Engine;

use super::*;

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// A self-signed certificate and its key, PEM.
fn certificate_and_key() -> (String, String) {
    let certified = rcgen::generate_simple_self_signed(vec!["kube.example".to_string()])
        .unwrap_or_else(|error| unreachable!("rcgen: {error}"));
    (certified.cert.pem(), certified.signing_key.serialize_pem())
}

/// A valid token kubeconfig with `cluster_extra` added to the cluster,
/// `user_extra` to the user (each a line of YAML at the right indent, or "").
fn with_token(cluster_extra: &str, user_extra: &str) -> String {
    let (certificate, _) = certificate_and_key();
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: edge
  cluster:
    server: https://edge.example:6443
    certificate-authority-data: {ca}
{cluster_extra}
users:
- name: pusher
  user:
    token: abc.def
{user_extra}
contexts:
- name: edge
  context:
    cluster: edge
    user: pusher
    namespace: istio-system
current-context: edge
",
        ca = b64(&certificate)
    )
}

fn refused_path(text: &str) -> String {
    match validate(text) {
        Err(KubeconfigError::Refused { path, .. }) => path,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn accepts_a_token_kubeconfig() {
    let validated = validate(&with_token("", "")).unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(validated.server(), "https://edge.example:6443");
    assert_eq!(validated.context(), "edge");
    assert_eq!(validated.credential(), Credential::Token);
    assert!(!format!("{validated:?}").contains("abc.def"));
}

#[test]
fn accepts_a_client_certificate_kubeconfig_without_current_context() {
    let (certificate, key) = certificate_and_key();
    let text = format!(
        "clusters:
- name: edge
  cluster:
    server: https://10.0.0.1
    certificate-authority-data: {ca}
users:
- name: pusher
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
contexts:
- name: only
  context: {{cluster: edge, user: pusher}}
",
        ca = b64(&certificate),
        cert = b64(&certificate),
        key = b64(&key),
    );
    let validated = validate(&text).unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(validated.credential(), Credential::ClientCertificate);
    assert_eq!(validated.context(), "only");
}

#[test]
fn refuses_commands_files_and_insecure_settings_naming_the_field() {
    let user_cases = [
        (
            "    exec: {command: id, apiVersion: client.authentication.k8s.io/v1}",
            "users[0].user.exec",
        ),
        (
            "    auth-provider: {name: gcp}",
            "users[0].user.auth-provider",
        ),
        (
            "    tokenFile: /var/lib/trustplane/kek",
            "users[0].user.tokenFile",
        ),
        (
            "    client-certificate: /etc/cert.pem",
            "users[0].user.client-certificate",
        ),
        (
            "    client-key: /var/lib/trustplane/kek",
            "users[0].user.client-key",
        ),
        ("    username: admin", "users[0].user.username"),
        ("    password: secret", "users[0].user.password"),
        ("    as: system:admin", "users[0].user.as"),
        ("    as-groups: [system:masters]", "users[0].user.as-groups"),
        ("    as-uid: \"0\"", "users[0].user.as-uid"),
        ("    as-user-extra: {a: [b]}", "users[0].user.as-user-extra"),
    ];
    for (line, path) in user_cases {
        assert_eq!(refused_path(&with_token("", line)), path, "{line}");
    }
    let cluster_cases = [
        (
            "    certificate-authority: /etc/ca.pem",
            "clusters[0].cluster.certificate-authority",
        ),
        (
            "    insecure-skip-tls-verify: true",
            "clusters[0].cluster.insecure-skip-tls-verify",
        ),
        (
            "    insecure-skip-tls-verify: false",
            "clusters[0].cluster.insecure-skip-tls-verify",
        ),
        (
            "    proxy-url: http://attacker.example:3128",
            "clusters[0].cluster.proxy-url",
        ),
        ("    extensions: []", "clusters[0].cluster.extensions"),
    ];
    for (line, path) in cluster_cases {
        assert_eq!(refused_path(&with_token(line, "")), path, "{line}");
    }
}

#[test]
fn the_message_names_the_field_and_says_what_is_accepted() {
    let error = validate(&with_token("", "    exec: {command: id}"))
        .err()
        .map(|error| error.to_string())
        .unwrap_or_default();
    assert!(error.contains("users[0].user.exec is refused"), "{error}");
    assert!(error.contains("runs a command"), "{error}");
    assert!(error.contains("client-certificate-data"), "{error}");
}

#[test]
fn refuses_unknown_fields() {
    let text = with_token("", "    future-plugin: x");
    assert!(matches!(
        validate(&text),
        Err(KubeconfigError::Unknown { path }) if path == "users[0].user.future-plugin"
    ));
    let text = format!("{}extensions: []\n", with_token("", ""));
    assert!(
        matches!(validate(&text), Err(KubeconfigError::Refused { path, .. }) if path == "extensions")
    );
    let text = format!("{}surprise: 1\n", with_token("", ""));
    assert!(
        matches!(validate(&text), Err(KubeconfigError::Unknown { path }) if path == "surprise")
    );
}

#[test]
fn refuses_plain_http_user_info_and_bad_data() {
    let good = with_token("", "");
    let http = good.replace("https://edge.example:6443", "http://edge.example:6443");
    let userinfo = good.replace("https://edge.example", "https://me@edge.example");
    let bad_ca = good.replacen(
        "certificate-authority-data: ",
        "certificate-authority-data: !!",
        1,
    );
    for (text, path) in [
        (http, "clusters[0].cluster.server"),
        (userinfo, "clusters[0].cluster.server"),
        (bad_ca, "clusters[0].cluster.certificate-authority-data"),
    ] {
        assert!(
            matches!(validate(&text), Err(KubeconfigError::Invalid { path: found, .. }) if found == path),
            "{path}: {:?}",
            validate(&text)
        );
    }
}

#[test]
fn requires_exactly_one_of_each_and_matching_names() {
    let good = with_token("", "");
    let two_users = good.replace(
        "contexts:",
        "- name: other\n  user:\n    token: x\ncontexts:",
    );
    assert!(
        matches!(validate(&two_users), Err(KubeconfigError::Invalid { path, .. }) if path == "users")
    );
    let no_users = good.replace("users:", "people:");
    assert!(validate(&no_users).is_err());
    let wrong_current = good.replace("current-context: edge", "current-context: west");
    assert!(
        matches!(validate(&wrong_current), Err(KubeconfigError::Invalid { path, .. }) if path == "current-context")
    );
    let wrong_user = good.replace("    user: pusher", "    user: someone");
    assert!(
        matches!(validate(&wrong_user), Err(KubeconfigError::Invalid { path, .. }) if path == "contexts[0].context.user")
    );
    let missing_ca = good.replace(
        "    certificate-authority-data:",
        "    tls-server-name: edge\n    x-ca:",
    );
    assert!(validate(&missing_ca).is_err());
    let without_ca: String = good
        .lines()
        .filter(|line| !line.contains("certificate-authority-data"))
        .map(|line| format!("{line}\n"))
        .collect();
    assert!(
        matches!(validate(&without_ca), Err(KubeconfigError::Missing { path }) if path == "clusters[0].cluster.certificate-authority-data")
    );
}

#[test]
fn refuses_a_certificate_without_its_key_and_both_credentials() {
    let (certificate, _) = certificate_and_key();
    let only_cert = with_token(
        "",
        &format!("    client-certificate-data: {}", b64(&certificate)),
    )
    .replace("    token: abc.def\n", "");
    assert!(
        matches!(validate(&only_cert), Err(KubeconfigError::Missing { path }) if path == "users[0].user.client-key-data")
    );
    let (_, key) = certificate_and_key();
    let both = with_token(
        "",
        &format!(
            "    client-certificate-data: {}\n    client-key-data: {}",
            b64(&certificate),
            b64(&key)
        ),
    );
    assert!(
        matches!(validate(&both), Err(KubeconfigError::Invalid { path, .. }) if path == "users[0].user")
    );
}

#[test]
fn never_panics_on_odd_input() {
    let big = "a".repeat(MAX_KUBECONFIG_BYTES + 1);
    assert!(matches!(
        validate(&big),
        Err(KubeconfigError::TooLarge { .. })
    ));
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let bomb = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: [*d, *d, *d, *d, *d, *d, *d, *d, *d]\n";
    for text in [
        "",
        "~",
        "- 1",
        "{",
        "clusters: 5",
        "clusters: [1]",
        "? [a]\n: b",
        "---\na: 1\n---\nb: 2",
        "!!binary aGk=",
        deep.as_str(),
        bomb,
        "\u{0}\u{feff}",
    ] {
        assert!(validate(text).is_err(), "{text:.40}");
    }
}
