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

use super::redact::redact;
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

/// `$XDG_CACHE_HOME/cloud4iot`, else `$HOME/.cache/cloud4iot`. Never a shared temporary
/// directory: another local user could plant trees there that would then be rendered.
pub fn cache_root() -> Result<PathBuf, SourceError> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".cache"))
                .filter(|p| p.is_absolute())
        })
        .ok_or(SourceError::NoCache)?;
    Ok(base.join("cloud4iot"))
}

/// `dir` (and its missing parents) created with mode 0700, and checked to be a directory
/// of ours that nobody else can write or read: not a symbolic link, owned by this user,
/// no group or other permission bits. A cache directory someone else could have written
/// into is refused rather than repaired.
pub(crate) fn private_dir(dir: &Path, label: &str) -> Result<(), SourceError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let io = |source| SourceError::Io {
        repo: label.to_owned(),
        dir: dir.to_path_buf(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io)?;
    let meta = std::fs::symlink_metadata(dir).map_err(io)?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    let problem = if !meta.file_type().is_dir() {
        Some("is not a directory (a symbolic link?)".to_owned())
    } else if meta.uid() != me {
        Some(format!(
            "is owned by uid {}, not by this user ({me})",
            meta.uid()
        ))
    } else if meta.permissions().mode() & 0o022 != 0 {
        Some(format!(
            "can be written by other users (mode {:o}): its content cannot be trusted; \
             remove it (it is only a cache)",
            meta.permissions().mode() & 0o777
        ))
    } else {
        // Readable by others (a cache made before it was private): nobody else could
        // write it, so closing it is enough.
        if meta.permissions().mode() & 0o077 != 0 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
        }
        None
    };
    match problem {
        Some(p) => Err(SourceError::UnsafeCache {
            dir: dir.to_path_buf(),
            problem: p,
        }),
        None => Ok(()),
    }
}

