//! nocturne-functions: the SDK a function links, and the built-in functions.
//!
//! ```text
//!  engine ──request ring──▶ runtime::Runtime ──▶ your handler(&mut Ctx, &[u8])
//!         ◀─response ring──        ▲                    │ ctx.invoke("bar", …)
//!                                  └────────────────────┘ (through the engine)
//! ```
//!
//! * [`handler`] — the API a function author writes against: [`Functions`], [`Error`].
//! * [`ctx`] — [`Ctx`]: internal calls ([`Ctx::invoke`], [`Ctx::invoke_async`] +
//!   [`Ctx::wait`]), query string, status and content type.
//! * [`response`] — what a handler may set as status and content type; a value
//!   that cannot be sent answers the call 500 instead.
//! * [`serve()`] — a function binary's `main`: handshake, then the worker loop.
//! * [`control`] — the control-socket handshake with the engine (worker contract).
//! * [`runtime`] — the worker loop over the shared-memory channel.
//! * [`protocol`] — what ipc messages mean between engine and worker (shared with
//!   the engine).
//! * [`builtin`] — `echo`, `bar`, `foo`, `spin`, `sleep` and friends.
//!
//! A function binary is one line of `main`:
//!
//! ```no_run
//! use nocturne_functions::{Ctx, Error, Functions};
//!
//! fn shout(_ctx: &mut Ctx<'_>, input: &[u8]) -> Result<Vec<u8>, Error> {
//!     Ok(input.to_ascii_uppercase())
//! }
//!
//! fn main() {
//!     nocturne_functions::serve(Functions::new().handler("shout", shout));
//! }
//! ```

// The examples show a function binary's whole `main` on purpose.
#![allow(clippy::needless_doctest_main)]

pub mod builtin;
pub mod control;
pub mod ctx;
pub mod handler;
pub mod protocol;
pub mod response;
pub mod runtime;
mod serve;

pub use ctx::{Ctx, InvokeError, PendingCall};
pub use handler::{Error, Functions};
pub use serve::{serve, ServeError};
