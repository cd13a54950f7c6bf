//! Entry point of a function binary: handshake with the engine, then serve.

use crate::control::{self, ControlError};
use crate::handler::Functions;
use crate::runtime::{Runtime, RuntimeError};

/// Why a worker process could not serve.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The engine asked for a function this binary does not have.
    #[error("this binary has no function named {0:?}")]
    UnknownFunction(String),
    /// The handshake with the engine failed (is this process started by the engine?).
    #[error("handshake with the engine failed: {0}")]
    Control(#[from] ControlError),
    /// The channel to the engine broke.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// Serves the function the engine asks for (`NOCTURNE_FUNCTION`) from `functions`.
/// Exits the process when the engine goes away; never returns on success.
///
/// ```no_run
/// fn main() {
///     nocturne_functions::serve(
///         nocturne_functions::Functions::new().handler("hello", |_ctx, input| Ok(input.to_vec())),
///     );
/// }
/// ```
pub fn serve(functions: Functions) -> ! {
    match serve_as(functions, None) {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("nocturne worker: {e}");
            std::process::exit(1)
        }
    }
}

/// Like [`serve`], but returns the error. `handler` names the handler to run;
/// `None` runs the one named like the function the engine asks for. (A
/// built-in may be deployed under another name: `name = "a"`, `builtin = "relay"`.)
pub(crate) fn serve_as(mut functions: Functions, handler: Option<&str>) -> Result<(), ServeError> {
    let boot = control::connect_from_env()?;
    let name = handler.unwrap_or(&boot.function);
    let mut handler = functions
        .take(name)
        .ok_or_else(|| ServeError::UnknownFunction(name.to_string()))?;
    control::spawn_eof_watchdog(&boot.control);
    let (sender, receiver) = boot.end.split();
    let mut runtime = Runtime::new(boot.function, sender, receiver, boot.wait, boot.functions);
    Err(runtime.run(&mut handler).into())
}
