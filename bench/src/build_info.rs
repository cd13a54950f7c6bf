//! The commit a binary is built from, as its reports name it
//! (`machine.commit`): `git rev-parse --short HEAD` of the source tree,
//! with `-dirty` when tracked files differ from that commit.
//!
//! Shared by `build.rs` (which runs it once per build and bakes the answer
//! into the binary as `NOCTURNE_BUILD_COMMIT`) and this crate's unit tests.
//! It uses `std` alone, because a build script cannot use the crate it
//! builds. Every failure — no `git`, no repository (a release tarball), a
//! broken one — is `None`, never a failed build: the caller writes
//! "unknown" instead.

use std::path::Path;
use std::process::{Command, Stdio};

/// `<short hash>` or `<short hash>-dirty` of the repository around `dir`,
/// or `None` when `git` or the repository is missing.
pub fn describe(dir: &Path) -> Option<String> {
    let hash = git(dir, &["rev-parse", "--short", "HEAD"])?;
    if hash.is_empty() {
        return None;
    }
    // Untracked files (notes, scratch output) do not change what is built.
    let status = git(dir, &["status", "--porcelain", "--untracked-files=no"])?;
    Some(if status.is_empty() {
        hash
    } else {
        format!("{hash}-dirty")
    })
}

/// The files whose change can change [`describe`]'s answer for `dir`: the
/// repository's `HEAD`, the branch it points to, the packed refs and the
/// index (a commit, a checkout or `git add` touches one of them). Empty
/// outside a repository.
pub fn watched_git_files(dir: &Path) -> Vec<String> {
    let mut files = Vec::new();
    let mut add = |path: Option<String>| {
        if let Some(path) = path.filter(|p| !p.is_empty()) {
            let absolute = dir.join(&path);
            files.push(absolute.display().to_string());
        }
    };
    add(git(dir, &["rev-parse", "--git-path", "HEAD"]));
    add(git(dir, &["rev-parse", "--git-path", "index"]));
    add(git(dir, &["rev-parse", "--git-path", "packed-refs"]));
    if let Some(branch) = git(dir, &["symbolic-ref", "-q", "HEAD"]) {
        add(git(dir, &["rev-parse", "--git-path", &branch]));
    }
    files
}

/// The trimmed standard output of `git ARGS` run in `dir`, if it succeeded.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8(out.stdout).ok()?.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A scratch directory outside any repository, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Self {
            let dir = std::env::temp_dir()
                .join(format!("nocturne-build-info-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn have_git() -> bool {
        Command::new("git")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Runs git in `dir` with an identity of its own, so that the test
    /// needs no user configuration.
    fn run_git(dir: &Path, args: &[&str]) {
        let status = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args([
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "-c",
                "commit.gpgsign=false",
            ])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "git {args:?}");
    }

    #[test]
    fn outside_a_repository_there_is_no_commit() {
        let scratch = Scratch::new("bare");
        // A temp directory is in no repository (unless the system's temp
        // directory itself is inside one: then there is nothing to check).
        if git(&scratch.0, &["rev-parse", "--git-dir"]).is_none() {
            assert_eq!(describe(&scratch.0), None);
            assert!(watched_git_files(&scratch.0).is_empty());
        }
        assert_eq!(describe(&scratch.0.join("missing")), None);
    }

    #[test]
    fn a_repository_gives_its_short_hash_and_dirty_when_changed() {
        if !have_git() {
            eprintln!("skipped: no git on this machine");
            return;
        }
        let scratch = Scratch::new("repo");
        let dir = &scratch.0;
        run_git(dir, &["init", "-q"]);
        std::fs::write(dir.join("a.txt"), "one").unwrap();
        run_git(dir, &["add", "a.txt"]);
        run_git(dir, &["commit", "-q", "-m", "first"]);
        let clean = describe(dir).expect("a commit");
        assert!(
            clean.len() >= 4 && clean.chars().all(|c| c.is_ascii_hexdigit()),
            "{clean:?}"
        );
        // An untracked file is not a change to what is built.
        std::fs::write(dir.join("notes.txt"), "x").unwrap();
        assert_eq!(describe(dir).as_deref(), Some(clean.as_str()));
        std::fs::write(dir.join("a.txt"), "two").unwrap();
        assert_eq!(describe(dir), Some(format!("{clean}-dirty")));
        let watched = watched_git_files(dir);
        assert!(watched.iter().any(|f| f.ends_with("HEAD")), "{watched:?}");
        assert!(watched.iter().any(|f| f.ends_with("index")), "{watched:?}");
    }
}
