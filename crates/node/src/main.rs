//! The `perennial` binary: `perennial serve` hosts the demo kinds over HTTP on the embedded
//! store, configured by flags, `PERENNIAL_*` variables and `perennial.toml` (`config`);
//! `call`, `entities`, `query`, `index`, `state`, `pause`, `resume`, `dead-letters` and
//! `passivate` are an operator's client for a running node (`remote`, over `client`); `perennial inspect` shows what a data directory
//! holds; `perennial bench` measures the runtime. Glue only: see the library crates.
//!
//! Answers go to stdout (`output`), errors, hints and spinners (`progress`) to stderr.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

mod backup;
mod client;
mod config;
mod inspect;
mod output;
mod progress;
mod remote;
#[cfg(feature = "otel")]
mod telemetry;
mod upgrade;

use anyhow::Context;
use clap::{Parser, Subcommand};
use perennial_core::Runtime;
use perennial_storage::Store;
use perennial_storage_sqlite::SqliteStore;

use crate::config::{Config, ServeArgs};

// mimalloc: measured faster and leaner than the system allocator for the runtime's many
// small, short-lived allocations (see docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Persistent processes: entities started on demand, durable before any reply.
#[derive(Debug, Parser)]
#[command(name = "perennial", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the demo kinds (`counter`, `table`, `house`, `cache`, `queue`) over HTTP.
    ///
    /// The state is kept in a data directory. Each setting comes from the first of: a flag,
    /// its PERENNIAL_* variable, the configuration file (perennial.toml), the default.
    Serve(Box<ServeArgs>),
    /// Call an entity on a running node: `perennial call counter/c1 '{"add": 1}'`.
    ///
    /// Prints the reply. The node is --node (or PERENNIAL_NODE); its client token, if it
    /// needs one, --token (or PERENNIAL_CLIENT_TOKEN).
    Call(remote::CallArgs),
    /// List a kind's entities on a running node, in id order (admin API).
    ///
    /// The admin API needs the node's admin token: --token (or PERENNIAL_ADMIN_TOKEN).
    Entities(remote::EntitiesArgs),
    /// Find a kind's stored entities by their state on a running node (admin API):
    /// `perennial query counter 'value > 100'`.
    Query(remote::QueryArgs),
    /// List, make or drop the indexes that answer queries on a running node (admin API):
    /// `perennial index cart owner`.
    Index(remote::IndexArgs),
    /// Pause an entity on a running node: its calls are refused, its timers and messages
    /// wait (admin API).
    Pause(remote::PauseArgs),
    /// Resume a paused entity on a running node; what waited is delivered (admin API).
    Resume(remote::PauseArgs),
    /// List the entities a running node quarantined: their stored bytes cannot be read
    /// back, so their calls are refused and their bytes kept (admin API).
    Quarantined(remote::QuarantinedArgs),
    /// Release a quarantined entity once its bytes are fixed: its next message activates it
    /// again (admin API).
    Release(remote::PauseArgs),
    /// Show an entity's state, history, or past state on a running node (admin API).
    State(remote::StateArgs),
    /// Delete an entity on a running node: its state, journal, timers and effects; its next
    /// message starts it afresh (admin API).
    Delete(remote::DeleteArgs),
    /// List a running node's dead letters, or show, retry or discard one (admin API).
    #[command(name = "dead-letters")]
    DeadLetters(remote::DeadLettersArgs),
    /// Passivate a kind's idle entities, or one entity, on a running node now (admin API).
    Passivate(remote::PassivateArgs),
    /// Show a cluster's live nodes and how many shards each holds (admin API).
    Cluster(remote::ClusterArgs),
    /// Make a caller token for a node started with an HMAC `--caller-key`: `perennial
    /// caller-token --key caller.key --subject alice`. For trying callers out and for tests;
    /// in production, your identity provider issues the tokens.
    CallerToken(CallerTokenArgs),
    /// Measure durable calls against the database approach, memory and activations.
    ///
    /// Durable calls per second against the database approach, memory per entity and
    /// activations per second. Not a test: run it on a quiet machine.
    Bench {
        /// Print one JSON object per workload and line.
        #[arg(long)]
        json: bool,
        /// Seconds each timed workload runs.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Distinct entities the calls spread over.
        #[arg(long, default_value_t = 10_000)]
        entities: usize,
        /// Concurrent callers.
        #[arg(long, default_value_t = 256)]
        callers: usize,
        /// Entities made resident by the memory workload.
        #[arg(long, default_value_t = 1_000_000)]
        resident_entities: usize,
        /// Entities of 1 KiB the `large` workload stores (once per `--data` directory).
        #[arg(long, default_value_t = 10_000_000)]
        large_entities: usize,
        /// The workloads to run, comma-separated. The memory workload runs first by default, so
        /// memory freed by the others cannot make its figure look smaller.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "resident,activation,durable,ephemeral,journal,pending,asks,query"
        )]
        only: Vec<Workload>,
        /// Where to keep the benchmark's data (default: a temporary directory).
        #[arg(long)]
        data: Option<PathBuf>,
        /// The PostgreSQL server of the `postgres` workload, which works in a schema of its
        /// own and drops it (default: 127.0.0.1:5432, user postgres, database test).
        #[arg(long, value_name = "URL")]
        postgres: Option<String>,
    },
    /// Migrate every stored state of an older schema version to this build's, in batches,
    /// with a progress bar (the node must be stopped; a running node migrates through the
    /// admin API). Interrupted, it resumes where it was when run again.
    Migrate(upgrade::MigrateArgs),
    /// Snapshot every `Journal` entity whose journal goes beyond its latest snapshot, so that
    /// no stored step is replayed by later code: run it with the old build before deploying
    /// a changed handler (the node must be stopped).
    #[command(name = "snapshot-all")]
    SnapshotAll(upgrade::MigrateArgs),
    /// Check, writing nothing, that this build can activate every stored entity: states
    /// migrate and decode, journals replay as they ran. Names the entities that would
    /// diverge; run it with a new build before deploying it.
    #[command(name = "verify-replay")]
    VerifyReplay(upgrade::Target),
    /// Back up a data directory while a node serves it (`--to FILE`), consistent to one
    /// commit and holding every call acknowledged before it began; or check a backup
    /// (`--verify FILE`): every page, then every state decoded with this build's kinds.
    Backup(backup::BackupArgs),
    /// Make a new data directory of a backup: `perennial restore --from FILE --data DIR`.
    Restore(backup::RestoreArgs),
    /// Show what a data directory holds, without a node: kinds, entities, states, histories.
    ///
    /// Its kinds, a kind's entities, an entity's state, its history, or its state at a past
    /// step. Works beside a running node, except for replays (`--at`, or a `Journal`
    /// entity's latest state), which need it stopped.
    Inspect(inspect::Query),
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Workload {
    Journal,
    Durable,
    Ephemeral,
    Resident,
    Activation,
    Pending,
    Asks,
    Query,
    Queue,
    Postgres,
    Cluster,
    Migrate,
    Backup,
    Latency,
    Large,
}

