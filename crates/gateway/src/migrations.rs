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
use perennial_api::admin::{MigrateRequest, MigrationFailure, MigrationProgress, MigrationStatus};
use perennial_api::error::ErrorDetail;
use perennial_api::params::KindPath;
use perennial_core::{Migrate, MigrationReport, Progress, Runtime};

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
    plan: MigrateRequest,
    progress: Progress,
    /// `None` while it runs.
    outcome: Mutex<Option<Result<MigrationReport, ApiError>>>,
}

impl Pass {
    fn status(&self, kind: &str) -> MigrationStatus {
        let p = &self.progress;
        let outcome = self.outcome.lock();
        MigrationStatus {
            kind: kind.to_owned(),
            dry_run: self.plan.dry_run,
            snapshot: self.plan.snapshot,
            progress: MigrationProgress {
                total: p.total(),
                examined: p.examined(),
                changed: p.changed(),
                failed: p.failed(),
            },
            running: outcome.is_none(),
            report: match &*outcome {
                Some(Ok(report)) => Some(wire_report(report)),
                _ => None,
            },
            error: match &*outcome {
                Some(Err(error)) => Some(ErrorDetail {
                    code: error.code().to_owned(),
                    message: error.message().to_owned(),
                }),
                _ => None,
            },
        }
    }
}

fn wire_report(report: &MigrationReport) -> perennial_api::admin::MigrationReport {
    perennial_api::admin::MigrationReport {
        kind: report.kind.clone(),
        schema: report.schema,
        dry_run: report.dry_run,
        examined: report.examined,
        changed: report.changed,
        unchanged: report.unchanged,
        not_served: report.not_served,
        failed: report.failed,
        failures: report
            .failures
            .iter()
            .map(|f| MigrationFailure {
                id: f.id.clone(),
                code: f.code.clone(),
                error: f.error.clone(),
            })
            .collect(),
        elapsed_ms: report.elapsed_ms,
    }
}

/// Start a migration pass over the kind's stored entities, in the background (409 migration_running if one runs)
#[utoipa::path(post, path = "/v1/admin/kinds/{kind}/migrate", tag = "admin",
    params(KindPath),
    request_body(content = Option<MigrateRequest>, description = "What the pass does; an empty body asks for the defaults"),
    responses((status = 202, description = "Accepted", body = MigrationStatus)))]
pub(crate) async fn start(
    State(rt): State<Runtime>,
    State(passes): State<Arc<Passes>>,
    kind: Result<Path<KindPath>, PathRejection>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Path(KindPath { kind }) = kind.map_err(ApiError::from_path)?;
    let plan = if body.iter().all(u8::is_ascii_whitespace) {
        MigrateRequest::default()
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
        migrate = migrate.batch(usize::try_from(batch).unwrap_or(usize::MAX));
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

/// The kind's migration pass: running, its progress and, once done, its report
#[utoipa::path(get, path = "/v1/admin/kinds/{kind}/migrate", tag = "admin",
    params(KindPath),
    responses((status = 200, description = "OK", body = MigrationStatus)))]
pub(crate) async fn status(
    State(passes): State<Arc<Passes>>,
    kind: Result<Path<KindPath>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(KindPath { kind }) = kind.map_err(ApiError::from_path)?;
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
