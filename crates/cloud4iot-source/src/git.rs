//! Git repositories with libgit2: discovery of a local repository, fetching a URL into a
//! bare cache, resolving a revision, and writing a commit's tree to a fresh directory.

use std::cell::Cell;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Once;

use git2::{
    AutotagOption, Cred, CredentialType, Direction, ErrorCode, FetchOptions, FetchPrune,
    ObjectType, Oid, ProxyOptions, RemoteCallbacks, Repository, StatusOptions, Tree,
};

use super::signature::AllowedSigners;
use super::{Checkout, SourceError};

/// Connecting to a remote gives up after this long (an unreachable host must not hang CI).
const CONNECT_TIMEOUT_MS: i32 = 15_000;
/// A remote that stops sending data for this long is given up on.
const IO_TIMEOUT_MS: i32 = 60_000;

pub struct Options {
    /// A private key file for ssh remotes (`--ssh-key`, `CLOUD4IOT_SSH_KEY`).
    pub ssh_key: Option<PathBuf>,
}

/// `$XDG_CACHE_HOME/cloud4iot`, else `$HOME/.cache/cloud4iot`, else a directory under the
/// system's temporary directory (a CI container may have no home).
pub fn cache_root() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".cache"))
        })
        .unwrap_or_else(std::env::temp_dir);
    base.join("cloud4iot")
}

/// A local repository that contains the directory `--repo` names.
pub struct Local {
    repo: Repository,
    /// The directory as the user named it.
    dir: PathBuf,
    /// `dir` relative to the work tree's root (empty for the root or a bare repository).
    rel: PathBuf,
    label: String,
}

/// The repository containing `dir`, if any.
pub fn discover(dir: &Path, label: &str) -> Result<Option<Local>, SourceError> {
    let repo = match Repository::discover(dir) {
        Ok(repo) => repo,
        Err(e) if e.code() == ErrorCode::NotFound => return Ok(None),
        Err(e) => return Err(git_error(label, e)),
    };
    let rel = match repo.workdir() {
        Some(workdir) => {
            let canon = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
            canon(dir)
                .strip_prefix(canon(workdir))
                .map(Path::to_path_buf)
                .unwrap_or_default()
        }
        None => PathBuf::new(),
    };
    Ok(Some(Local {
        repo,
        dir: dir.to_path_buf(),
        rel,
        label: label.to_owned(),
    }))
}

impl Local {
    pub fn open(
        mut self,
        rev: Option<&str>,
        policy: Option<&AllowedSigners>,
        sub: &Path,
    ) -> Result<Checkout, SourceError> {
        if !sub.as_os_str().is_empty() {
            self.dir = self.dir.join(sub);
            self.rel = self.rel.join(sub);
        }
        if rev.is_none() && policy.is_none() && self.repo.workdir().is_some() {
            return self.open_work_tree();
        }
        let (commit, revision) = resolve(&self.repo, rev.unwrap_or("HEAD"), &self.label)?;
        checkout_commit(&self.repo, commit, revision, &self.rel, &self.label, policy)
    }

    /// The files on disk, with HEAD's revision (and `(dirty)` when they differ from it).
    fn open_work_tree(self) -> Result<Checkout, SourceError> {
        if !self.dir.is_dir() {
            return Err(SourceError::NotFound(self.dir.display().to_string()));
        }
        let revision = match resolve(&self.repo, "HEAD", &self.label) {
            Ok((_, revision)) => Some(revision),
            Err(SourceError::Empty { .. }) => None,
            Err(e) => return Err(e),
        };
        let revision = match revision {
            Some(r) if self.is_dirty()? => Some(format!("{r} (dirty)")),
            other => other,
        };
        Ok(Checkout {
            dir: self.dir,
            revision,
            live: true,
            signer: None,
        })
    }

