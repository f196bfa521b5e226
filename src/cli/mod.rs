//! The `trustplane` command line: clap commands, table or JSON output,
//! progress for long work. `anyhow` is used here and in `main` only.
//!
//! This file is the table of contents: the [`Cli`] and [`Command`]
//! definitions and the dispatch in [`run`]. Each command lives in its own
//! file:
//!
//! - `data_dir.rs`: `init`, `server` and `issue`, which open the data
//!   directory themselves.
//! - `agent.rs`: `agent`.
//! - `cluster.rs`: `cluster add|list|reissue|remove` and `status`.
//! - `bundle.rs`: `bundle show`.
//! - `cacerts.rs`: reading a cacerts directory and `verify`.
//! - `rotate.rs`: `rotate plan|start|status|advance|abort`, and
//!   `rotate_output.rs`: the rotation status, plan and progress they print.
//! - `audit.rs`: `audit`.
//! - `admin.rs`: `admin add|revoke|list` (offline).
//! - `demo.rs`: `demo`.
//! - `bench/`: `bench floor|sign|openbao|watch`, the load generators of
//!   `benches/run.sh`.
//! - `limits.rs`: `server`'s limit flags.
//!
//! and what they share:
//!
//! - `client.rs`: connecting to the server as admin, gRPC errors.
//! - `options.rs`: flags several commands share.
//! - `output.rs`: tables, JSON and time formatting.
//! - `signal.rs`: waiting for Ctrl-C or SIGTERM.

mod admin;
mod agent;
mod audit;
mod bench;
mod bundle;
mod cacerts;
mod client;
mod cluster;
mod data_dir;
mod demo;
mod limits;
mod options;
mod output;
mod rotate;
mod rotate_output;
mod signal;

use clap::{Parser, Subcommand};

pub use admin::{AdminCommand, OfflineStore};
pub use agent::{AgentArgs, AgentSink};
pub use audit::AuditArgs;
pub use bench::BenchCommand;
pub use bundle::{BundleCommand, BundleFormat};
pub use cacerts::{VerifyArgs, read_cacerts_dir};
pub use client::{AdminConnection, connect, status_error};
pub use cluster::{ClusterCommand, StatusArgs};
pub use data_dir::{InitArgs, IssueArgs, ServerArgs, open_authority};
pub use limits::LimitsOptions;
pub use options::{
    DEFAULT_DATA_DIR, DEFAULT_SERVER_URL, DataDirOption, KekOption, MissingKek, PolicyOption,
    ServerCaOption, ServerOption, load_policy,
};
pub use output::Format;
pub use rotate::{RotateCommand, RotationFlags};
pub use signal::shutdown_signal;

