//! Perennial's wire models: the types of what crosses a socket, in one place, so that the
//! server and its clients cannot drift apart.
//!
//! - [`error`]: the body of every error answer, `{"error": {"code", "message"}}`.
//! - [`admin`]: the bodies the admin API (`/v1/admin/…`) answers with.
//! - [`internal`]: the messages between the nodes of a cluster (`POST /internal/v1/calls`).
//!
//! The gateway serializes these; the CLI and the simulation deserialize (or send) the same
//! types. This crate knows no HTTP library and no runtime: only serde.
//!
//! **API Boundary.** **Architecture Invariant:** a field added to a body is optional for a
//! reader (`#[serde(default)]`) so that a newer node's answer still reads in an older CLI;
//! the internal messages are numbered by variant order (postcard), so variants are only
//! ever added at the end.

pub mod admin;
pub mod error;
pub mod internal;
