//! The admin API (`/v1/admin/…`): the bodies it answers with, the bodies it takes, and its
//! path and query parameters. States, messages and replies are the entity's own JSON, carried
//! as [`serde_json::Value`].

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use crate::error::ErrorDetail;

/// `GET /v1/admin/kinds`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Kinds {
    /// Each registered kind, by name.
    pub kinds: Vec<KindInfo>,
}

/// One registered kind and its counters since the node started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct KindInfo {
    /// The kind's name.
    pub kind: String,
    /// How it keeps its state: `snapshot`, `journal` or `ephemeral`.
    pub persistence: Option<String>,
    /// Entities stored.
    pub stored: u64,
    /// Entities in memory now.
    pub resident: u64,
    /// Activations since the start.
    pub activations: u64,
    /// Passivations since the start.
    pub passivations: u64,
    /// Handler panics since the start.
    pub restarts: u64,
    /// Messages set aside as dead letters since the start.
    pub dead_letters: u64,
}

/// A page of a kind's entities, in id order: of [`EntityRow`]s for `GET
/// /v1/admin/kinds/{kind}/entities` ([`Entities`]), of [`StateRow`]s, with their states, for
/// `GET /v1/admin/kinds/{kind}/query` ([`Matches`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Page<T> {
    /// The kind.
    pub kind: String,
    /// The page's entities, in id order.
    pub entities: Vec<T>,
    /// The id to ask for the next page after, if there may be one.
    pub next: Option<String>,
}

/// `GET /v1/admin/kinds/{kind}/entities`: a page of a kind's entities.
pub type Entities = Page<EntityRow>;

/// `GET /v1/admin/kinds/{kind}/query`: a page of the entities whose state matches.
pub type Matches = Page<StateRow>;

/// One entity, as a listing shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EntityRow {
    /// Its id.
    pub id: String,
    /// Whether it is in memory on this node.
    pub resident: bool,
    /// Whether an operator paused it.
    pub paused: bool,
    /// The version of its stored state; 0 if nothing is stored.
    pub state_version: u64,
    /// The schema version of its stored state.
    pub schema: u32,
    /// Its latest journal step (`Journal` kinds), else 0.
    pub last_step: u64,
    /// When its last step committed, in milliseconds since the Unix epoch.
    pub updated_at_ms: Option<i64>,
}

/// One entity's committed state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StateRow {
    /// Its id.
    pub id: String,
    /// Its state.
    pub state: Value,
    /// The state's version.
    pub version: u64,
    /// When it committed, in milliseconds since the Unix epoch.
    pub updated_at_ms: i64,
}

/// `GET /v1/admin/paused`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Paused {
    /// The paused entities.
    pub paused: Vec<EntityRef>,
}

/// An entity, by kind and id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EntityRef {
    /// Its kind.
    pub kind: String,
    /// Its id.
    pub id: String,
}

/// `GET /v1/admin/quarantined`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Quarantine {
    /// The quarantined entities.
    pub quarantined: Vec<QuarantinedRow>,
}

/// An entity whose stored bytes cannot be read back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct QuarantinedRow {
    /// Its kind.
    pub kind: String,
    /// Its id.
    pub id: String,
    /// Why, as an error code (`corrupt_state`, `replay_diverged`, …).
    pub code: String,
    /// Why, for a person.
    pub reason: String,
    /// Since when, in milliseconds since the Unix epoch.
    pub since_ms: i64,
}

/// `GET /v1/admin/dead-letters` (and each letter of it, alone, at `…/{seq}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeadLetters {
    /// The letters, oldest first.
    pub dead_letters: Vec<DeadLetterRow>,
}

/// A message set aside after failing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeadLetterRow {
    /// Its number.
    pub seq: u64,
    /// The target's kind.
    pub kind: String,
    /// The target's id.
    pub id: String,
    /// The message.
    pub message: Value,
    /// Why it failed.
    pub error: String,
    /// How many times it failed.
    pub attempts: u32,
    /// When it was set aside, in milliseconds since the Unix epoch.
    pub at_ms: i64,
}

