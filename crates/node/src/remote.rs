//! The subcommands that talk to a running node over HTTP: `call` (the client routes) and
//! `entities`, `query`, `index`, `state`, `delete`, `pause`, `resume`, `dead-letters`, `passivate`,
//! `cluster` (the admin API). Each is a route of the
//! gateway ([`crate::client`]) and a way to print its answer ([`crate::output`]); with
//! `--json`, the node's answer is printed as it came, on one line.

use std::io::Read;

use anyhow::Context;
use perennial_api::admin as api;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::client::{Client, Role, encode};
use crate::output;

/// How to reach the node for the admin API.
#[derive(Debug, clap::Args)]
pub(crate) struct Admin {
    /// The node's URL.
    #[arg(
        long,
        env = "PERENNIAL_NODE",
        default_value = "http://127.0.0.1:8080",
        value_name = "URL",
        global = true
    )]
    node: String,
    /// The node's admin token (the one it was started with: --admin-token).
    #[arg(
        long,
        env = "PERENNIAL_ADMIN_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN",
        global = true
    )]
    token: Option<String>,
    /// The authority that signed the node's certificate (PEM), for a node serving HTTPS
    /// with a certificate of your own [default: the public authorities]
    #[arg(long, env = "PERENNIAL_CA", value_name = "FILE", global = true)]
    ca: Option<std::path::PathBuf>,
    /// Print the node's answer as JSON on one line, and nothing else, on stdout.
    #[arg(long, global = true)]
    json: bool,
}

impl Admin {
    fn client(&self) -> Result<Client, crate::client::Error> {
        Client::new(
            &self.node,
            self.token.clone(),
            Role::Admin,
            self.ca.as_deref(),
        )
    }
}

/// How to reach the node for calls.
#[derive(Debug, clap::Args)]
pub(crate) struct Caller {
    /// The node's URL.
    #[arg(
        long,
        env = "PERENNIAL_NODE",
        default_value = "http://127.0.0.1:8080",
        value_name = "URL"
    )]
    node: String,
    /// The node's client token (needed when it was started with --client-token).
    #[arg(
        long,
        env = "PERENNIAL_CLIENT_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    token: Option<String>,
    /// The authority that signed the node's certificate (PEM), for a node serving HTTPS
    /// with a certificate of your own [default: the public authorities]
    #[arg(long, env = "PERENNIAL_CA", value_name = "FILE")]
    ca: Option<std::path::PathBuf>,
    /// Print the reply as the node sent it (one line of JSON), and nothing else, on stdout.
    #[arg(long)]
    json: bool,
}

/// An entity named on the command line as `KIND/ID`; the id may contain `/`.
#[derive(Debug, Clone)]
pub(crate) struct Entity {
    kind: String,
    id: String,
}

impl Entity {
    fn path(&self) -> String {
        format!("{}/{}", encode(&self.kind), encode(&self.id))
    }
}

impl std::fmt::Display for Entity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.kind, self.id)
    }
}

impl std::str::FromStr for Entity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('/') {
            Some((kind, id)) if !kind.is_empty() && !id.is_empty() => Ok(Entity {
                kind: kind.to_owned(),
                id: id.to_owned(),
            }),
            _ => Err(format!("{s:?} is not KIND/ID, such as counter/c1")),
        }
    }
}

/// `perennial call`.
#[derive(Debug, clap::Args)]
pub(crate) struct CallArgs {
    /// The entity, as KIND/ID (`counter/c1`).
    #[arg(value_name = "KIND/ID")]
    entity: Entity,
    /// The message, as JSON (`'{"add": 1}'`, `'"get"'`); `-` reads it from stdin.
    #[arg(value_name = "JSON", allow_hyphen_values = true)]
    message: String,
    /// An idempotency key: a retry with the same key gets the first reply, and the message
    /// is applied once.
    #[arg(long, value_name = "KEY")]
    idempotency_key: Option<String>,
    #[command(flatten)]
    node: Caller,
}

