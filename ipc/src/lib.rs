//! nocturne-ipc: shared-memory channels between the engine and its workers.
//!
//! (Map of the crate: filled in as the modules land.)
#![cfg_attr(not(test), warn(missing_docs))]