    fn is_dirty(&self) -> Result<bool, SourceError> {
        let mut opts = StatusOptions::new();
        opts.include_untracked(true)
            .recurse_untracked_dirs(true)
            .exclude_submodules(true);
        if !self.rel.as_os_str().is_empty() {
            opts.pathspec(self.rel.as_os_str());
        }
        let statuses = self
            .repo
            .statuses(Some(&mut opts))
            .map_err(|e| git_error(&self.label, e))?;
        Ok(!statuses.is_empty())
    }
}

/// Fetches `url` into its bare cache repository and checks out `rev` (default: the
/// remote's HEAD branch).
pub fn open_url(
    remote_url: &str,
    rev: Option<&str>,
    opts: &Options,
    policy: Option<&AllowedSigners>,
    sub: &Path,
) -> Result<Checkout, SourceError> {
    set_timeouts();
    // The cache's own HEAD means nothing: `HEAD` of a URL is the remote's HEAD branch.
    let rev = rev.filter(|r| *r != "HEAD");
    // Messages show the URL without a password it may carry.
    let url = &redact(remote_url);
    let dir = cache_root().join("git").join(url_key(remote_url));
    std::fs::create_dir_all(dir.parent().unwrap_or(&dir)).map_err(|source| SourceError::Io {
        repo: url.to_owned(),
        dir: dir.clone(),
        source,
    })?;
    // One fetch per cache repository at a time (two CI jobs, or the controller and a
    // person): libgit2 would fail on the other's ref locks. Released when dropped.
    let lock_path = dir.with_extension("lock");
    let lock = std::fs::File::create(&lock_path).map_err(|source| SourceError::Io {
        repo: url.to_owned(),
        dir: lock_path.clone(),
        source,
    })?;
    lock.lock().map_err(|source| SourceError::Io {
        repo: url.to_owned(),
        dir: lock_path,
        source,
    })?;
    let repo = if dir.join("HEAD").is_file() {
        Repository::open_bare(&dir).map_err(|e| git_error(url, e))?
    } else {
        std::fs::create_dir_all(&dir).map_err(|source| SourceError::Io {
            repo: url.to_owned(),
            dir: dir.clone(),
            source,
        })?;
        Repository::init_bare(&dir).map_err(|e| git_error(url, e))?
    };
    let mut remote = repo
        .remote_anonymous(remote_url)
        .map_err(|e| git_error(url, e))?;

    // The remote's HEAD is only known while connected; ask for it before fetching.
    let default_branch = if rev.is_none() {
        let conn = remote
            .connect_auth(Direction::Fetch, Some(callbacks(opts)), Some(proxy()))
            .map_err(|e| remote_error(url, e))?;
        let head = conn.default_branch().map_err(|e| {
            // An empty repository advertises no refs, hence no HEAD to follow.
            if conn.list().is_ok_and(|refs| refs.is_empty()) {
                SourceError::Empty {
                    repo: url.to_owned(),
                }
            } else {
                SourceError::Git {
                    repo: url.to_owned(),
                    message: format!(
                        "the remote names no HEAD branch ({}); pass --rev",
                        e.message()
                    ),
                }
            }
        })?;
        let head = head.as_str().unwrap_or_default().to_owned();
        drop(conn);
        Some(head.strip_prefix("refs/heads/").unwrap_or(&head).to_owned())
    } else {
        None
    };

    let mut refspecs = vec![
        "+refs/heads/*:refs/heads/*".to_owned(),
        "+refs/tags/*:refs/tags/*".to_owned(),
    ];
    // A ref outside branches and tags (e.g. `refs/pull/42/head`) is fetched by name.
    if let Some(r) = rev.filter(|r| {
        r.starts_with("refs/") && !r.starts_with("refs/heads/") && !r.starts_with("refs/tags/")
    }) {
        refspecs.push(format!("+{r}:{r}"));
    }
    let mut fetch = FetchOptions::new();
    fetch
        .remote_callbacks(callbacks(opts))
        .proxy_options(proxy())
        .prune(FetchPrune::On)
        .download_tags(AutotagOption::All);
    remote
        .fetch(&refspecs, Some(&mut fetch), None)
        .map_err(|e| remote_error(url, e))?;

    let rev = match (rev, &default_branch) {
        (Some(r), _) => r.to_owned(),
        (None, Some(branch)) => branch.clone(),
        (None, None) => unreachable!("default branch is read when no revision is given"),
    };
    let (commit, revision) = resolve(&repo, &rev, url)?;
    checkout_commit(&repo, commit, revision, sub, url, policy)
}

