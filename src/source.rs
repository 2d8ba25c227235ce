//! Where the desired configuration comes from. Today: a directory on disk.
//! (Git repositories and URLs, revisions and signature checks extend this module.)

use std::path::PathBuf;

use crate::cli::RepoArgs;

/// A tree of repository files ready to load, and the revision it came from.
#[derive(Debug)]
pub struct Checkout {
    /// The directory whose `*.yaml`/`*.yml` files are the configuration.
    pub dir: PathBuf,
    /// The revision in Flux's notation (`main@sha1:<hash>`), when the tree came from git.
    pub revision: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("repository {0}: no such directory")]
    NotFound(String),
}

/// Resolves `--repo` to a directory to load.
pub fn open(args: &RepoArgs) -> Result<Checkout, SourceError> {
    let dir = PathBuf::from(&args.repo);
    if !dir.is_dir() {
        return Err(SourceError::NotFound(args.repo.clone()));
    }
    Ok(Checkout { dir, revision: None })
}