pub(crate) fn call(args: CallArgs) -> anyhow::Result<()> {
    let message = if args.message == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read the message from stdin")?;
        text
    } else {
        args.message
    };
    if let Err(e) = serde_json::from_str::<Value>(&message) {
        anyhow::bail!(
            "the message is not JSON ({e}); quote it for the shell, and quote a string \
             message twice: perennial call {} '\"get\"'",
            args.entity
        );
    }
    let client = Client::new(
        &args.node.node,
        args.node.token,
        Role::Client,
        args.node.ca.as_deref(),
    )?;
    let headers: Vec<(&str, &str)> = args
        .idempotency_key
        .iter()
        .map(|key| (perennial_gateway::IDEMPOTENCY_KEY, key.as_str()))
        .collect();
    let path = format!("/v1/{}", args.entity.path());
    let reply = client.post_text(&path, &message, &headers)?;
    if args.node.json {
        output::answer(reply.trim_end());
    } else {
        output::pretty(&serde_json::from_str(&reply)?);
    }
    Ok(())
}

/// Which page of a listing.
#[derive(Debug, clap::Args)]
pub(crate) struct Page {
    /// Start after this id (the last of the previous page).
    #[arg(long, value_name = "ID")]
    after: Option<String>,
    /// The most entities listed (the node lists at most 1000 at a time).
    #[arg(long, default_value_t = 100, value_name = "N")]
    limit: usize,
}

impl Page {
    /// The page as query parameters: `after=…&limit=…`.
    fn query(&self) -> String {
        match &self.after {
            Some(after) => format!("after={}&limit={}", encode(after), self.limit),
            None => format!("limit={}", self.limit),
        }
    }
}

/// `perennial entities`.
#[derive(Debug, clap::Args)]
pub(crate) struct EntitiesArgs {
    /// The kind.
    kind: String,
    #[command(flatten)]
    page: Page,
    #[command(flatten)]
    node: Admin,
}

pub(crate) fn entities(args: EntitiesArgs) -> anyhow::Result<()> {
    let path = format!("/v1/admin/kinds/{}/entities?", encode(&args.kind));
    let again = format!("perennial entities {}", args.kind);
    let columns = [
        "ID",
        "RESIDENT",
        "STATE VERSION",
        "LAST STEP",
        "LAST ACTIVITY",
    ];
    listing(
        &args.node,
        &args.page,
        &path,
        &again,
        &columns,
        |page: api::Entities| {
            let rows = page.entities.into_iter().map(|e| {
                vec![
                    output::cell(&Value::from(e.id), 60),
                    if e.resident { "yes" } else { "no" }.to_owned(),
                    e.state_version.to_string(),
                    e.last_step.to_string(),
                    output::ago_ms(e.updated_at_ms),
                ]
            });
            (rows.collect(), page.next)
        },
    )
}

/// Prints a page of entities from `path` (which ends where the page's parameters go): the
/// node's JSON with `--json`, else the table `rows` makes of the page (`T`) under `columns`
/// and, when there may be more, the command (`again`) that shows the next page.
fn listing<T: DeserializeOwned>(
    node: &Admin,
    page: &Page,
    path: &str,
    again: &str,
    columns: &[&str],
    rows: impl FnOnce(T) -> (Vec<Vec<String>>, Option<String>),
) -> anyhow::Result<()> {
    let answer = node.client()?.get(&format!("{path}{}", page.query()))?;
    if node.json {
        output::json(&answer);
        return Ok(());
    }
    let (rows, next) = rows(typed(answer)?);
    output::answer(&output::table(columns, rows));
    if let Some(next) = next {
        output::note(&format!("there may be more: {again} --after '{next}'"));
    }
    Ok(())
}

/// The node's answer as the wire model says it is (see `perennial-api`).
fn typed<T: DeserializeOwned>(answer: Value) -> anyhow::Result<T> {
    serde_json::from_value(answer).map_err(|e| {
        anyhow::anyhow!(
            "the node's answer is not what this build of the CLI expects ({e}); \
             is the node a different version? --json prints the answer as it came"
        )
    })
}

