//! Migration passes on a running node, under the admin API (see [`perennial_core::Migrate`]):
//!
//! - `POST /v1/admin/kinds/{kind}/migrate` with `{"dry_run": false, "snapshot": false,
//!   "batch": 64}` (every field optional): starts a pass over the kind's stored entities in
//!   the background, while the node serves its calls, and answers `202` with its status.
//!   `409 migration_running` if one is running for the kind.
//! - `GET /v1/admin/kinds/{kind}/migrate`: the pass's status: `running`, its `progress`
//!   (`total`, `examined`, `changed`, `failed`) and, once done, its `report` (or `error`).
//!
//! A pass rewrites only the entities of shards this node serves; in a cluster, start it on
//! every node. A pass cut short (the node stopped) is resumed by starting it again.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, body::Bytes};
use parking_lot::Mutex;
use perennial_core::{Migrate, MigrationReport, Progress, Runtime};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::ApiError;

/// The passes started on this node, by kind: the running one, or the last one.
#[derive(Default)]
pub(crate) struct Passes {
    by_kind: Mutex<HashMap<String, Arc<Pass>>>,
}

impl std::fmt::Debug for Passes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kinds: Vec<String> = self.by_kind.lock().keys().cloned().collect();
        f.debug_struct("Passes").field("kinds", &kinds).finish()
    }
}

struct Pass {
    plan: Body,
    progress: Progress,
    /// `None` while it runs.
    outcome: Mutex<Option<Result<MigrationReport, ApiError>>>,
}

/// What a `POST` asks for.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    snapshot: bool,
    #[serde(default, deserialize_with = "integer")]
    batch: Option<usize>,
}

/// A JSON integer, also when written with a zero fraction (`64.0`): JSON Schema's `integer`,
/// which `/openapi.json` promises, admits both.
fn integer<'de, D: serde::Deserializer<'de>>(input: D) -> Result<Option<usize>, D::Error> {
    use serde::Deserialize;
    use serde::de::Error;
    let Some(number) = Option::<serde_json::Number>::deserialize(input)? else {
        return Ok(None);
    };
    if let Some(n) = number.as_u64() {
        return usize::try_from(n).map(Some).map_err(D::Error::custom);
    }
    match number.as_f64() {
        // `u64::MAX as f64` is 2^64, one past the largest u64.
        Some(x) if x.fract() == 0.0 && (0.0..u64::MAX as f64).contains(&x) =>
        {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            Ok(Some(x as usize))
        }
        _ => Err(D::Error::custom(format!(
            "invalid value: {number}, expected a non-negative integer"
        ))),
    }
}

impl Pass {
    fn status(&self, kind: &str) -> Value {
        let p = &self.progress;
        let progress = json!({
            "total": p.total(),
            "examined": p.examined(),
            "changed": p.changed(),
            "failed": p.failed(),
        });
        let mut status = json!({
            "kind": kind,
            "dry_run": self.plan.dry_run,
            "snapshot": self.plan.snapshot,
            "progress": progress,
        });
        match &*self.outcome.lock() {
            None => status["running"] = json!(true),
            Some(Ok(report)) => {
                status["running"] = json!(false);
                status["report"] = serde_json::to_value(report).unwrap_or(Value::Null);
            }
            Some(Err(error)) => {
                status["running"] = json!(false);
                status["error"] = json!({"code": error.code(), "message": error.message()});
            }
        }
        status
    }
}

pub(crate) async fn start(
    State(rt): State<Runtime>,
    State(passes): State<Arc<Passes>>,
    kind: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Path(kind) = kind.map_err(ApiError::from_path)?;
    let plan: Body = if body.iter().all(u8::is_ascii_whitespace) {
        Body::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_body",
                format!("expected {{\"dry_run\", \"snapshot\", \"batch\"}}: {e}"),
            )
        })?
    };
    if rt.persistence(&kind).is_none() {
        return Err(
            perennial_core::CallError::<std::convert::Infallible>::UnknownKind(kind).into(),
        );
    }
    let pass = {
        let mut by_kind = passes.by_kind.lock();
        if let Some(running) = by_kind.get(&kind)
            && running.outcome.lock().is_none()
        {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "migration_running",
                format!("a pass over {kind} is running; follow it with GET on this path"),
            ));
        }
        let pass = Arc::new(Pass {
            plan,
            progress: Progress::default(),
            outcome: Mutex::new(None),
        });
        by_kind.insert(kind.clone(), Arc::clone(&pass));
        pass
    };
    let mut migrate = Migrate::new();
    if plan.dry_run {
        migrate = migrate.dry_run();
    }
    if plan.snapshot {
        migrate = migrate.snapshot();
    }
    if let Some(batch) = plan.batch {
        migrate = migrate.batch(batch);
    }
    let running = Arc::clone(&pass);
    let name = kind.clone();
    tokio::spawn(async move {
        let outcome = rt.admin().migrate(&name, migrate, &running.progress).await;
        match &outcome {
            Ok(report) => tracing::info!(kind = %name, changed = report.changed,
                failed = report.failed, "migration pass done"),
            Err(error) => tracing::warn!(kind = %name, %error, "migration pass failed"),
        }
        *running.outcome.lock() = Some(outcome.map_err(ApiError::from));
    });
    Ok((StatusCode::ACCEPTED, Json(pass.status(&kind))).into_response())
}

pub(crate) async fn status(
    State(passes): State<Arc<Passes>>,
    kind: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(kind) = kind.map_err(ApiError::from_path)?;
    let pass = passes.by_kind.lock().get(&kind).cloned();
    match pass {
        Some(pass) => Ok(Json(pass.status(&kind)).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_migration",
            format!("no migration pass over {kind} was started on this node"),
        )),
    }
}