/// `GET /v1/admin/cluster`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ClusterInfo {
    /// This node's name in the cluster; `None` outside one.
    pub node: Option<String>,
    /// How many shards this node serves now.
    pub served_shards: usize,
    /// The live members.
    pub members: Vec<Member>,
}

/// A live member of the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Member {
    /// Its name.
    pub node: String,
    /// Where its gateway listens.
    pub address: String,
    /// How many shards it holds.
    pub shards: usize,
    /// The build it runs (such as `0.1.0+d342571`); empty if it does not say (an older
    /// build).
    #[serde(default)]
    pub build: String,
}

/// `GET /v1/admin/kinds/{kind}/indexes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Indexes {
    /// The kind.
    pub kind: String,
    /// The paths its states are indexed by.
    pub indexes: Vec<String>,
}

/// The body of `POST /v1/admin/kinds/{kind}/indexes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct IndexPath {
    /// The indexed path, such as `owner` or `seats[0].player`.
    #[schema(
        min_length = 1,
        pattern = r"^(?!(?:[Aa][Nn][Dd]|[Oo][Rr]|[Nn][Oo][Tt]|[Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee]|[Nn][Uu][Ll][Ll])\b)[A-Za-z_][A-Za-z0-9_]{0,15}(?:\.[A-Za-z_][A-Za-z0-9_]{0,15}|\[(?:0|[1-9][0-9]{0,5})\]){0,3}$",
        example = "owner"
    )]
    #[param(
        min_length = 1,
        pattern = r"^(?!(?:[Aa][Nn][Dd]|[Oo][Rr]|[Nn][Oo][Tt]|[Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee]|[Nn][Uu][Ll][Ll])\b)[A-Za-z_][A-Za-z0-9_]{0,15}(?:\.[A-Za-z_][A-Za-z0-9_]{0,15}|\[(?:0|[1-9][0-9]{0,5})\]){0,3}$",
        example = "owner"
    )]
    pub path: String,
}

/// `201` to `POST /v1/admin/kinds/{kind}/indexes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct IndexCreated {
    /// The kind.
    pub kind: String,
    /// The indexed path, as the node writes it.
    pub path: String,
}

/// `DELETE /v1/admin/kinds/{kind}/indexes/{path}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct IndexDropped {
    /// The kind.
    pub kind: String,
    /// The path whose index was dropped.
    pub dropped: String,
}

/// `POST /v1/admin/kinds/{kind}/passivate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct KindPassivated {
    /// Entities that left memory.
    pub passivated: usize,
    /// Entities handling a message or waiting for a commit, which stayed.
    pub busy: usize,
}

/// `POST /v1/admin/entities/{kind}/{id}/passivate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Passivated {
    /// What happened.
    pub outcome: Passivation,
}

/// What passivating one entity did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Passivation {
    /// It left memory; its next message activates it again.
    Passivated,
    /// It is handling a message or waiting for a commit; it stays.
    Busy,
    /// It was not in memory.
    NotResident,
}

/// `POST /v1/admin/entities/{kind}/{id}/pause` and `…/resume`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PauseState {
    /// Whether the entity is paused now.
    pub paused: bool,
    /// Whether this request changed that.
    pub changed: bool,
}

/// `POST /v1/admin/entities/{kind}/{id}/release`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Released {
    /// Whether the entity was quarantined (and is released now).
    pub released: bool,
}

/// `POST /v1/admin/dead-letters/{seq}/retry`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Retried {
    /// The entity's reply to the letter's message.
    pub reply: Value,
}

/// `POST /v1/admin/dead-letters/{seq}/discard`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Discarded {
    /// The discarded letter's number.
    pub discarded: u64,
}

/// `GET /v1/admin/entities/{kind}/{id}`: the latest durable state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DurableState {
    /// The entity's kind.
    pub kind: String,
    /// Its id.
    pub id: String,
    /// Its state, as of its last durable step.
    pub state: Value,
}

/// `GET /v1/admin/entities/{kind}/{id}/at/{step}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StateAt {
    /// The entity's kind.
    pub kind: String,
    /// Its id.
    pub id: String,
    /// The step.
    pub step: u64,
    /// Its state just after that step.
    pub state: Value,
}

