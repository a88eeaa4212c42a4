//! The runtime's integration tests: one binary, a module per area of the contract.

mod activation;
mod admin;
mod ask;
mod callers;
mod delete;
mod durability;
mod edges;
mod effects;
mod feed;
mod idempotency;
mod journal;
mod kinds;
mod limits;
mod listen;
mod messages;
mod migrations;
mod passivation;
mod shards;
mod supervision;
mod testkit;
mod timers;
mod watch;
