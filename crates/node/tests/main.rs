//! The real `perennial` binary, as a child process: crash safety under kill -9, clean
//! shutdown on SIGTERM, and refusal to share a data directory.

mod node;
mod serve;
