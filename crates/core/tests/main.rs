//! The runtime's integration tests: one binary, a module per area of the contract.

mod activation;
mod durability;
mod edges;
mod journal;
mod kinds;
mod limits;
mod passivation;
mod supervision;
mod timers;
