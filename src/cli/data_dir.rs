//! `trustplane init`, `trustplane server` and `trustplane issue`: the
//! commands that open the data directory themselves instead of asking a
//! running server. Owns their flags and [`open_authority`]; not the
//! admin commands, which go through [`super::client`].

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};

use super::options::{
    DataDirOption, KekOption, MissingKek, PolicyOption, StoreOption, parse_generated_algorithm,
};
use super::output::{self, Format};
use super::signal::shutdown_signal;
use crate::ca::{KeyAlgorithm, system_time_to_unix};
use crate::clock::SystemClock;
use crate::config::KekSource;
use crate::files;
use crate::server::{self, Authority, DataDir, InitOptions};
use crate::store::Table;
use crate::store::records::{self, VaultIssuer};
use crate::vault::{Vault, VaultSettings, pki};

/// `init` flags.
#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// `--data-dir`.
    #[command(flatten)]
    pub data_dir: DataDirOption,
    /// `--store` and the Vault settings.
    #[command(flatten)]
    pub store: StoreOption,
    /// Trust domain of the mesh.
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,
    /// Subject organisation [default: the policy's].
    #[arg(long)]
    pub organisation: Option<String>,
    /// Root key algorithm.
    #[arg(long, default_value = "ecdsa-p256", value_parser = parse_generated_algorithm)]
    pub key_algorithm: KeyAlgorithm,
    /// Root validity.
    #[arg(long, default_value = "10y", value_parser = humantime::parse_duration)]
    pub root_validity: Duration,
    /// Import this root certificate (PEM) instead of creating one.
    #[arg(long, requires = "import_key")]
    pub import_root: Option<PathBuf>,
    /// The imported root's key (PKCS#8, SEC1 or PKCS#1 PEM).
    #[arg(long, requires = "import_root")]
    pub import_key: Option<PathBuf>,
    /// `--policy`.
    #[command(flatten)]
    pub policy: PolicyOption,
    /// `--kek-file` and the KEK lookup order.
    #[command(flatten)]
    pub kek: KekOption,
    /// Who holds the mesh root key: `local` (sealed in the store with the KEK) or `vault` (a Vault/OpenBao PKI issuer; the key never leaves Vault).
    #[arg(long, value_enum, default_value_t = SignerKind::Local)]
    pub signer: SignerKind,
    /// With `--signer vault`: the PKI issuer (name or id) to adopt as the mesh root; without it a new issuer `trustplane-root` is generated inside Vault.
    #[arg(long)]
    pub vault_issuer: Option<String>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Format,
}

/// Who holds the mesh root key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SignerKind {
    /// trustplane, sealed in its store with the KEK.
    #[default]
    Local,
    /// A Vault or OpenBao PKI issuer.
    Vault,
}

/// `server` flags.
#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// `--data-dir`.
    #[command(flatten)]
    pub data_dir: DataDirOption,
    /// `--store` and the Vault settings.
    #[command(flatten)]
    pub store: StoreOption,
    /// Listen address.
    #[arg(long, env = "TRUSTPLANE_LISTEN", default_value = "127.0.0.1:8443")]
    pub listen: SocketAddr,
    /// Extra DNS name or IP address for the server certificate (repeatable; comma-separated in TRUSTPLANE_SERVER_NAME).
    #[arg(
        long = "server-name",
        env = "TRUSTPLANE_SERVER_NAME",
        value_name = "NAME",
        value_delimiter = ','
    )]
    pub server_names: Vec<String>,
    /// Lifetime of the agents' control-plane client certificates (agents renew at 2/3 of it; 1m to 2 years).
    #[arg(
        long,
        env = "TRUSTPLANE_CLIENT_CERT_LIFETIME",
        default_value = "30d",
        value_parser = humantime::parse_duration
    )]
    pub client_cert_lifetime: Duration,
    /// `--policy`.
    #[command(flatten)]
    pub policy: PolicyOption,
    /// `--kek-file` and the KEK lookup order.
    #[command(flatten)]
    pub kek: KekOption,
    /// Timeouts, connection caps and call rates.
    #[command(flatten)]
    pub limits: super::LimitsOptions,
    /// Serve /healthz, /readyz (Vault's state when roots are in Vault) and /metrics (Prometheus) on this address, e.g. 0.0.0.0:9090.
    #[arg(long, env = "TRUSTPLANE_HEALTH_LISTEN")]
    pub health_listen: Option<SocketAddr>,
    /// With --store vault-kv or kubernetes: the lease of the one server that runs rotations and push mode; a killed holder is replaced within it (at least 3s).
    #[arg(
        long,
        env = "TRUSTPLANE_LEADER_LEASE",
        default_value = "15s",
        value_parser = humantime::parse_duration
    )]
    pub leader_lease: Duration,
}