/// `perennial query`.
#[derive(Debug, clap::Args)]
pub(crate) struct QueryArgs {
    /// The kind.
    kind: String,
    /// The filter over the state: `value > 100`, `seats[*].player = 'alice'` (quote it for
    /// the shell).
    filter: String,
    #[command(flatten)]
    page: Page,
    #[command(flatten)]
    node: Admin,
}

pub(crate) fn query(args: QueryArgs) -> anyhow::Result<()> {
    let path = format!(
        "/v1/admin/kinds/{}/query?filter={}&",
        encode(&args.kind),
        encode(&args.filter)
    );
    let again = format!("perennial query {} {:?}", args.kind, args.filter);
    listing(
        &args.node,
        &args.page,
        &path,
        &again,
        &["ID", "VERSION", "STATE"],
        |page: api::Matches| {
            let rows = page.entities.into_iter().map(|e| {
                vec![
                    output::cell(&Value::from(e.id), 40),
                    e.version.to_string(),
                    output::cell(&e.state, 100),
                ]
            });
            (rows.collect(), page.next)
        },
    )
}

/// `perennial index`.
#[derive(Debug, clap::Args)]
pub(crate) struct IndexArgs {
    /// The kind.
    kind: String,
    /// The path to index (`owner`, `seats[0].player`); without one, list the kind's indexes.
    path: Option<String>,
    /// Drop the index by the path instead.
    #[arg(long, requires = "path")]
    drop: bool,
    #[command(flatten)]
    node: Admin,
}

pub(crate) fn index(args: IndexArgs) -> anyhow::Result<()> {
    let client = args.node.client()?;
    let indexes = format!("/v1/admin/kinds/{}/indexes", encode(&args.kind));
    let answer = match (&args.path, args.drop) {
        (None, _) => client.get(&indexes)?,
        (Some(path), false) => {
            client.post(&indexes, &serde_json::json!({ "path": path }).to_string())?
        }
        (Some(path), true) => client.delete(&format!("{indexes}/{}", encode(path)))?,
    };
    if args.node.json {
        output::json(&answer);
        return Ok(());
    }
    let text = match (&args.path, args.drop) {
        (None, _) => {
            let list: api::Indexes = typed(answer)?;
            let paths: Vec<String> = list
                .indexes
                .into_iter()
                .map(|p| output::cell(&Value::from(p), 200))
                .collect();
            if paths.is_empty() {
                format!("{}: no indexes", args.kind)
            } else {
                paths.join("\n")
            }
        }
        (Some(path), false) => format!("{}: indexed by {path}", args.kind),
        (Some(path), true) => format!("{}: index by {path} dropped", args.kind),
    };
    output::answer(&text);
    Ok(())
}

/// `perennial pause`, `perennial resume` and `perennial release`.
#[derive(Debug, clap::Args)]
pub(crate) struct PauseArgs {
    /// The entity, as KIND/ID.
    #[arg(value_name = "KIND/ID")]
    entity: Entity,
    #[command(flatten)]
    node: Admin,
}

/// Pauses (`pause` true) or resumes an entity.
pub(crate) fn pause(args: PauseArgs, pause: bool) -> anyhow::Result<()> {
    let verb = if pause { "pause" } else { "resume" };
    let path = format!("/v1/admin/entities/{}/{verb}", args.entity.path());
    let answer = args.node.client()?.post(&path, "")?;
    if args.node.json {
        output::json(&answer);
        return Ok(());
    }
    let state: api::PauseState = typed(answer)?;
    let text = match (pause, state.changed) {
        (true, true) => "paused: its calls get 409 paused; its timers and messages wait",
        (true, false) => "was paused already",
        (false, true) => "resumed: what waited is delivered in order",
        (false, false) => "was not paused",
    };
    output::answer(&format!("{}: {text}", args.entity));
    Ok(())
}

