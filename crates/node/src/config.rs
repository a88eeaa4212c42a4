//! `perennial serve`'s configuration, in layers. Each key comes from the first layer that sets
//! it: a flag (`--max-resident`), then an environment variable (`PERENNIAL_MAX_RESIDENT`),
//! then the TOML file (`max_resident = …` in `perennial.toml`), then the default.
//! `docs/configuration.md` lists every key.
//!
//! [`Settings`] is one layer, every key optional, declared once: clap fills one from flags and
//! the environment (a flag wins over its variable), serde fills another from the file, and
//! [`Config::load`] takes each key from the first that has it.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// The file read when neither `--config` nor `PERENNIAL_CONFIG` names one, if it exists.
const DEFAULT_FILE: &str = "perennial.toml";

/// How `perennial serve` runs.
#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// The configuration file (TOML; see docs/configuration.md) [default: ./perennial.toml, if
    /// it exists]
    #[arg(long, env = "PERENNIAL_CONFIG", value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Print the effective configuration as TOML (tokens shown as "<set>") and exit.
    #[arg(long)]
    pub(crate) print_config: bool,
    #[command(flatten)]
    pub(crate) settings: Settings,
}

/// One layer of the configuration: every key, each optional. The file's keys are these
/// fields' names.
#[derive(Debug, Default, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Settings {
    /// The data directory (created if missing) [default: ./perennial-data]
    #[arg(long, env = "PERENNIAL_DATA", value_name = "DIR")]
    data: Option<PathBuf>,
    /// Keep state in PostgreSQL instead of the data directory: a `postgres://…` URL or
    /// `host=… user=… dbname=…` [default: the embedded store in --data]
    #[arg(long, env = "PERENNIAL_STORE", value_name = "URL")]
    store: Option<StoreUrl>,
    /// The PostgreSQL schema that holds the tables (created if missing) [default: perennial]
    #[arg(long, env = "PERENNIAL_STORE_SCHEMA", value_name = "NAME")]
    store_schema: Option<String>,
    /// The address to listen on [default: 127.0.0.1:8080]
    #[arg(long, env = "PERENNIAL_LISTEN", value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// The token clients must send (`Authorization: Bearer …`) to call entities. Required
    /// to listen on an address other than loopback, unless `--insecure`.
    #[arg(
        long,
        env = "PERENNIAL_CLIENT_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    client_token: Option<Secret>,
    /// The token the admin API (`/v1/admin/…`) requires; without one, it is disabled.
    #[arg(
        long,
        env = "PERENNIAL_ADMIN_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    admin_token: Option<Secret>,
    /// A file with the key that signs caller tokens (JWTs): a PEM public key (RSA, EC or
    /// Ed25519), or an HMAC secret of at least 32 bytes. With it, every call needs a valid
    /// caller token, whose `sub` handlers see as `ctx.caller()`, or the client token (a
    /// service, calling as nobody) [default: none; calls are anonymous]
    #[arg(long, env = "PERENNIAL_CALLER_KEY", value_name = "FILE")]
    caller_key: Option<PathBuf>,
    /// The issuer (`iss`) caller tokens must name [default: any]
    #[arg(long, env = "PERENNIAL_CALLER_ISSUER", value_name = "ISS")]
    caller_issuer: Option<String>,
    /// The audience (`aud`) caller tokens must name [default: any]
    #[arg(long, env = "PERENNIAL_CALLER_AUDIENCE", value_name = "AUD")]
    caller_audience: Option<String>,
    /// Listen on a non-loopback address without a client token: anyone who reaches the
    /// port can call every entity [default: false]
    #[arg(
        long,
        env = "PERENNIAL_INSECURE",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new(),
        value_name = "BOOL"
    )]
    insecure: Option<bool>,
    /// The most entities kept resident [default: 1000000]
    #[arg(long, env = "PERENNIAL_MAX_RESIDENT", value_name = "N")]
    max_resident: Option<usize>,
    /// The most bytes of entity state kept resident [default: 1073741824]
    #[arg(long, env = "PERENNIAL_MAX_RESIDENT_BYTES", value_name = "BYTES")]
    max_resident_bytes: Option<usize>,
    /// The largest request body accepted, in bytes [default: 1048576]
    #[arg(long, env = "PERENNIAL_MAX_BODY_BYTES", value_name = "BYTES")]
    max_body_bytes: Option<usize>,
    /// How long a request may take before it is answered `504 timeout` [default: 30s]
    #[arg(
        long,
        env = "PERENNIAL_REQUEST_TIMEOUT",
        value_parser = humantime::parse_duration,
        value_name = "DURATION"
    )]
    #[serde(default, deserialize_with = "duration")]
    request_timeout: Option<Duration>,
    /// Join a cluster under this name (unique, stable across restarts): the node serves the
    /// shards it leases and forwards other calls. Needs --store and --cluster-secret
    /// [default: no cluster; the node serves every shard]
    #[arg(long, env = "PERENNIAL_NODE_ID", value_name = "NAME")]
    node_id: Option<String>,
    /// Where the other nodes reach this one (`host:port`) [default: the --listen address]
    #[arg(long, env = "PERENNIAL_ADVERTISE", value_name = "ADDR")]
    advertise: Option<String>,
    /// The secret every node of the cluster shares; calls between nodes carry it
    #[arg(
        long,
        env = "PERENNIAL_CLUSTER_SECRET",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    cluster_secret: Option<Secret>,
    /// How long a node's shard leases last without renewal: a node that dies holds its
    /// shards this long [default: 5s]
    #[arg(
        long,
        env = "PERENNIAL_LEASE",
        value_parser = humantime::parse_duration,
        value_name = "DURATION"
    )]
    #[serde(default, deserialize_with = "duration")]
    lease: Option<Duration>,
    /// The certificate chain to serve HTTPS with (PEM, the node's certificate first); with
    /// --tls-key. Required to listen on an address other than loopback, unless --insecure
    /// [default: plain HTTP]
    #[arg(long, env = "PERENNIAL_TLS_CERT", value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM)
    #[arg(long, env = "PERENNIAL_TLS_KEY", value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// The certificate authorities (PEM) that signed the cluster's nodes' certificates:
    /// with --tls-cert, a node calls the others over HTTPS and trusts these [default: the
    /// system's authorities]
    #[arg(long, env = "PERENNIAL_CLUSTER_CA", value_name = "FILE")]
    cluster_ca: Option<PathBuf>,
    /// Mutual TLS between the cluster's nodes: each presents its --tls-cert to the others,
    /// which refuse a node whose certificate --cluster-ca did not sign [default: false]
    #[arg(
        long,
        env = "PERENNIAL_CLUSTER_MTLS",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new(),
        value_name = "BOOL"
    )]
    cluster_mtls: Option<bool>,
    /// Back the data directory up into this directory periodically, while serving (the
    /// embedded store only; a PostgreSQL store is backed up by PostgreSQL's own tools)
    /// [default: none]
    #[arg(long, env = "PERENNIAL_BACKUP_DIR", value_name = "DIR")]
    backup_dir: Option<PathBuf>,
    /// How often to back up into --backup-dir [default: 1h]
    #[arg(
        long,
        env = "PERENNIAL_BACKUP_EVERY",
        value_parser = humantime::parse_duration,
        value_name = "DURATION"
    )]
    #[serde(default, deserialize_with = "duration")]
    backup_every: Option<Duration>,
    /// How many backups --backup-dir keeps, the newest [default: 24]
    #[arg(long, env = "PERENNIAL_BACKUP_KEEP", value_name = "N")]
    backup_keep: Option<usize>,
    /// How many threads read states from the embedded store, each with its own connection:
    /// more than the cores when the store is much larger than memory and read from the disk
    /// [default: 2]
    #[arg(long, env = "PERENNIAL_SQLITE_READERS", value_name = "N")]
    sqlite_readers: Option<usize>,
}

