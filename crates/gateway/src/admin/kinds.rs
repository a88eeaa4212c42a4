//! The admin routes about a kind: its counters, a page of its entities, a query over their
//! states, its indexes, passivating it.

use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use perennial_api::admin as api;
use perennial_api::params::{IndexPathParams, KindPath, page_size};
use perennial_core::Runtime;
use perennial_storage::{EntityState, Filter, Path as StatePath};

use crate::error::ApiError;
use crate::ops::{embedded, json_response};

/// The registered kinds with their counters
#[utoipa::path(get, path = "/v1/admin/kinds", tag = "admin",
    responses((status = 200, description = "OK", body = api::Kinds)))]
pub(crate) async fn kinds(State(rt): State<Runtime>) -> Result<Response, ApiError> {
    let stats = rt.stats();
    let mut stored = Vec::with_capacity(stats.kinds.len());
    for k in &stats.kinds {
        stored.push(rt.admin().stored(&k.kind).await?);
    }
    let kinds = stats
        .kinds
        .iter()
        .zip(stored)
        .map(|(k, stored)| api::KindInfo {
            kind: k.kind.clone(),
            persistence: k.persistence.and_then(|p| {
                serde_json::to_value(p)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
            }),
            stored,
            resident: k.resident,
            activations: k.activations,
            passivations: k.passivations,
            restarts: k.restarts,
            dead_letters: k.dead_letters,
        })
        .collect();
    Ok(json_response(&api::Kinds { kinds }))
}

/// A page of the kind's entities in id order, with residency, pause and last activity
#[utoipa::path(get, path = "/v1/admin/kinds/{kind}/entities", tag = "admin",
    params(KindPath, api::PageQuery),
    responses((status = 200, description = "OK", body = api::Page<api::EntityRow>)))]
pub(crate) async fn entities(
    State(rt): State<Runtime>,
    path: Result<Path<KindPath>, PathRejection>,
    page: Result<Query<api::PageQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Path(KindPath { kind }) = path.map_err(ApiError::from_path)?;
    let Query(page) = page.map_err(ApiError::from_query)?;
    let limit = page_size(page.limit);
    let entities = rt
        .admin()
        .entities(&kind, page.after.as_deref(), limit)
        .await?;
    let next = (entities.len() == limit)
        .then(|| entities.last().map(|e| e.id.clone()))
        .flatten();
    let entities = entities
        .into_iter()
        .map(|e| api::EntityRow {
            id: e.id,
            resident: e.resident,
            paused: e.paused,
            state_version: e.state_version,
            schema: e.schema,
            last_step: e.last_step,
            updated_at_ms: e.updated_at_ms,
        })
        .collect();
    Ok(json_response(&api::Entities {
        kind,
        entities,
        next,
    }))
}

/// A page of the kind's stored entities whose state matches a filter
#[utoipa::path(get, path = "/v1/admin/kinds/{kind}/query", tag = "admin",
    params(KindPath, api::FilterQuery, api::PageQuery),
    responses((status = 200, description = "OK", body = api::Page<api::StateRow>)))]
pub(crate) async fn query(
    State(rt): State<Runtime>,
    path: Result<Path<KindPath>, PathRejection>,
    filter: Result<Query<api::FilterQuery>, QueryRejection>,
    page: Result<Query<api::PageQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Path(KindPath { kind }) = path.map_err(ApiError::from_path)?;
    let Query(api::FilterQuery { filter }) = filter.map_err(ApiError::from_query)?;
    let Query(page) = page.map_err(ApiError::from_query)?;
    let filter = Filter::parse(&filter)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_filter", e.to_string()))?;
    let limit = page_size(page.limit);
    let found = rt
        .admin()
        .query(&kind, &filter, page.after.as_deref(), limit)
        .await?;
    let next = (found.len() == limit)
        .then(|| found.last().map(|e| e.id.clone()))
        .flatten();
    let entities = found.iter().map(state_row).collect();
    Ok(json_response(&api::Matches {
        kind,
        entities,
        next,
    }))
}

fn state_row(e: &EntityState) -> api::StateRow {
    api::StateRow {
        id: e.id.clone(),
        state: embedded(&e.state),
        version: e.version,
        updated_at_ms: e.updated_at_ms,
    }
}