/// `perennial quarantined`.
#[derive(Debug, clap::Args)]
pub(crate) struct QuarantinedArgs {
    #[command(flatten)]
    node: Admin,
}

/// Lists the entities the node quarantined.
pub(crate) fn quarantined(args: QuarantinedArgs) -> anyhow::Result<()> {
    let answer = args.node.client()?.get("/v1/admin/quarantined")?;
    if args.node.json {
        output::json(&answer);
        return Ok(());
    }
    let list: api::Quarantine = typed(answer)?;
    if list.quarantined.is_empty() {
        output::answer("no entity is quarantined");
        return Ok(());
    }
    let rows = list
        .quarantined
        .into_iter()
        .map(|q| {
            vec![
                format!("{}/{}", q.kind, q.id),
                output::cell(&Value::from(q.code), 20),
                output::time_ms(q.since_ms),
                output::cell(&Value::from(q.reason), 100),
            ]
        })
        .collect();
    output::answer(&output::table(&["ENTITY", "CODE", "SINCE", "REASON"], rows));
    output::note("fix an entity's stored bytes, then: perennial release KIND/ID");
    Ok(())
}

/// Releases a quarantined entity.
pub(crate) fn release(args: PauseArgs) -> anyhow::Result<()> {
    let path = format!("/v1/admin/entities/{}/release", args.entity.path());
    let answer = args.node.client()?.post(&path, "")?;
    if args.node.json {
        output::json(&answer);
        return Ok(());
    }
    let released: api::Released = typed(answer)?;
    let text = if released.released {
        "released: its next message activates it from storage again, and what waited is \
         delivered"
    } else {
        "was not quarantined"
    };
    output::answer(&format!("{}: {text}", args.entity));
    Ok(())
}

/// `perennial delete`.
#[derive(Debug, clap::Args)]
pub(crate) struct DeleteArgs {
    /// The entity, as KIND/ID.
    #[arg(value_name = "KIND/ID")]
    entity: Entity,
    /// Delete it even with messages in flight (after them), instead of refusing.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    node: Admin,
}

/// Deletes an entity.
pub(crate) fn delete(args: DeleteArgs) -> anyhow::Result<()> {
    let force = if args.force { "?force=true" } else { "" };
    let path = format!("/v1/admin/entities/{}{force}", args.entity.path());
    let answer = args.node.client()?.delete(&path)?;
    if args.node.json {
        output::json(&answer);
        return Ok(());
    }
    let _: api::Deleted = typed(answer)?;
    output::answer(&format!(
        "{}: deleted (its next message starts it afresh)",
        args.entity
    ));
    Ok(())
}

/// `perennial state`.
#[derive(Debug, clap::Args)]
pub(crate) struct StateArgs {
    /// The entity, as KIND/ID.
    #[arg(value_name = "KIND/ID")]
    entity: Entity,
    /// Show its history (its journal: `Journal` kinds) instead of its state.
    #[arg(long, conflicts_with = "at")]
    history: bool,
    /// Show its state as of this step, by replaying its journal (`Journal` kinds).
    #[arg(long, value_name = "STEP")]
    at: Option<u64>,
    /// With --history: start after this step.
    #[arg(long, requires = "history", value_name = "STEP")]
    after: Option<u64>,
    /// With --history: the most steps shown.
    #[arg(long, requires = "history", default_value_t = 100, value_name = "N")]
    limit: usize,
    #[command(flatten)]
    node: Admin,
}