/// The configuration `perennial serve` runs with.
#[derive(Debug, Serialize)]
pub(crate) struct Config {
    pub(crate) data: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) store: Option<StoreUrl>,
    pub(crate) store_schema: String,
    pub(crate) listen: SocketAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) client_token: Option<Secret>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) admin_token: Option<Secret>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) caller_key: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) caller_issuer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) caller_audience: Option<String>,
    pub(crate) insecure: bool,
    pub(crate) max_resident: usize,
    pub(crate) max_resident_bytes: usize,
    pub(crate) max_body_bytes: usize,
    #[serde(serialize_with = "write_duration")]
    pub(crate) request_timeout: Duration,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) node_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) advertise: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) cluster_secret: Option<Secret>,
    #[serde(serialize_with = "write_duration")]
    pub(crate) lease: Duration,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tls_cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tls_key: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) cluster_ca: Option<PathBuf>,
    pub(crate) cluster_mtls: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) backup_dir: Option<PathBuf>,
    #[serde(serialize_with = "write_duration")]
    pub(crate) backup_every: Duration,
    pub(crate) backup_keep: usize,
    pub(crate) sqlite_readers: usize,
}

impl Config {
    /// The configuration from the flags and environment in `args`, the file they name (or
    /// `./perennial.toml`, if it exists) and the defaults; and the file read, if any.
    pub(crate) fn load(args: &ServeArgs) -> anyhow::Result<(Config, Option<PathBuf>)> {
        let file = match &args.config {
            Some(path) => Some(path.clone()),
            None => Path::new(DEFAULT_FILE)
                .is_file()
                .then(|| PathBuf::from(DEFAULT_FILE)),
        };
        let from_file = match &file {
            Some(path) => read(path)?,
            None => Settings::default(),
        };
        let flags = &args.settings;
        let config = Config {
            data: (flags.data.clone().or(from_file.data))
                .unwrap_or_else(|| PathBuf::from("./perennial-data")),
            store: flags.store.clone().or(from_file.store),
            store_schema: (flags.store_schema.clone().or(from_file.store_schema))
                .unwrap_or_else(|| "perennial".to_owned()),
            listen: (flags.listen.or(from_file.listen))
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080))),
            client_token: flags.client_token.clone().or(from_file.client_token),
            admin_token: flags.admin_token.clone().or(from_file.admin_token),
            caller_key: flags.caller_key.clone().or(from_file.caller_key),
            caller_issuer: flags.caller_issuer.clone().or(from_file.caller_issuer),
            caller_audience: flags.caller_audience.clone().or(from_file.caller_audience),
            insecure: (flags.insecure.or(from_file.insecure)).unwrap_or(false),
            max_resident: (flags.max_resident.or(from_file.max_resident)).unwrap_or(1_000_000),
            max_resident_bytes: (flags.max_resident_bytes.or(from_file.max_resident_bytes))
                .unwrap_or(1 << 30),
            max_body_bytes: (flags.max_body_bytes.or(from_file.max_body_bytes)).unwrap_or(1 << 20),
            request_timeout: (flags.request_timeout.or(from_file.request_timeout))
                .unwrap_or(Duration::from_secs(30)),
            node_id: flags.node_id.clone().or(from_file.node_id),
            advertise: flags.advertise.clone().or(from_file.advertise),
            cluster_secret: flags.cluster_secret.clone().or(from_file.cluster_secret),
            lease: (flags.lease.or(from_file.lease)).unwrap_or(Duration::from_secs(5)),
            tls_cert: flags.tls_cert.clone().or(from_file.tls_cert),
            tls_key: flags.tls_key.clone().or(from_file.tls_key),
            cluster_ca: flags.cluster_ca.clone().or(from_file.cluster_ca),
            cluster_mtls: (flags.cluster_mtls.or(from_file.cluster_mtls)).unwrap_or(false),
            backup_dir: flags.backup_dir.clone().or(from_file.backup_dir),
            backup_every: (flags.backup_every.or(from_file.backup_every))
                .unwrap_or(Duration::from_secs(3600)),
            backup_keep: (flags.backup_keep.or(from_file.backup_keep)).unwrap_or(24),
            sqlite_readers: (flags.sqlite_readers.or(from_file.sqlite_readers)).unwrap_or(2),
        };
        Ok((config, file))
    }

    /// The configuration as TOML, tokens redacted, after a comment naming the file read.
    pub(crate) fn to_toml(&self, file: Option<&Path>) -> anyhow::Result<String> {
        let source = file.map_or_else(|| "none".to_owned(), |f| f.display().to_string());
        let body = toml::to_string(self).context("cannot print the configuration as TOML")?;
        Ok(format!(
            "# The effective configuration of `perennial serve`: each key from the first of\n\
             # flags, PERENNIAL_* environment variables, the file, the defaults.\n\
             # file: {source}\n{body}"
        ))
    }
}

