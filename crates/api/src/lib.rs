//! Perennial's wire models: the types of what crosses a socket, in one place, so that the
//! server and its clients cannot drift apart.
//!
//! - [`client`]: the client API's documented shapes (a watch's events, `/healthz`).
//! - [`error`]: the body of every error answer, `{"error": {"code", "message"}}`.
//! - [`admin`]: the bodies and queries of the admin API (`/v1/admin/…`).
//! - [`params`]: the path parameters, and the patterns and rules routes share.
//! - [`internal`]: the messages between the nodes of a cluster (`POST /internal/v1/calls`).
//!
//! The gateway serializes these; the CLI and the simulation deserialize (or send) the same
//! types. This crate knows no HTTP library and no runtime: only serde, and utoipa, which
//! derives each type's JSON Schema for the gateway's `/openapi.json`.
//!
//! **API Boundary.** **Architecture Invariant:** a field added to a body is optional for a
//! reader (`#[serde(default)]`) so that a newer node's answer still reads in an older CLI;
//! the internal messages are numbered by variant order (postcard), so variants are only
//! ever added at the end.

pub mod admin;
pub mod client;
pub mod error;
pub mod internal;
pub mod params;
