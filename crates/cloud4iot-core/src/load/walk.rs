//! Which files of a repository are configuration: every `*.yaml`/`*.yml`, except hidden
//! files and directories and what a `.sourceignore` excludes (gitignore syntax, as Flux's
//! source-controller reads it, in any directory of the tree).

use std::path::{Path, PathBuf};

use ignore::WalkBuilder;

use crate::diag::Diagnostic;

/// The name of the ignore file, as Flux spells it.
pub const SOURCEIGNORE: &str = ".sourceignore";

/// Repository files under `root`, relative to it, sorted (so every run reads them in the
/// same order and reports problems in the same order).
pub fn repository_files(root: &Path) -> Result<Vec<PathBuf>, Vec<Diagnostic>> {
    if !root.is_dir() {
        return Err(vec![Diagnostic::new(root, 0, 0, "", "not a directory")]);
    }
    let mut files = Vec::new();
    let mut problems = Vec::new();
    let walk = WalkBuilder::new(root)
        // Only .sourceignore decides: a checkout has no untracked files for .gitignore to hide.
        .standard_filters(false)
        .hidden(true)
        .parents(false)
        .follow_links(false)
        .add_custom_ignore_filename(SOURCEIGNORE)
        .sort_by_file_path(|a, b| a.cmp(b))
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
    if problems.is_empty() {
        files.sort();
        Ok(files)
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
    fn missing_root_is_an_error() {
        let err = repository_files(Path::new("/nonexistent/cloud4iot-repo")).unwrap_err();
        assert!(err[0].message.contains("not a directory"));
    }
}
