//! The misbehaving worker outside an engine: it must refuse clearly, not hang
//! or misbehave against nothing. (This test also makes `cargo test
//! --workspace` build the `misbehave` binary, which the engine's fault tests
//! deploy.)

use std::process::Command;

fn misbehave() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_misbehave"));
    cmd.env_remove("NOCTURNE_CONTROL_FD")
        .env_remove("NOCTURNE_FUNCTION")
        .env_remove("MISBEHAVE_DO")
        .env_remove("MISBEHAVE_EXIT_AFTER_MS")
        .env_remove("MISBEHAVE_START_DELAY_MS");
    cmd
}

#[test]
fn without_an_engine_it_exits_with_a_clear_error() {
    let out = misbehave().output().expect("run the misbehave binary");
    assert_eq!(out.status.code(), Some(1), "exit status: {:?}", out.status);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("handshake with the engine failed")
            && stderr.contains("NOCTURNE_CONTROL_FD"),
        "the error names what is missing: {stderr}"
    );
}

#[test]
fn an_unknown_mode_is_refused_before_the_handshake() {
    let out = misbehave()
        .env("MISBEHAVE_DO", "explode")
        .output()
        .expect("run the misbehave binary");
    assert_eq!(out.status.code(), Some(2), "exit status: {:?}", out.status);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("explode"), "{stderr}");
}