/// `https://user:secret@host/x` -> `https://user:***@host/x`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rsplit_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}{}", &rest[authority_end..])
        }
        _ => url.to_owned(),
    }
}

/// The cache directory name of a URL: its SHA-1 (libgit2's hasher; no extra dependency).
fn url_key(url: &str) -> String {
    Oid::hash_object(ObjectType::Blob, url.as_bytes())
        .map(|o| o.to_string())
        .unwrap_or_else(|_| "url".to_owned())
}

fn set_timeouts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: libgit2 global options, set once before any transport is used.
        unsafe {
            let _ = git2::opts::set_server_connect_timeout_in_milliseconds(CONNECT_TIMEOUT_MS);
            let _ = git2::opts::set_server_timeout_in_milliseconds(IO_TIMEOUT_MS);
        }
    });
}

fn proxy() -> ProxyOptions<'static> {
    let mut p = ProxyOptions::new();
    p.auto();
    p
}

/// Credentials, each kind tried once (libgit2 asks again after a rejection, and would
/// loop forever on an agent that offers a wrong key): ssh — the `--ssh-key` file, else
/// the ssh agent; https — the token in `CLOUD4IOT_GIT_TOKEN` as password, the user from
/// the URL or `git`.
fn callbacks(opts: &Options) -> RemoteCallbacks<'_> {
    let tried_key = Cell::new(false);
    let tried_agent = Cell::new(false);
    let tried_token = Cell::new(false);
    let mut cb = RemoteCallbacks::new();
    cb.credentials(move |_url, user_from_url, allowed| {
        let user = user_from_url.unwrap_or("git");
        if allowed.contains(CredentialType::USERNAME) {
            return Cred::username(user);
        }
        if allowed.contains(CredentialType::SSH_KEY) {
            if let Some(key) = &opts.ssh_key
                && !tried_key.replace(true)
            {
                return Cred::ssh_key(user, None, key, None);
            }
            if std::env::var_os("SSH_AUTH_SOCK").is_some() && !tried_agent.replace(true) {
                return Cred::ssh_key_from_agent(user);
            }
            let tried = match (tried_key.get(), tried_agent.get()) {
                (true, true) => "the server accepted neither the key of --ssh-key nor the ssh agent's keys",
                (true, false) => "the server did not accept the key of --ssh-key (and no ssh agent is running)",
                (false, true) => "the server accepted none of the ssh agent's keys (pass a key with --ssh-key)",
                (false, false) => "no ssh key to offer: pass --ssh-key FILE (or CLOUD4IOT_SSH_KEY), or run an ssh agent",
            };
            return Err(git2::Error::new(ErrorCode::Auth, git2::ErrorClass::Ssh, tried));
        }
        if allowed.contains(CredentialType::USER_PASS_PLAINTEXT) {
            if let Ok(token) = std::env::var("CLOUD4IOT_GIT_TOKEN")
                && !token.is_empty()
                && !tried_token.replace(true)
            {
                return Cred::userpass_plaintext(user, &token);
            }
            let why = if tried_token.get() {
                "the server rejected the token in CLOUD4IOT_GIT_TOKEN"
            } else {
                "the server asks for credentials: set CLOUD4IOT_GIT_TOKEN to an access token"
            };
            return Err(git2::Error::new(ErrorCode::Auth, git2::ErrorClass::Http, why));
        }
        Err(git2::Error::new(ErrorCode::Auth, git2::ErrorClass::None, "no supported credential type offered"))
    });
    cb
}

fn git_error(repo: &str, e: git2::Error) -> SourceError {
    SourceError::Git {
        repo: repo.to_owned(),
        message: e.message().to_owned(),
    }
}