pub(crate) fn state(args: StateArgs) -> anyhow::Result<()> {
    let client = args.node.client()?;
    let entity = &args.entity;
    let base = format!("/v1/admin/entities/{}", entity.path());
    let answer = if args.history {
        client.get(&format!(
            "{base}/history?after={}&limit={}",
            args.after.unwrap_or(0),
            args.limit
        ))?
    } else if let Some(step) = args.at {
        client.get(&format!("{base}/at/{step}"))?
    } else {
        client.get(&base)?
    };
    if args.node.json {
        output::json(&answer);
        return Ok(());
    }
    if let Some(step) = args.at {
        let at: api::StateAt = typed(answer)?;
        output::answer(&format!("{entity} at step {step}"));
        output::pretty(&at.state);
        return Ok(());
    }
    if !args.history {
        let latest: api::DurableState = typed(answer)?;
        output::answer(&entity.to_string());
        output::pretty(&latest.state);
        return Ok(());
    }
    let history: api::History = typed(answer)?;
    let steps = history.history.len();
    let last = history.history.last().map(|h| h.step);
    let rows = history
        .history
        .into_iter()
        .map(|h| {
            vec![
                h.step.to_string(),
                output::time_us(h.at_us),
                output::cell(&h.message, 80),
                if h.recorded.get("seed").is_some() {
                    "yes"
                } else {
                    ""
                }
                .to_owned(),
            ]
        })
        .collect();
    output::answer(&output::table(&["STEP", "AT", "MESSAGE", "RANDOM"], rows));
    if steps == args.limit
        && let Some(last) = last
    {
        output::note(&format!(
            "there may be more: perennial state {entity} --history --after {last}"
        ));
    }
    Ok(())
}

/// `perennial dead-letters`: without an action, the list.
#[derive(Debug, clap::Args)]
pub(crate) struct DeadLettersArgs {
    #[command(subcommand)]
    action: Option<LetterAction>,
    /// List only the dead letters of this kind.
    #[arg(long, value_name = "KIND")]
    kind: Option<String>,
    #[command(flatten)]
    node: Admin,
}

#[derive(Debug, clap::Subcommand)]
enum LetterAction {
    /// Show one dead letter: its entity, message, error and attempts.
    Show {
        /// The letter's number (SEQ in the list).
        seq: u64,
    },
    /// Apply the letter's message again; the step that applies it deletes the letter. Prints
    /// the reply.
    Retry {
        /// The letter's number (SEQ in the list).
        seq: u64,
    },
    /// Delete the letter without applying its message.
    Discard {
        /// The letter's number (SEQ in the list).
        seq: u64,
    },
}

pub(crate) fn dead_letters(args: DeadLettersArgs) -> anyhow::Result<()> {
    let client = args.node.client()?;
    let json = args.node.json;
    let Some(action) = args.action else {
        let path = match &args.kind {
            Some(kind) => format!("/v1/admin/dead-letters?kind={}", encode(kind)),
            None => "/v1/admin/dead-letters".to_owned(),
        };
        let list = client.get(&path)?;
        if json {
            output::json(&list);
            return Ok(());
        }
        let list: api::DeadLetters = typed(list)?;
        let rows = list
            .dead_letters
            .into_iter()
            .map(|l| {
                vec![
                    l.seq.to_string(),
                    format!(
                        "{}/{}",
                        output::cell(&Value::from(l.kind), 30),
                        output::cell(&Value::from(l.id), 40)
                    ),
                    l.attempts.to_string(),
                    output::ago_ms(Some(l.at_ms)),
                    output::cell(&Value::from(l.error), 50),
                    output::cell(&l.message, 40),
                ]
            })
            .collect();
        output::answer(&output::table(
            &["SEQ", "ENTITY", "ATTEMPTS", "SET ASIDE", "ERROR", "MESSAGE"],
            rows,
        ));
        return Ok(());
    };
    anyhow::ensure!(
        args.kind.is_none(),
        "--kind filters the list; `show`, `retry` and `discard` take a letter's number only"
    );
    match action {
        LetterAction::Show { seq } => {
            let letter = client.get(&format!("/v1/admin/dead-letters/{seq}"))?;
            if json {
                output::json(&letter);
                return Ok(());
            }
            let letter: api::DeadLetterRow = typed(letter)?;
            let field = |name: &str, value: String| format!("{name:<10} {value}");
            let lines = [
                field("seq", letter.seq.to_string()),
                field(
                    "entity",
                    format!(
                        "{}/{}",
                        output::cell(&Value::from(letter.kind), 256),
                        output::cell(&Value::from(letter.id), 256)
                    ),
                ),
                field("attempts", letter.attempts.to_string()),
                field(
                    "set aside",
                    format!(
                        "{} ({})",
                        output::time_ms(letter.at_ms),
                        output::ago_ms(Some(letter.at_ms))
                    ),
                ),
                field("error", letter.error),
                "message".to_owned(),
            ];
            output::answer(&lines.join("\n"));
            output::pretty(&letter.message);
        }
        LetterAction::Retry { seq } => {
            let answer = client.post(&format!("/v1/admin/dead-letters/{seq}/retry"), "")?;
            if json {
                output::json(&answer);
                return Ok(());
            }
            let retried: api::Retried = typed(answer)?;
            output::answer(&format!("dead letter {seq} applied; the reply:"));
            output::pretty(&retried.reply);
        }
        LetterAction::Discard { seq } => {
            let answer = client.post(&format!("/v1/admin/dead-letters/{seq}/discard"), "")?;
            if json {
                output::json(&answer);
                return Ok(());
            }
            output::answer(&format!("dead letter {seq} discarded"));
        }
    }
    Ok(())
}