fn main() -> ExitCode {
    let cli = Cli::try_parse().unwrap_or_else(|e| {
        if let Some(variable) = bad_variable(&e) {
            let _ = e.print();
            anstream::eprintln!("note: the value comes from {variable}");
            std::process::exit(e.exit_code());
        }
        e.exit()
    });
    let _logging = install_logging(&cli.command);
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            output::error(&e);
            ExitCode::FAILURE
        }
    }
}

/// What logging keeps until the process ends.
struct Logging {
    /// The span exporter of `serve`, if it exports: dropping it flushes the last spans.
    #[cfg(feature = "otel")]
    _exporter: Option<telemetry::Exporter>,
}

/// Logs to stderr, filtered by `RUST_LOG`; with the `otel` feature, `serve` also exports its
/// spans (`telemetry`), through the same filter.
fn install_logging(command: &Command) -> Logging {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    // A tool's output is its answer: it logs only what went wrong.
    let default_level = match command {
        Command::Serve(_) | Command::Bench { .. } => "info",
        _ => "warn",
    };
    // One filter for the whole subscriber: what is logged and what is exported agree.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let log = tracing_subscriber::fmt::layer()
        .with_writer(|| progress::LogWriter)
        .with_ansi(
            anstream::AutoStream::choice(&std::io::stderr()) != anstream::ColorChoice::Never,
        );
    #[cfg(feature = "otel")]
    {
        let export = match command {
            Command::Serve(_) => telemetry::layer(),
            _ => Ok(None),
        };
        let (otel, exporter, error) = match export {
            Ok(Some((layer, exporter))) => (Some(layer), Some(exporter), None),
            Ok(None) => (None, None, None),
            Err(e) => (None, None, Some(e)),
        };
        tracing_subscriber::registry()
            .with(filter)
            .with(log)
            .with(otel)
            .init();
        if let Some(e) = error {
            tracing::warn!("spans are not exported: {e:#}");
        }
        Logging {
            _exporter: exporter,
        }
    }
    #[cfg(not(feature = "otel"))]
    {
        tracing_subscriber::registry().with(filter).with(log).init();
        Logging {}
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => {
            let (config, file) = Config::load(&args)?;
            if args.print_config {
                output::answer(config.to_toml(file.as_deref())?.trim_end());
                return Ok(());
            }
            block_on(serve(config))
        }
        // The client subcommands are blocking HTTP calls: no async runtime.
        Command::Call(args) => remote::call(args),
        Command::Entities(args) => remote::entities(args),
        Command::Query(args) => remote::query(args),
        Command::Index(args) => remote::index(args),
        Command::Pause(args) => remote::pause(args, true),
        Command::Resume(args) => remote::pause(args, false),
        Command::Quarantined(args) => remote::quarantined(args),
        Command::Release(args) => remote::release(args),
        Command::Delete(args) => remote::delete(args),
        Command::State(args) => remote::state(args),
        Command::DeadLetters(args) => remote::dead_letters(args),
        Command::Passivate(args) => remote::passivate(args),
        Command::Cluster(args) => remote::cluster(args),
        Command::CallerToken(args) => caller_token(&args),
        Command::Migrate(args) => block_on(upgrade::migrate(args, upgrade::Pass::Migrate)),
        Command::SnapshotAll(args) => block_on(upgrade::migrate(args, upgrade::Pass::SnapshotAll)),
        Command::VerifyReplay(target) => block_on(upgrade::verify_replay(target)),
        Command::Backup(args) => backup::run_backup(args),
        Command::Restore(args) => backup::run_restore(args),
        Command::Bench {
            json,
            seconds,
            entities,
            callers,
            resident_entities,
            large_entities,
            only,
            data,
            postgres,
        } => {
            let options = perennial_bench::Options {
                duration: Duration::from_secs(seconds),
                entities,
                callers,
                resident_entities,
                large_entities,
                dir: data,
                postgres,
                node_binary: std::env::current_exe().ok(),
            };
            block_on(async move { bench(&options, &only, json).await })
        }
        Command::Inspect(query) => block_on(async move { inspect::run(query).await }),
    }
}