/// trustplane: a CA and trust-bundle service for Istio multicluster meshes.
///
/// One central server issues each cluster its own intermediate CA and
/// publishes the mesh's trust bundle; an agent per cluster keeps Istio's
/// `cacerts` current.
#[derive(Debug, Parser)]
#[command(name = "trustplane", version, about, long_about = None)]
#[command(
    after_help = "Quick start:\n  trustplane demo                 # everything end to end, in one process\n  trustplane init --trust-domain cluster.local\n  trustplane server &\n  trustplane cluster add east"
)]
pub struct Cli {
    /// Log level [default: info; warn for `demo`] (RUST_LOG overrides).
    #[arg(long, global = true, env = "TRUSTPLANE_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Log lines on stderr: `text`, or `json` (one object per line: timestamp, level, target, message and the event's fields).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t,
        env = "TRUSTPLANE_LOG_FORMAT"
    )]
    pub log_format: crate::telemetry::LogFormat,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Every command.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the mesh root (or import one), the control-plane CA and the admin credential.
    #[command(
        after_help = "Examples:\n  trustplane init --trust-domain cluster.local\n  trustplane init --trust-domain cluster.local --key-algorithm ecdsa-p384 --root-validity 20y\n  trustplane init --trust-domain cluster.local --import-root root-cert.pem --import-key root-key.pem\n  # the KEK outside the data directory (lookup order: --kek-file, TRUSTPLANE_KEK, <data-dir>/kek)\n  trustplane init --trust-domain cluster.local --kek-file /secure/trustplane-kek\n  # the mesh root in Vault/OpenBao PKI: generate an issuer there (the key never leaves Vault), or adopt one\n  VAULT_ADDR=https://vault:8200 VAULT_TOKEN=... trustplane init --trust-domain cluster.local --signer vault\n  trustplane init --trust-domain cluster.local --signer vault --vault-pki-mount pki --vault-issuer mesh-root\n  # the Vault settings from a YAML file whose keys are the flag names (vault-addr: ..., vault-token: ..., vault-pki-mount: pki); chmod 600 when it holds a token\n  trustplane init --trust-domain cluster.local --signer vault --vault-config /etc/trustplane/vault.yaml\n  # the state in Vault KV v2 (secret/data/trustplane/...), shared by several servers\n  VAULT_ADDR=https://vault:8200 VAULT_TOKEN=... trustplane init --trust-domain cluster.local --store vault-kv --kek-file /secure/trustplane-kek\n  # the state in the hub cluster's namespace trustplane (custom resources and Secrets), shared by several servers\n  trustplane init --trust-domain cluster.local --store kubernetes --kubeconfig hub.yaml --store-namespace trustplane --kek-file /secure/trustplane-kek"
    )]
    Init(InitArgs),
    /// Run the central server (gRPC over TLS).
    #[command(
        after_help = "Examples:\n  trustplane server --data-dir trustplane-data --listen 0.0.0.0:8443 --server-name trustplane.example.com\n  # the KEK from a secret manager (lookup order: --kek-file, TRUSTPLANE_KEK, <data-dir>/kek)\n  TRUSTPLANE_KEK=\"$(cat /secure/trustplane-kek)\" trustplane server --data-dir trustplane-data\n  # tighter limits (README, \"Limits\", sizes the defaults for 10 000 clusters)\n  trustplane server --tls-handshake-timeout 5s --max-unauthenticated-connections 200 --report-status-per-minute 10\n  # the mesh root in Vault (init --signer vault), AppRole login, readiness follows Vault\n  VAULT_ADDR=https://vault:8200 VAULT_CACERT=vault-ca.pem VAULT_ROLE_ID=... VAULT_SECRET_ID=... \\\n      trustplane server --data-dir trustplane-data --health-listen 0.0.0.0:8080\n  # the Vault settings from a file (keys = flag names); a flag or variable given too overrides it\n  trustplane server --data-dir trustplane-data --vault-config /etc/trustplane/vault.yaml\n  # one of several servers sharing their state in Vault KV v2 (README, \"Store vault-kv and several servers\")\n  VAULT_ADDR=https://vault:8200 VAULT_TOKEN=... trustplane server --store vault-kv --vault-kv-prefix trustplane --kek-file /secure/trustplane-kek\n  # one of several replicas keeping their state in the hub cluster (CRDs from `trustplane admin crds`)\n  trustplane server --store kubernetes --store-namespace trustplane --kek-file /secure/trustplane-kek --leader-lease 15s"
    )]
    Server(ServerArgs),
    /// Run a cluster agent that keeps Istio's cacerts (Secret or directory) current.
    #[command(
        after_help = "Examples:\n  # in a pod: keep the Secret istio-system/cacerts current; identity in the Secret --identity-secret names\n  trustplane agent --server https://trustplane.example.com:8443 --server-ca control-plane-ca.pem \\\n      --join-token tp1.east.XXXX --identity-secret trustplane-agent-identity --leader-elect --health-listen 0.0.0.0:8080\n  # Deckhouse: another namespace, kubernetes.io/tls form, take over an existing cacerts Secret\n  trustplane agent --namespace d8-istio --secret-format tls --adopt-existing \\\n      --kubeconfig ~/.kube/east\n  # outside Kubernetes: enroll with the token from `trustplane cluster add east`, write a directory\n  trustplane agent --server https://trustplane.example.com:8443 --server-ca control-plane-ca.pem \\\n      --join-token tp1.east.XXXX --identity-dir /var/lib/trustplane --cacerts-dir /etc/cacerts\n  # later starts reuse the saved identity\n  trustplane agent --identity-dir /var/lib/trustplane --cacerts-dir /etc/cacerts\n  # several server replicas: talk to one, fail over to the next when it is unreachable\n  trustplane agent --server https://tp-0.example.com:8443,https://tp-1.example.com:8443 --server-ca control-plane-ca.pem \\\n      --join-token tp1.east.XXXX"
    )]
    Agent(AgentArgs),
    /// Manage clusters (admin).
    #[command(
        subcommand,
        after_help = "Examples:\n  trustplane cluster add east      # prints the join token and the agent's setup\n  trustplane cluster list\n  trustplane cluster reissue east\n  trustplane cluster remove east"
    )]
    Cluster(ClusterCommand),
    /// Show server status: bundle, signing root, clusters (admin).
    #[command(after_help = "Examples:\n  trustplane status\n  trustplane status -o json")]
    Status(StatusArgs),
    /// Trust bundle commands.
    #[command(
        subcommand,
        after_help = "Examples:\n  trustplane bundle show\n  trustplane bundle show -o pem > root-cert.pem"
    )]
    Bundle(BundleCommand),
    /// Rotate the mesh root without a moment of broken trust: plan, start, status, advance, abort (admin).
    #[command(
        subcommand,
        after_help = "Phases: stable {A} -> trust-new {A,B} -> sign-new (B signs; grace) -> retire-old {B} -> stable.\nEach step waits until every enrolled, non-excluded cluster has acknowledged it.\n\nExamples:\n  trustplane rotate plan\n  trustplane rotate start\n  trustplane rotate status\n  trustplane rotate advance --wait                 # trust-new -> sign-new\n  trustplane rotate advance --wait --timeout 30h   # sign-new -> retire-old, after the grace (24h)\n  trustplane rotate advance --wait                 # retire-old -> stable\n  trustplane rotate abort"
    )]
    Rotate(RotateCommand),
    /// Named admin credentials with roles: add, revoke, list (offline: data directory and KEK, server stopped).
    #[command(
        subcommand,
        after_help = "Examples:\n  trustplane admin add alice --role operator\n  # a store in the hub cluster (--store kubernetes): the same commands, with where it is\n  trustplane admin add bob --role auditor --store kubernetes --kubeconfig hub.yaml --store-namespace trustplane\n  # the CRDs of --store kubernetes, to apply before `init`\n  trustplane admin crds | kubectl apply --server-side -f -\n  trustplane admin list\n  trustplane admin revoke alice"
    )]
    Admin(AdminCommand),
    /// Show the audit trail: every state change and refused admin call, with its actor (admin); `audit verify` checks its hash chain offline.
    #[command(
        after_help = "Examples:\n  trustplane audit\n  trustplane audit --since 24h --action rotate\n  trustplane audit --since 2026-12-01T00:00:00Z --limit 200 -o json\n  trustplane audit verify --data-dir trustplane-data   # offline, server stopped"
    )]
    Audit(AuditArgs),
    /// Offline: generate a cluster's key and sign its cacerts files locally (server must be stopped).
    #[command(
        after_help = "Examples (replaces Istio's tools/certs Makefiles):\n  trustplane issue --cluster east --out east/\n  kubectl create secret generic cacerts -n istio-system --from-file=east/\n  trustplane issue --cluster west --out west/ -o json"
    )]
    Issue(IssueArgs),
    /// Check a cacerts directory the way istiod loads it.
    #[command(
        after_help = "Examples:\n  trustplane verify /etc/cacerts\n  trustplane verify east/ -o json"
    )]
    Verify(VerifyArgs),
    /// Run the whole flow in one process: server, two clusters, two agents, cross-cluster trust check.
    #[command(
        after_help = "Examples:\n  trustplane demo\n  trustplane demo --keep-running --dir /tmp/trustplane-demo"
    )]
    Demo(demo::DemoArgs),
    /// Load generators for benches/run.sh: crypto floor, issuance, OpenBao baseline, bundle fan-out (JSON on stdout).
    #[command(
        subcommand,
        after_help = "Examples:\n  benches/run.sh                  # every benchmark, writes BENCHMARKS.md\n  trustplane bench floor --threads 2\n  trustplane bench sign --data-dir trustplane-data --callers 16"
    )]
    Bench(BenchCommand),
}