/// Reads a configuration file. Relative paths in it are relative to its directory.
fn read(path: &Path) -> anyhow::Result<Settings> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the configuration file {}", path.display()))?;
    let mut settings: Settings = toml::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "{}: {}",
            path.display(),
            describe(&text, e.message(), e.span())
        )
    })?;
    for path_in_file in [
        &mut settings.data,
        &mut settings.caller_key,
        &mut settings.backup_dir,
        &mut settings.tls_cert,
        &mut settings.tls_key,
        &mut settings.cluster_ca,
    ] {
        if let (Some(relative), Some(dir)) = (path_in_file, path.parent())
            && relative.is_relative()
        {
            *relative = dir.join(&*relative);
        }
    }
    Ok(settings)
}

/// A TOML error as "line N: `key`: message": the line and key found from the error's span
/// (serde's messages about a value do not name its key).
fn describe(text: &str, message: &str, span: Option<std::ops::Range<usize>>) -> String {
    let message = message
        .trim_end()
        .replacen("unknown field", "unknown key", 1);
    let message = message.as_str();
    let Some(start) = span.map(|s| s.start).filter(|&s| s <= text.len()) else {
        return message.to_owned();
    };
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_no = text[..start].matches('\n').count() + 1;
    let line = text[line_start..].lines().next().unwrap_or_default();
    let key = line
        .split_once('=')
        .map(|(key, _)| key.trim().trim_matches('"'))
        .filter(|key| !key.is_empty() && !message.contains(&format!("`{key}`")));
    match key {
        Some(key) => format!("line {line_no}: `{key}`: {message}"),
        None => format!("line {line_no}: {message}"),
    }
}

