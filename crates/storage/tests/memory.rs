//! The in-memory store passes the conformance suite.

use perennial_storage::MemoryStore;

perennial_storage::store_conformance!(async { (MemoryStore::new(), ()) });