/// Parses the command line and runs the command.
pub async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let default_level = match cli.command {
        // The demo's own step output is the story; logs only for problems.
        Command::Demo(_) => "warn",
        // A load generator's logs cost the CPU it shares with the server;
        // vaultrs warns on every OpenBao answer that carries warnings.
        Command::Bench(_) => "warn,vaultrs=error",
        _ => "info",
    };
    crate::telemetry::init(
        cli.log_level.as_deref().unwrap_or(default_level),
        cli.log_format,
    );
    for (old, new) in crate::config::renamed_variables_in_use() {
        tracing::warn!("{old} is set but no longer read: set {new} instead");
    }
    run(cli.command).await
}

/// Runs one command.
pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Init(args) => data_dir::init(args).await,
        Command::Server(args) => data_dir::serve(args).await,
        Command::Agent(args) => agent::run(args).await,
        Command::Cluster(command) => cluster::run(command).await,
        Command::Status(args) => cluster::status(args).await,
        Command::Bundle(BundleCommand::Show { output, connection }) => {
            bundle::show(output, connection).await
        }
        Command::Rotate(command) => rotate::run(command).await,
        Command::Audit(args) => audit::run(args).await,
        Command::Admin(command) => admin::run(command).await,
        Command::Issue(args) => data_dir::issue(args).await,
        Command::Verify(args) => cacerts::verify(args).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Bench(command) => bench::run(command).await,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use clap::CommandFactory as _;

    use super::Cli;

    /// Flags whose name recurs with another meaning in one-shot commands,
    /// which deliberately read no environment variable there: the agent's
    /// `--key-algorithm`, `--kubeconfig`, `--namespace` and `--secret-format`
    /// describe its own cluster; `init`, `issue`, `rotate` and `cluster add`
    /// use the same names for a root, an offline issue or a push-mode cluster.
    const ENVIRONMENT_ONLY_IN_DAEMONS: &[&str] =
        &["key-algorithm", "kubeconfig", "namespace", "secret-format"];

    /// Flags whose default differs by command because the setting does:
    /// `demo --timeout` waits for agents, `rotate advance --timeout` for a
    /// gate; `bench sign --prefix` and `bench watch --prefix` name their
    /// clusters apart so that both can run against one server.
    const DEFAULT_PER_COMMAND: &[&str] = &["timeout", "prefix"];

    /// Flags that read the variable Vault's own CLI reads (`--vault-addr`
    /// ⇔ `VAULT_ADDR`), so an operator's Vault environment works as is.
    const CONVENTIONAL_VAULT_VARIABLES: &[&str] = &[
        "vault-addr",
        "vault-token",
        "vault-cacert",
        "vault-namespace",
        "vault-role-id",
        "vault-secret-id",
    ];

    /// One occurrence of a long flag: command path, environment variable, default.
    struct Occurrence {
        command: String,
        environment: Option<String>,
        default: Vec<String>,
    }

    fn collect(command: &clap::Command, path: &str, flags: &mut BTreeMap<String, Vec<Occurrence>>) {
        for argument in command.get_arguments() {
            let Some(long) = argument.get_long() else {
                continue;
            };
            flags.entry(long.to_string()).or_default().push(Occurrence {
                command: path.to_string(),
                environment: argument
                    .get_env()
                    .map(|name| name.to_string_lossy().into_owned()),
                default: argument
                    .get_default_values()
                    .iter()
                    .map(|value| value.to_string_lossy().into_owned())
                    .collect(),
            });
        }
        for subcommand in command.get_subcommands() {
            collect(
                subcommand,
                &format!("{path} {}", subcommand.get_name()),
                flags,
            );
        }
    }

    fn every_flag() -> BTreeMap<String, Vec<Occurrence>> {
        let mut command = Cli::command();
        command.build();
        let mut flags = BTreeMap::new();
        collect(&command, "trustplane", &mut flags);
        flags
    }

    #[test]
    fn the_command_line_definition_is_valid() {
        Cli::command().debug_assert();
    }

    /// Every command and command group, however deep: its `--help` ends
    /// with examples.
    #[test]
    fn every_command_and_group_has_help_with_an_example() {
        fn check(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            // clap's own `help` subcommand only prints the others' help.
            for subcommand in command
                .get_subcommands()
                .filter(|subcommand| subcommand.get_name() != "help")
            {
                let path = format!("{path} {}", subcommand.get_name());
                let help = subcommand
                    .get_after_help()
                    .map(ToString::to_string)
                    .unwrap_or_default();
                if !help.contains("Example") {
                    missing.push(path.clone());
                }
                check(subcommand, &path, missing);
            }
        }
        let mut command = Cli::command();
        command.build();
        let mut missing = Vec::new();
        check(&command, "trustplane", &mut missing);
        assert!(missing.is_empty(), "no example in --help: {missing:?}");
    }

    #[test]
    fn every_environment_variable_is_named_after_its_flag() {
        for (long, occurrences) in every_flag() {
            let expected = if CONVENTIONAL_VAULT_VARIABLES.contains(&long.as_str()) {
                long.to_uppercase().replace('-', "_")
            } else {
                format!("TRUSTPLANE_{}", long.to_uppercase().replace('-', "_"))
            };
            for occurrence in occurrences {
                if let Some(environment) = &occurrence.environment {
                    assert_eq!(
                        environment, &expected,
                        "`{} --{long}` reads {environment}, not {expected}",
                        occurrence.command
                    );
                }
            }
        }
    }

    #[test]
    fn the_store_and_connection_options_reach_every_command_that_needs_them() {
        let flags = every_flag();
        let commands = |long: &str| -> Vec<String> {
            flags[long]
                .iter()
                .map(|occurrence| occurrence.command.clone())
                .collect()
        };
        for long in ["kek-file", "policy"] {
            for command in ["init", "server", "issue", "demo"] {
                let command = format!("trustplane {command}");
                assert!(
                    commands(long).contains(&command),
                    "{command} has no --{long}"
                );
            }
        }
        let admin = commands("admin-cert");
        assert!(admin.len() >= 12, "{admin:?}");
        for command in admin.iter().chain([&"trustplane agent".to_string()]) {
            assert!(
                commands("server-ca").contains(command),
                "{command} has no --server-ca"
            );
            assert!(
                commands("server").contains(command),
                "{command} has no --server"
            );
        }
        for command in admin.iter().chain(
            ["trustplane init", "trustplane server", "trustplane issue"]
                .map(String::from)
                .iter(),
        ) {
            assert!(
                commands("data-dir").contains(command),
                "{command} has no --data-dir"
            );
        }
    }

    #[test]
    fn a_flag_has_one_environment_variable_and_one_default_in_every_command() {
        for (long, occurrences) in every_flag() {
            let first = &occurrences[0];
            for occurrence in &occurrences[1..] {
                if !ENVIRONMENT_ONLY_IN_DAEMONS.contains(&long.as_str()) {
                    assert_eq!(
                        occurrence.environment, first.environment,
                        "--{long}: `{}` and `{}` disagree on the environment variable",
                        first.command, occurrence.command
                    );
                }
                if !DEFAULT_PER_COMMAND.contains(&long.as_str()) {
                    assert_eq!(
                        occurrence.default, first.default,
                        "--{long}: `{}` and `{}` disagree on the default",
                        first.command, occurrence.command
                    );
                }
            }
        }
    }
}
