//! A function's `command`: the argv checks, and where its program is.
//!
//! * A program path containing `/` is resolved against a base directory
//!   (the config file's, or the working directory for `--set`) and must
//!   be an executable regular file. Its `.` components are dropped
//!   (`/dir/./bin/f` is shown and run as `/dir/bin/f`); `..` is kept,
//!   since `a/link/..` need not be `a` when `link` is a symlink.
//! * A bare name is looked up in `PATH` now, as the worker start will look
//!   it up (in the function's own `env.PATH` when it sets one), so that a
//!   typo fails `config check` instead of every worker start. The argv
//!   keeps the bare name: the start does its own lookup, as it always has.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

/// The `PATH` `execvp` searches when the variable is unset (glibc's
/// `confstr(_CS_PATH)`).
const DEFAULT_PATH: &str = "/bin:/usr/bin";

/// A checked argv, and what was found on the way.
#[derive(Debug)]
pub(super) struct Program {
    pub argv: Vec<String>,
    /// A bare name found in `PATH` while a file of that name sits in the
    /// base directory: `["wc"]` beside `./wc` runs `/usr/bin/wc`. The path
    /// that will run.
    pub shadows_local: Option<PathBuf>,
}

/// Checks `argv`: non-empty, no NUL, and a program that exists (see the
/// module doc). `path_var` is the `PATH` the worker start will search.
pub(super) fn resolve(
    mut argv: Vec<String>,
    base_dir: &Path,
    path_var: Option<&OsStr>,
) -> Result<Program, String> {
    let Some(program) = argv.first() else {
        return Err("empty argv; write e.g. [\"./bin/my-function\", \"--flag\"]".into());
    };
    if program.is_empty() {
        return Err("the program (first element) is empty".into());
    }
    if argv.iter().any(|arg| arg.contains('\0')) {
        return Err("an argument contains a NUL byte".into());
    }
    if program.contains('/') {
        let path = base_dir.join(program);
        // Checked as written: `f/` names a directory, though `f` without
        // the slash may be a program.
        check_executable(&path)
            .map_err(|why| format!("{program} ({}): {why}", without_cur_dirs(&path).display()))?;
        argv[0] = without_cur_dirs(&path).to_string_lossy().into_owned();
        return Ok(Program {
            argv,
            shadows_local: None,
        });
    }
    if program == "." || program == ".." {
        return Err(format!(
            "`{program}` is a directory, not a program; name an executable, e.g. \"./bin/my-function\""
        ));
    }
    let path_var = path_var.unwrap_or(OsStr::new(DEFAULT_PATH));
    let Some(found) = find_in_path(program, path_var) else {
        return Err(format!(
            "`{program}` is not an executable in PATH ({}); for a program beside the \
             config file write \"./{program}\"",
            path_var.to_string_lossy()
        ));
    };
    let local = base_dir.join(program);
    let shadows_local = (local.is_file() && !same_file(&local, &found)).then_some(found);
    Ok(Program {
        argv,
        shadows_local,
    })
}

/// `path` without its `.` components, keeping a leading one (`./f` stays
/// relative); `..` is left alone (see the module doc). Repeated slashes
/// become one; a trailing slash, which says "a directory", is kept.
fn without_cur_dirs(path: &Path) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    // `Path::components` skips every `.` but a leading one.
    let mut out: PathBuf = path.components().collect();
    if path.as_os_str().as_bytes().ends_with(b"/") && !out.as_os_str().as_bytes().ends_with(b"/") {
        out.as_mut_os_string().push("/");
    }
    out
}

/// The first executable regular file called `name` in `path_var`'s
/// directories; an empty entry is the working directory, as for `execvp`.
fn find_in_path(name: &str, path_var: &OsStr) -> Option<PathBuf> {
    std::env::split_paths(path_var)
        .map(|dir| {
            if dir.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                dir
            }
        })
        .map(|dir| dir.join(name))
        .find(|candidate| check_executable(candidate).is_ok())
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

fn check_executable(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err("not executable (chmod +x)".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(what: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("nocturne-command-{what}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn exe(dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[test]
    fn bare_names_are_found_in_the_given_path_or_refused() {
        let dir = scratch("path");
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        exe(&bin, "tool");
        std::fs::write(bin.join("plain"), "not executable").unwrap();
        std::fs::create_dir_all(bin.join("subdir")).unwrap();
        let path = std::env::join_paths([Path::new("/nonexistent"), &bin]).unwrap();

        let program = resolve(vec!["tool".into(), "-v".into()], &dir, Some(&path)).unwrap();
        assert_eq!(
            program.argv,
            ["tool", "-v"],
            "the start does its own lookup"
        );
        assert_eq!(program.shadows_local, None);

        for missing in ["nosuchbinary_xyz", "plain", "subdir"] {
            let err = resolve(vec![missing.into()], &dir, Some(&path)).unwrap_err();
            assert!(
                err.contains("is not an executable in PATH"),
                "{missing}: {err}"
            );
            assert!(err.contains(&format!("\"./{missing}\"")), "{err}");
        }
        for dot in [".", ".."] {
            let err = resolve(vec![dot.into()], &dir, Some(&path)).unwrap_err();
            assert!(err.contains("is a directory, not a program"), "{err}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_bare_name_beside_the_config_that_path_finds_elsewhere_is_reported() {
        let dir = scratch("shadow");
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let system = exe(&bin, "wc");
        exe(&dir, "wc");
        let program = resolve(vec!["wc".into()], &dir, Some(bin.as_os_str())).unwrap();
        assert_eq!(program.shadows_local, Some(system));
        // The very file PATH finds is no surprise.
        let program = resolve(vec!["wc".into()], &bin, Some(bin.as_os_str())).unwrap();
        assert_eq!(program.shadows_local, None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn paths_with_a_slash_resolve_against_the_base() {
        let dir = scratch("slash");
        exe(&dir, "f");
        let program = resolve(vec!["./f".into()], &dir, None).unwrap();
        // Compared as text: `Path` equality would ignore the `.`.
        let f = format!("{}/f", dir.display());
        assert_eq!(program.argv, [f.as_str()]);
        let program = resolve(vec!["././/./f".into()], &dir, None).unwrap();
        assert_eq!(program.argv, [f.as_str()]);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let program = resolve(vec!["./sub/./../f".into()], &dir, None).unwrap();
        assert_eq!(
            program.argv,
            [format!("{}/sub/../f", dir.display())],
            "`..` is kept: it may cross a symlink"
        );
        let program = resolve(vec!["f".into(), "./x".into()], &dir, Some(dir.as_os_str()));
        assert_eq!(
            program.unwrap().argv,
            ["f", "./x"],
            "only a path is rewritten"
        );
        let err = resolve(vec!["./f/".into()], &dir, None).unwrap_err();
        assert!(
            err.starts_with(&format!("./f/ ({}/f/): ", dir.display())),
            "a trailing slash still fails: {err}"
        );
        let err = resolve(vec!["./g".into()], &dir, None).unwrap_err();
        assert!(
            err.starts_with(&format!("./g ({}/g): ", dir.display())),
            "{err}"
        );
        let err = resolve(vec![], &dir, None).unwrap_err();
        assert!(err.contains("empty argv"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