/// Opens (creating, mode 0600) a lock file without following a symbolic link at its
/// path, so a planted link cannot make this process create or truncate another file.
fn open_lock(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// git's `ref_rev_parse_rules`, in git's order (refs.c): the first that exists wins.
const REV_PARSE_RULES: [&str; 6] = [
    "{}",
    "refs/{}",
    "refs/tags/{}",
    "refs/heads/{}",
    "refs/remotes/{}",
    "refs/remotes/{}/HEAD",
];

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
        let root = self.dir.clone();
        if !sub.as_os_str().is_empty() {
            self.dir = self.dir.join(sub);
            self.rel = self.rel.join(sub);
        }
        if rev.is_none() && policy.is_none() && self.repo.workdir().is_some() {
            super::inside(&root, &self.dir, sub, &self.label)?;
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
    let git_dir = cache_root()?.join("git");
    private_dir(&git_dir, url)?;
    let dir = git_dir.join(url_key(remote_url));
    // One fetch per cache repository at a time (two CI jobs, or the controller and a
    // person): libgit2 would fail on the other's ref locks. Released when dropped.
    let lock_path = dir.with_extension("lock");
    let lock = open_lock(&lock_path).map_err(|source| SourceError::Io {
        repo: url.to_owned(),
        dir: lock_path.clone(),
        source,
    })?;
    lock.lock().map_err(|source| SourceError::Io {
        repo: url.to_owned(),
        dir: lock_path,
        source,
    })?;
    private_dir(&dir, url)?;
    let repo = if dir.join("HEAD").is_file() {
        Repository::open_bare(&dir).map_err(|e| git_error(url, e))?
    } else {
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
        message: redact(e.message()),
    }
}

/// A failed fetch, named for what went wrong. libgit2 reports an untrusted https
/// certificate and an unknown ssh host key with the same code (told apart by the error
/// class), and a read that hit the socket timeout under TLS as an OpenSSL "syscall
/// failure" with EAGAIN: both are put into words here.
fn remote_error(url: &str, e: git2::Error) -> SourceError {
    let (url, message) = (url.to_owned(), redact(e.message()));
    let lower = message.to_ascii_lowercase();
    if e.code() == ErrorCode::Certificate {
        if e.class() == git2::ErrorClass::Ssh {
            SourceError::HostKey { url, message }
        } else {
            SourceError::Certificate { url, message }
        }
    } else if e.class() == git2::ErrorClass::Ssh && lower.contains("hostkey") {
        SourceError::HostKey { url, message }
    } else if e.code() == ErrorCode::Auth {
        SourceError::Auth { url, message }
    } else if lower.starts_with("failed to connect") && lower.contains("timed out") {
        SourceError::TimedOut {
            url,
            what: "no connection",
            seconds: CONNECT_TIMEOUT_MS / 1000,
        }
    } else if e.code() == ErrorCode::Timeout
        || lower.contains("timed out")
        // EAGAIN on a blocking socket: the receive/send timeout libgit2 sets ran out.
        || lower.contains("resource temporarily unavailable")
    {
        SourceError::TimedOut {
            url,
            what: "the server sent nothing",
            seconds: IO_TIMEOUT_MS / 1000,
        }
    } else {
        SourceError::Unreachable { url, message }
    }
}

/// A revision to a commit and its Flux-style name, resolved as `git rev-parse` does: a full
/// hash is that commit; otherwise the first of `NAME`, `refs/NAME`, `refs/tags/NAME`,
/// `refs/heads/NAME`, `refs/remotes/NAME`, `refs/remotes/NAME/HEAD` that exists (so a name
/// that is both a tag and a branch is the tag, and a warning says so, as git warns
/// "refname is ambiguous"); then anything else git's revision syntax accepts (a short
/// hash, `HEAD~1`) as a bare commit.
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
    if rev.len() == 40
        && rev.bytes().all(|b| b.is_ascii_hexdigit())
        && let Ok(oid) = Oid::from_str(rev)
        && let Ok(commit) = repo.find_commit(oid)
    {
        return Ok((commit.id(), flux(None, commit.id())));
    }
    let found: Vec<git2::Reference<'_>> = REV_PARSE_RULES
        .iter()
        .filter_map(|rule| repo.find_reference(&rule.replace("{}", rev)).ok())
        .collect();
    if let Some(reference) = found.first() {
        let full = reference.name().unwrap_or(rev).to_owned();
        if found.len() > 1 {
            let others: Vec<&str> = found[1..].iter().filter_map(|r| r.name().ok()).collect();
            tracing::warn!(
                "refname {rev:?} is ambiguous (also {}): using {full}, as git rev-parse does; \
                 name the full ref to choose",
                others.join(", ")
            );
        }
        let commit = reference.peel_to_commit().map_err(|_| not_found())?.id();
        // `refs/heads/x` is reported as `x`; other refs (`refs/pull/42/head`) in full.
        let standard = ["refs/heads/", "refs/tags/", "refs/remotes/"]
            .iter()
            .any(|p| rev.starts_with(p));
        let name = if standard {
            reference.shorthand().unwrap_or(rev).to_owned()
        } else {
            rev.to_owned()
        };
        return Ok((commit, flux(Some(&name), commit)));
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

/// Writes `tree` to `<cache>/git/trees/<tree id>`: into a private temporary sibling first,
/// renamed into place, so a reader never sees half a tree. A tree already there is reused
/// only after it is checked against `tree` (every entry, no extra file): whatever is in the
/// cache, what gets rendered is what the commit holds (also under `--verify-signatures`).
fn materialise(repo: &Repository, tree: &Tree<'_>, label: &str) -> Result<PathBuf, SourceError> {
    let trees = cache_root()?.join("git").join("trees");
    private_dir(&trees, label)?;
    let dir = trees.join(tree.id().to_string());
    let io = |dir: &Path| {
        let dir = dir.to_path_buf();
        move |source| SourceError::Io {
            repo: label.to_owned(),
            dir,
            source,
        }
    };
    if std::fs::symlink_metadata(&dir).is_ok() {
        if matches_tree(repo, tree, &dir) {
            return Ok(dir);
        }
        tracing::warn!(dir = %dir.display(), "cached tree differs from the commit; written again");
        remove_any(&dir).map_err(io(&dir))?;
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let tmp = trees.join(format!(".tmp-{}-{}-{nanos}", tree.id(), std::process::id()));
    create_private_dir(&tmp).map_err(io(&tmp))?;
    if let Err(e) = write_tree(repo, tree, &tmp, label) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if let Err(e) = std::fs::rename(&tmp, &dir) {
        let _ = std::fs::remove_dir_all(&tmp);
        // Another process wrote the same tree first: used if it holds the commit's content.
        if !matches_tree(repo, tree, &dir) {
            return Err(io(&dir)(e));
        }
    }
    Ok(dir)
}

/// A directory, a file or a symbolic link, removed.
fn remove_any(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn create_private_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().mode(0o700).create(path)
}

/// The names [`write_tree`] writes, and how: entries a hostile repository could use to
/// write outside the checkout are left out.
fn written_entries<'t>(tree: &'t Tree<'_>) -> impl Iterator<Item = (Vec<u8>, git2::TreeEntry<'t>)> {
    tree.iter().filter_map(|entry| {
        let name = entry.name_bytes().to_vec();
        let bad = name.is_empty()
            || name == b"."
            || name == b".."
            || name.contains(&b'/')
            || name.eq_ignore_ascii_case(b".git");
        let kind = entry.kind();
        // Submodules (commits) are not fetched.
        let written = matches!(kind, Some(ObjectType::Tree) | Some(ObjectType::Blob));
        (!bad && written).then_some((name, entry))
    })
}

/// Whether `dir` holds exactly what [`write_tree`] writes for `tree`: the same names, each
/// blob with the same content (hashed as git does), each symbolic link to the same target,
/// nothing else.
fn matches_tree(repo: &Repository, tree: &Tree<'_>, dir: &Path) -> bool {
    let Ok(meta) = std::fs::symlink_metadata(dir) else {
        return false;
    };
    if !meta.file_type().is_dir() {
        return false;
    }
    let Ok(read) = std::fs::read_dir(dir) else {
        return false;
    };
    let mut on_disk: Vec<Vec<u8>> = Vec::new();
    for e in read {
        let Ok(e) = e else { return false };
        on_disk.push(e.file_name().as_bytes().to_vec());
    }
    on_disk.sort();
    let mut expected: Vec<Vec<u8>> = written_entries(tree).map(|(n, _)| n).collect();
    expected.sort();
    if on_disk != expected {
        return false;
    }
    written_entries(tree).all(|(name, entry)| {
        let path = dir.join(OsStr::from_bytes(&name));
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            return false;
        };
        match entry.kind() {
            Some(ObjectType::Tree) => repo
                .find_tree(entry.id())
                .is_ok_and(|sub| matches_tree(repo, &sub, &path)),
            Some(ObjectType::Blob) if entry.filemode() == 0o120000 => {
                meta.file_type().is_symlink()
                    && repo.find_blob(entry.id()).is_ok_and(|b| {
                        std::fs::read_link(&path)
                            .is_ok_and(|t| t.as_os_str().as_bytes() == b.content())
                    })
            }
            Some(ObjectType::Blob) => {
                meta.file_type().is_file()
                    && std::fs::read(&path).is_ok_and(|bytes| {
                        Oid::hash_object(ObjectType::Blob, &bytes).is_ok_and(|id| id == entry.id())
                    })
            }
            _ => false,
        }
    })
}

fn write_tree(
    repo: &Repository,
    tree: &Tree<'_>,
    dir: &Path,
    label: &str,
) -> Result<(), SourceError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SourceError::Io {
            repo: label.to_owned(),
            dir: path,
            source,
        }
    };
    for (name, entry) in written_entries(tree) {
        let path = dir.join(OsStr::from_bytes(&name));
        match entry.kind() {
            Some(ObjectType::Tree) => {
                create_private_dir(&path).map_err(io(&path))?;
                let sub = repo
                    .find_tree(entry.id())
                    .map_err(|e| git_error(label, e))?;
                write_tree(repo, &sub, &path, label)?;
            }
            // A symbolic link is written as one, as git checks it out; the loader follows
            // it only when it stays inside the repository and names it otherwise.
            Some(ObjectType::Blob) if entry.filemode() == 0o120000 => {
                let blob = repo
                    .find_blob(entry.id())
                    .map_err(|e| git_error(label, e))?;
                std::os::unix::fs::symlink(OsStr::from_bytes(blob.content()), &path)
                    .map_err(io(&path))?;
            }
            Some(ObjectType::Blob) => {
                let blob = repo
                    .find_blob(entry.id())
                    .map_err(|e| git_error(label, e))?;
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path)
                    .and_then(|mut f| f.write_all(blob.content()))
                    .map_err(io(&path))?;
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use git2::{Error, ErrorClass};

    use super::*;

    fn message(code: ErrorCode, class: ErrorClass, text: &str) -> String {
        remote_error(
            "https://***@git.example/x.git",
            Error::new(code, class, text),
        )
        .to_string()
    }

    // The errors as libgit2 1.9 raises them (streams/openssl.c, transports/ssh_libssh2.c,
    // streams/socket.c); tests/promises.rs and tests/git_ssh.rs see them from real servers.
    #[test]
    fn an_untrusted_tls_certificate_is_not_called_an_ssh_host_key() {
        for text in [
            "the SSL certificate is invalid",
            "hostname does not match certificate",
        ] {
            let m = message(ErrorCode::Certificate, ErrorClass::Ssl, text);
            assert!(
                m.starts_with(
                    "the TLS certificate of https://***@git.example/x.git is not trusted: "
                ) && m.contains("SSL_CERT_FILE")
                    && !m.contains("ssh"),
                "{m}"
            );
        }
        let m = message(
            ErrorCode::Certificate,
            ErrorClass::Ssh,
            "invalid or unknown remote ssh hostkey",
        );
        assert!(
            m.starts_with("the ssh host key of ") && m.contains("known_hosts"),
            "{m}"
        );
    }

    #[test]
    fn a_stall_is_a_timeout_not_an_ssl_error() {
        for (class, text) in [
            (
                ErrorClass::Os,
                "SSL error: syscall failure: Resource temporarily unavailable",
            ),
            (ErrorClass::Net, "could not read from socket: timed out"),
        ] {
            let m = message(ErrorCode::GenericError, class, text);
            assert_eq!(
                m,
                "cannot reach https://***@git.example/x.git: timed out: the server sent nothing within 60 s"
            );
        }
        let m = message(
            ErrorCode::GenericError,
            ErrorClass::Net,
            "failed to connect to git.example: Operation timed out",
        );
        assert_eq!(
            m,
            "cannot reach https://***@git.example/x.git: timed out: no connection within 15 s"
        );
        // Anything else keeps libgit2's words.
        let m = message(
            ErrorCode::GenericError,
            ErrorClass::Os,
            "failed to connect to git.example: Connection refused",
        );
        assert!(
            m.ends_with(": failed to connect to git.example: Connection refused"),
            "{m}"
        );
    }
}