/// `issue` flags.
#[derive(Debug, clap::Args)]
pub struct IssueArgs {
    /// Cluster name (DNS label).
    #[arg(long)]
    pub cluster: String,
    /// Output directory for ca-cert.pem, ca-key.pem, cert-chain.pem, root-cert.pem.
    #[arg(long)]
    pub out: PathBuf,
    /// `--data-dir`.
    #[command(flatten)]
    pub data_dir: DataDirOption,
    /// `--store` and the Vault settings.
    #[command(flatten)]
    pub store: StoreOption,
    /// Intermediate lifetime [default: the policy's].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub lifetime: Option<Duration>,
    /// Intermediate key algorithm.
    #[arg(long, default_value = "ecdsa-p256", value_parser = parse_generated_algorithm)]
    pub key_algorithm: KeyAlgorithm,
    /// `--policy`.
    #[command(flatten)]
    pub policy: PolicyOption,
    /// `--kek-file` and the KEK lookup order.
    #[command(flatten)]
    pub kek: KekOption,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Format,
}

/// A Vault connection when a Vault address is given (`VAULT_ADDR`,
/// `--vault-addr` or the `--vault-config` file).
async fn connect_vault(settings: &VaultSettings) -> anyhow::Result<Option<Arc<Vault>>> {
    let config = settings.load()?;
    Ok(match &config.addr {
        Some(_) => Some(Vault::connect(config).await?),
        None => None,
    })
}

/// Opens the store (`--store`) and loads the authority.
pub fn open_authority(
    data_dir: &DataDir,
    store: &StoreOption,
    kek: &KekOption,
    policy: &PolicyOption,
) -> anyhow::Result<Authority> {
    open_authority_with_vault(data_dir, store, kek, policy, None)
}

/// [`open_authority`] with a Vault connection (roots held by Vault PKI,
/// and the `vault-kv` store).
pub fn open_authority_with_vault(
    data_dir: &DataDir,
    store: &StoreOption,
    kek: &KekOption,
    policy: &PolicyOption,
    vault: Option<Arc<Vault>>,
) -> anyhow::Result<Authority> {
    if store.is_embedded() && !data_dir.store_path().exists() {
        bail!(
            "no trustplane data in {}: run `trustplane init --data-dir {}` first",
            data_dir.path.display(),
            data_dir.path.display()
        );
    }
    let store = store.open(data_dir, vault.as_ref())?;
    let (kek, _) = kek.load(data_dir, MissingKek::Fail)?;
    let policy = policy.load()?;
    Ok(Authority::open_with_vault(
        store,
        &kek,
        policy,
        Arc::new(SystemClock),
        vault,
    )?)
}

