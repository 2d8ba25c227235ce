//! Helpers for the git tests: real repositories made with git2 in temporary directories,
//! and the real binary run with its cache in a temporary directory.
#![allow(dead_code)] // each test crate uses a different part of this module

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use git2::{IndexAddOption, Oid, Repository, RepositoryInitOptions, Signature, Time};
use ssh_key::{HashAlg, LineEnding, PrivateKey};

pub const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples-repo");

/// A snapshot with gateways, edge and cloud: the engine scenario plans against it.
pub fn home_state() -> PathBuf {
    Path::new(EXAMPLES).join("state/home.yaml")
}

/// The binary, isolated: its git cache in `cache`, no credentials or settings inherited.
pub fn cloud4iot(cache: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cloud4iot"));
    cmd.env("XDG_CACHE_HOME", cache)
        .env("NO_COLOR", "1")
        .env_remove("SSH_AUTH_SOCK")
        .env_remove("CLOUD4IOT_GIT_TOKEN")
        .env_remove("CLOUD4IOT_SSH_KEY")
        .env_remove("CLOUD4IOT_ALLOWED_SIGNERS")
        .env_remove("CLOUD4IOT_REPO")
        .env_remove("KUBECONFIG")
        .env_remove("CLOUD4IOT_LOG");
    cmd
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub fn run(cmd: &mut Command) -> Run {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("run cloud4iot");
    Run {
        code: status.code().expect("exit code"),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// A work-tree repository on branch `main`.
pub struct GitRepo {
    pub repo: Repository,
    pub dir: PathBuf,
    clock: i64,
}

impl GitRepo {
    pub fn init(dir: &Path) -> GitRepo {
        std::fs::create_dir_all(dir).unwrap();
        let mut opts = RepositoryInitOptions::new();
        opts.initial_head("main");
        let repo = Repository::init_opts(dir, &opts).unwrap();
        GitRepo {
            repo,
            dir: dir.to_path_buf(),
            clock: 1_767_225_600,
        } // 2026-01-01
    }

    /// A repository holding the examples' functions, policies and device classes.
    pub fn with_examples(dir: &Path) -> GitRepo {
        let r = GitRepo::init(dir);
        copy_dir(Path::new(EXAMPLES), dir, &["state"]);
        r
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    pub fn write(&self, rel: &str, text: &str) {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap()
    }

    /// Replaces `from` by `to` in a file (the test fails when `from` is absent).
    pub fn edit(&self, rel: &str, from: &str, to: &str) {
        let text = self.read(rel);
        assert!(text.contains(from), "{rel} does not contain {from:?}");
        self.write(rel, &text.replacen(from, to, 1));
    }

    fn sig(&mut self) -> Signature<'static> {
        self.clock += 60;
        Signature::new(
            "Test Author",
            "author@example.org",
            &Time::new(self.clock, 0),
        )
        .unwrap()
    }

    fn stage(&self) -> Oid {
        let mut index = self.repo.index().unwrap();
        index.add_all(["*"], IndexAddOption::DEFAULT, None).unwrap();
        index.update_all(["*"], None).unwrap();
        index.write().unwrap();
        index.write_tree().unwrap()
    }

    fn parents(&self) -> Vec<git2::Commit<'_>> {
        match self.repo.head() {
            Ok(h) => vec![h.peel_to_commit().unwrap()],
            Err(_) => vec![],
        }
    }

    /// Commits every file of the work tree on the current branch.
    pub fn commit(&mut self, message: &str) -> Oid {
        let tree = self.stage();
        let sig = self.sig();
        let tree = self.repo.find_tree(tree).unwrap();
        let parents = self.parents();
        let refs: Vec<&git2::Commit<'_>> = parents.iter().collect();
        self.repo
            .commit(Some("HEAD"), &sig, &sig, message, &tree, &refs)
            .unwrap()
    }

    /// Commits with `signature` (armored) in the `gpgsig` header, made by `sign` over the
    /// commit's bytes; moves the current branch to it.
    pub fn commit_with_signature(
        &mut self,
        message: &str,
        sign: impl FnOnce(&str) -> String,
    ) -> Oid {
        let tree = self.stage();
        let sig = self.sig();
        let tree = self.repo.find_tree(tree).unwrap();
        let parents = self.parents();
        let refs: Vec<&git2::Commit<'_>> = parents.iter().collect();
        let buf = self
            .repo
            .commit_create_buffer(&sig, &sig, message, &tree, &refs)
            .unwrap();
        let content = buf.as_str().unwrap().to_owned();
        let armored = sign(&content);
        let id = self.repo.commit_signed(&content, &armored, None).unwrap();
        let head = self
            .repo
            .head()
            .ok()
            .and_then(|h| h.name().ok().map(str::to_owned))
            .unwrap_or_else(|| "refs/heads/main".into());
        self.repo
            .reference(&head, id, true, "signed commit")
            .unwrap();
        id
    }

    /// Commits signed like `git commit -S` with `gpg.format=ssh`.
    pub fn commit_ssh_signed(&mut self, message: &str, key: &PrivateKey) -> Oid {
        self.commit_with_signature(message, |content| ssh_sign(key, content.as_bytes()))
    }

    /// A new branch at HEAD, checked out (HEAD only; the work tree is left as it is).
    pub fn branch(&self, name: &str) {
        let head = self.repo.head().unwrap().peel_to_commit().unwrap();
        self.repo.branch(name, &head, false).unwrap();
        self.repo.set_head(&format!("refs/heads/{name}")).unwrap();
    }

    /// Back to `name`, the work tree and index forced to its tree.
    pub fn switch(&self, name: &str) {
        self.repo.set_head(&format!("refs/heads/{name}")).unwrap();
        self.repo
            .checkout_head(Some(
                git2::build::CheckoutBuilder::new()
                    .force()
                    .remove_untracked(true),
            ))
            .unwrap();
    }

    pub fn tag(&self, name: &str) {
        let head = self
            .repo
            .head()
            .unwrap()
            .peel(git2::ObjectType::Commit)
            .unwrap();
        let sig = Signature::new(
            "Test Author",
            "author@example.org",
            &Time::new(self.clock, 0),
        )
        .unwrap();
        self.repo
            .tag(name, &head, &sig, &format!("release {name}"), false)
            .unwrap();
    }

    pub fn file_url(&self) -> String {
        format!("file://{}", self.dir.display())
    }
}

pub fn ssh_sign(key: &PrivateKey, data: &[u8]) -> String {
    key.sign("git", HashAlg::Sha512, data)
        .unwrap()
        .to_pem(LineEnding::LF)
        .unwrap()
}

pub fn new_key() -> PrivateKey {
    PrivateKey::random(&mut ssh_key::rand_core::OsRng, ssh_key::Algorithm::Ed25519).unwrap()
}

/// An allowed_signers line for `key`.
pub fn allowed_line(principal: &str, key: &PrivateKey) -> String {
    format!(
        "{principal} namespaces=\"git\" {}\n",
        key.public_key().to_openssh().unwrap()
    )
}

pub fn copy_dir(from: &Path, to: &Path, skip: &[&str]) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if skip.iter().any(|s| name == *s) {
            continue;
        }
        let target = to.join(&name);
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target, &[]);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