/// The environment variable a bad value came from, if it came from one: clap's message
/// names only the flag.
fn bad_variable(error: &clap::Error) -> Option<String> {
    use clap::CommandFactory;
    use clap::error::{ContextKind, ContextValue};
    let Some(ContextValue::String(arg)) = error.get(ContextKind::InvalidArg) else {
        return None;
    };
    let long = arg.strip_prefix("--")?.split([' ', '=', '[']).next()?;
    let given =
        std::env::args().any(|a| a == format!("--{long}") || a.starts_with(&format!("--{long}=")));
    let mut command = Cli::command();
    command.build();
    let variable = command
        .get_subcommands()
        .flat_map(clap::Command::get_arguments)
        .find(|a| a.get_long() == Some(long))?
        .get_env()?
        .to_str()?
        .to_owned();
    (!given && std::env::var_os(&variable).is_some()).then_some(variable)
}

/// This build: the package's version and, when it was built from a git checkout, the commit
/// (`build.rs`), as the cluster's members show it.
const BUILD: &str = env!("PERENNIAL_BUILD");

/// Runs `work` on a multi-threaded async runtime, with the crash points of a test build.
pub(crate) fn block_on(work: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    perennial_faults::setup().map_err(anyhow::Error::msg)?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(work)
}

/// The gateway's options from the configuration: who may call, who may administer.
fn gateway_options(args: &Config) -> anyhow::Result<perennial_gateway::Options> {
    use perennial_gateway::Access;
    let token = |flag: &str, token: &Option<config::Secret>| -> anyhow::Result<Option<String>> {
        match token.as_ref().map(config::Secret::expose) {
            Some(t) if t.len() < 16 => anyhow::bail!(
                "the {flag} is {} characters; use at least 16 (for example `openssl rand -hex 16`)",
                t.len()
            ),
            t => Ok(t.map(str::to_owned)),
        }
    };
    let mut options = perennial_gateway::Options::default();
    options.callers = caller_key(args)?;
    options.client = match token("client token", &args.client_token)? {
        Some(t) => Access::Token(t),
        // With a caller key, every call is authenticated anyway.
        None if args.listen.ip().is_loopback() || args.insecure || options.callers.is_some() => {
            Access::Open
        }
        None => anyhow::bail!(
            "refusing to listen on {} without a client token: anyone who reaches it could \
             call every entity. Set --client-token (or PERENNIAL_CLIENT_TOKEN), or pass \
             --insecure if that is what you want",
            args.listen
        ),
    };
    if options.client == Access::Open
        && options.callers.is_none()
        && !args.listen.ip().is_loopback()
    {
        tracing::warn!(listen = %args.listen, "--insecure: calls need no token");
    }
    options.admin = match token("admin token", &args.admin_token)? {
        Some(t) => Access::Token(t),
        None => Access::Closed,
    };
    // Metrics are for operators: the admin token if there is one; else as open as calls.
    // With a caller key, callers are not operators: closed unless a token says otherwise.
    options.metrics = match (&options.admin, &options.client) {
        (Access::Token(t), _) => Access::Token(t.clone()),
        (_, Access::Open) if options.callers.is_some() => Access::Closed,
        (_, client) => client.clone(),
    };
    options.max_body_bytes = args.max_body_bytes;
    options.request_timeout = args.request_timeout;
    Ok(options)
}

