//! The example binary outside an engine: it must refuse clearly, not hang.
//! (This test also makes `cargo test --workspace` build the `wordcount`
//! binary, which the engine's end-to-end tests deploy.)

use std::process::Command;

#[test]
fn without_an_engine_it_exits_with_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_wordcount"))
        .env_remove("NOCTURNE_CONTROL_FD")
        .env_remove("NOCTURNE_FUNCTION")
        .output()
        .expect("run the wordcount binary");
    assert_eq!(out.status.code(), Some(1), "exit status: {:?}", out.status);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("handshake with the engine failed"),
        "stderr: {stderr}"
    );
    assert!(
        stderr.contains("NOCTURNE_CONTROL_FD"),
        "the error names what is missing: {stderr}"
    );
}
