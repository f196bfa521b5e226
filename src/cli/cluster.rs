//! `trustplane cluster add|list|reissue|remove` and `trustplane status`:
//! admin calls about clusters and their tables or JSON.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Subcommand;
use zeroize::Zeroizing;

use super::client::{AdminConnection, status_error};
use super::output::{self, Format};
use crate::ca::system_time_to_unix;
use crate::clock::SystemClock;
use crate::proto;
use crate::proto::admin_service_client::AdminServiceClient;
use crate::sink;
use crate::telemetry::printable;
use crate::wire;

/// `cluster` subcommands.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Register a cluster and print its one-time join token (or, with --kubeconfig, push mode).
    #[command(
        after_help = "Examples:\n  trustplane cluster add east\n  trustplane cluster add west --token-ttl 15m -o json\n  # push mode: no agent; the server writes the cluster's cacerts Secret itself\n  trustplane cluster add edge --kubeconfig edge.kubeconfig --namespace istio-system"
    )]
    Add {
        /// Cluster name (DNS label).
        name: String,
        /// Join token lifetime.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        token_ttl: Duration,
        /// Push mode: kubeconfig the server uses to write this cluster's cacerts (sealed at rest).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// Push mode: namespace of the cacerts Secret.
        #[arg(long, default_value = sink::kube::DEFAULT_NAMESPACE)]
        namespace: String,
        /// Push mode: keys of the cacerts Secret: istio (ca-cert.pem, ca-key.pem, cert-chain.pem, root-cert.pem) or tls (tls.crt, tls.key, ca.crt).
        #[arg(long, default_value = "istio")]
        secret_format: sink::SecretFormat,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
        /// Connection.
        #[command(flatten)]
        connection: AdminConnection,
    },
    /// List clusters with what they last reported.
    #[command(
        after_help = "Examples:\n  trustplane cluster list\n  trustplane cluster list -o json"
    )]
    List {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
        /// Connection.
        #[command(flatten)]
        connection: AdminConnection,
    },
    /// Give a cluster a new intermediate from the current signing root (e.g. after a key compromise).
    #[command(
        after_help = "Examples:\n  trustplane cluster reissue east\n  trustplane cluster list    # INTERMEDIATE shows the new serial once it is applied"
    )]
    Reissue {
        /// Cluster name.
        name: String,
        /// Connection.
        #[command(flatten)]
        connection: AdminConnection,
    },
    /// Remove a cluster: its agent's certificate is refused from then on.
    #[command(
        after_help = "Examples:\n  trustplane cluster remove east\n  trustplane cluster remove east -o json"
    )]
    Remove {
        /// Cluster name.
        name: String,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
        /// Connection.
        #[command(flatten)]
        connection: AdminConnection,
    },
}

/// `status` flags.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Format,
    /// Connection.
    #[command(flatten)]
    pub connection: AdminConnection,
}