/// `trustplane init`: creates (or imports) the root, the control-plane CA
/// and the admin credential under `--data-dir`.
pub async fn init(args: InitArgs) -> anyhow::Result<()> {
    let data_dir = args.data_dir.layout();
    let policy = args.policy.load()?;
    if args.signer == SignerKind::Local && args.vault_issuer.is_some() {
        bail!("--vault-issuer adopts a Vault issuer as the mesh root: add --signer vault");
    }
    if args.signer == SignerKind::Vault {
        if args.import_root.is_some() {
            bail!(
                "--signer vault keeps the root key in Vault: import it into Vault (pki/issuers/import/bundle) and adopt it with --vault-issuer, instead of --import-root"
            );
        }
        if policy.trust_domain(&args.trust_domain)?.name_constraints {
            bail!("{}", crate::signer::vault::NO_URI_NAME_CONSTRAINTS);
        }
    }
    // One connection for the signer and the store, when either is in Vault.
    let vault_config = args.store.vault.load()?;
    let vault = if args.signer == SignerKind::Vault || args.store.is_vault() {
        Some(Vault::connect(vault_config.clone()).await?)
    } else {
        None
    };
    crate::files::create_private_dir(&data_dir.path)?;
    // Refused before anything is made (in Vault above all: no orphan issuer).
    let store = args.store.open(&data_dir, vault.as_ref())?;
    if store.get(Table::Meta, records::CA_SETTINGS_KEY)?.is_some() {
        if args.store.is_embedded() {
            bail!(
                "{} is already initialised; use another --data-dir, or delete it to start over (this destroys the root key)",
                data_dir.path.display()
            );
        }
        bail!(
            "{} already holds an initialised trustplane; use another --vault-kv-prefix or --store-namespace, or point --data-dir and --kek-file at that deployment's",
            args.store.describe(&data_dir, &vault_config)
        );
    }
    let vault_root = match (&vault, args.signer) {
        (Some(vault), SignerKind::Vault) => {
            let organisation = args.organisation.clone().unwrap_or_else(|| {
                policy
                    .trust_domain(&args.trust_domain)
                    .map(|domain| domain.organisation.clone())
                    .unwrap_or_default()
            });
            Some(vault_root(vault, &args, &organisation).await?)
        }
        _ => None,
    };
    let import = match (&args.import_root, &args.import_key) {
        (Some(certificate), Some(key)) => Some((
            std::fs::read_to_string(certificate)
                .with_context(|| format!("cannot read {}", certificate.display()))?,
            crate::files::read_private(key)
                .with_context(|| format!("cannot use --import-key {}", key.display()))?,
        )),
        _ => None,
    };
    let (kek, kek_source) = args.kek.load(&data_dir, MissingKek::Create)?;
    let kek_file = match kek_source {
        KekSource::File(path) => Some(path),
        KekSource::Environment(_) => None,
    };
    let options = InitOptions {
        trust_domain: args.trust_domain.clone(),
        organisation: args.organisation,
        key_algorithm: args.key_algorithm,
        root_validity: args.root_validity,
        import,
        vault_root: vault_root.clone(),
        policy,
    };
    let outcome = server::initialize(store.as_ref(), &kek, &data_dir, &options, SystemClock.now())?;
    let root = &outcome.root;
    // What the token needs, for what is in Vault (the root, the store).
    let vault_policy = vault.as_ref().map(|_| {
        crate::vault::acl_policy(
            &vault_config,
            vault_root
                .as_ref()
                .map(|(_, issuer)| (issuer.mount.as_str(), issuer.issuer_id.as_str())),
            args.store.is_vault(),
        )
    });
    if args.output == Format::Json {
        let json = serde_json::json!({
            "trust_domain": args.trust_domain,
            "root_serial": root.serial_hex()?,
            "root_subject": root.subject()?,
            "root_not_after": output::time(system_time_to_unix(root.not_after()?)),
            "imported": outcome.imported,
            "vault_issuer": vault_root.as_ref().map(|(_, issuer)| serde_json::json!({
                "mount": issuer.mount,
                "issuer_id": issuer.issuer_id,
                "issuer_name": issuer.issuer_name,
            })),
            "vault_policy": vault_policy,
            "kek_file": kek_file.as_ref().map(|path| path.display().to_string()),
            "control_plane_ca": data_dir.control_plane_ca_path().display().to_string(),
            "admin_cert": data_dir.admin_cert_path().display().to_string(),
            "admin_key": data_dir.admin_key_path().display().to_string(),
        });
        println!("{}", serde_json::to_string_pretty(&json)?);
        return Ok(());
    }
    let mut table = output::table(&["", ""]);
    table.add_row(vec!["trust domain".to_string(), args.trust_domain.clone()]);
    table.add_row(vec![
        if outcome.imported {
            "root (imported)"
        } else {
            "root (created)"
        }
        .to_string(),
        root.subject()?,
    ]);
    table.add_row(vec!["root serial".to_string(), root.serial_hex()?]);
    table.add_row(vec![
        "root expires".to_string(),
        output::time(system_time_to_unix(root.not_after()?)),
    ]);
    table.add_row(vec![
        "store".to_string(),
        args.store.describe(&data_dir, &vault_config),
    ]);
    table.add_row(vec![
        "control-plane CA".to_string(),
        data_dir.control_plane_ca_path().display().to_string(),
    ]);
    table.add_row(vec![
        "admin credential".to_string(),
        format!("{} (+ key, 0600)", data_dir.admin_cert_path().display()),
    ]);
    if let Some((_, issuer)) = &vault_root {
        table.add_row(vec![
            "root key".to_string(),
            format!(
                "in Vault: issuer {} ({}) in mount {}; never exported",
                issuer.issuer_id, issuer.issuer_name, issuer.mount
            ),
        ]);
    }
    println!("{table}");
    if vault_root.is_some() {
        println!(
            "\nThe mesh root key stays in Vault. The KEK below seals the control-plane CA key only."
        );
    }
    if let Some(policy) = &vault_policy {
        println!(
            "\nThe Vault policy trustplane's token needs (least privilege), e.g. `bao policy write trustplane -` with:\n\n{policy}"
        );
    }
    let sealed = if vault_root.is_some() {
        "The control-plane CA key (the mesh root key is in Vault)"
    } else {
        "The root key"
    };
    let holder = if vault_root.is_some() {
        "can issue control-plane identities (agents, admins)"
    } else {
        "can sign as your mesh root"
    };
    match kek_file {
        Some(path) => println!(
            "\n{sealed} is sealed with the key-encryption key in {} (0600).\nMove it off this disk (e.g. into a secret manager) and start the server with\n  --kek-file <path>   or   TRUSTPLANE_KEK=<contents>   (looked up in that order, then <data-dir>/kek)\nAnyone with both the data directory and that file {holder}.",
            path.display()
        ),
        None => {
            println!("\n{sealed} is sealed with the key-encryption key from TRUSTPLANE_KEK.")
        }
    }
    if vault_root.is_some() {
        println!(
            "\nNext: VAULT_ADDR=... VAULT_TOKEN=... trustplane server --data-dir {}   (or AppRole: VAULT_ROLE_ID, VAULT_SECRET_ID; or the same settings in a --vault-config file)",
            data_dir.path.display()
        );
    } else {
        println!(
            "\nNext: trustplane server --data-dir {}",
            data_dir.path.display()
        );
    }
    Ok(())
}

