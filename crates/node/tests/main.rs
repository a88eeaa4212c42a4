//! The real `perennial` binary, as a child process: crash safety under kill -9 (and a
//! kill -9 soak checked by the history checker), at named crash points, on a full disk and
//! under failing fsyncs, clean shutdown on SIGTERM, refusal to share
//! a data directory, fsyncs counted at the system call level, the operator's client
//! subcommands, the configuration, and clusters of nodes on PostgreSQL.

mod ask;
mod backup;
mod bench;
mod browser;
mod cli;
mod cluster;
mod compat;
mod config;
mod corrupt;
mod crash_points;
mod delete;
mod disk;
mod failover;
mod feed;
mod fsync;
mod journal;
mod migrate;
mod node;
#[cfg(feature = "otel")]
mod otel;
mod pending;
mod probes;
mod rolling;
mod serve;
mod soak;
mod tls;
