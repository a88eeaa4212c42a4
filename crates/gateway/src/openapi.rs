//! `GET /openapi.json`: the OpenAPI 3.1 document of the public HTTP API, generated (not
//! written by hand) from each handler's `#[utoipa::path]` attribute and the wire models of
//! [`perennial_api`], constraints included, so that it cannot drift from the server: a
//! test checks every documented route exists, and `scripts/api-fuzz` runs a schema-driven
//! fuzzer from it against the real binary.
//!
//! What every route shares is added here, once, as the router adds it: the admin token on
//! `/v1/admin/…`, the client token on `/v1/{kind}/{id}…`, and the error answer (`4XX`,
//! `5XX`) of every route that can fail.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::IntoResponse;
use perennial_api::{admin, client, error::ErrorBody};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use crate::admin as routes;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Perennial node",
        description = "Entities addressed by kind and id; each reply leaves once its step is durable. Errors are {\"error\": {\"code\", \"message\"}} with a stable code.",
    ),
    paths(
        crate::call,
        crate::watch::watch,
        crate::feed::changes,
        crate::call_named_changes,
        crate::healthz,
        crate::readyz,
        crate::metrics::metrics,
        document_route,
        routes::kinds,
        routes::entities,
        routes::query,
        routes::indexes,
        routes::create_index,
        routes::index,
        routes::drop_index,
        routes::passivate_kind,
        crate::migrations::start,
        crate::migrations::status,
        routes::state,
        routes::delete,
        routes::history,
        routes::pending,
        routes::state_at,
        routes::passivate,
        routes::pause,
        routes::resume,
        routes::release,
        routes::paused,
        routes::quarantined,
        routes::dead_letters,
        routes::dead_letter,
        routes::retry,
        routes::discard,
        routes::cluster,
    ),
    components(schemas(ErrorBody, admin::PendingClass, client::WatchEvent, client::ChangeEvent)),
    modifiers(&Shared),
    tags(
        (name = "entities", description = "Calls to entities and their state changes"),
        (name = "admin", description = "What operators do to a running node (the admin token)"),
        (name = "node", description = "The node itself"),
    ),
)]
struct Document;

/// The document, as JSON.
pub fn json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        Document::openapi()
            .to_pretty_json()
            .expect("an OpenAPI document always serializes")
    })
}

/// This document
#[utoipa::path(get, path = "/openapi.json", tag = "node",
    responses((status = 200, description = "OpenAPI 3.1")))]
pub(crate) async fn document_route() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], json())
}

/// What the router adds to every route: tokens and the error answer.
struct Shared;

impl Modify for Shared {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        let mut caller = Http::new(HttpAuthScheme::Bearer);
        caller.bearer_format = Some("JWT".to_owned());
        caller.description = Some(
            "A caller token (a JWT with `sub` and `exp`), when the node has a caller key; its \
             `sub` is who is calling. A GET may carry it as `?access_token=` instead"
                .to_owned(),
        );
        components
            .security_schemes
            .insert("caller".to_owned(), SecurityScheme::Http(caller));
        for (name, description) in [
            ("client", "The client token, when the node has one"),
            ("admin", "The admin token"),
            ("metrics", "The token for /metrics, when one is set"),
        ] {
            let mut scheme = Http::new(HttpAuthScheme::Bearer);
            scheme.description = Some(description.to_owned());
            components
                .security_schemes
                .insert(name.to_owned(), SecurityScheme::Http(scheme));
        }
        let error = ResponseBuilder::new()
            .description("An error with a stable code")
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("Error")))
                    .build(),
            )
            .build();
        components
            .responses
            .insert("Error".to_owned(), error.into());

        let needs = |name: &str| SecurityRequirement::new(name, Vec::<String>::new());
        for (path, item) in doc.paths.paths.iter_mut() {
            let (security, fails) = if path.starts_with("/v1/admin/") {
                (vec![needs("admin")], true)
            } else if path.starts_with("/v1/") {
                // Open unless the node has a client token or a caller key.
                let open = SecurityRequirement::default();
                (vec![needs("caller"), needs("client"), open], true)
            } else if path == "/metrics" {
                (
                    vec![needs("metrics"), SecurityRequirement::default()],
                    false,
                )
            } else {
                (Vec::new(), false)
            };
            for operation in [
                &mut item.get,
                &mut item.post,
                &mut item.delete,
                &mut item.put,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                operation.security = Some(security.clone());
                if fails {
                    for range in ["4XX", "5XX"] {
                        operation
                            .responses
                            .responses
                            .insert(range.to_owned(), Ref::from_response_name("Error").into());
                    }
                }
            }
        }
    }
}