/// The Vault-held root for `init --signer vault`: the issuer named by
/// `--vault-issuer` (adopted), or a new one generated inside Vault.
async fn vault_root(
    vault: &Vault,
    args: &InitArgs,
    organisation: &str,
) -> anyhow::Result<(crate::ca::Certificate, VaultIssuer)> {
    let mount = vault.config().pki_mount.clone();
    let (certificate_pem, issuer_id, issuer_name) = match &args.vault_issuer {
        Some(issuer) => {
            let answer = pki::read_signing_issuer(vault, &mount, issuer).await?;
            (answer.certificate, answer.issuer_id, answer.issuer_name)
        }
        None => {
            let created = pki::generate_root(
                vault,
                pki::root_request(
                    &mount,
                    "trustplane-root",
                    &format!("{} root CA", args.trust_domain),
                    organisation,
                    &args.trust_domain,
                    args.key_algorithm,
                    args.root_validity,
                ),
            )
            .await
            .context("generating the mesh root in Vault (an issuer named trustplane-root may exist already: adopt it with --vault-issuer trustplane-root)")?;
            (created.certificate, created.issuer_id, created.issuer_name)
        }
    };
    let certificate = crate::ca::Certificate::from_pem(&certificate_pem)?;
    Ok((
        certificate,
        VaultIssuer {
            mount,
            issuer_id,
            issuer_name,
        },
    ))
}