/// `GET /v1/admin/entities/{kind}/{id}/history`: a page of a journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct History {
    /// The entity's kind.
    pub kind: String,
    /// Its id.
    pub id: String,
    /// The steps, in order.
    pub history: Vec<Step>,
}

/// One step of a journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Step {
    /// The step's number: 1 for the entity's first step.
    pub step: u64,
    /// When it ran (its `ctx.now()`), in microseconds since the Unix epoch.
    pub at_us: i64,
    /// The message.
    pub message: Value,
    /// The rest of what was recorded: `reply` (a digest of the reply), and `seed` and `init`
    /// when the step drew randomness or created the entity.
    pub recorded: Value,
}

/// `GET /v1/admin/entities/{kind}/{id}/pending`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Pending {
    /// The entity's kind.
    pub kind: String,
    /// Its id.
    pub id: String,
    /// What it has scheduled and not applied yet, by number (at most 1,000).
    pub pending: Vec<PendingRow>,
}

/// A timer, a message to another entity or an effect, not applied yet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PendingRow {
    /// Its number among the entity's rows.
    pub seq: u64,
    /// What it is.
    pub class: PendingClass,
    /// When it is due, in milliseconds since the Unix epoch.
    pub due_ms: i64,
    /// Whom it is for.
    pub target: EntityRef,
    /// The message.
    pub body: Value,
    /// For an effect this node is running whose last attempt failed: how many failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_attempts: Option<u32>,
    /// And the last one's error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// What a pending row is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PendingClass {
    /// A timer the entity set for itself.
    Timer,
    /// A message to another entity.
    Message,
    /// An effect to run after the step.
    Effect,
    /// An ask of another entity, whose answer comes back to the entity.
    Ask,
}

/// The body of `POST /v1/admin/kinds/{kind}/migrate`; every field may be left out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MigrateRequest {
    /// Count what would change, and write nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Also write a snapshot of each migrated `Journal` entity.
    #[serde(default)]
    pub snapshot: bool,
    /// Entities rewritten at a time (left out, or null: 64; 0 is taken as 1).
    #[serde(default, deserialize_with = "crate::params::integer")]
    #[schema(
        minimum = 0,
        maximum = 18_446_744_073_709_551_615_u64,
        format = "uint64"
    )]
    pub batch: Option<u64>,
}

/// `GET /v1/admin/kinds/{kind}/migrate` (and `202` to its `POST`): a migration pass.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MigrationStatus {
    /// The kind.
    pub kind: String,
    /// Whether the pass writes nothing.
    pub dry_run: bool,
    /// Whether it also snapshots `Journal` entities.
    pub snapshot: bool,
    /// How far it got.
    pub progress: MigrationProgress,
    /// Whether it runs still.
    pub running: bool,
    /// Once done: what it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<MigrationReport>,
    /// Once failed: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorDetail>,
}

/// How far a migration pass got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MigrationProgress {
    /// Entities to look at, counted when the pass started.
    pub total: u64,
    /// Entities looked at.
    pub examined: u64,
    /// Entities rewritten (in a dry run: that would be).
    pub changed: u64,
    /// Entities that could not be migrated.
    pub failed: u64,
}

/// What a migration pass did (or, in a dry run, would do).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MigrationReport {
    /// The kind.
    pub kind: String,
    /// The kind's schema version in the node's build: what states are migrated to.
    pub schema: u32,
    /// Whether nothing was written.
    pub dry_run: bool,
    /// Entities looked at.
    pub examined: u64,
    /// Entities rewritten (in a dry run: that would be).
    pub changed: u64,
    /// Entities already at the kind's version.
    pub unchanged: u64,
    /// Entities of shards this node does not serve: the pass on the nodes that serve them
    /// migrates them.
    pub not_served: u64,
    /// Entities that could not be migrated.
    pub failed: u64,
    /// The first of them, with their errors.
    pub failures: Vec<MigrationFailure>,
    /// How long the pass took, in milliseconds.
    pub elapsed_ms: u64,
}

/// An entity a migration pass could not migrate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MigrationFailure {
    /// Its id.
    pub id: String,
    /// The error's code (`migration_failed`, `state_too_new`, `replay_diverged`, …).
    pub code: String,
    /// The error, in words.
    pub error: String,
}

