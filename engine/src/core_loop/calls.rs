//! The call table: every call this core loop has accepted and not yet answered.
//!
//! A call's id on the wire is its slab key with this loop's index in the top
//! byte, so ids are unique across the engine and a completion can be checked
//! against the loop and generation it belongs to: a late or forged id finds
//! nothing instead of another call.

use std::time::Instant;

use nocturne_net::http::RequestId;

use crate::slab::Key;

/// Who is waiting for a call's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// An HTTP client: answer on this request.
    External(RequestId),
    /// A handler in another worker, waiting for `local_id`.
    Internal {
        /// The calling worker.
        worker: Key,
        /// The caller's own id for this call.
        local_id: u64,
    },
    /// Another core loop, which forwarded the call here (it has no worker
    /// of the function): answer with a letter to it.
    Remote {
        /// The loop that took the call.
        from: u8,
        /// The call's key in that loop's table.
        token: Key,
    },
}

/// One call: from admission to answer.
pub(crate) struct Call {
    pub origin: Origin,
    pub function: u32,
    /// Depth in a chain of internal calls: 0 for an external call.
    pub depth: u32,
    /// The call whose handler made this one (internal calls only).
    pub parent: Option<Key>,
    /// The worker running it, once dispatched.
    pub worker: Option<Key>,
    pub received_ns: u64,
    pub dispatched_ns: u64,
    pub deadline: Instant,
    /// Flags and payload kept while the call waits in a queue.
    pub queued_input: Option<(u16, Vec<u8>)>,
    /// The loop this call was handed to (its function has no workers here).
    pub forwarded_to: Option<u8>,
    /// A worker died without taking this call and it was queued again; a
    /// second such death fails it (a function whose workers die at start
    /// must not hold its callers through every restart).
    pub handed_back: bool,
}

/// Packs a call key and loop index into a wire call id.
pub(crate) fn call_id(loop_index: u8, key: Key) -> u64 {
    (u64::from(loop_index) << 56) | key.to_u56()
}

/// Unpacks a wire call id: `None` if it belongs to another loop.
pub(crate) fn call_key(loop_index: u8, id: u64) -> Option<Key> {
    ((id >> 56) as u8 == loop_index).then(|| Key::from_u56(id))
}