/// `trustplane server`: serves gRPC over TLS until Ctrl-C or SIGTERM.
pub async fn serve(args: ServerArgs) -> anyhow::Result<()> {
    let data_dir = args.data_dir.layout();
    let vault = connect_vault(&args.store.vault).await?;
    let authority = Arc::new(
        open_authority_with_vault(
            &data_dir,
            &args.store,
            &args.kek,
            &args.policy,
            vault.clone(),
        )?
        .with_client_cert_lifetime(args.client_cert_lifetime)?,
    );
    authority.core().check_vault_roots().await?;
    // Set once the gRPC listener serves: /readyz says 503 until then.
    let (serving, serving_state) = tokio::sync::watch::channel(false);
    if let Some(address) = args.health_listen {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| format!("cannot listen on --health-listen {address}"))?;
        let bound = listener.local_addr().unwrap_or(address);
        println!("serving /healthz, /readyz and /metrics on http://{bound}");
        // Ready once gRPC is served, while Vault is (unsealed, reachable)
        // and every root the bundle publishes from Vault is still its
        // issuer's certificate.
        let ready_authority = authority.clone();
        let ready = move || {
            let vault = vault.clone();
            let authority = ready_authority.clone();
            let serving = *serving_state.borrow();
            async move {
                if !serving {
                    return Err("starting: the gRPC listener is not serving yet".to_string());
                }
                match vault {
                    Some(vault) => {
                        let state = pki::health(&vault).await?;
                        authority
                            .core()
                            .check_vault_roots()
                            .await
                            .map_err(|error| error.to_string())?;
                        Ok(state)
                    }
                    None => Ok("ok".to_string()),
                }
            }
        };
        let metrics_authority = authority.clone();
        let metrics = move || server::scrape_metrics(metrics_authority.clone());
        tokio::spawn(crate::telemetry::health::serve_probes(
            listener,
            ready,
            metrics,
            async {
                shutdown_signal().await;
            },
        ));
    }
    let mut dns_names = Vec::new();
    let mut ip_addresses = Vec::new();
    for name in args.server_names {
        match name.parse::<IpAddr>() {
            Ok(address) => ip_addresses.push(address),
            Err(_) => dns_names.push(name),
        }
    }
    let config = server::ServerConfig {
        listen: args.listen,
        dns_names,
        ip_addresses,
        limits: args.limits.into(),
        leader_lease: args.leader_lease,
    };
    let mut running = server::start(authority, &config).await?;
    serving.send_replace(true);
    println!(
        "trustplane server for trust domain {} listening on {} (bundle version {})",
        running.authority.trust_domain(),
        running.url(),
        running.authority.publication.current().bundle.version()
    );
    tokio::select! {
        result = running.wait() => result?,
        _ = shutdown_signal() => {
            println!("shutting down");
            running.shutdown().await?;
        }
    }
    Ok(())
}

/// `trustplane issue`: signs a cluster's cacerts files offline into `--out`.
pub async fn issue(args: IssueArgs) -> anyhow::Result<()> {
    let data_dir = args.data_dir.layout();
    let vault = connect_vault(&args.store.vault).await?;
    let authority =
        open_authority_with_vault(&data_dir, &args.store, &args.kek, &args.policy, vault)?;
    authority.core().check_vault_roots().await?;
    let issued = authority
        .issuance
        .issue_with_local_key(
            server::OFFLINE_ACTOR,
            &args.cluster,
            args.key_algorithm,
            args.lifetime,
        )
        .await?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let mut written = Vec::new();
    let mut write = |name: &str, contents: &[u8], private: bool| -> anyhow::Result<()> {
        let path = args.out.join(name);
        let mode = if private {
            files::PRIVATE_MODE
        } else {
            files::PUBLIC_MODE
        };
        files::replace_atomically(&path, contents, mode)?;
        written.push(path.display().to_string());
        Ok(())
    };
    write("ca-key.pem", issued.key.to_pkcs8_pem().as_bytes(), true)?;
    write("ca-cert.pem", issued.certificate.to_pem().as_bytes(), false)?;
    write("cert-chain.pem", issued.cert_chain_pem.as_bytes(), false)?;
    write(
        "root-cert.pem",
        issued.bundle.root_cert_pem.as_bytes(),
        false,
    )?;
    let serial = issued.certificate.serial_hex()?;
    let not_after = output::time(system_time_to_unix(issued.certificate.not_after()?));
    if args.output == Format::Json {
        let json = serde_json::json!({
            "cluster": args.cluster,
            "out": args.out.display().to_string(),
            "files": written,
            "intermediate_serial": serial,
            "not_after": not_after,
        });
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        println!(
            "wrote {}/{{ca-cert.pem, ca-key.pem (0600), cert-chain.pem, root-cert.pem}} for cluster {}\nintermediate {serial} expires {not_after}\nload it into a cluster with:\n  kubectl create secret generic cacerts -n istio-system --from-file={}",
            args.out.display(),
            args.cluster,
            args.out.display()
        );
    }
    Ok(())
}
