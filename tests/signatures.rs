//! `--verify-signatures --allowed-signers FILE`: SSH-signed commits (keys made here,
//! signatures made with ssh-key, commits with git2) pass; everything else is refused
//! with its own message and exit code 1.

mod git_support;

use git_support::*;
use tempfile::TempDir;

struct World {
    tmp: TempDir,
    g: GitRepo,
    signers: std::path::PathBuf,
}

/// `main`: one commit signed by alice's key, listed in the allowed signers file.
fn world() -> (World, ssh_key::PrivateKey, git2::Oid) {
    let tmp = TempDir::new().unwrap();
    let alice = new_key();
    let mut g = GitRepo::with_examples(&tmp.path().join("work"));
    let signed = g.commit_ssh_signed("examples, signed", &alice);
    let signers = tmp.path().join("allowed_signers");
    std::fs::write(
        &signers,
        format!(
            "# who may change what runs on gateways\n{}",
            allowed_line("alice@example.org", &alice)
        ),
    )
    .unwrap();
    (World { tmp, g, signers }, alice, signed)
}

impl World {
    fn validate(&self, repo: &str, rev: Option<&str>) -> Run {
        let mut cmd = cloud4iot(self.tmp.path());
        cmd.args([
            "validate",
            "--repo",
            repo,
            "--verify-signatures",
            "--allowed-signers",
        ])
        .arg(&self.signers);
        if let Some(rev) = rev {
            cmd.args(["--rev", rev]);
        }
        run(&mut cmd)
    }
    fn repo(&self) -> String {
        self.g.dir.display().to_string()
    }
    fn refused(&self, rev: &str, commit: git2::Oid, reason: &str) {
        let out = self.validate(&self.repo(), Some(rev));
        assert_eq!(out.code, 1, "{out:?}");
        let want = format!(
            "revision {rev}@sha1:{commit} of {} refused: {reason}",
            self.repo()
        );
        assert!(out.stderr.contains(&want), "want {want:?}: {out:?}");
        assert!(
            out.stdout.is_empty(),
            "nothing is computed from a refused revision: {out:?}"
        );
    }
}

#[test]
fn a_commit_signed_by_an_allowed_key_is_accepted() {
    let (w, _, signed) = world();
    let out = w.validate(&w.repo(), Some("main"));
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains(&format!("(main@sha1:{signed})")),
        "{out:?}"
    );

    // Through a URL too: the signature is checked in the cache repository.
    let out = w.validate(&w.g.file_url(), None);
    assert_eq!(out.code, 0, "{out:?}");

    // Without --rev a work tree is verified at HEAD, and HEAD's tree is read, not the
    // (unsigned) edits on disk.
    w.g.write("policies/engine-monitoring.yaml", "kind: [broken\n");
    let out = w.validate(&w.repo(), None);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains(&format!("(main@sha1:{signed})")),
        "{out:?}"
    );
}

#[test]
fn an_unsigned_commit_is_refused() {
    let (mut w, _, _) = world();
    w.g.branch("unsigned");
    w.g.edit(
        "policies/engine-monitoring.yaml",
        "\n  mode: normal\n",
        "\n  mode: intensive\n",
    );
    let c = w.g.commit("not signed");
    w.refused(
        "unsigned",
        c,
        "the commit is not signed; --verify-signatures accepts only commits with an SSH signature by a key in the allowed signers file",
    );
}

#[test]
fn a_commit_signed_by_an_unknown_key_is_refused() {
    let (mut w, _, _) = world();
    let mallory = new_key();
    w.g.branch("mallory");
    w.g.write(
        "functions/extra.yaml",
        &w.g.read("functions/engine-diagnostic.yaml")
            .replace("name: engine-diagnostic", "name: extra"),
    );
    let c = w.g.commit_ssh_signed("signed by someone else", &mallory);
    let fp = mallory.public_key().fingerprint(ssh_key::HashAlg::Sha256);
    let reason = format!(
        "the commit is signed by key {fp}, which is not in the allowed signers file {}",
        w.signers.display()
    );
    w.refused("mallory", c, &reason);
}

#[test]
fn a_signature_that_does_not_match_the_commit_is_refused() {
    let (mut w, alice, _) = world();
    w.g.branch("forged");
    w.g.write(
        "functions/extra.yaml",
        &w.g.read("functions/engine-diagnostic.yaml")
            .replace("name: engine-diagnostic", "name: extra"),
    );
    // Alice's real signature, but over other bytes than this commit's.
    let c = w.g.commit_with_signature("forged", |content| {
        ssh_sign(&alice, content.replace("forged", "benign").as_bytes())
    });
    let fp = alice.public_key().fingerprint(ssh_key::HashAlg::Sha256);
    let reason = format!(
        "the signature by key {fp} of alice@example.org does not match the commit (it was altered after signing, or the signature is forged)"
    );
    w.refused("forged", c, &reason);
}

#[test]
fn a_gpg_signature_is_refused() {
    let (mut w, _, _) = world();
    w.g.branch("gpg");
    w.g.write("README.md", "signed with gpg\n");
    let c = w.g.commit_with_signature("gpg", |_| {
        "-----BEGIN PGP SIGNATURE-----\n\niHUEABYKAB0WIQQ=\n=abcd\n-----END PGP SIGNATURE-----\n".to_owned()
    });
    w.refused("gpg", c, "the commit carries a GPG (OpenPGP) signature; only SSH signatures (git config gpg.format ssh) are accepted");
}

#[test]
fn a_signature_for_another_namespace_is_refused() {
    let (mut w, alice, _) = world();
    w.g.branch("file-ns");
    w.g.write("README.md", "x\n");
    let c = w.g.commit_with_signature("ns", |content| {
        alice
            .sign("file", ssh_key::HashAlg::Sha512, content.as_bytes())
            .unwrap()
            .to_pem(ssh_key::LineEnding::LF)
            .unwrap()
    });
    w.refused(
        "file-ns",
        c,
        "the commit is signed for namespace \"file\", not \"git\"",
    );
}

#[test]
fn allowed_signers_file_problems_are_errors_of_the_tool() {
    let (w, _, _) = world();
    std::fs::write(&w.signers, "alice@example.org ssh-ed25519 not-base64!\n").unwrap();
    let out = w.validate(&w.repo(), Some("main"));
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains(&format!(
            "{}:1: invalid ssh-ed25519 key",
            w.signers.display()
        )),
        "{out:?}"
    );

    std::fs::remove_file(&w.signers).unwrap();
    let out = w.validate(&w.repo(), Some("main"));
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr
            .contains(&format!("allowed signers file {}:", w.signers.display())),
        "{out:?}"
    );

    let out =
        run(cloud4iot(w.tmp.path()).args(["validate", "--repo", &w.repo(), "--verify-signatures"]));
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("--allowed-signers <FILE>"), "{out:?}");
}

#[test]
fn a_plain_directory_cannot_be_verified() {
    let (w, _, _) = world();
    let plain = w.tmp.path().join("plain");
    copy_dir(std::path::Path::new(EXAMPLES), &plain, &["state"]);
    let out = w.validate(&plain.display().to_string(), None);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr
            .contains("not a git repository, so --verify-signatures cannot be used with it"),
        "{out:?}"
    );
}
