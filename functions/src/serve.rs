//! Entry point of a function binary: handshake with the engine, then serve.

use crate::control::{self, ControlError};
use crate::handler::Functions;
use crate::runtime::{Runtime, RuntimeError};

/// Why a worker process could not serve.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The engine asked for a function this binary does not have. The worker
    /// refused the handshake with this message, so it is in the engine's log.
    #[error("this binary has no function named {name:?}; it has: {}", available.join(", "))]
    UnknownFunction {
        /// The function asked for (the configured `[[functions]] name`).
        name: String,
        /// The handlers the binary has.
        available: Vec<String>,
    },
    /// The handshake with the engine failed (is this process started by the engine?).
    #[error("handshake with the engine failed: {0}")]
    Control(#[from] ControlError),
    /// The channel to the engine broke.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// Serves the function the engine asks for (`NOCTURNE_FUNCTION`, the configured
/// `[[functions]] name`) from `functions`, so one binary can serve several
/// config entries. If it has no handler of that name it refuses the handshake,
/// which the engine logs as a start failure with the reason.
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
    let pending = control::receive_hello_from_env()?;
    // Checked before answering ready: a worker that is ready and then exits
    // looks to the engine like one that keeps crashing.
    let name = handler.unwrap_or(&pending.hello().function);
    let Some(mut handler) = functions.take(name) else {
        let unknown = ServeError::UnknownFunction {
            name: name.to_string(),
            available: functions.names().map(str::to_string).collect(),
        };
        // Best effort: if the engine cannot be told, it sees the exit.
        let _ = pending.refuse(&unknown.to_string());
        return Err(unknown);
    };
    let boot = pending.ready()?;
    control::spawn_eof_watchdog(&boot.control);
    let (sender, receiver) = boot.end.split();
    let mut runtime = Runtime::new(boot.function, sender, receiver, boot.wait, boot.functions);
    Err(runtime.run(&mut handler).into())
}