/// The query of a page of entities: `?after=ID&limit=N`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Start after this id (the previous page's `next`).
    pub after: Option<String>,
    /// The most rows: at most 1000 come back (a larger limit is taken as 1000, and 0 as 1).
    #[param(
        minimum = 0,
        maximum = 18_446_744_073_709_551_615_u64,
        format = "uint64",
        default = 100
    )]
    pub limit: Option<u64>,
}

/// The filter of `GET /v1/admin/kinds/{kind}/query?filter=F` (its page is a [`PageQuery`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FilterQuery {
    /// A filter over the state (the grammar is in the docs). The pattern describes a common
    /// part of it: up to four comparisons of a path (or `$`, the state) with a number, a short
    /// string, `true`, `false` or `null`, joined by `and` or `or`, each maybe after `not`; a
    /// client that keeps to it writes only filters the server takes.
    #[param(
        min_length = 1,
        max_length = 4096,
        pattern = r#"^(?:not )?(?:\$|(?!(?:[Aa][Nn][Dd]|[Oo][Rr]|[Nn][Oo][Tt]|[Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee]|[Nn][Uu][Ll][Ll])\b)[A-Za-z_][A-Za-z0-9_]{0,15})(?:\.[A-Za-z_][A-Za-z0-9_]{0,15}|\[(?:0|[1-9][0-9]{0,5})\]|\[\*\]){0,3} ?(?:(?:==?|!=|<>|<=?|>=?) ?(?:-?(?:0|[1-9][0-9]{0,8})(?:\.[0-9]{1,6})?|(?:'[A-Za-z0-9 _-]{0,16}'|\"[A-Za-z0-9 _-]{0,16}\"))|(?:==?|!=|<>) ?(?:true|false|null))(?: (?:and|or) (?:not )?(?:\$|(?!(?:[Aa][Nn][Dd]|[Oo][Rr]|[Nn][Oo][Tt]|[Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee]|[Nn][Uu][Ll][Ll])\b)[A-Za-z_][A-Za-z0-9_]{0,15})(?:\.[A-Za-z_][A-Za-z0-9_]{0,15}|\[(?:0|[1-9][0-9]{0,5})\]|\[\*\]){0,3} ?(?:(?:==?|!=|<>|<=?|>=?) ?(?:-?(?:0|[1-9][0-9]{0,8})(?:\.[0-9]{1,6})?|(?:'[A-Za-z0-9 _-]{0,16}'|\"[A-Za-z0-9 _-]{0,16}\"))|(?:==?|!=|<>) ?(?:true|false|null))){0,3}$"#,
        example = "players[*].name = 'alice' and pot > 100"
    )]
    pub filter: String,
}

/// The query of `DELETE /v1/admin/entities/{kind}/{id}`: `?force=true` deletes it even with
/// messages in flight (after them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeleteQuery {
    /// Delete it even if messages to it are in flight (queued, or applied and not yet durable):
    /// the deletion then comes after them. Without it, such an entity is refused with `409
    /// busy`.
    #[serde(default)]
    pub force: bool,
}

/// `DELETE /v1/admin/entities/{kind}/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Deleted {
    /// The entity's kind.
    pub kind: String,
    /// Its id.
    pub id: String,
    /// Always `true`: its state, journal and rows to itself are gone, durably; its next
    /// message starts it afresh.
    pub deleted: bool,
}

/// The query of a page of a journal: `?after=STEP&limit=N`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StepsQuery {
    /// Start after this step.
    #[param(
        minimum = 0,
        maximum = 18_446_744_073_709_551_615_u64,
        format = "uint64"
    )]
    pub after: Option<u64>,
    /// The most rows: at most 1000 come back (a larger limit is taken as 1000, and 0 as 1).
    #[param(
        minimum = 0,
        maximum = 18_446_744_073_709_551_615_u64,
        format = "uint64",
        default = 100
    )]
    pub limit: Option<u64>,
}

/// The query of `GET /v1/admin/dead-letters`: `?kind=K`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LetterQuery {
    /// Only this kind's letters.
    pub kind: Option<String>,
}