/// `perennial caller-token`'s arguments.
#[derive(Debug, clap::Args)]
struct CallerTokenArgs {
    /// The node's `--caller-key` file (an HMAC secret)
    #[arg(long, value_name = "FILE")]
    key: std::path::PathBuf,
    /// Who the token names (`sub`)
    #[arg(long, value_name = "NAME")]
    subject: String,
    /// How long the token is valid
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1h", value_name = "DURATION")]
    ttl: Duration,
    /// The issuer (`iss`), if the node checks one
    #[arg(long, value_name = "ISS")]
    issuer: Option<String>,
    /// The audience (`aud`), if the node checks one
    #[arg(long, value_name = "AUD")]
    audience: Option<String>,
}

/// Prints a caller token signed with the key file's secret.
fn caller_token(args: &CallerTokenArgs) -> anyhow::Result<()> {
    let bytes = std::fs::read(&args.key)
        .with_context(|| format!("cannot read the caller key {}", args.key.display()))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let claims = perennial_gateway::CallerClaims {
        sub: &args.subject,
        exp: (now + args.ttl).as_secs(),
        iss: args.issuer.as_deref(),
        aud: args.audience.as_deref(),
    };
    let token = perennial_gateway::sign_caller_token(&bytes, &claims)
        .with_context(|| format!("the caller key {}", args.key.display()))?;
    output::answer(&token);
    Ok(())
}

/// The key that signs caller tokens, read from `--caller-key`'s file, with the issuer and
/// audience tokens must name.
fn caller_key(args: &Config) -> anyhow::Result<Option<perennial_gateway::CallerKey>> {
    let Some(path) = &args.caller_key else {
        if args.caller_issuer.is_some() || args.caller_audience.is_some() {
            anyhow::bail!(
                "--caller-issuer and --caller-audience need --caller-key: the key that signs \
                 caller tokens"
            );
        }
        return Ok(None);
    };
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read the caller key {}", path.display()))?;
    let mut key = perennial_gateway::CallerKey::from_file_bytes(&bytes)
        .with_context(|| format!("the caller key {}", path.display()))?;
    if let Some(issuer) = &args.caller_issuer {
        key = key.issuer(issuer);
    }
    if let Some(audience) = &args.caller_audience {
        key = key.audience(audience);
    }
    tracing::info!(?key, "calls need a caller token");
    Ok(Some(key))
}

