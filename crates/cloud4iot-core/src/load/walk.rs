//! Which files of a repository are configuration: every `*.yaml`/`*.yml`, except hidden
//! files and directories and what a `.sourceignore` excludes (gitignore syntax, as Flux's
//! source-controller reads it, in any directory of the tree).
//!
//! Symbolic links are followed when they resolve inside the repository (as `git checkout`
//! writes them, and as a directory on disk has them); a link that leads outside it is an
//! error naming the link, and nothing behind it is read. Skipping it silently would make
//! `apply` prune what the linked file describes.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ignore::WalkBuilder;

use crate::diag::Diagnostic;

/// The name of the ignore file, as Flux spells it.
pub const SOURCEIGNORE: &str = ".sourceignore";

/// Repository files under `root`, relative to it, sorted (so every run reads them in the
/// same order and reports problems in the same order).
pub fn repository_files(root: &Path) -> Result<Vec<PathBuf>, Vec<Diagnostic>> {
    match files_and_refused_links(root) {
        Ok((files, refused)) if refused.is_empty() => Ok(files),
        Ok((_, refused)) => Err(refused),
        Err(problems) => Err(problems),
    }
}

/// [`repository_files`], and separately one diagnostic per symbolic link that leads
/// outside the repository: bad input (the repository is invalid, exit 1), not a failure
/// to read it. `Err` when the directory cannot be listed.
pub fn files_and_refused_links(
    root: &Path,
) -> Result<(Vec<PathBuf>, Vec<Diagnostic>), Vec<Diagnostic>> {
    if !root.is_dir() {
        return Err(vec![Diagnostic::new(root, 0, 0, "", "not a directory")]);
    }
    let mut files = Vec::new();
    let mut problems = Vec::new();
    let canonical_root = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
    // Links that lead outside: recorded by the walker's filter, which also keeps it from
    // descending into them.
    let refused: Arc<Mutex<Vec<(PathBuf, String)>>> = Arc::default();
    let walk = WalkBuilder::new(root)
        // Only .sourceignore decides: a checkout has no untracked files for .gitignore to hide.
        .standard_filters(false)
        .hidden(true)
        .parents(false)
        .follow_links(true)
        .add_custom_ignore_filename(SOURCEIGNORE)
        .sort_by_file_path(|a, b| a.cmp(b))
        .filter_entry({
            let refused = Arc::clone(&refused);
            let canonical_root = canonical_root.clone();
            move |entry| {
                if !entry.path_is_symlink() {
                    return true;
                }
                let outside = match entry.path().canonicalize() {
                    Ok(target) if target.starts_with(&canonical_root) => return true,
                    Ok(target) => format!(
                        "symbolic link to {} leads outside the repository; refused \
                         (nothing outside the repository is read)",
                        target.display()
                    ),
                    Err(e) => format!("symbolic link that cannot be followed: {e}"),
                };
                if let Ok(mut r) = refused.lock() {
                    r.push((entry.path().to_path_buf(), outside));
                }
                false
            }
        })
        .build();
    for entry in walk {
        match entry {
            Ok(entry) => {
                let is_file = entry.file_type().is_some_and(|t| t.is_file());
                if is_file && is_yaml(entry.path()) {
                    let rel = entry.path().strip_prefix(root).unwrap_or(entry.path());
                    files.push(rel.to_path_buf());
                }
            }
            Err(err) => {
                let path =
                    error_path(&err).map(|p| p.strip_prefix(root).unwrap_or(p).to_path_buf());
                problems.push(Diagnostic::new(
                    path.unwrap_or_else(|| root.to_path_buf()),
                    0,
                    0,
                    "",
                    err.to_string(),
                ));
            }
        }
    }
    let refused = std::mem::take(&mut *refused.lock().unwrap_or_else(|e| e.into_inner()));
    let mut links: Vec<Diagnostic> = refused
        .into_iter()
        .map(|(path, message)| {
            let rel = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
            Diagnostic::new(rel, 0, 0, "", message)
        })
        .collect();
    links.sort_by(|a, b| a.file.cmp(&b.file));
    if problems.is_empty() {
        files.sort();
        Ok((files, links))
    } else {
        Err(problems)
    }
}

fn is_yaml(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"))
}

fn error_path(err: &ignore::Error) -> Option<&Path> {
    match err {
        ignore::Error::WithPath { path, .. } => Some(path),
        ignore::Error::WithDepth { err, .. } | ignore::Error::WithLineNumber { err, .. } => {
            error_path(err)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn honours_sourceignore_and_hidden() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for f in [
            "b.yaml",
            "a/z.yml",
            "a/c.YAML",
            "notes.txt",
            ".hidden.yaml",
            ".github/workflows/ci.yaml",
            "state/home.yaml",
            "sub/skip-me.yaml",
            "sub/keep.yaml",
        ] {
            let p = root.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, "").unwrap();
        }
        std::fs::write(
            root.join(SOURCEIGNORE),
            "# snapshots are not configuration\nstate/\n",
        )
        .unwrap();
        std::fs::write(root.join("sub").join(SOURCEIGNORE), "skip-*.yaml\n").unwrap();
        let files = repository_files(root).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|p| p.to_string_lossy().replace('\\', "/"))
            .collect();
        assert_eq!(names, ["a/c.YAML", "a/z.yml", "b.yaml", "sub/keep.yaml"]);
    }

    #[test]
    fn links_inside_are_followed_and_links_outside_refused() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret.yaml"), "kind: Function\n").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("real")).unwrap();
        std::fs::write(root.join("real/f.yaml"), "").unwrap();
        std::os::unix::fs::symlink("real/f.yaml", root.join("linked.yaml")).unwrap();
        std::os::unix::fs::symlink("real", root.join("dirlink")).unwrap();
        let files = repository_files(root).unwrap();
        let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
        assert_eq!(names, ["dirlink/f.yaml", "linked.yaml", "real/f.yaml"]);

        std::os::unix::fs::symlink(outside.path().join("secret.yaml"), root.join("out.yaml"))
            .unwrap();
        std::os::unix::fs::symlink(outside.path(), root.join("outdir")).unwrap();
        let err = repository_files(root).unwrap_err();
        let shown: Vec<String> = err.iter().map(|d| d.to_string()).collect();
        assert_eq!(err.len(), 2, "{shown:?}");
        for link in ["out.yaml", "outdir"] {
            let named = |m: &String| m.starts_with(link) && m.contains("outside the repository");
            assert!(shown.iter().any(named), "{link}: {shown:?}");
        }
    }

    #[test]
    fn missing_root_is_an_error() {
        let err = repository_files(Path::new("/nonexistent/cloud4iot-repo")).unwrap_err();
        assert!(err[0].message.contains("not a directory"));
    }
}
