//! Where the desired configuration comes from: a directory, a local git repository, or a
//! git URL, at a revision, optionally only when that revision's commit is signed by an
//! allowed key.
//!
//! What `--repo` may name, and what is read:
//! - a plain directory (not inside a git work tree): read as it is; no revision;
//! - a directory inside a git work tree, without `--rev`: the files as they are on disk,
//!   uncommitted edits included (authors want to see them), reported as
//!   `<branch>@sha1:<HEAD>`, with ` (dirty)` appended when files under the directory
//!   differ from HEAD (the suffix makes it obvious this is not a commit anyone can fetch);
//! - a local repository (work tree or bare) with `--rev`, or a bare one without (HEAD):
//!   the tree of that commit, read from the repository's object database and written to a
//!   fresh directory under the cache; the user's working tree and index are never touched;
//! - a URL (`https://`, `ssh://`, `file://`, `user@host:path`): fetched into a bare cache
//!   repository `$XDG_CACHE_HOME/cloud4iot/git/<sha1 of the URL>` (else `~/.cache/...`),
//!   then as above; without `--rev`, the remote's HEAD branch.
//!
//! Trees are written to `<cache>/cloud4iot/git/trees/<tree id>` atomically (a temporary
//! directory renamed into place) and reused: a tree id names its content.
//!
//! Revisions are reported the way Flux does: `main@sha1:<hash>` for a branch,
//! `v1.2.0@sha1:<hash>` for a tag, `sha1:<hash>` for a bare commit.
//!
//! `--verify-signatures` checks the commit of the revision (also HEAD of a work tree, whose
//! committed tree is then read instead of the files on disk: a signature vouches for a
//! commit, never for uncommitted edits). See [`signature`].

mod git;
mod redact;
pub mod signature;

use std::path::{Path, PathBuf};

pub use git::cache_root;
pub use redact::redact;

/// A tree of repository files ready to load, and the revision it came from.
#[derive(Debug)]
pub struct Checkout {
    /// The directory whose `*.yaml`/`*.yml` files are the configuration.
    pub dir: PathBuf,
    /// The revision in Flux's notation (`main@sha1:<hash>`), when the tree came from git.
    pub revision: Option<String>,
    /// Whether `dir` is the user's own directory, read as it is on disk (so watching it
    /// for edits makes sense), rather than a tree materialised from a commit.
    pub live: bool,
    /// The signer, when `--verify-signatures` accepted the revision.
    pub signer: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("repository {0}: no such directory")]
    NotFound(String),
    #[error("--path {0}: must be a relative path inside the repository")]
    BadPath(String),
    #[error(
        "--path {path}: resolves to {target} through a symbolic link, outside the repository {repo}; refused"
    )]
    PathOutside {
        path: String,
        target: String,
        repo: String,
    },
    #[error(
        "no private cache directory for git checkouts: neither XDG_CACHE_HOME nor HOME is set \
         to an absolute path (a shared temporary directory is never used); set one of them"
    )]
    NoCache,
    #[error("the cache directory {dir} {problem}")]
    UnsafeCache { dir: PathBuf, problem: String },
    #[error("repository {repo}: not a git repository, so --{flag} cannot be used with it")]
    NotARepository { repo: String, flag: &'static str },
    #[error("repository {repo}: {message}")]
    Git { repo: String, message: String },
    #[error("cannot reach {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error(
        "the ssh host key of {url} is not trusted: {message} (add the host to ~/.ssh/known_hosts, e.g. with ssh-keyscan)"
    )]
    HostKey { url: String, message: String },
    /// https: the server's certificate did not verify (unknown issuer, expired, or not for
    /// this host). Nothing was sent to the server.
    #[error(
        "the TLS certificate of {url} is not trusted: {message} (its issuer must be in the \
         system's certificate store, or in SSL_CERT_FILE / SSL_CERT_DIR, and it must name the host)"
    )]
    Certificate { url: String, message: String },
    /// A connection that could not be opened, or that went quiet, within the timeout.
    #[error("cannot reach {url}: timed out: {what} within {seconds} s")]
    TimedOut {
        url: String,
        what: &'static str,
        seconds: i32,
    },
    #[error("authentication to {url} failed: {message}")]
    Auth { url: String, message: String },
    #[error("revision {rev} not found in {repo}: no branch, tag or commit by that name")]
    RevisionNotFound { rev: String, repo: String },
    #[error("repository {repo} has no commits yet")]
    Empty { repo: String },
    #[error("{path} does not exist at revision {revision} of {repo}")]
    PathNotInRevision {
        path: String,
        revision: String,
        repo: String,
    },
    #[error("cannot write the checkout of {repo} to {dir}: {source}")]
    Io {
        repo: String,
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("revision {revision} of {repo} refused: {reason}")]
    Refused {
        revision: String,
        repo: String,
        reason: signature::Refusal,
    },
    #[error(transparent)]
    Signers(#[from] signature::AllowedSignersError),
}

impl SourceError {
    /// Whether the revision was read but refused by the signature policy: bad input that
    /// must not be applied (the command line exits 1 for it, as for invalid YAML), rather
    /// than a source that could not be read.
    pub fn is_refusal(&self) -> bool {
        matches!(self, SourceError::Refused { .. })
    }
}