fn parse_path(text: &str) -> Result<StatePath, ApiError> {
    StatePath::parse(text)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_path", e.to_string()))
}

/// The paths the kind is indexed by
#[utoipa::path(get, path = "/v1/admin/kinds/{kind}/indexes", tag = "admin",
    params(KindPath),
    responses((status = 200, description = "OK", body = api::Indexes)))]
pub(crate) async fn indexes(
    State(rt): State<Runtime>,
    path: Result<Path<KindPath>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(KindPath { kind }) = path.map_err(ApiError::from_path)?;
    let indexes = rt
        .admin()
        .indexes(&kind)
        .await?
        .iter()
        .map(ToString::to_string)
        .collect();
    Ok(json_response(&api::Indexes { kind, indexes }))
}

/// Index the kind's states by a path
#[utoipa::path(post, path = "/v1/admin/kinds/{kind}/indexes", tag = "admin",
    params(KindPath),
    request_body = api::IndexPath,
    responses((status = 201, description = "The index exists", body = api::IndexCreated)))]
pub(crate) async fn create_index(
    State(rt): State<Runtime>,
    path: Result<Path<KindPath>, PathRejection>,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Path(KindPath { kind }) = path.map_err(ApiError::from_path)?;
    // Like calls, any content type: `curl -d` sends a form type.
    let body = body.map_err(ApiError::from_body)?;
    let body: api::IndexPath = serde_json::from_slice(&body).map_err(|e| {
        let expected = r#"the body must be {"path": "…"}"#;
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_body",
            format!("{expected}: {e}"),
        )
    })?;
    let path = parse_path(&body.path)?;
    rt.admin().create_index(&kind, &path).await?;
    let created = api::IndexCreated {
        kind,
        path: path.to_string(),
    };
    Ok((StatusCode::CREATED, axum::Json(created)).into_response())
}

/// One index of the kind, by its path: 404 `no_such_index` if there is none
#[utoipa::path(get, path = "/v1/admin/kinds/{kind}/indexes/{path}", tag = "admin",
    params(IndexPathParams),
    responses((status = 200, description = "The index exists", body = api::IndexCreated)))]
pub(crate) async fn index(
    State(rt): State<Runtime>,
    path: Result<Path<IndexPathParams>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(IndexPathParams { kind, path }) = path.map_err(ApiError::from_path)?;
    let path = parse_path(&path)?;
    let indexes = rt.admin().indexes(&kind).await?;
    if indexes.contains(&path) {
        Ok(json_response(&api::IndexCreated {
            kind,
            path: path.to_string(),
        }))
    } else {
        Err(no_such_index(&kind, &path))
    }
}

/// Drop an index
#[utoipa::path(delete, path = "/v1/admin/kinds/{kind}/indexes/{path}", tag = "admin",
    params(IndexPathParams),
    responses((status = 200, description = "OK", body = api::IndexDropped)))]
pub(crate) async fn drop_index(
    State(rt): State<Runtime>,
    path: Result<Path<IndexPathParams>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(IndexPathParams { kind, path }) = path.map_err(ApiError::from_path)?;
    let path = parse_path(&path)?;
    if rt.admin().drop_index(&kind, &path).await? {
        Ok(json_response(&api::IndexDropped {
            kind,
            dropped: path.to_string(),
        }))
    } else {
        Err(no_such_index(&kind, &path))
    }
}

fn no_such_index(kind: &str, path: &perennial_storage::Path) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no_such_index",
        format!("{kind} has no index by `{path}`; list them with GET …/indexes"),
    )
}

/// Passivate every idle entity of the kind now
#[utoipa::path(post, path = "/v1/admin/kinds/{kind}/passivate", tag = "admin",
    params(KindPath),
    responses((status = 200, description = "OK", body = api::KindPassivated)))]
pub(crate) async fn passivate_kind(
    State(rt): State<Runtime>,
    path: Result<Path<KindPath>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(KindPath { kind }) = path.map_err(ApiError::from_path)?;
    let (passivated, busy) = rt.admin().passivate_kind(&kind)?;
    Ok(json_response(&api::KindPassivated { passivated, busy }))
}
