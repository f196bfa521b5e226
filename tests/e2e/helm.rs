//! The Helm chart (`deploy/helm/trustplane`) against a real kube-apiserver
//! with RBAC authorization: `helm lint` for both example value sets, `helm
//! template` of each applied with `kubectl apply --dry-run=server`, then
//! applied for real, then every permission checked as the rendered
//! ServiceAccounts (`kubectl --as=system:serviceaccount:...`), the allowed
//! ones and the denied ones, with `kubectl auth can-i` and with real requests.
//!
//! The agent is rendered into its own namespace with a different Istio
//! namespace, so the test also proves its RoleBinding reaches across
//! namespaces and nothing more; and the real `trustplane agent`, run with the
//! rendered arguments and ServiceAccount, does its work with that RBAC. So does
//! the real `trustplane server` (`init` included) with its rendered arguments,
//! ServiceAccount and Role, and it fails naming the missing permission when the
//! Role is cut or the RoleBinding gone. helm
//! and kubectl come from `tests/e2e/harness/build-peers.sh` (the Go module
//! proxy).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common;
use crate::common::binary::{BINARY, Guard};
use crate::kube_cluster::{KubeCluster, build_tool, skip_e2e};

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/helm/trustplane");
const SERVER_VALUES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/helm/examples/server-values.yaml"
);
const AGENT_VALUES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/helm/examples/agent-values.yaml"
);
const RENDERED_AGENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/manifests/agent.yaml");

/// The server's release and namespace (as in deploy/manifests/server.yaml).
const SERVER_NAMESPACE: &str = "trustplane";
const SERVER_SA: &str = "system:serviceaccount:trustplane:trustplane";
/// The agent runs in its own namespace and writes into the Istio namespace.
const AGENT_NAMESPACE: &str = "mesh-agents";
const ISTIO_NAMESPACE: &str = "mesh-istio";
const AGENT_SA: &str = "system:serviceaccount:mesh-agents:trustplane-agent";
/// A namespace the chart has nothing to do with, holding a Secret and a trustplane resource.
const OTHER_NAMESPACE: &str = "elsewhere";

/// The server's CustomResource kinds (plural.group), as `trustplane admin crds` defines them.
const TRUSTPLANE_RESOURCES: [&str; 9] = [
    "trustplaneheads.trustplane.io",
    "trustplanemetas.trustplane.io",
    "trustplanerotations.trustplane.io",
    "trustplaneroots.trustplane.io",
    "trustplaneclusters.trustplane.io",
    "trustplanecertificates.trustplane.io",
    "trustplanebundles.trustplane.io",
    "trustplanetokens.trustplane.io",
    "trustplaneauditentries.trustplane.io",
];
/// What the kubernetes store does with its resources: updates guarded by resourceVersion,
/// creates, reads and a watch on the head; never patch or delete.
const STORE_VERBS: [&str; 5] = ["get", "list", "watch", "create", "update"];
/// What it does with Secrets (sealed key material): no watch either.
const SECRET_VERBS: [&str; 4] = ["get", "list", "create", "update"];
/// How long RBAC may take to reach the authorizer's informer cache after an apply.
const RBAC_SETTLE: Duration = Duration::from_secs(30);

/// helm and kubectl against one cluster (the admin kubeconfig).
struct Tools {
    helm: PathBuf,
    kubectl: PathBuf,
    kubeconfig: PathBuf,
}

impl Tools {
    fn helm(&self, args: &[&str]) -> Output {
        run(Command::new(&self.helm).args(args))
    }

    /// kubectl as cluster-admin, or as `user` (impersonation) when given.
    fn kubectl(&self, user: Option<&str>, args: &[&str], stdin: Option<&str>) -> Output {
        let mut command = Command::new(&self.kubectl);
        command.arg("--kubeconfig").arg(&self.kubeconfig);
        if let Some(user) = user {
            command.arg(format!("--as={user}"));
        }
        command.args(args);
        match stdin {
            None => run(&mut command),
            Some(input) => run_with_stdin(&mut command, input),
        }
    }

    /// kubectl as admin, which must succeed; its stdout.
    fn admin(&self, args: &[&str], stdin: Option<&str>) -> String {
        let output = self.kubectl(None, args, stdin);
        ok(&output, &format!("kubectl {}", args.join(" ")))
    }

    /// `kubectl auth can-i VERB RESOURCE -n NAMESPACE --as USER` (or cluster-wide without a
    /// namespace; as the admin without a user): true for "yes", false for "no".
    fn can_i(
        &self,
        user: Option<&str>,
        verb: &str,
        resource: &str,
        namespace: Option<&str>,
    ) -> bool {
        let mut args = vec!["auth", "can-i", verb, resource];
        match namespace {
            Some(namespace) => args.extend(["-n", namespace]),
            None => args.push("--all-namespaces"),
        }
        let output = self.kubectl(user, &args, None);
        match String::from_utf8_lossy(&output.stdout).trim() {
            "yes" => true,
            "no" => false,
            other => panic!(
                "kubectl {} --as={user:?}: expected yes or no, got {other:?}; stderr: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            ),
        }
    }
}

fn run(command: &mut Command) -> Output {
    command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|error| panic!("cannot run {command:?}: {error}"))
}