/// Where the desired configuration comes from, and what a revision must satisfy.
#[derive(Clone, Debug, Default)]
pub struct SourceOptions {
    /// A directory, a local git repository or a git URL.
    pub repo: String,
    /// A branch, tag or commit; `None`: the files on disk for a directory, HEAD for a bare
    /// repository, the remote's HEAD branch for a URL.
    pub rev: Option<String>,
    /// The directory inside the repository that holds the configuration.
    pub path: Option<PathBuf>,
    /// Private key for ssh URLs (else `CLOUD4IOT_SSH_KEY`, else the ssh agent).
    pub ssh_key: Option<PathBuf>,
    /// Accept a revision only when its commit is signed by a key in this
    /// `allowed_signers` file.
    pub allowed_signers: Option<PathBuf>,
    /// Verify signatures; with no `allowed_signers` every revision is refused.
    pub verify_signatures: bool,
}

/// Resolves the repository at `opts.rev` to a directory to load.
pub fn open(opts: &SourceOptions) -> Result<Checkout, SourceError> {
    open_at(opts, opts.rev.as_deref())
}

/// Resolves the repository at `rev` instead of `opts.rev` (`diff --base` opens the base
/// this way); every other option applies.
pub fn open_at(args: &SourceOptions, rev: Option<&str>) -> Result<Checkout, SourceError> {
    let policy = match (&args.verify_signatures, &args.allowed_signers) {
        (true, Some(file)) => Some(signature::AllowedSigners::read(file)?),
        // The command line requires the file; a library caller asking for verification
        // without signers gets every revision refused.
        (true, None) => Some(signature::AllowedSigners::default()),
        (false, _) => None,
    };
    let opts = git::Options {
        ssh_key: args
            .ssh_key
            .clone()
            .or_else(|| std::env::var_os("CLOUD4IOT_SSH_KEY").map(PathBuf::from)),
    };
    // Every message names the repository without the credentials a URL may carry.
    let label = &redact(&args.repo);
    let path = Path::new(&args.repo);
    let sub = args.path.clone().unwrap_or_default();
    let sub: PathBuf = if sub.components().all(|c| {
        matches!(
            c,
            std::path::Component::Normal(_) | std::path::Component::CurDir
        )
    }) {
        sub.components()
            .filter(|c| matches!(c, std::path::Component::Normal(_)))
            .collect()
    } else {
        return Err(SourceError::BadPath(sub.display().to_string()));
    };
    if !sub.components().all(|c| {
        matches!(
            c,
            std::path::Component::Normal(_) | std::path::Component::CurDir
        )
    }) {
        return Err(SourceError::BadPath(sub.display().to_string()));
    }

    if !path.exists() && is_url(&args.repo) {
        return git::open_url(&args.repo, rev, &opts, policy.as_ref(), &sub);
    }
    if !path.is_dir() {
        return Err(SourceError::NotFound(label.clone()));
    }
    match git::discover(path, label)? {
        None => {
            if rev.is_some() {
                return Err(SourceError::NotARepository {
                    repo: label.to_owned(),
                    flag: "rev",
                });
            }
            if policy.is_some() {
                return Err(SourceError::NotARepository {
                    repo: label.to_owned(),
                    flag: "verify-signatures",
                });
            }
            let dir = path.join(&sub);
            if !dir.is_dir() {
                return Err(SourceError::NotFound(dir.display().to_string()));
            }
            inside(path, &dir, &sub, label)?;
            Ok(Checkout {
                dir,
                revision: None,
                live: true,
                signer: None,
            })
        }
        Some(local) => local.open(rev, policy.as_ref(), &sub),
    }
}

/// `--path` resolved on disk must stay inside the repository: a symbolic link on the way
/// (`--path config` with `config -> /etc`) must not lead the loader out of it.
pub(crate) fn inside(root: &Path, dir: &Path, sub: &Path, label: &str) -> Result<(), SourceError> {
    if sub.as_os_str().is_empty() || !dir.exists() {
        return Ok(());
    }
    let canon = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    let target = canon(dir);
    if target.starts_with(canon(root)) {
        Ok(())
    } else {
        Err(SourceError::PathOutside {
            path: sub.display().to_string(),
            target: target.display().to_string(),
            repo: label.to_owned(),
        })
    }
}

/// Whether `repo` names a remote (or `file://`) repository rather than a path.
pub fn is_url(repo: &str) -> bool {
    if let Some((scheme, _)) = repo.split_once("://") {
        return !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    }
    // scp-like syntax, `git@host:org/repo.git`: a host part before the first `:`, with no
    // `/` in it (which tells it apart from a relative path containing a colon).
    match repo.split_once(':') {
        Some((host, rest)) => {
            !host.is_empty() && !host.contains('/') && host.contains('@') && !rest.is_empty()
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_paths_are_told_apart() {
        assert!(is_url("https://example.invalid/org/repo.git"));
        assert!(is_url("ssh://git@example.invalid/org/repo.git"));
        assert!(is_url("file:///tmp/repo"));
        assert!(is_url("git@example.invalid:org/repo.git"));
        assert!(!is_url("examples-repo"));
        assert!(!is_url("./dir/with:colon"));
        assert!(!is_url("/abs/path"));
    }
}