/// `perennial passivate`.
#[derive(Debug, clap::Args)]
pub(crate) struct PassivateArgs {
    /// A kind (every idle entity of it), or one entity as KIND/ID.
    #[arg(value_name = "KIND[/ID]")]
    target: String,
    #[command(flatten)]
    node: Admin,
}

pub(crate) fn passivate(args: PassivateArgs) -> anyhow::Result<()> {
    let client = args.node.client()?;
    let entity = args.target.parse::<Entity>().ok();
    let path = match &entity {
        Some(entity) => format!("/v1/admin/entities/{}/passivate", entity.path()),
        None => format!(
            "/v1/admin/kinds/{}/passivate",
            encode(args.target.trim_end_matches('/'))
        ),
    };
    let answer = client.post(&path, "")?;
    if args.node.json {
        output::json(&answer);
        return Ok(());
    }
    let text = match &entity {
        Some(entity) => match typed::<api::Passivated>(answer)?.outcome {
            api::Passivation::Passivated => {
                format!("{entity}: passivated (its next message activates it)")
            }
            api::Passivation::Busy => format!(
                "{entity}: busy (handling a message or waiting for a commit); it stays in memory"
            ),
            api::Passivation::NotResident => format!("{entity}: was not in memory"),
        },
        None => {
            let kind: api::KindPassivated = typed(answer)?;
            format!(
                "{}: {} passivated, {} busy (they stay in memory)",
                args.target, kind.passivated, kind.busy
            )
        }
    };
    output::answer(&text);
    Ok(())
}

/// `perennial cluster`.
#[derive(Debug, clap::Args)]
pub(crate) struct ClusterArgs {
    #[command(flatten)]
    node: Admin,
}

pub(crate) fn cluster(args: ClusterArgs) -> anyhow::Result<()> {
    let answer = args.node.client()?.get("/v1/admin/cluster")?;
    if args.node.json {
        output::json(&answer);
        return Ok(());
    }
    let info: api::ClusterInfo = typed(answer)?;
    let Some(node) = info.node else {
        output::answer(&format!(
            "not in a cluster: this node serves all {} shards",
            info.served_shards
        ));
        return Ok(());
    };
    let rows = info
        .members
        .into_iter()
        .map(|m| {
            let marker = if m.node == node { " (this node)" } else { "" };
            vec![
                format!("{}{marker}", m.node),
                output::cell(&Value::from(m.address), 40),
                m.shards.to_string(),
                if m.build.is_empty() {
                    "(older)".to_owned()
                } else {
                    m.build
                },
            ]
        })
        .collect();
    output::answer(&output::table(
        &["node", "address", "shards", "build"],
        rows,
    ));
    Ok(())
}