fn remote_error(url: &str, e: git2::Error) -> SourceError {
    if e.code() == ErrorCode::Certificate
        || (e.class() == git2::ErrorClass::Ssh && e.message().contains("hostkey"))
    {
        SourceError::HostKey {
            url: url.to_owned(),
            message: e.message().to_owned(),
        }
    } else if e.code() == ErrorCode::Auth {
        SourceError::Auth {
            url: url.to_owned(),
            message: e.message().to_owned(),
        }
    } else {
        SourceError::Unreachable {
            url: url.to_owned(),
            message: e.message().to_owned(),
        }
    }
}

/// A revision to a commit and its Flux-style name. Branches first, then tags, then
/// remote-tracking branches (`origin/main` in a CI clone), full ref names, and anything
/// else git's revision syntax accepts (a hash, `HEAD~1`) as a bare commit.
pub fn resolve(repo: &Repository, rev: &str, label: &str) -> Result<(Oid, String), SourceError> {
    let not_found = || SourceError::RevisionNotFound {
        rev: rev.to_owned(),
        repo: label.to_owned(),
    };
    if rev == "HEAD" {
        let head = match repo.head() {
            Ok(head) => head,
            Err(e) if matches!(e.code(), ErrorCode::UnbornBranch | ErrorCode::NotFound) => {
                return Err(SourceError::Empty {
                    repo: label.to_owned(),
                });
            }
            Err(e) => return Err(git_error(label, e)),
        };
        let commit = head.peel_to_commit().map_err(|e| git_error(label, e))?.id();
        return Ok(
            match head.is_branch().then(|| head.shorthand().ok()).flatten() {
                Some(branch) => (commit, flux(Some(branch), commit)),
                None => (commit, flux(None, commit)),
            },
        );
    }
    for prefix in ["refs/heads/", "refs/tags/", "refs/remotes/", ""] {
        if prefix.is_empty() && !rev.starts_with("refs/") {
            continue;
        }
        if let Ok(reference) = repo.find_reference(&format!("{prefix}{rev}")) {
            let commit = reference.peel_to_commit().map_err(|_| not_found())?.id();
            // `refs/heads/x` is reported as `x`; other refs (`refs/pull/42/head`) in full.
            let standard = ["refs/heads/", "refs/tags/", "refs/remotes/"]
                .iter()
                .any(|p| rev.starts_with(p));
            let name = if prefix.is_empty() && standard {
                reference.shorthand().unwrap_or(rev).to_owned()
            } else {
                rev.to_owned()
            };
            return Ok((commit, flux(Some(&name), commit)));
        }
    }
    match repo.revparse_single(rev) {
        Ok(object) => {
            let commit = object.peel_to_commit().map_err(|_| not_found())?.id();
            Ok((commit, flux(None, commit)))
        }
        Err(e)
            if matches!(
                e.code(),
                ErrorCode::NotFound | ErrorCode::Ambiguous | ErrorCode::InvalidSpec
            ) =>
        {
            Err(not_found())
        }
        Err(e)
            if e.class() == git2::ErrorClass::Reference
                || e.class() == git2::ErrorClass::Object =>
        {
            Err(not_found())
        }
        Err(e) => Err(git_error(label, e)),
    }
}

/// `main@sha1:<hash>`, or `sha1:<hash>` for a commit reached by no name.
fn flux(name: Option<&str>, commit: Oid) -> String {
    match name {
        Some(name) => format!("{name}@sha1:{commit}"),
        None => format!("sha1:{commit}"),
    }
}