/// Runs one `cluster` subcommand.
pub async fn run(command: ClusterCommand) -> anyhow::Result<()> {
    match command {
        ClusterCommand::Add {
            name,
            token_ttl,
            kubeconfig,
            namespace,
            secret_format,
            output,
            connection,
        } => {
            let kubeconfig_text = match &kubeconfig {
                Some(path) => Zeroizing::new(
                    std::fs::read_to_string(path)
                        .with_context(|| format!("cannot read --kubeconfig {}", path.display()))?,
                ),
                None => Zeroizing::new(String::new()),
            };
            let mut client = AdminServiceClient::new(connection.connect().await?);
            let response = client
                .add_cluster(proto::AddClusterRequest {
                    name: name.clone(),
                    token_ttl_seconds: token_ttl.as_secs(),
                    kubeconfig: kubeconfig_text.to_string(),
                    namespace: namespace.clone(),
                    secret_format: secret_format.as_str().to_string(),
                    format: proto::SecretFormat::from(secret_format).into(),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            if kubeconfig.is_some() {
                if output == Format::Json {
                    let json = serde_json::json!({"cluster": name, "mode": "push", "namespace": namespace, "secret_format": secret_format.as_str()});
                    println!("{}", serde_json::to_string_pretty(&json)?);
                } else {
                    println!(
                        "cluster {name} registered in push mode: the server writes Secret {namespace}/cacerts ({} format) itself.\nWatch it with: trustplane cluster list",
                        secret_format.as_str()
                    );
                }
                return Ok(());
            }
            if output == Format::Json {
                let json = serde_json::json!({
                    "cluster": name,
                    "join_token": response.join_token,
                    "expires": output::time(response.token_expires_unix),
                });
                println!("{}", serde_json::to_string_pretty(&json)?);
            } else {
                let data_dir = connection.data_dir.layout();
                println!(
                    "cluster {name} registered; one-time join token (expires {}):\n",
                    output::time(response.token_expires_unix)
                );
                println!("  {}\n", response.join_token);
                let ca = data_dir.control_plane_ca_path();
                println!(
                    "In the cluster (Secret istio-system/cacerts; the Helm chart deploy/helm/trustplane, role agent):\n  kubectl -n istio-system create configmap trustplane-server-ca --from-file=ca.pem={ca}\n  kubectl -n istio-system create secret generic trustplane-join-token --from-literal=token={token}\n  helm install trustplane-agent deploy/helm/trustplane -n istio-system --skip-crds --set role=agent --set 'agent.servers={{{server}}}'\n\nOr outside Kubernetes, writing a directory:\n  trustplane agent --server {server} --server-ca {ca} \\\n    --join-token {token} --identity-dir <dir> --cacerts-dir <dir>",
                    ca = ca.display(),
                    token = response.join_token,
                    server = connection.server_url(),
                );
            }
        }
        ClusterCommand::List { output, connection } => {
            let mut client = AdminServiceClient::new(connection.connect().await?);
            let response = client
                .list_clusters(proto::ListClustersRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            print_clusters(&response.clusters, response.bundle_version, output)?;
        }
        ClusterCommand::Reissue { name, connection } => {
            let mut client = AdminServiceClient::new(connection.connect().await?);
            client
                .reissue_cluster(proto::ReissueClusterRequest { name: name.clone() })
                .await
                .map_err(status_error)?;
            println!(
                "cluster {name}: new intermediate requested; its agent (or the server, in push mode) replaces the intermediate from the current signing root shortly"
            );
        }
        ClusterCommand::Remove {
            name,
            output,
            connection,
        } => {
            let mut client = AdminServiceClient::new(connection.connect().await?);
            client
                .remove_cluster(proto::RemoveClusterRequest { name: name.clone() })
                .await
                .map_err(status_error)?;
            if output == Format::Json {
                let json = serde_json::json!({ "removed": name });
                println!("{}", serde_json::to_string_pretty(&json)?);
            } else {
                println!("cluster {name} removed; its agent's certificate is refused from now on");
            }
        }
    }
    Ok(())
}

fn cluster_json(cluster: &proto::ClusterStatus) -> serde_json::Value {
    serde_json::json!({
        "name": cluster.name,
        "state": wire::cluster_state(cluster.cluster_state, &cluster.state).as_str(),
        "created": output::time(cluster.created_unix),
        "applied_bundle_version": cluster.applied_bundle_version,
        "intermediate_serial": printable(&cluster.intermediate_serial),
        "intermediate_not_after": output::time(cluster.intermediate_not_after_unix),
        "last_report": output::time(cluster.last_report_unix),
        "last_error": printable(&cluster.last_error),
    })
}

fn print_clusters(
    clusters: &[proto::ClusterStatus],
    bundle_version: u64,
    format: Format,
) -> anyhow::Result<()> {
    if format == Format::Json {
        let json = serde_json::json!({
            "bundle_version": bundle_version,
            "clusters": clusters.iter().map(cluster_json).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&json)?);
        return Ok(());
    }
    print!(
        "{}",
        clusters_text(
            clusters,
            bundle_version,
            system_time_to_unix(SystemClock.now())
        )
    );
    Ok(())
}

/// The clusters as a table at `now` (Unix seconds). Total: any value a
/// cluster can report is shown, never a panic; its text is [`printable`].
fn clusters_text(clusters: &[proto::ClusterStatus], bundle_version: u64, now: i64) -> String {
    let mut table = output::table(&[
        "CLUSTER",
        "STATE",
        "BUNDLE",
        "INTERMEDIATE",
        "EXPIRES",
        "LAST REPORT",
        "ERROR",
    ]);
    for cluster in clusters {
        let bundle = if cluster.last_report_unix == 0 {
            "-".to_string()
        } else if cluster.applied_bundle_version == bundle_version {
            format!("v{} (current)", cluster.applied_bundle_version)
        } else {
            format!(
                "v{} (behind v{bundle_version})",
                cluster.applied_bundle_version
            )
        };
        table.add_row(vec![
            cluster.name.clone(),
            wire::cluster_state(cluster.cluster_state, &cluster.state)
                .as_str()
                .to_string(),
            bundle,
            output::short_hex(&printable(&cluster.intermediate_serial)),
            output::time(cluster.intermediate_not_after_unix),
            output::age(cluster.last_report_unix, now),
            if cluster.last_error.is_empty() {
                "-".into()
            } else {
                printable(&cluster.last_error)
            },
        ]);
    }
    if clusters.is_empty() {
        "no clusters yet: add one with `trustplane cluster add <name>`\n".into()
    } else {
        format!("{table}\n")
    }
}

/// `trustplane status`: trust domain, bundle, signing root and clusters.
pub async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let mut client = AdminServiceClient::new(args.connection.connect().await?);
    let response = client
        .status(proto::StatusRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    let bundle = response.bundle.clone().unwrap_or_default();
    if args.output == Format::Json {
        let json = serde_json::json!({
            "trust_domain": response.trust_domain,
            "bundle_version": bundle.version,
            "bundle_digest": bundle.digest,
            "signing_root_serial": response.signing_root_serial,
            "signing_root_subject": response.signing_root_subject,
            "signing_root_not_after": output::time(response.signing_root_not_after_unix),
            "clusters": response.clusters.iter().map(cluster_json).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&json)?);
        return Ok(());
    }
    let mut table = output::table(&["", ""]);
    table.add_row(vec![
        "trust domain".to_string(),
        response.trust_domain.clone(),
    ]);
    table.add_row(vec![
        "bundle".to_string(),
        format!("v{} sha256:{}", bundle.version, bundle.digest),
    ]);
    table.add_row(vec![
        "signing root".to_string(),
        format!(
            "{} ({})",
            response.signing_root_subject, response.signing_root_serial
        ),
    ]);
    table.add_row(vec![
        "root expires".to_string(),
        output::time(response.signing_root_not_after_unix),
    ]);
    println!("{table}");
    print_clusters(&response.clusters, bundle.version, Format::Table)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every extreme a cluster (or an old record) can put in a status.
    fn extreme_clusters() -> Vec<proto::ClusterStatus> {
        [i64::MIN, -1, 0, i64::MAX]
            .into_iter()
            .zip([0, 1, u64::MAX - 1, u64::MAX])
            .map(|(unix, version)| proto::ClusterStatus {
                name: "east".into(),
                state: "enrolled".into(),
                created_unix: unix,
                applied_bundle_version: version,
                intermediate_serial: "\u{1b}[31mdeadbeef\u{1b}[0m\u{202e}".into(),
                intermediate_not_after_unix: unix,
                last_report_unix: unix,
                last_error: "boom\r\n\u{1b}[2Jfake row\u{7}".into(),
                ..Default::default()
            })
            .collect()
    }

    #[test]
    fn cluster_output_is_total_and_printable() {
        let clusters = extreme_clusters();
        for now in [i64::MIN, 0, 1_700_000_000, i64::MAX] {
            for bundle_version in [0, u64::MAX] {
                let text = clusters_text(&clusters, bundle_version, now);
                assert!(!text.contains('\u{1b}') && !text.contains('\r'), "{text}");
                assert!(
                    !text.contains('\u{7}') && !text.contains('\u{202e}'),
                    "{text}"
                );
                assert!(text.contains("invalid (-1)"), "{text}");
                assert!(text.contains(&format!("invalid ({})", i64::MIN)), "{text}");
            }
        }
        for cluster in &clusters {
            let json = cluster_json(cluster).to_string();
            assert!(!json.contains("\\u001b") && !json.contains("\\r"), "{json}");
        }
        assert!(
            cluster_json(&clusters[1])
                .to_string()
                .contains("invalid (-1)")
        );
    }
}