async fn serve(args: Config) -> anyhow::Result<()> {
    let gateway = gateway_options(&args)?;
    let Config {
        data,
        store,
        store_schema,
        listen,
        max_resident,
        max_resident_bytes,
        node_id,
        advertise,
        cluster_secret,
        lease,
        backup_dir,
        backup_every,
        backup_keep,
        sqlite_readers,
        tls_cert,
        tls_key,
        cluster_ca,
        cluster_mtls,
        insecure,
        ..
    } = args;
    let tls = match (&tls_cert, &tls_key, cluster_mtls.then_some(&cluster_ca)) {
        (Some(cert), Some(key), None) => Some(
            perennial_gateway::ServerTls::from_pem_files(cert, key)
                .context("cannot serve HTTPS")?,
        ),
        (Some(cert), Some(key), Some(Some(ca))) => Some(
            perennial_gateway::ServerTls::verifying_clients(cert, key, ca)
                .context("cannot serve HTTPS")?,
        ),
        (None, None, None) => None,
        (Some(_), Some(_), Some(None)) => {
            anyhow::bail!(
                "--cluster-mtls needs --cluster-ca: the authority that signed the nodes' certificates"
            )
        }
        (None, None, Some(_)) => {
            anyhow::bail!(
                "--cluster-mtls needs --tls-cert and --tls-key: the node's own certificate"
            )
        }
        _ => anyhow::bail!("--tls-cert and --tls-key go together: give both, or neither"),
    };
    anyhow::ensure!(
        tls.is_some() || insecure || listen.ip().is_loopback(),
        "refusing to listen on {listen} without TLS: tokens and data would cross the network \
         in the clear. Give --tls-cert and --tls-key, or pass --insecure if something else \
         encrypts the traffic (a service mesh, a VPN)"
    );
    let mut gateway = gateway;
    let cluster = match (&node_id, &store, &cluster_secret) {
        (None, ..) => None,
        (Some(_), None, _) => anyhow::bail!(
            "a cluster keeps its state in PostgreSQL: give --store postgres://… with --node-id"
        ),
        (Some(_), _, None) => anyhow::bail!(
            "the nodes of a cluster authenticate each other: give every node the same \
             --cluster-secret (or PERENNIAL_CLUSTER_SECRET)"
        ),
        (Some(node), Some(_), Some(secret)) => Some((node.clone(), secret.clone())),
    };
    anyhow::ensure!(
        backup_dir.is_none() || store.is_none(),
        "--backup-dir backs up the embedded store; back a PostgreSQL store up with \
         PostgreSQL's own tools (pg_basebackup and WAL archiving, see docs/operations.md)"
    );
    anyhow::ensure!(
        !backup_every.is_zero() && backup_keep >= 1,
        "--backup-every must be longer than zero and --backup-keep at least 1"
    );
    anyhow::ensure!(
        (1..=64).contains(&sqlite_readers),
        "--sqlite-readers must be from 1 to 64"
    );
    let mut postgres = None;
    let (store, place): (Arc<dyn Store>, String) = match &store {
        None => {
            let mut options = perennial_storage_sqlite::Options::default();
            options.readers = sqlite_readers;
            let store = SqliteStore::open_with(&data, options)
                .with_context(|| format!("cannot open the data directory {}", data.display()))?;
            (Arc::new(store), format!("data: {}", data.display()))
        }
        Some(url) => {
            let mut options = perennial_storage_postgres::Options::default();
            options.schema = store_schema.clone();
            let store =
                perennial_storage_postgres::PostgresStore::connect_with(url.expose(), options)
                    .await
                    .with_context(|| {
                        format!("cannot use the PostgreSQL store {}", url.redacted())
                    })?;
            postgres = Some(store.clone());
            (
                Arc::new(store),
                format!("store: PostgreSQL, schema {store_schema}"),
            )
        }
    };
    let builder = perennial_demo::register(Runtime::builder().store(Arc::clone(&store)))
        .max_resident(max_resident)
        .max_resident_bytes(max_resident_bytes);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    let (rt, cluster) = match (cluster, postgres) {
        (Some((node, secret)), Some(postgres)) => {
            let rt = builder.node_name(node.clone()).start_unclaimed().await?;
            let advertise = advertise.unwrap_or_else(|| addr.to_string());
            let options = perennial_cluster::Options::new(node.clone(), advertise)
                .lease(lease)
                .build(BUILD);
            let cluster = perennial_cluster::Cluster::join(Arc::new(postgres), rt.clone(), options)
                .await
                .with_context(|| format!("node {node} cannot join the cluster"))?;
            let mut clustering =
                perennial_gateway::Clustering::new(cluster.clone(), secret.expose());
            if tls.is_some() {
                let mut peers = match &cluster_ca {
                    Some(ca) => perennial_gateway::PeerTls::from_ca_file(ca),
                    None => perennial_gateway::PeerTls::system(),
                }
                .context("cannot call the other nodes over HTTPS")?;
                if let (true, Some(cert), Some(key)) = (cluster_mtls, &tls_cert, &tls_key) {
                    peers = peers
                        .with_identity(cert, key)
                        .context("cannot present this node's certificate to the others")?;
                    clustering = clustering.require_peer_certificates();
                }
                clustering = clustering.with_tls(peers);
            }
            gateway.cluster = Some(clustering);
            (rt, Some(cluster))
        }
        _ => (builder.start().await?, None),
    };
    let place = match &cluster {
        Some(cluster) => format!("{place}, cluster node {}", cluster.node()),
        None => place,
    };
    let backups = backup_dir.map(|dir| {
        tracing::info!(dir = %dir.display(), every = %humantime::format_duration(backup_every), keep = backup_keep, "backing up periodically");
        tokio::spawn(backup::periodic(data.clone(), dir, backup_every, backup_keep))
    });
    let stopped = stop_signal()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    // Scripts and tests wait for this line.
    println!("perennial listening on {scheme}://{addr} ({place})");
    tracing::info!(%addr, kinds = ?rt.kinds(), "serving");
    // A cluster node hands its shards off while it still answers, so calls forwarded to it
    // meanwhile learn at once that it no longer serves them.
    let shutdown = async move {
        stopped.await;
        if let Some(cluster) = cluster {
            tracing::info!("handing shards off to the other nodes");
            if let Err(error) = cluster.leave().await {
                tracing::warn!(%error, "cannot leave the cluster gracefully; its leases will expire");
            }
        }
    };
    match tls {
        Some(tls) => {
            perennial_gateway::serve_tls(listener, rt.clone(), gateway, tls, shutdown).await?;
        }
        None => perennial_gateway::serve(listener, rt.clone(), gateway, shutdown).await?,
    }
    tracing::info!("draining in-flight calls");
    if let Some(backups) = backups {
        backups.abort();
    }
    rt.shutdown().await;
    store.close().await?;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// Listens for SIGTERM and Ctrl-C (SIGINT) from now on; the future completes on either.
/// Registered before the node says it listens, so that a signal sent as soon as it does
/// stops it cleanly rather than killing it.
fn stop_signal() -> anyhow::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for Ctrl-C")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}

async fn bench(
    options: &perennial_bench::Options,
    only: &[Workload],
    json: bool,
) -> anyhow::Result<()> {
    if !json {
        println!(
            "perennial bench: {} cores, {} s per timed workload",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            options.duration.as_secs()
        );
    }
    for workload in only {
        let name = format!("{workload:?}").to_lowercase();
        let bar = progress::spinner(name, !json);
        let report = match workload {
            Workload::Durable => perennial_bench::durable(options).await,
            Workload::Ephemeral => perennial_bench::ephemeral(options).await,
            Workload::Resident => perennial_bench::resident(options).await,
            Workload::Activation => perennial_bench::activation(options).await,
            Workload::Journal => perennial_bench::journal(options).await,
            Workload::Pending => perennial_bench::pending(options).await,
            Workload::Asks => perennial_bench::asks(options).await,
            Workload::Query => perennial_bench::query(options).await,
            Workload::Queue => perennial_bench::queue(options).await,
            Workload::Postgres => perennial_bench::postgres(options).await,
            Workload::Cluster => perennial_bench::cluster(options).await,
            Workload::Migrate => perennial_bench::migrate(options).await,
            Workload::Backup => perennial_bench::backup(options).await,
            Workload::Latency => perennial_bench::latency(options).await,
            Workload::Large => perennial_bench::large(options).await,
        };
        bar.finish_and_clear();
        let report = report?;
        if json {
            println!("{}", report.to_json());
        } else {
            println!("{}", report.to_text());
        }
    }
    Ok(())
}
