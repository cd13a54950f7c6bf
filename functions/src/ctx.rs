//! The call context a handler receives: internal calls, query string, status.
//!
//! Internal calls go to the engine on this worker's response ring and come back
//! on its request ring; nothing touches a socket. Several may be in flight at once
//! ([`Ctx::invoke_async`] + [`Ctx::wait`]); their completions are matched by a
//! worker-local call id, so they may finish in any order.

use crate::protocol;
use crate::response::{self, InvalidResponse};
use crate::runtime::Runtime;

/// Why an internal call failed. The variants mirror the statuses of
/// [`protocol`](mod@crate::protocol).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvokeError {
    /// No function has that name.
    #[error("unknown function {0:?}")]
    UnknownFunction(String),
    /// The callee's handler failed; `status` is what it chose (usually 500).
    #[error("{function} failed ({status}): {message}")]
    Failed {
        /// The callee.
        function: String,
        /// The callee's status.
        status: u16,
        /// The callee's error message.
        message: String,
    },
    /// The worker running the callee died.
    #[error("{function} crashed: {message}")]
    Crashed {
        /// The callee.
        function: String,
        /// What the engine knows of the death (signal or exit code).
        message: String,
    },
    /// The callee is overloaded (its queue is full).
    // The engine's message names the function already.
    #[error("{message}")]
    Overloaded {
        /// The callee.
        function: String,
        /// The engine's explanation.
        message: String,
    },
    /// The call's deadline passed.
    #[error("{message}")]
    Timeout {
        /// The callee.
        function: String,
        /// The engine's explanation.
        message: String,
    },
    /// The input does not fit the channel.
    #[error("input of {len} bytes exceeds the channel's limit of {max} bytes")]
    TooLarge {
        /// Input length.
        len: usize,
        /// Largest payload the channel carries.
        max: usize,
    },
    /// The channel to the engine broke (a protocol error or the engine is gone).
    #[error("channel to the engine failed: {0}")]
    Channel(String),
    /// `wait` was given a handle that is not in flight.
    #[error("no internal call with handle {0} is in flight")]
    UnknownHandle(u64),
}

impl InvokeError {
    /// The HTTP status a caller that propagates this error answers with.
    pub fn status(&self) -> u16 {
        match self {
            InvokeError::UnknownFunction(_) => protocol::STATUS_UNKNOWN_FUNCTION,
            InvokeError::Failed { status, .. } => *status,
            InvokeError::Crashed { .. } => protocol::STATUS_WORKER_CRASHED,
            InvokeError::Overloaded { .. } => protocol::STATUS_OVERLOADED,
            InvokeError::Timeout { .. } => protocol::STATUS_DEADLINE,
            InvokeError::TooLarge { .. }
            | InvokeError::Channel(_)
            | InvokeError::UnknownHandle(_) => protocol::STATUS_HANDLER_ERROR,
        }
    }

    /// Builds the error for a completion with a non-success `status`.
    pub(crate) fn from_status(function: &str, status: u16, message: String) -> Self {
        let function = function.to_string();
        match status {
            protocol::STATUS_UNKNOWN_FUNCTION => InvokeError::UnknownFunction(function),
            protocol::STATUS_WORKER_CRASHED => InvokeError::Crashed { function, message },
            protocol::STATUS_OVERLOADED => InvokeError::Overloaded { function, message },
            protocol::STATUS_DEADLINE => InvokeError::Timeout { function, message },
            _ => InvokeError::Failed {
                function,
                status,
                message,
            },
        }
    }
}

/// A handle to an internal call in flight; redeem it with [`Ctx::wait`].
#[derive(Debug, PartialEq, Eq, Hash)]
#[must_use = "an internal call's result is lost unless it is waited for"]
pub struct PendingCall {
    pub(crate) local_id: u64,
}

/// The context of one call: given to the handler with the input.
pub struct Ctx<'rt> {
    pub(crate) rt: &'rt mut Runtime,
    pub(crate) call_id: u64,
    pub(crate) query: &'rt str,
    pub(crate) status: u16,
    pub(crate) content_type: Option<String>,
    /// The first status or content type the handler set that cannot be sent:
    /// it turns the call's answer into a 500 that names it.
    pub(crate) invalid: Option<InvalidResponse>,
}

impl Ctx<'_> {
    /// Calls `function` with `input` and waits for its output.
    pub fn invoke(&mut self, function: &str, input: &[u8]) -> Result<Vec<u8>, InvokeError> {
        let call = self.invoke_async(function, input)?;
        self.wait(call)
    }

    /// Starts a call to `function` and returns at once; several may be in flight.
    pub fn invoke_async(
        &mut self,
        function: &str,
        input: &[u8],
    ) -> Result<PendingCall, InvokeError> {
        let local_id = self.rt.start_internal_call(self.call_id, function, input)?;
        Ok(PendingCall { local_id })
    }

    /// Waits for a call started with [`invoke_async`](Self::invoke_async).
    pub fn wait(&mut self, call: PendingCall) -> Result<Vec<u8>, InvokeError> {
        self.rt.wait_internal_call(call.local_id)
    }

    /// The URL query string of the request (without `?`), if it had one.
    /// Internal calls carry none: in a function called with
    /// [`invoke`](Self::invoke) this is `None`, so pass parameters in the input.
    pub fn query(&self) -> Option<&str> {
        (!self.query.is_empty()).then_some(self.query)
    }

    /// The value of `key` in the query string (`a=1&b=2`), not percent-decoded.
    pub fn query_param(&self, key: &str) -> Option<&str> {
        self.query
            .split('&')
            .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }

    /// Sets the HTTP status of a successful response (default 200).
    ///
    /// The status must be in 200..=599 (1xx are interim answers only the
    /// server sends). Another value is not ignored: the call is answered 500
    /// with a message naming it (`handler set an invalid status 101 (a
    /// function's status must be 200..=599)`), whatever the handler sets
    /// afterwards. It applies when the handler returns `Ok`; an `Err` is
    /// answered with its own status ([`Error::with_status`](crate::Error::with_status)).
    pub fn set_status(&mut self, status: u16) {
        match response::check_status(status) {
            Ok(()) => self.status = status,
            Err(invalid) => self.reject(invalid),
        }
    }

    /// Sets the response's content type (default `application/octet-stream`).
    ///
    /// It must be a valid header value: 1..=255 bytes of visible ASCII, with
    /// spaces or tabs allowed only inside (`text/plain; charset=utf-8`); no
    /// CR, LF, NUL or other control character. Another value is not sent or
    /// cut: the call is answered 500 with a message naming it, whatever the
    /// handler sets afterwards. Like the status, it applies when the handler
    /// returns `Ok`.
    pub fn set_content_type(&mut self, content_type: &str) {
        match response::check_content_type(content_type) {
            Ok(()) => self.content_type = Some(content_type.to_string()),
            Err(invalid) => self.reject(invalid),
        }
    }

    /// Remembers the first invalid value: that is the bug to report.
    fn reject(&mut self, invalid: InvalidResponse) {
        self.invalid.get_or_insert(invalid);
    }

    /// The engine's id of this call (unique per engine; shows in its logs).
    pub fn call_id(&self) -> u64 {
        self.call_id
    }

    /// The name of the function being run.
    pub fn function_name(&self) -> &str {
        self.rt.function_name()
    }
}
