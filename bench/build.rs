//! Bakes the commit this crate is built from into the binary
//! (`NOCTURNE_BUILD_COMMIT`, read by `report::Machine::probe`), so that a
//! report names the build that measured it rather than whatever checkout
//! the binary happens to run in. Never fails the build: without `git` or a
//! repository (a release tarball) the commit is "unknown".

#[path = "src/build_info.rs"]
mod build_info;

use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let commit = build_info::describe(&manifest).unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=NOCTURNE_BUILD_COMMIT={commit}");
    // Run again when the commit or the index moves (commit, checkout,
    // `git add`) …
    for file in build_info::watched_git_files(&manifest) {
        println!("cargo:rerun-if-changed={file}");
    }
    // Not when a source file changes: watching the workspace's sources
    // rebuilt this crate, and the engine above it, on every edit anywhere.
    // So `-dirty` reflects the tree as of the last commit, checkout or
    // `git add` (the index), which is what a measured build has anyway.
}