fn run_with_stdin(command: &mut Command, input: &str) -> Output {
    use std::io::Write;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot run {command:?}: {error}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// The stdout of a command that must have succeeded.
#[track_caller]
fn ok(output: &Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

/// A command that must have failed with Forbidden (403) from the authorizer.
#[track_caller]
fn forbidden(output: &Output, what: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("Forbidden") && stderr.contains("forbidden"),
        "{what}: expected Forbidden, got {} with stdout {} and stderr {stderr}",
        output.status,
        String::from_utf8_lossy(&output.stdout)
    );
}

/// Every `kind:` of a rendered multi-document manifest, in order.
fn kinds(manifest: &str) -> Vec<String> {
    manifest
        .lines()
        .filter_map(|line| line.strip_prefix("kind: "))
        .map(|kind| kind.trim().to_owned())
        .collect()
}

fn helm_template(tools: &Tools, release: &str, namespace: &str, extra: &[&str]) -> String {
    let mut args = vec!["template", release, CHART, "--namespace", namespace];
    args.extend(extra);
    let output = tools.helm(&args);
    ok(&output, &format!("helm {}", args.join(" ")))
}

fn write(dir: &Path, name: &str, contents: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path.to_str().unwrap().to_owned()
}

/// A cluster and the tools, built (or found in the cache) while it starts.
async fn start(name: &str) -> (KubeCluster, Tools) {
    let started = Instant::now();
    let (cluster, helm, kubectl) = tokio::join!(
        KubeCluster::start(name),
        tokio::task::spawn_blocking(|| build_tool("helm")),
        tokio::task::spawn_blocking(|| build_tool("kubectl")),
    );
    let cluster = cluster.unwrap();
    let tools = Tools {
        helm: helm.unwrap().unwrap(),
        kubectl: kubectl.unwrap().unwrap(),
        kubeconfig: cluster.admin_kubeconfig_path(),
    };
    let helm_version = ok(&tools.helm(&["version", "--short"]), "helm version");
    let kubectl_version = ok(
        &tools.kubectl(None, &["version", "--client"], None),
        "kubectl version",
    );
    println!(
        "helm {} and {} against {} (ready in {:.2?})",
        helm_version.trim(),
        kubectl_version.lines().next().unwrap_or_default(),
        KubeCluster::versions(),
        started.elapsed()
    );
    (cluster, tools)
}

#[tokio::test]
async fn helm_chart_applies_to_a_real_apiserver_with_least_privilege_rbac() {
    if skip_e2e() {
        return;
    }
    let started = Instant::now();
    let (_cluster, tools) = start("helm").await;
    // The admin kubeconfig really is an admin, and RBAC is on: an unbound ServiceAccount is denied.
    assert!(tools.can_i(None, "delete", "secrets", None));
    assert!(!tools.can_i(
        Some("system:serviceaccount:default:nobody"),
        "get",
        "secrets",
        Some("default")
    ));

    // helm lint, strict, for both documented value sets.
    for values in [SERVER_VALUES, AGENT_VALUES] {
        let output = tools.helm(&["lint", CHART, "--strict", "-f", values]);
        let stdout = ok(&output, &format!("helm lint -f {values}"));
        assert!(
            stdout.contains("1 chart(s) linted, 0 chart(s) failed"),
            "helm lint -f {values}: {stdout}"
        );
    }
    // The schema refuses what it should: an unknown role, an unknown key, an http:// server.
    for (set, complaint) in [
        ("role=primary", "value must be one of 'server', 'agent'"),
        (
            "server.replica=3",
            "additional properties 'replica' not allowed",
        ),
        (
            "agent.servers={http://plain:8443}",
            "does not match pattern",
        ),
    ] {
        let output = tools.helm(&["template", "x", CHART, "--set", set]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success() && stderr.contains(complaint),
            "helm template --set {set}: expected a schema error containing {complaint:?}, got {}: {stderr}",
            output.status
        );
    }

    // helm template: the server as deploy/render.sh renders it; the agent in its own namespace,
    // writing into another (the Istio) namespace.
    let server = helm_template(
        &tools,
        "trustplane",
        SERVER_NAMESPACE,
        &["-f", SERVER_VALUES, "--include-crds"],
    );
    let agent = helm_template(
        &tools,
        "trustplane-agent",
        AGENT_NAMESPACE,
        &[
            "-f",
            AGENT_VALUES,
            "--set",
            &format!("istioNamespace={ISTIO_NAMESPACE}"),
        ],
    );
    let server_kinds = kinds(&server);
    let agent_kinds = kinds(&agent);
    for expected in [
        "CustomResourceDefinition",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
    ] {
        assert!(
            server_kinds.iter().any(|kind| kind == expected),
            "the server render has no {expected}: {server_kinds:?}"
        );
    }
    assert_eq!(
        agent_kinds,
        ["ServiceAccount", "Role", "RoleBinding", "Deployment"],
        "the agent render"
    );
    for kinds in [&server_kinds, &agent_kinds] {
        assert!(
            !kinds
                .iter()
                .any(|kind| kind == "ClusterRole" || kind == "ClusterRoleBinding"),
            "the chart renders cluster-wide RBAC: {kinds:?}"
        );
    }
    assert_eq!(
        server_kinds
            .iter()
            .filter(|kind| *kind == "CustomResourceDefinition")
            .count(),
        TRUSTPLANE_RESOURCES.len()
    );
    // The optional parts: a NetworkPolicy for either role, a ServiceMonitor for the server and
    // a PodMonitor for the agent (their CRDs are the Prometheus Operator's: rendered, not applied).
    let optional = [
        "--set",
        "networkPolicy.enabled=true",
        "--set",
        "monitoring.enabled=true",
    ];
    let server_optional = helm_template(
        &tools,
        "trustplane",
        SERVER_NAMESPACE,
        &[&["-f", SERVER_VALUES][..], &optional].concat(),
    );
    let agent_optional = helm_template(
        &tools,
        "trustplane-agent",
        AGENT_NAMESPACE,
        &[&["-f", AGENT_VALUES][..], &optional].concat(),
    );
    for (render, monitor) in [
        (&server_optional, "ServiceMonitor"),
        (&agent_optional, "PodMonitor"),
    ] {
        let kinds = kinds(render);
        for expected in ["NetworkPolicy", monitor] {
            assert!(
                kinds.iter().any(|kind| kind == expected),
                "{expected} not in {kinds:?}"
            );
        }
    }
    let network_policy = helm_template(
        &tools,
        "trustplane",
        SERVER_NAMESPACE,
        &[
            &[
                "-f",
                SERVER_VALUES,
                "--show-only",
                "templates/networkpolicy.yaml",
            ][..],
            &optional,
        ]
        .concat(),
    );

    let dir = tempfile::tempdir().unwrap();
    let server_file = write(dir.path(), "server.yaml", &server);
    let agent_file = write(dir.path(), "agent.yaml", &agent);
    let network_policy_file = write(dir.path(), "networkpolicy.yaml", &network_policy);

    // Namespaces, and in the other namespace a Secret nobody of ours may read.
    for namespace in [
        SERVER_NAMESPACE,
        AGENT_NAMESPACE,
        ISTIO_NAMESPACE,
        OTHER_NAMESPACE,
    ] {
        tools.admin(&["create", "namespace", namespace], None);
    }
    for namespace in [OTHER_NAMESPACE, ISTIO_NAMESPACE, SERVER_NAMESPACE] {
        tools.admin(
            &[
                "-n",
                namespace,
                "create",
                "secret",
                "generic",
                "decoy",
                "--from-literal=k=v",
            ],
            None,
        );
    }

    // Server-side dry run (admission and strict schema validation, nothing stored), then for real.
    for file in [&server_file, &agent_file, &network_policy_file] {
        let stdout = tools.admin(
            &["apply", "--dry-run=server", "--validate=strict", "-f", file],
            None,
        );
        assert!(
            stdout.contains("(server dry run)"),
            "dry run of {file}: {stdout}"
        );
    }
    // The committed agent manifest (the harness applied its RBAC into istio-system) too.
    tools.admin(
        &[
            "apply",
            "--dry-run=server",
            "--validate=strict",
            "-f",
            RENDERED_AGENT,
        ],
        None,
    );
    assert!(
        !ok(
            &tools.kubectl(
                None,
                &[
                    "get",
                    "deployment",
                    "trustplane",
                    "-n",
                    SERVER_NAMESPACE,
                    "--ignore-not-found"
                ],
                None
            ),
            "get deployment"
        )
        .contains("trustplane"),
        "the dry run stored the server Deployment"
    );
    tools.admin(&["apply", "--validate=strict", "-f", &server_file], None);
    tools.admin(
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd",
            "--all",
        ],
        None,
    );
    tools.admin(&["apply", "--validate=strict", "-f", &agent_file], None);

    // What the apiserver stored: the server Deployment's shape.
    let jsonpath = |namespace: &str, object: &str, path: &str| {
        tools.admin(
            &[
                "get",
                "-n",
                namespace,
                object,
                "-o",
                &format!("jsonpath={path}"),
            ],
            None,
        )
    };
    assert_eq!(
        jsonpath(
            SERVER_NAMESPACE,
            "deployment/trustplane",
            "{.spec.replicas}"
        ),
        "3"
    );
    let args = jsonpath(
        SERVER_NAMESPACE,
        "deployment/trustplane",
        "{.spec.template.spec.containers[0].args}",
    );
    for flag in [
        "--store=kubernetes",
        "--store-namespace=trustplane",
        "--kek-file=/etc/trustplane/kek/kek",
        "--server-name=trustplane.trustplane.svc",
    ] {
        assert!(args.contains(flag), "server args {args} lack {flag}");
    }
    assert_eq!(
        jsonpath(
            SERVER_NAMESPACE,
            "deployment/trustplane",
            "{.spec.template.spec.volumes[?(@.name=='kek')].secret.defaultMode}"
        ),
        "256",
        "the KEK is mounted with mode 0400"
    );
    assert_eq!(
        jsonpath(
            SERVER_NAMESPACE,
            "service/trustplane",
            "{.spec.ports[*].name}={.spec.ports[*].port}"
        ),
        "grpc http-health=8443 9090"
    );
    // The load balancer for other clusters carries gRPC only, never /metrics.
    assert_eq!(
        jsonpath(
            SERVER_NAMESPACE,
            "service/trustplane-external",
            "{.spec.type} {.spec.ports[*].name}={.spec.ports[*].port}"
        ),
        "LoadBalancer grpc=8443"
    );
    assert_eq!(
        jsonpath(SERVER_NAMESPACE, "pdb/trustplane", "{.spec.maxUnavailable}"),
        "1"
    );
    for (namespace, deployment) in [
        (SERVER_NAMESPACE, "deployment/trustplane"),
        (AGENT_NAMESPACE, "deployment/trustplane-agent"),
    ] {
        let security = jsonpath(
            namespace,
            deployment,
            "{.spec.template.spec.securityContext.runAsNonRoot} \
             {.spec.template.spec.securityContext.seccompProfile.type} \
             {.spec.template.spec.containers[0].securityContext.readOnlyRootFilesystem} \
             {.spec.template.spec.containers[0].securityContext.allowPrivilegeEscalation} \
             {.spec.template.spec.containers[0].securityContext.capabilities.drop} \
             {.spec.template.spec.containers[0].livenessProbe.httpGet.path} \
             {.spec.template.spec.containers[0].readinessProbe.httpGet.path}",
        );
        assert_eq!(
            security, r#"true RuntimeDefault true false ["ALL"] /healthz /readyz"#,
            "{deployment}"
        );
    }
    let agent_args = jsonpath(
        AGENT_NAMESPACE,
        "deployment/trustplane-agent",
        "{.spec.template.spec.containers[0].args}",
    );
    for flag in [
        "--namespace=mesh-istio",
        "--identity-secret=trustplane-agent-identity",
        "--leader-elect",
    ] {
        assert!(
            agent_args.contains(flag),
            "agent args {agent_args} lack {flag}"
        );
    }

    // RBAC is read from informer caches: wait until both bindings are in effect.
    let deadline = Instant::now() + RBAC_SETTLE;
    while !(tools.can_i(
        Some(AGENT_SA),
        "get",
        "secrets/cacerts",
        Some(ISTIO_NAMESPACE),
    ) && tools.can_i(Some(SERVER_SA), "get", "secrets", Some(SERVER_NAMESPACE)))
    {
        assert!(
            Instant::now() < deadline,
            "the chart's RoleBindings never took effect"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The agent: its two Secrets and its Lease in the Istio namespace, and create there.
    let mut checks = 0;
    let mut allowed = Vec::new();
    for verb in ["get", "update", "patch"] {
        for object in [
            "secrets/cacerts",
            "secrets/trustplane-agent-identity",
            "leases.coordination.k8s.io/trustplane-agent",
        ] {
            allowed.push((verb, object, Some(ISTIO_NAMESPACE)));
        }
    }
    allowed.push(("create", "secrets", Some(ISTIO_NAMESPACE)));
    allowed.push((
        "create",
        "leases.coordination.k8s.io",
        Some(ISTIO_NAMESPACE),
    ));
    checks += allowed.len();
    for (verb, object, namespace) in &allowed {
        assert!(
            tools.can_i(Some(AGENT_SA), verb, object, *namespace),
            "the agent may not {verb} {object} in {namespace:?}"
        );
    }
    // ... and nothing else: no other Secret by name, no list/watch/delete, no other namespace
    // (not even its own), no cluster-wide access, no other Lease, no trustplane resources.
    let mut denied = vec![
        ("get", "secrets/decoy", Some(ISTIO_NAMESPACE)),
        ("update", "secrets/decoy", Some(ISTIO_NAMESPACE)),
        ("list", "secrets", Some(ISTIO_NAMESPACE)),
        ("watch", "secrets", Some(ISTIO_NAMESPACE)),
        ("delete", "secrets/cacerts", Some(ISTIO_NAMESPACE)),
        (
            "get",
            "leases.coordination.k8s.io/other",
            Some(ISTIO_NAMESPACE),
        ),
        ("list", "leases.coordination.k8s.io", Some(ISTIO_NAMESPACE)),
        (
            "delete",
            "leases.coordination.k8s.io/trustplane-agent",
            Some(ISTIO_NAMESPACE),
        ),
        ("list", "secrets", None),
        ("get", "configmaps", Some(ISTIO_NAMESPACE)),
        (
            "create",
            "trustplaneclusters.trustplane.io",
            Some(ISTIO_NAMESPACE),
        ),
    ];
    for namespace in [
        AGENT_NAMESPACE,
        OTHER_NAMESPACE,
        SERVER_NAMESPACE,
        "istio-system",
    ] {
        for (verb, object) in [
            ("get", "secrets/cacerts"),
            ("get", "secrets/decoy"),
            ("list", "secrets"),
            ("create", "secrets"),
            ("update", "secrets/cacerts"),
            ("create", "leases.coordination.k8s.io"),
        ] {
            denied.push((verb, object, Some(namespace)));
        }
    }
    checks += denied.len();
    for (verb, object, namespace) in &denied {
        assert!(
            !tools.can_i(Some(AGENT_SA), verb, object, *namespace),
            "the agent may {verb} {object} in {namespace:?}"
        );
    }

    // The same with real requests as the agent: write cacerts, then try to read past it.
    let agent_kubectl =
        |args: &[&str], stdin: Option<&str>| tools.kubectl(Some(AGENT_SA), args, stdin);
    ok(
        &agent_kubectl(
            &[
                "-n",
                ISTIO_NAMESPACE,
                "create",
                "secret",
                "generic",
                "cacerts",
                "--from-literal=root-cert.pem=one",
            ],
            None,
        ),
        "the agent creates cacerts",
    );
    ok(
        &agent_kubectl(
            &[
                "-n",
                ISTIO_NAMESPACE,
                "patch",
                "secret",
                "cacerts",
                "--type=merge",
                "-p",
                r#"{"metadata":{"labels":{"app.kubernetes.io/managed-by":"trustplane"}}}"#,
            ],
            None,
        ),
        "the agent patches cacerts",
    );
    let read_back = ok(
        &agent_kubectl(
            &[
                "-n",
                ISTIO_NAMESPACE,
                "get",
                "secret",
                "cacerts",
                "-o",
                "jsonpath={.metadata.labels.app\\.kubernetes\\.io/managed-by}",
            ],
            None,
        ),
        "the agent reads cacerts",
    );
    assert_eq!(read_back, "trustplane");
    forbidden(
        &agent_kubectl(&["-n", ISTIO_NAMESPACE, "get", "secret", "decoy"], None),
        "the agent reads another Secret in the Istio namespace",
    );
    forbidden(
        &agent_kubectl(&["-n", ISTIO_NAMESPACE, "get", "secrets"], None),
        "the agent lists Secrets in the Istio namespace",
    );
    forbidden(
        &agent_kubectl(&["-n", OTHER_NAMESPACE, "get", "secret", "decoy"], None),
        "the agent reads a Secret in another namespace",
    );
    forbidden(
        &agent_kubectl(&["get", "secrets", "--all-namespaces"], None),
        "the agent lists Secrets cluster-wide",
    );
    forbidden(
        &agent_kubectl(
            &["-n", ISTIO_NAMESPACE, "delete", "secret", "cacerts"],
            None,
        ),
        "the agent deletes cacerts",
    );

    // The server: its CustomResources, Secrets and Lease in its own namespace.
    let mut allowed = Vec::new();
    for resource in TRUSTPLANE_RESOURCES {
        for verb in STORE_VERBS {
            allowed.push((verb, resource.to_owned()));
        }
    }
    for verb in SECRET_VERBS {
        allowed.push((verb, "secrets".to_owned()));
    }
    for verb in ["get", "update"] {
        allowed.push((
            verb,
            "leases.coordination.k8s.io/trustplane-leader".to_owned(),
        ));
    }
    allowed.push(("create", "leases.coordination.k8s.io".to_owned()));
    checks += allowed.len();
    for (verb, resource) in &allowed {
        assert!(
            tools.can_i(Some(SERVER_SA), verb, resource, Some(SERVER_NAMESPACE)),
            "the server may not {verb} {resource} in {SERVER_NAMESPACE}"
        );
    }
    // ... and nothing in any other namespace, nothing cluster-wide, nothing else at home.
    let mut denied = vec![
        ("list", "secrets".to_owned(), None),
        ("list", "trustplaneclusters.trustplane.io".to_owned(), None),
        (
            "get",
            "leases.coordination.k8s.io/other".to_owned(),
            Some(SERVER_NAMESPACE),
        ),
        (
            "delete",
            "leases.coordination.k8s.io/trustplane-leader".to_owned(),
            Some(SERVER_NAMESPACE),
        ),
        (
            "patch",
            "leases.coordination.k8s.io/trustplane-leader".to_owned(),
            Some(SERVER_NAMESPACE),
        ),
        ("delete", "secrets".to_owned(), Some(SERVER_NAMESPACE)),
        ("patch", "secrets".to_owned(), Some(SERVER_NAMESPACE)),
        ("watch", "secrets".to_owned(), Some(SERVER_NAMESPACE)),
        (
            "delete",
            "trustplaneclusters.trustplane.io".to_owned(),
            Some(SERVER_NAMESPACE),
        ),
        (
            "patch",
            "trustplaneheads.trustplane.io".to_owned(),
            Some(SERVER_NAMESPACE),
        ),
        (
            "create",
            "deployments.apps".to_owned(),
            Some(SERVER_NAMESPACE),
        ),
        (
            "create",
            "roles.rbac.authorization.k8s.io".to_owned(),
            Some(SERVER_NAMESPACE),
        ),
        (
            "create",
            "customresourcedefinitions.apiextensions.k8s.io".to_owned(),
            None,
        ),
    ];
    for namespace in [OTHER_NAMESPACE, ISTIO_NAMESPACE, "kube-system"] {
        for resource in TRUSTPLANE_RESOURCES.iter().copied().chain(["secrets"]) {
            for verb in ["get", "list", "create", "delete"] {
                denied.push((verb, resource.to_owned(), Some(namespace)));
            }
        }
        denied.push((
            "get",
            "leases.coordination.k8s.io/trustplane-leader".to_owned(),
            Some(namespace),
        ));
    }
    checks += denied.len();
    for (verb, resource, namespace) in &denied {
        assert!(
            !tools.can_i(Some(SERVER_SA), verb, resource, *namespace),
            "the server may {verb} {resource} in {namespace:?}"
        );
    }

    // The same with real requests as the server: a CustomResource at home, none elsewhere.
    let server_kubectl =
        |args: &[&str], stdin: Option<&str>| tools.kubectl(Some(SERVER_SA), args, stdin);
    let cluster_resource = |namespace: &str| {
        format!(
            "apiVersion: trustplane.io/v1alpha1\nkind: TrustplaneCluster\nmetadata:\n  name: east\n  \
             namespace: {namespace}\nspec:\n  key: east\n  seq: 1\n  version: 1\n"
        )
    };
    ok(
        &server_kubectl(
            &["create", "-f", "-"],
            Some(&cluster_resource(SERVER_NAMESPACE)),
        ),
        "the server creates a TrustplaneCluster in its namespace",
    );
    ok(
        &server_kubectl(
            &["-n", SERVER_NAMESPACE, "get", "trustplaneclusters", "east"],
            None,
        ),
        "the server reads it back",
    );
    ok(
        &server_kubectl(&["-n", SERVER_NAMESPACE, "get", "secret", "decoy"], None),
        "the server reads a Secret in its namespace",
    );
    forbidden(
        &server_kubectl(
            &["create", "-f", "-"],
            Some(&cluster_resource(OTHER_NAMESPACE)),
        ),
        "the server creates a TrustplaneCluster in another namespace",
    );
    forbidden(
        &server_kubectl(&["-n", OTHER_NAMESPACE, "get", "secret", "decoy"], None),
        "the server reads a Secret in another namespace",
    );
    forbidden(
        &server_kubectl(&["-n", ISTIO_NAMESPACE, "get", "secret", "cacerts"], None),
        "the server reads cacerts in the Istio namespace",
    );
    forbidden(
        &server_kubectl(&["get", "secrets", "--all-namespaces"], None),
        "the server lists Secrets cluster-wide",
    );

    // No ClusterRoleBinding names either ServiceAccount: whatever ClusterRoles exist, none
    // reaches them (so none grants them Secrets), and the chart created no cluster-wide RBAC.
    let bindings = tools.admin(
        &[
            "get",
            "clusterrolebindings",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name}: {.subjects[*].namespace}/{.subjects[*].name}{\"\\n\"}{end}",
        ],
        None,
    );
    for line in bindings.lines() {
        assert!(
            !line.contains("trustplane"),
            "a ClusterRoleBinding reaches a trustplane ServiceAccount: {line}"
        );
    }
    let labelled = tools.admin(
        &[
            "get",
            "clusterroles,clusterrolebindings",
            "-l",
            "app.kubernetes.io/part-of=trustplane",
            "-o",
            "name",
        ],
        None,
    );
    assert_eq!(labelled.trim(), "", "the chart created cluster-wide RBAC");
    println!(
        "helm chart: lint, dry run, apply, {checks} can-i checks and the real requests passed \
         in {:.2?}",
        started.elapsed()
    );
}

/// The other half of least privilege: the RBAC is enough. The real `trustplane agent` binary,
/// started with the arguments of the rendered Deployment and the token of the rendered
/// ServiceAccount, enrolls and writes cacerts, its identity and its Lease in the Istio
/// namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_runs_on_the_charts_arguments_and_rbac() {
    if skip_e2e() {
        return;
    }
    common::install_crypto();
    let started = Instant::now();
    let (cluster, tools) = start("helm-agent").await;
    let server = common::start_server().await;
    let token = server.add_cluster("east").await;

    for namespace in [AGENT_NAMESPACE, ISTIO_NAMESPACE] {
        tools.admin(&["create", "namespace", namespace], None);
    }
    let agent = helm_template(
        &tools,
        "trustplane-agent",
        AGENT_NAMESPACE,
        &[
            "-f",
            AGENT_VALUES,
            "--set",
            &format!("istioNamespace={ISTIO_NAMESPACE}"),
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let agent_file = write(dir.path(), "agent.yaml", &agent);
    tools.admin(&["apply", "--validate=strict", "-f", &agent_file], None);
    let rendered: Vec<String> = serde_json::from_str(&tools.admin(
        &[
            "get",
            "-n",
            AGENT_NAMESPACE,
            "deployment/trustplane-agent",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].args}",
        ],
        None,
    ))
    .unwrap();
    // The pod's files and port, here: the control-plane CA from the ConfigMap's path, the
    // health listener on loopback.
    let server_ca = write(dir.path(), "ca.pem", &server.control_plane_ca_pem);
    let args: Vec<String> = rendered
        .iter()
        .map(|arg| {
            if arg.starts_with("--server-ca=") {
                format!("--server-ca={server_ca}")
            } else if arg.starts_with("--health-listen=") {
                "--health-listen=127.0.0.1:0".to_owned()
            } else {
                arg.clone()
            }
        })
        .collect();
    assert!(args.contains(&"--leader-elect".to_owned()), "{args:?}");
    // The ServiceAccount's own token (TokenRequest), as the pod would mount it.
    let kubeconfig = cluster
        .agent_kubeconfig_path(AGENT_NAMESPACE)
        .await
        .unwrap();
    let log_path = dir.path().join("agent.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut agent = Guard(
        Command::new(BINARY)
            .args(&args)
            .env("TRUSTPLANE_KUBECONFIG", &kubeconfig)
            .env("TRUSTPLANE_SERVER", server.url())
            .env("TRUSTPLANE_JOIN_TOKEN", &token)
            .env("TRUSTPLANE_LEASE_HOLDER", "trustplane-agent-pod-a")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );

    // All four cacerts keys, the identity and the Lease, written by the agent alone.
    let deadline = Instant::now() + Duration::from_secs(60);
    let expected = "ca-cert.pem ca-key.pem cert-chain.pem root-cert.pem";
    loop {
        let keys = tools.kubectl(
            None,
            &[
                "get",
                "-n",
                ISTIO_NAMESPACE,
                "secret",
                "cacerts",
                "-o",
                "go-template={{range $key, $_ := .data}}{{$key}} {{end}}",
            ],
            None,
        );
        if String::from_utf8_lossy(&keys.stdout).trim() == expected {
            break;
        }
        if let Some(status) = agent.0.try_wait().unwrap() {
            panic!(
                "the agent exited ({status}) before writing cacerts; its log:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "the agent wrote no complete cacerts in {ISTIO_NAMESPACE} within 60 s; its log:\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let identity = tools.admin(
        &[
            "get",
            "-n",
            ISTIO_NAMESPACE,
            "secret",
            "trustplane-agent-identity",
            "-o",
            "go-template={{index .data \"cluster\" | base64decode}}",
        ],
        None,
    );
    assert_eq!(identity, "east");
    let holder = tools.admin(
        &[
            "get",
            "-n",
            ISTIO_NAMESPACE,
            "lease",
            "trustplane-agent",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ],
        None,
    );
    assert!(
        holder.starts_with("trustplane-agent-pod-a"),
        "Lease holder {holder}"
    );
    // Nothing outside the Istio namespace: the agent's own namespace holds no Secret.
    let own = tools.admin(
        &["get", "-n", AGENT_NAMESPACE, "secrets", "-o", "name"],
        None,
    );
    assert_eq!(own.trim(), "", "the agent wrote into its own namespace");
    println!(
        "the agent enrolled and wrote {ISTIO_NAMESPACE}/cacerts with the chart's RBAC in {:.2?}",
        started.elapsed()
    );
}

/// The server's ServiceAccount (and Role, RoleBinding) in `SERVER_NAMESPACE`, as rendered.
const SERVER_SERVICE_ACCOUNT: &str = "trustplane";
/// How long the server may take to start, get ready, lead, or fail.
const SERVER_WAIT: Duration = Duration::from_secs(60);

/// The documents of a rendered multi-document manifest whose top-level `kind:` is one of
/// `wanted`, joined again into one manifest.
fn documents_of(manifest: &str, wanted: &[&str]) -> String {
    let mut documents = vec![String::new()];
    for line in manifest.lines() {
        if line == "---" {
            documents.push(String::new());
        } else if let Some(document) = documents.last_mut() {
            document.push_str(line);
            document.push('\n');
        }
    }
    documents
        .into_iter()
        .filter(|document| {
            document
                .lines()
                .filter_map(|line| line.strip_prefix("kind: "))
                .any(|kind| wanted.contains(&kind.trim()))
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

/// `GET path` over HTTP/1.1: the status code and body, or None while nothing answers.
fn http_get(address: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(address).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_owned()))
}

/// A `trustplane server` process started with the chart's arguments.
struct ChartServer {
    process: Guard,
    /// Its gRPC URL (`https://127.0.0.1:PORT`).
    url: String,
    /// Its `--health-listen` address (`127.0.0.1:PORT`).
    health: String,
    log: PathBuf,
}

impl ChartServer {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls `path` on the health listener until `check` accepts the answer; panics with the
    /// last answer and the server's log after `SERVER_WAIT`.
    async fn wait_for(&mut self, path: &str, what: &str, check: impl Fn(u16, &str) -> bool) {
        let deadline = Instant::now() + SERVER_WAIT;
        loop {
            let answer = http_get(&self.health, path);
            if let Some((code, body)) = &answer
                && check(*code, body)
            {
                return;
            }
            if let Some(status) = self.process.0.try_wait().unwrap() {
                panic!("the server exited ({status}); its log:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "{path}: {what} not seen within {SERVER_WAIT:?}; last answer {answer:?}; the \
                 server's log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A server that never listened.
#[derive(Debug)]
struct Refused {
    /// How it exited; None if it stayed silent for `SERVER_WAIT` (then it was killed).
    exited: Option<std::process::ExitStatus>,
    stdout: String,
    log: String,
}

/// Starts the real binary with `args` and `env`, its stderr (the log) in `log`. Ok once it
/// printed its health address and its gRPC URL; Err if it exits before, or prints neither
/// within `SERVER_WAIT`.
fn spawn_chart_server(
    args: &[String],
    env: &[(String, String)],
    log: &Path,
) -> Result<ChartServer, Refused> {
    use std::io::{BufRead as _, BufReader};
    let mut child = Command::new(BINARY)
        .args(args)
        .env_remove("TRUSTPLANE_KEK")
        .envs(env.iter().map(|(name, value)| (name, value)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines, received) = std::sync::mpsc::channel();
    // Reads stdout to its end, so the server never blocks on a full pipe.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                // Nobody listens any more: keep draining.
            }
        }
    });
    let mut process = Guard(child);
    let deadline = Instant::now() + SERVER_WAIT;
    let mut printed = Vec::new();
    let mut health = None;
    loop {
        let line = match received.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => line,
            Err(waited) => {
                // Its stdout closed (it exits) or it stayed silent (then it is killed).
                let silent = waited == std::sync::mpsc::RecvTimeoutError::Timeout;
                if silent {
                    let _ = process.0.kill();
                }
                let status = process.0.wait().unwrap();
                return Err(Refused {
                    exited: (!silent).then_some(status),
                    stdout: printed.join("\n"),
                    log: std::fs::read_to_string(log).unwrap_or_default(),
                });
            }
        };
        if let Some(address) =
            line.strip_prefix("serving /healthz, /readyz and /metrics on http://")
        {
            health = Some(address.trim().to_owned());
        }
        let url = line
            .split_whitespace()
            .find(|word| word.starts_with("https://"))
            .map(str::to_owned);
        printed.push(line);
        if let Some(url) = url {
            let health = health.unwrap_or_else(|| {
                panic!(
                    "the server printed its URL but no health address: {}",
                    printed.join("\n")
                )
            });
            return Ok(ChartServer {
                process,
                url,
                health,
                log: log.to_owned(),
            });
        }
    }
}

/// The other half of least privilege for the server: the real `trustplane server` binary,
/// started with the arguments and environment of the rendered Deployment (only the pod's
/// paths and addresses replaced) and the token of the rendered ServiceAccount, keeps its state
/// in the hub cluster with the rendered Role: ready, leading, serving /metrics, enrolling an
/// agent, and never refused. With the Role's Secrets rule cut it fails, naming what is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_runs_on_the_charts_arguments_and_rbac() {
    if skip_e2e() {
        return;
    }
    common::install_crypto();
    let started = Instant::now();
    let (cluster, tools) = start("helm-server").await;
    tools.admin(&["create", "namespace", SERVER_NAMESPACE], None);

    // The server role of the chart as deploy/render.sh renders it; applied: the CRDs and the
    // RBAC. Not the Deployment (no kubelet here): its container is started below by hand.
    let server = helm_template(
        &tools,
        "trustplane",
        SERVER_NAMESPACE,
        &["-f", SERVER_VALUES, "--include-crds"],
    );
    let dir = tempfile::tempdir().unwrap();
    let applied = documents_of(
        &server,
        &[
            "CustomResourceDefinition",
            "ServiceAccount",
            "Role",
            "RoleBinding",
        ],
    );
    assert_eq!(
        kinds(&applied).len(),
        TRUSTPLANE_RESOURCES.len() + 3,
        "{:?}",
        kinds(&applied)
    );
    let applied_file = write(dir.path(), "server-rbac.yaml", &applied);
    tools.admin(&["apply", "--validate=strict", "-f", &applied_file], None);
    tools.admin(
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd",
            "--all",
        ],
        None,
    );
    let deadline = Instant::now() + RBAC_SETTLE;
    while !tools.can_i(
        Some(SERVER_SA),
        "create",
        "trustplaneheads.trustplane.io",
        Some(SERVER_NAMESPACE),
    ) {
        assert!(
            Instant::now() < deadline,
            "the server's RoleBinding did not take effect within {RBAC_SETTLE:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The Deployment's container, as rendered: its arguments and environment.
    let deployment = documents_of(&server, &["Deployment"]);
    let deployment: serde_json::Value = serde_yaml_ng::from_str(&deployment).unwrap();
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        deployment["spec"]["template"]["spec"]["serviceAccountName"],
        SERVER_SERVICE_ACCOUNT
    );
    let rendered: Vec<String> = serde_json::from_value(container["args"].clone()).unwrap();
    let env: Vec<(String, String)> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|variable| {
            (
                variable["name"].as_str().unwrap().to_owned(),
                variable["value"].as_str().unwrap().to_owned(),
            )
        })
        .collect();

    // The ServiceAccount's own token (TokenRequest), as the pod would mount it.
    let kubeconfig = cluster
        .service_account_kubeconfig_path(SERVER_NAMESPACE, SERVER_SERVICE_ACCOUNT)
        .await
        .unwrap();
    let kubeconfig = kubeconfig.to_str().unwrap();

    // `init`, as the server's ServiceAccount: the Role is enough for it too (it creates the
    // objects, the sealed Secrets, nothing else). The KEK file it writes is what an admin puts
    // into the Secret trustplane-kek; the admin's credential and the control-plane CA stay in
    // its data directory.
    let admin_dir = dir.path().join("admin");
    let admin_kek = dir.path().join("admin-kek");
    let init = run(Command::new(BINARY).env_remove("TRUSTPLANE_KEK").args([
        "init",
        "--store",
        "kubernetes",
        "--kubeconfig",
        kubeconfig,
        "--store-namespace",
        SERVER_NAMESPACE,
        "--trust-domain",
        "cluster.local",
        "--data-dir",
        admin_dir.to_str().unwrap(),
        "--kek-file",
        admin_kek.to_str().unwrap(),
    ]));
    let init_output = ok(&init, "trustplane init as the server's ServiceAccount");
    assert!(
        init_output.contains(&format!("Kubernetes namespace {SERVER_NAMESPACE}")),
        "{init_output}"
    );

    // The pod's files and ports, here: the KEK as the Secret volume mounts it (mode 0400), the
    // data directory (an emptyDir), loopback listeners on free ports.
    let kek_dir = dir.path().join("kek");
    std::fs::create_dir(&kek_dir).unwrap();
    let data_dir = dir.path().join("data");
    std::fs::create_dir(&data_dir).unwrap();
    let kek_name = rendered
        .iter()
        .find_map(|arg| arg.strip_prefix("--kek-file=/etc/trustplane/kek/"))
        .unwrap_or_else(|| panic!("no --kek-file under the KEK volume in {rendered:?}"));
    let kek_file = kek_dir.join(kek_name);
    std::fs::copy(&admin_kek, &kek_file).unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&kek_file, std::fs::Permissions::from_mode(0o400)).unwrap();
    }
    let mut replaced = 0;
    let mut args: Vec<String> = rendered
        .iter()
        .map(|arg| {
            let (flag, _) = arg.split_once('=').unwrap_or((arg, ""));
            let here = match flag {
                "--data-dir" => format!("--data-dir={}", data_dir.display()),
                "--listen" => "--listen=127.0.0.1:0".to_owned(),
                "--health-listen" => "--health-listen=127.0.0.1:0".to_owned(),
                "--kek-file" => format!("--kek-file={}", kek_file.display()),
                _ => return arg.clone(),
            };
            replaced += 1;
            here
        })
        .collect();
    assert_eq!(replaced, 4, "paths and addresses in {rendered:?}");
    for flag in [
        "server",
        "--store=kubernetes",
        &format!("--store-namespace={SERVER_NAMESPACE}"),
    ] {
        assert!(args.iter().any(|arg| arg == flag), "{flag} not in {args:?}");
    }
    // In the pod the in-cluster config; here the same ServiceAccount's token in a kubeconfig.
    args.push(format!("--kubeconfig={kubeconfig}"));

    let log = dir.path().join("server.log");
    let mut server = spawn_chart_server(&args, &env, &log).unwrap_or_else(|refused| {
        panic!("the server did not start with the chart's RBAC: {refused:#?}")
    });
    server
        .wait_for("/readyz", "200", |code, _| code == 200)
        .await;
    server
        .wait_for("/metrics", "trustplane_server_leader 1", |code, body| {
            code == 200
                && body
                    .lines()
                    .any(|line| line == "trustplane_server_leader 1")
        })
        .await;
    let holder = tools.admin(
        &[
            "get",
            "-n",
            SERVER_NAMESPACE,
            "lease",
            "trustplane-leader",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ],
        None,
    );
    assert!(
        holder.starts_with(&server.process.0.id().to_string()),
        "Lease holder {holder}, server pid {}",
        server.process.0.id()
    );

    // An admin registers a cluster through it; a real agent (directory sink) enrolls and
    // writes cacerts.
    let admin_dir_arg = admin_dir.to_str().unwrap();
    let added = ok(
        &run(Command::new(BINARY).env_remove("TRUSTPLANE_KEK").args([
            "cluster",
            "add",
            "east",
            "--server",
            &server.url,
            "--data-dir",
            admin_dir_arg,
            "-o",
            "json",
        ])),
        "trustplane cluster add east",
    );
    let added: serde_json::Value = serde_json::from_str(&added).unwrap();
    let token = added["join_token"].as_str().unwrap().to_owned();
    let server_ca = trustplane::server::DataDir::new(admin_dir.clone()).control_plane_ca_path();
    let identity = dir.path().join("identity");
    let cacerts = dir.path().join("cacerts");
    let agent_log = dir.path().join("agent.log");
    let agent_log_file = std::fs::File::create(&agent_log).unwrap();
    let mut agent = Guard(
        Command::new(BINARY)
            .args(["agent", "--server", &server.url, "--server-ca"])
            .arg(&server_ca)
            .arg("--join-token")
            .arg(&token)
            .arg("--identity-dir")
            .arg(&identity)
            .arg("--cacerts-dir")
            .arg(&cacerts)
            .stdin(Stdio::null())
            .stdout(agent_log_file.try_clone().unwrap())
            .stderr(agent_log_file)
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + SERVER_WAIT;
    let expected = [
        "ca-cert.pem",
        "ca-key.pem",
        "cert-chain.pem",
        "root-cert.pem",
    ];
    while !expected.iter().all(|name| cacerts.join(name).is_file()) {
        if let Some(status) = agent.0.try_wait().unwrap() {
            panic!(
                "the agent exited ({status}) before writing cacerts; its log:\n{}\nthe \
                 server's:\n{}",
                std::fs::read_to_string(&agent_log).unwrap_or_default(),
                server.log()
            );
        }
        assert!(
            Instant::now() < deadline,
            "the agent wrote no complete cacerts within {SERVER_WAIT:?}; its log:\n{}\nthe \
             server's:\n{}",
            std::fs::read_to_string(&agent_log).unwrap_or_default(),
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(agent);
    // The state is in the hub cluster, where the Role put it: the cluster, its issued
    // intermediate, the sealed key material; nothing in the pod's data directory.
    let clusters = tools.admin(
        &[
            "get",
            "-n",
            SERVER_NAMESPACE,
            "trustplaneclusters",
            "-o",
            "jsonpath={.items[*].spec.key}",
        ],
        None,
    );
    assert!(
        clusters.split_whitespace().any(|key| key == "east"),
        "TrustplaneClusters: {clusters}"
    );
    let certificates = tools.admin(
        &[
            "get",
            "-n",
            SERVER_NAMESPACE,
            "trustplanecertificates",
            "-o",
            "name",
        ],
        None,
    );
    assert!(!certificates.trim().is_empty(), "no TrustplaneCertificate");
    let sealed = tools.admin(
        &[
            "get",
            "-n",
            SERVER_NAMESPACE,
            "secrets",
            "-l",
            "app.kubernetes.io/managed-by=trustplane",
            "-o",
            "name",
        ],
        None,
    );
    assert!(!sealed.trim().is_empty(), "no sealed Secret");
    assert!(
        !trustplane::server::DataDir::new(data_dir.clone())
            .store_path()
            .exists(),
        "the server kept an embedded store in its data directory"
    );
    // ... and the apiserver never refused it anything.
    let server_log = server.log();
    assert!(
        !server_log.to_lowercase().contains("forbid"),
        "the server was refused something:\n{server_log}"
    );
    drop(server);

    // Cut the Role: without its Secrets rule the server cannot read its sealed key material,
    // and says which verb on which resource it was refused, and where.
    assert_eq!(
        tools.admin(
            &[
                "get",
                "-n",
                SERVER_NAMESPACE,
                "role",
                SERVER_SERVICE_ACCOUNT,
                "-o",
                "jsonpath={.rules[1].resources}",
            ],
            None,
        ),
        r#"["secrets"]"#
    );
    tools.admin(
        &[
            "patch",
            "-n",
            SERVER_NAMESPACE,
            "role",
            SERVER_SERVICE_ACCOUNT,
            "--type=json",
            "-p",
            r#"[{"op":"remove","path":"/rules/1"}]"#,
        ],
        None,
    );
    let deadline = Instant::now() + RBAC_SETTLE;
    while tools.can_i(Some(SERVER_SA), "get", "secrets", Some(SERVER_NAMESPACE)) {
        assert!(
            Instant::now() < deadline,
            "the cut Role did not take effect within {RBAC_SETTLE:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let refused = refused_server(&args, &env, &dir.path().join("server-no-secrets.log"));
    for part in [
        &format!("forbids get secrets in namespace {SERVER_NAMESPACE}"),
        // The apiserver's own words, as the JSON log (the chart's TRUSTPLANE_LOG_FORMAT) quotes them.
        &format!(
            r#"cannot get resource \"secrets\" in API group \"\" in the namespace \"{SERVER_NAMESPACE}\""#
        ),
        &format!("give the server's ServiceAccount a Role in {SERVER_NAMESPACE} allowing"),
        "get, list, create and update on secrets",
    ] {
        assert!(
            refused.contains(part),
            "{part:?} not in the refusal:\n{refused}"
        );
    }

    // Without the RoleBinding (the ServiceAccount has no rights at all) it fails at its first
    // call, naming that call (an error, not a panic: exit status 1, not 101).
    tools.admin(
        &[
            "delete",
            "-n",
            SERVER_NAMESPACE,
            "rolebinding",
            SERVER_SERVICE_ACCOUNT,
        ],
        None,
    );
    let deadline = Instant::now() + RBAC_SETTLE;
    while tools.can_i(
        Some(SERVER_SA),
        "get",
        "trustplaneheads.trustplane.io",
        Some(SERVER_NAMESPACE),
    ) {
        assert!(
            Instant::now() < deadline,
            "the deleted RoleBinding still took effect after {RBAC_SETTLE:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let unbound = refused_server(&args, &env, &dir.path().join("server-unbound.log"));
    for part in [
        &format!("forbids list trustplaneheads in namespace {SERVER_NAMESPACE}"),
        &format!(r#"User \"{SERVER_SA}\" cannot list resource \"trustplaneheads\""#),
    ] {
        assert!(
            unbound.contains(part),
            "{part:?} not in the refusal:\n{unbound}"
        );
    }
    println!(
        "the server ran on the chart's arguments and RBAC (ready, leader, an agent enrolled), \
         and failed without its Secrets rule and without its RoleBinding, in {:.2?}",
        started.elapsed()
    );
}

/// The server started with `args` must exit with an error (status 1: not hang, not listen,
/// not panic); its stdout and log.
fn refused_server(args: &[String], env: &[(String, String)], log: &Path) -> String {
    match spawn_chart_server(args, env, log) {
        Ok(mut running) => panic!(
            "the server started with the cut RBAC (running: {}); its log:\n{}",
            running.process.0.try_wait().unwrap().is_none(),
            running.log()
        ),
        Err(Refused {
            exited: Some(status),
            stdout,
            log,
        }) if status.code() == Some(1) && !log.contains("panicked") => {
            println!("refused as expected ({status}):\n{log}");
            format!("{stdout}\n{log}")
        }
        Err(refused) => panic!("the server did not fail with an error: {refused:#?}"),
    }
}