/// A token: its value is never printed (`Debug` and the printed configuration show `<set>`).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub(crate) struct Secret(String);

impl Secret {
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<set>")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<set>")
    }
}

/// The address of a PostgreSQL store; printed with its password hidden.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub(crate) struct StoreUrl(String);

impl StoreUrl {
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }

    /// The address with any password replaced by `<set>`.
    pub(crate) fn redacted(&self) -> String {
        let text = &self.0;
        if let Some(rest) = text.split_once("://").map(|(_, rest)| rest)
            && let Some((userinfo, _)) = rest.split_once('@')
            && let Some((user, _)) = userinfo.split_once(':')
        {
            let scheme_len = text.len() - rest.len();
            return format!(
                "{}{user}:<set>@{}",
                &text[..scheme_len],
                &rest[userinfo.len() + 1..]
            );
        }
        text.split(' ')
            .map(|part| match part.split_once('=') {
                Some(("password", _)) => "password=<set>".to_owned(),
                _ => part.to_owned(),
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl std::str::FromStr for StoreUrl {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Serialize for StoreUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}

/// A duration in the file: a string such as `"30s"` or `"1m 30s"`.
fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map(Some).map_err(|e| {
        serde::de::Error::custom(format!(
            "{text:?} is not a duration ({e}); write one such as \"30s\" or \"1m 30s\""
        ))
    })
}

fn write_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}
