//! Bakes the commit this crate is built from into the binary
//! (`NOCTURNE_BUILD_COMMIT`, read by `report::Machine::probe`), so that a
//! report names the build that measured it rather than whatever checkout
//! the binary happens to run in. Never fails the build: without `git` or a
//! repository (a release tarball) the commit is "unknown".

#[path = "src/build_info.rs"]
mod build_info;

use std::path::{Path, PathBuf};

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let commit = build_info::describe(&manifest).unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=NOCTURNE_BUILD_COMMIT={commit}");
    // Run again when the commit or the index moves (commit, checkout,
    // `git add`) …
    for file in build_info::watched_git_files(&manifest) {
        println!("cargo:rerun-if-changed={file}");
    }
    // … and when a source file of the binary changes, which may make the
    // tree dirty without touching the index. The workspace members are
    // watched, not the whole tree: its target directory changes on every
    // build.
    let root = manifest.parent().unwrap_or(Path::new("."));
    for member in ["bench", "engine", "ipc", "net", "functions"] {
        for part in ["src", "Cargo.toml"] {
            let path = root.join(member).join(part);
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
    for file in ["Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", root.join(file).display());
    }
}