fn checkout_commit(
    repo: &Repository,
    commit: Oid,
    revision: String,
    rel: &Path,
    label: &str,
    policy: Option<&AllowedSigners>,
) -> Result<Checkout, SourceError> {
    let signer = match policy {
        Some(signers) => Some(
            super::signature::verify_commit(repo, commit, signers).map_err(|reason| {
                SourceError::Refused {
                    revision: revision.clone(),
                    repo: label.to_owned(),
                    reason,
                }
            })?,
        ),
        None => None,
    };
    let root = repo
        .find_commit(commit)
        .and_then(|c| c.tree())
        .map_err(|e| git_error(label, e))?;
    let tree = if rel.as_os_str().is_empty() {
        root
    } else {
        let missing = || SourceError::PathNotInRevision {
            path: rel.display().to_string(),
            revision: revision.clone(),
            repo: label.to_owned(),
        };
        let entry = root.get_path(rel).map_err(|_| missing())?;
        if entry.kind() != Some(ObjectType::Tree) {
            return Err(missing());
        }
        repo.find_tree(entry.id())
            .map_err(|e| git_error(label, e))?
    };
    let dir = materialise(repo, &tree, label)?;
    Ok(Checkout {
        dir,
        revision: Some(revision),
        live: false,
        signer,
    })
}

/// Writes `tree` to `<cache>/git/trees/<tree id>` unless it is already there: into a
/// temporary sibling first, renamed into place, so a reader never sees half a tree.
fn materialise(repo: &Repository, tree: &Tree<'_>, label: &str) -> Result<PathBuf, SourceError> {
    let trees = cache_root().join("git").join("trees");
    let dir = trees.join(tree.id().to_string());
    if dir.is_dir() {
        return Ok(dir);
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let tmp = trees.join(format!(".tmp-{}-{}-{nanos}", tree.id(), std::process::id()));
    let io = |dir: &Path| {
        let dir = dir.to_path_buf();
        move |source| SourceError::Io {
            repo: label.to_owned(),
            dir,
            source,
        }
    };
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    if let Err(e) = write_tree(repo, tree, &tmp, label) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if let Err(e) = std::fs::rename(&tmp, &dir) {
        let _ = std::fs::remove_dir_all(&tmp);
        // Another process wrote the same tree first: its copy is identical.
        if !dir.is_dir() {
            return Err(io(&dir)(e));
        }
    }
    Ok(dir)
}

fn write_tree(
    repo: &Repository,
    tree: &Tree<'_>,
    dir: &Path,
    label: &str,
) -> Result<(), SourceError> {
    for entry in tree.iter() {
        let name = entry.name_bytes();
        // Names a hostile repository could use to write outside the checkout.
        if name.is_empty()
            || name == b"."
            || name == b".."
            || name.contains(&b'/')
            || name.eq_ignore_ascii_case(b".git")
        {
            continue;
        }
        let path = dir.join(OsStr::from_bytes(name));
        match entry.kind() {
            Some(ObjectType::Tree) => {
                std::fs::create_dir(&path).map_err(|source| SourceError::Io {
                    repo: label.to_owned(),
                    dir: path.clone(),
                    source,
                })?;
                let sub = repo
                    .find_tree(entry.id())
                    .map_err(|e| git_error(label, e))?;
                write_tree(repo, &sub, &path, label)?;
            }
            // Symbolic links are not followed: a link could point at any file on the
            // machine reading the repository. Submodules (commits) are not fetched.
            Some(ObjectType::Blob) if entry.filemode() == 0o120000 => {
                tracing::warn!(path = %path.display(), "symbolic link in the repository skipped");
            }
            Some(ObjectType::Blob) => {
                let blob = repo
                    .find_blob(entry.id())
                    .map_err(|e| git_error(label, e))?;
                std::fs::write(&path, blob.content()).map_err(|source| SourceError::Io {
                    repo: label.to_owned(),
                    dir: path.clone(),
                    source,
                })?;
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_in_urls_are_not_shown() {
        assert_eq!(
            super::redact("https://ci:s3cret@git.example.org/a/b.git"),
            "https://ci:***@git.example.org/a/b.git"
        );
        assert_eq!(
            super::redact("https://ci@git.example.org/a.git"),
            "https://ci@git.example.org/a.git"
        );
        assert_eq!(
            super::redact("ssh://git@host:22/x@y"),
            "ssh://git@host:22/x@y"
        );
        assert_eq!(super::redact("file:///tmp/r"), "file:///tmp/r");
    }
}
