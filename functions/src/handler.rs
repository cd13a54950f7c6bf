//! The handler API: what a function author writes.
//!
//! A handler is a plain function or closure `fn(&mut Ctx, &[u8]) -> Result<Vec<u8>,
//! Error>`: it receives the call's input bytes and returns its output. Through the
//! [`Ctx`] it can call other functions, read the query string, and set
//! the response's status and content type. A [`Functions`] table maps names to
//! handlers; [`serve`](crate::serve) runs whichever one the engine asks for.

use crate::ctx::Ctx;
use crate::ctx::InvokeError;

/// The error a handler returns: an HTTP status (500 unless set) and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    status: u16,
    message: String,
}

impl Error {
    /// A handler failure: answered with status 500 and `message`.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            status: 500,
            message: message.into(),
        }
    }

    /// A failure with an explicit HTTP status, e.g. 400 for bad input.
    /// Statuses outside 400..=599 are answered as 500.
    pub fn with_status(status: u16, message: impl Into<String>) -> Self {
        let status = if (400..=599).contains(&status) {
            status
        } else {
            500
        };
        Self {
            status,
            message: message.into(),
        }
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The message sent as the response body.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.status)
    }
}

impl std::error::Error for Error {}

impl From<InvokeError> for Error {
    /// A failed internal call fails the caller with the callee's status, so a
    /// client sees e.g. 504 when a callee ran out of time. Except a call to
    /// no such function: that is the caller's own bug (500), where passing
    /// on 404 told the client its URL was wrong.
    fn from(e: InvokeError) -> Self {
        match e {
            InvokeError::UnknownFunction(name) => Self::with_status(
                crate::protocol::STATUS_HANDLER_ERROR,
                format!("internal call to unknown function {name:?}"),
            ),
            e => Self::with_status(e.status(), e.to_string()),
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Self::new(e.to_string())
    }
}

/// The type every handler is stored as.
pub type BoxedHandler = Box<dyn FnMut(&mut Ctx<'_>, &[u8]) -> Result<Vec<u8>, Error>>;

/// A table of named handlers: the functions one binary can serve.
///
/// ```no_run
/// use nocturne_functions::{Ctx, Error, Functions};
///
/// fn hello(_ctx: &mut Ctx<'_>, input: &[u8]) -> Result<Vec<u8>, Error> {
///     Ok([b"hello, ", input].concat())
/// }
///
/// fn main() {
///     nocturne_functions::serve(Functions::new().handler("hello", hello));
/// }
/// ```
#[derive(Default)]
pub struct Functions {
    handlers: Vec<(String, BoxedHandler)>,
}

impl Functions {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `handler` under `name` (a later entry with the same name wins).
    pub fn handler(
        mut self,
        name: impl Into<String>,
        handler: impl FnMut(&mut Ctx<'_>, &[u8]) -> Result<Vec<u8>, Error> + 'static,
    ) -> Self {
        let name = name.into();
        self.handlers.retain(|(n, _)| *n != name);
        self.handlers.push((name, Box::new(handler)));
        self
    }

    /// The names in the table.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.handlers.iter().map(|(n, _)| n.as_str())
    }

    /// Removes and returns the handler named `name`.
    pub fn take(&mut self, name: &str) -> Option<BoxedHandler> {
        let i = self.handlers.iter().position(|(n, _)| n == name)?;
        Some(self.handlers.swap_remove(i).1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_internal_call_fails_the_caller_with_the_callees_status() {
        let e = Error::from(InvokeError::Timeout {
            function: "b".into(),
            message: "function b did not answer within its deadline (1s)".into(),
        });
        assert_eq!(e.status(), crate::protocol::STATUS_DEADLINE);
        // ...but a call to no such function is the caller's bug, not a 404.
        let e = Error::from(InvokeError::UnknownFunction("nosuch".into()));
        assert_eq!(e.status(), 500);
        assert_eq!(e.message(), "internal call to unknown function \"nosuch\"");
    }
}
