//! Built-in example functions.

/// Error of a worker process.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// No built-in function has that name.
    #[error("no built-in function named {0:?}")]
    UnknownFunction(String),
}

/// Runs the built-in function `name` as a worker process.
pub fn worker_main(name: &str) -> Result<(), WorkerError> {
    Err(WorkerError::UnknownFunction(name.to_string()))
}
