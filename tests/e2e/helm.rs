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
//! rendered arguments and ServiceAccount, does its work with that RBAC. helm
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
