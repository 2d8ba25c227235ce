//! `--repo` as a plain directory, a git work tree, a bare repository and a URL, at
//! `--rev`: real repositories made with git2, the real binary.

mod git_support;

use git_support::*;
use tempfile::TempDir;

const ENGINE_POLICY: &str = "policies/engine-monitoring.yaml";

fn validate(cache: &TempDir, repo: &str, rev: Option<&str>) -> Run {
    let mut cmd = cloud4iot(cache.path());
    cmd.args(["validate", "--repo", repo]);
    if let Some(rev) = rev {
        cmd.args(["--rev", rev]);
    }
    run(&mut cmd)
}

fn s(p: &std::path::Path) -> String {
    p.display().to_string()
}

#[test]
fn plain_directory_is_read_as_is_and_rejects_rev() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("plain");
    copy_dir(std::path::Path::new(EXAMPLES), &dir, &["state"]);

    let out = validate(&tmp, &s(&dir), None);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains(": valid"), "{out:?}");
    assert!(
        !out.stdout.contains("sha1:"),
        "a plain directory has no revision: {out:?}"
    );

    let out = validate(&tmp, &s(&dir), Some("main"));
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains(&format!(
            "repository {}: not a git repository, so --rev cannot be used with it",
            s(&dir)
        )),
        "{out:?}"
    );

    let out = validate(&tmp, &s(&tmp.path().join("missing")), None);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("missing: no such directory"), "{out:?}");
}

#[test]
fn work_tree_without_rev_reads_disk_and_reports_dirty() {
    let tmp = TempDir::new().unwrap();
    let mut g = GitRepo::with_examples(&tmp.path().join("work"));
    let c1 = g.commit("examples");

    let out = validate(&tmp, &s(&g.dir), None);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains(&format!("(main@sha1:{c1})")), "{out:?}");

    // An uncommitted edit is read (authors see it) and the revision says so.
    g.edit(ENGINE_POLICY, "\n  mode: normal\n", "\n  mode: intensive\n");
    let out = validate(&tmp, &s(&g.dir), None);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains(&format!("main@sha1:{c1} (dirty)")),
        "{out:?}"
    );

    // Broken YAML on disk fails validate; the committed tree at --rev is still valid, and
    // reading it leaves the work tree and the index alone.
    g.write(
        ENGINE_POLICY,
        "apiVersion: cloud4iot.io/v1alpha1\nkind: PlacementPolicy\nspec: [unclosed\n",
    );
    let index_before = std::fs::read(g.dir.join(".git/index")).unwrap();
    let out = validate(&tmp, &s(&g.dir), None);
    assert_eq!(out.code, 1, "{out:?}");
    let out = validate(&tmp, &s(&g.dir), Some("main"));
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains(&format!("(main@sha1:{c1})")), "{out:?}");
    assert!(
        g.read(ENGINE_POLICY).contains("[unclosed"),
        "the work tree was touched"
    );
    assert_eq!(
        std::fs::read(g.dir.join(".git/index")).unwrap(),
        index_before,
        "the index was touched"
    );
}

#[test]
fn branches_tags_and_commits_resolve_with_flux_revisions() {
    let tmp = TempDir::new().unwrap();
    let mut g = GitRepo::with_examples(&tmp.path().join("work"));
    let c1 = g.commit("examples");
    g.tag("v1.0.0");
    g.branch("intensive");
    g.edit(ENGINE_POLICY, "\n  mode: normal\n", "\n  mode: intensive\n");
    let c2 = g.commit("engine: intensive test phase");
    let repo = s(&g.dir);

    for (rev, want) in [
        ("v1.0.0", format!("v1.0.0@sha1:{c1}")),
        ("intensive", format!("intensive@sha1:{c2}")),
        ("main", format!("main@sha1:{c1}")),
        ("HEAD", format!("intensive@sha1:{c2}")),
        (&c1.to_string()[..], format!("sha1:{c1}")),
        (&c2.to_string()[..10], format!("sha1:{c2}")),
        ("intensive~1", format!("sha1:{c1}")),
        ("refs/heads/intensive", format!("intensive@sha1:{c2}")),
    ] {
        let out = validate(&tmp, &repo, Some(rev));
        assert_eq!(out.code, 0, "--rev {rev}: {out:?}");
        assert!(
            out.stdout.contains(&format!("({want})")),
            "--rev {rev}: want {want}: {out:?}"
        );
    }

    // The tree written for a commit is the commit's, not the work tree's.
    let out = validate(&tmp, &repo, Some("v1.0.0"));
    assert_eq!(out.code, 0, "{out:?}");
    let trees = tmp.path().join("cloud4iot/git/trees");
    let mut modes: Vec<String> = std::fs::read_dir(&trees)
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path().join(ENGINE_POLICY)).unwrap())
        .map(|t| {
            t.lines()
                .find(|l| l.trim_start().starts_with("mode:"))
                .unwrap()
                .trim()
                .to_owned()
        })
        .collect();
    modes.sort();
    assert_eq!(
        modes,
        ["mode: intensive", "mode: normal"],
        "one tree per distinct content"
    );
}

#[test]
fn missing_revision_is_named() {
    let tmp = TempDir::new().unwrap();
    let mut g = GitRepo::with_examples(&tmp.path().join("work"));
    g.commit("examples");
    let out = validate(&tmp, &s(&g.dir), Some("v9"));
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains(&format!(
            "revision v9 not found in {}: no branch, tag or commit by that name",
            s(&g.dir)
        )),
        "{out:?}"
    );
    let out = validate(
        &tmp,
        &s(&g.dir),
        Some("0123456789abcdef0123456789abcdef01234567"),
    );
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr
            .contains("revision 0123456789abcdef0123456789abcdef01234567 not found in"),
        "{out:?}"
    );
}

#[test]
fn empty_repository_without_commits() {
    let tmp = TempDir::new().unwrap();
    let g = GitRepo::init(&tmp.path().join("empty"));
    let out = validate(&tmp, &s(&g.dir), Some("main"));
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("revision main not found in"), "{out:?}");
    let out = validate(&tmp, &g.file_url(), None);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr
            .contains(&format!("repository {} has no commits yet", g.file_url())),
        "{out:?}"
    );
}

#[test]
fn invalid_yaml_at_a_revision_exits_1_with_file_and_line() {
    let tmp = TempDir::new().unwrap();
    let mut g = GitRepo::with_examples(&tmp.path().join("work"));
    g.commit("examples");
    g.branch("broken");
    g.edit(
        ENGINE_POLICY,
        "  mode: normal\n",
        "  mode: normal\n  priority: [10\n",
    );
    g.commit("a typo");
    g.switch("main");

    let out = validate(&tmp, &s(&g.dir), Some("broken"));
    assert_eq!(out.code, 1, "{out:?}");
    let line = out
        .stderr
        .lines()
        .find(|l| l.contains(ENGINE_POLICY))
        .unwrap_or_else(|| panic!("no {ENGINE_POLICY} in {out:?}"));
    let after = &line[line.find(ENGINE_POLICY).unwrap() + ENGINE_POLICY.len()..];
    assert!(
        after.starts_with(':') && after[1..].starts_with(|c: char| c.is_ascii_digit()),
        "no line number: {line}"
    );
    assert!(out.stdout.is_empty(), "nothing else is computed: {out:?}");
}

#[test]
fn subdirectory_of_a_repository_at_a_revision() {
    let tmp = TempDir::new().unwrap();
    let mut g = GitRepo::init(&tmp.path().join("mono"));
    copy_dir(
        std::path::Path::new(EXAMPLES),
        &g.path("deploy/iot"),
        &["state"],
    );
    g.write("README.md", "a monorepo\n");
    let c1 = g.commit("iot config in a subdirectory");
    let sub = s(&g.path("deploy/iot"));

    let out = validate(&tmp, &sub, Some("main"));
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains(&format!("(main@sha1:{c1})")), "{out:?}");

    // A subdirectory added after the revision does not exist there.
    std::fs::create_dir_all(g.path("later")).unwrap();
    g.write("later/x.yaml", "# nothing\n");
    g.commit("later");
    let out = validate(&tmp, &s(&g.path("later")), Some(&c1.to_string()));
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr
            .contains(&format!("later does not exist at revision sha1:{c1} of")),
        "{out:?}"
    );
}

#[test]
fn path_selects_a_directory_of_a_monorepo() {
    let tmp = TempDir::new().unwrap();
    let mut g = GitRepo::init(&tmp.path().join("mono"));
    copy_dir(
        std::path::Path::new(EXAMPLES),
        &g.path("deploy/iot"),
        &["state"],
    );
    g.write("deploy/other/broken.yaml", "kind: [not ours\n");
    let c1 = g.commit("iot config in a subdirectory");
    let with_path = |repo: &str, extra: &[&str]| {
        let mut cmd = cloud4iot(tmp.path());
        cmd.args(["validate", "--repo", repo, "--path", "deploy/iot"])
            .args(extra);
        run(&mut cmd)
    };

    // A URL, its default branch; a revision of a local repository; the work tree.
    for (repo, extra) in [
        (g.file_url(), vec![]),
        (s(&g.dir), vec!["--rev", "main"]),
        (s(&g.dir), vec![]),
    ] {
        let out = with_path(&repo, &extra);
        assert_eq!(out.code, 0, "{repo} {extra:?}: {out:?}");
        assert!(out.stdout.contains(&format!("main@sha1:{c1}")), "{out:?}");
    }
    // Without --path the whole repository is read, the broken file too.
    let out = validate(&tmp, &g.file_url(), None);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("deploy/other/broken.yaml:"), "{out:?}");

    let mut cmd = cloud4iot(tmp.path());
    let out = run(cmd.args([
        "validate",
        "--repo",
        &g.file_url(),
        "--path",
        "deploy/nothing",
    ]));
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains(&format!(
            "deploy/nothing does not exist at revision main@sha1:{c1} of {}",
            g.file_url()
        )),
        "{out:?}"
    );
    let mut cmd = cloud4iot(tmp.path());
    let out = run(cmd.args([
        "validate",
        "--repo",
        &g.file_url(),
        "--path",
        "../elsewhere",
    ]));
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr
            .contains("--path ../elsewhere: must be a relative path inside the repository"),
        "{out:?}"
    );
}

#[test]
fn bare_repository_reads_head() {
    let tmp = TempDir::new().unwrap();
    let mut g = GitRepo::with_examples(&tmp.path().join("work"));
    let c1 = g.commit("examples");
    let bare = tmp.path().join("bare.git");
    git2::build::RepoBuilder::new()
        .bare(true)
        .clone(&g.file_url(), &bare)
        .unwrap();

    let out = validate(&tmp, &s(&bare), None);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains(&format!("(main@sha1:{c1})")), "{out:?}");
}

#[test]
fn file_url_is_fetched_into_the_cache_and_refetched() {
    let tmp = TempDir::new().unwrap();
    let mut g = GitRepo::with_examples(&tmp.path().join("upstream"));
    let c1 = g.commit("examples");
    g.tag("v1.0.0");
    let url = g.file_url();

    let out = validate(&tmp, &url, None);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains(&format!("(main@sha1:{c1})")),
        "the remote's HEAD branch: {out:?}"
    );
    let caches: Vec<_> = std::fs::read_dir(tmp.path().join("cloud4iot/git"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        caches.iter().any(|n| n.len() == 40
            && tmp
                .path()
                .join("cloud4iot/git")
                .join(n)
                .join("HEAD")
                .is_file()),
        "a bare cache repository named by the URL's hash: {caches:?}"
    );

    // A new upstream commit is fetched on the next run; tags still resolve.
    g.edit(ENGINE_POLICY, "\n  mode: normal\n", "\n  mode: intensive\n");
    let c2 = g.commit("intensive");
    let out = validate(&tmp, &url, None);
    assert!(out.stdout.contains(&format!("(main@sha1:{c2})")), "{out:?}");
    let out = validate(&tmp, &url, Some("HEAD"));
    assert!(
        out.stdout.contains(&format!("(main@sha1:{c2})")),
        "HEAD of a URL is the remote's: {out:?}"
    );
    let out = validate(&tmp, &url, Some("v1.0.0"));
    assert!(
        out.stdout.contains(&format!("(v1.0.0@sha1:{c1})")),
        "{out:?}"
    );

    // A pull request's head: a ref outside branches and tags, fetched by name.
    let pr = g.repo.find_commit(c2).unwrap();
    let sig = git2::Signature::new(
        "Reviewer",
        "r@example.org",
        &git2::Time::new(1_767_300_000, 0),
    )
    .unwrap();
    let c3 = g
        .repo
        .commit(
            Some("refs/pull/42/head"),
            &sig,
            &sig,
            "pr",
            &pr.tree().unwrap(),
            &[&pr],
        )
        .unwrap();
    let out = validate(&tmp, &url, Some("refs/pull/42/head"));
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout
            .contains(&format!("(refs/pull/42/head@sha1:{c3})")),
        "{out:?}"
    );

    let out = validate(&tmp, &url, Some("v9"));
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains(&format!(
            "revision v9 not found in {url}: no branch, tag or commit by that name"
        )),
        "{out:?}"
    );
}

#[test]
fn unreachable_url_is_an_error_of_the_source() {
    let tmp = TempDir::new().unwrap();
    // Port 1 on loopback: nothing listens, the connection is refused at once.
    let url = "https://127.0.0.1:1/nope.git";
    let out = validate(&tmp, url, None);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains(&format!("cannot reach {url}:")),
        "{out:?}"
    );

    let url = format!("file://{}", tmp.path().join("no-such-repo").display());
    let out = validate(&tmp, &url, Some("main"));
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains(&format!("cannot reach {url}:")),
        "{out:?}"
    );
}

/// An HTTP server on loopback that wants credentials and accepts none: records the
/// `Authorization` header of every request and answers 401. Serves at most `max` requests.
fn server_wanting_credentials(max: usize) -> (String, std::sync::mpsc::Receiver<Option<String>>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(max) {
            let Ok(mut stream) = stream else { return };
            let mut auth = None;
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                if let Some((name, value)) = line.split_once(':')
                    && name.eq_ignore_ascii_case("authorization")
                {
                    auth = Some(value.trim().to_owned());
                }
                line.clear();
            }
            let _ = tx.send(auth);
            let _ = stream.write_all(
                b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"git\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    (format!("127.0.0.1:{}", addr.port()), rx)
}

#[test]
fn https_token_is_sent_as_the_password_and_a_rejection_is_named() {
    let tmp = TempDir::new().unwrap();
    // Plain HTTP on loopback: the same credential path as https, without a certificate.
    let (addr, seen) = server_wanting_credentials(10);
    let url = format!("http://{addr}/iot/functions.git");
    let out = validate(&tmp, &url, Some("main"));
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains(&format!(
            "authentication to {url} failed: the server asks for credentials: set CLOUD4IOT_GIT_TOKEN to an access token"
        )),
        "{out:?}"
    );
    assert_eq!(
        seen.try_iter().flatten().count(),
        0,
        "no credentials without a token"
    );

    let url = format!("http://ci@{addr}/iot/functions.git");
    let out = run(cloud4iot(tmp.path())
        .env("CLOUD4IOT_GIT_TOKEN", "s3cret")
        .args(["validate", "--repo", &url, "--rev", "main"]));
    assert_eq!(out.code, 2, "{out:?}");
    // The URL's user is not shown: it may be a token (`https://TOKEN@host/...`).
    assert!(
        out.stderr.contains(&format!(
            "authentication to http://***@{addr}/iot/functions.git failed: the server rejected the token in CLOUD4IOT_GIT_TOKEN"
        )),
        "{out:?}"
    );
    // base64("ci:s3cret"): the user from the URL, the token as the password, sent once
    // (libgit2 first tries the URL's user alone, "ci:").
    let sent: Vec<String> = seen.try_iter().flatten().collect();
    assert_eq!(
        sent.iter().filter(|a| *a == "Basic Y2k6czNjcmV0").count(),
        1,
        "{sent:?}"
    );
    assert_eq!(
        sent.last().map(String::as_str),
        Some("Basic Y2k6czNjcmV0"),
        "{sent:?}"
    );
}

#[test]
fn remote_tracking_branches_of_a_ci_clone_resolve() {
    // What a CI job has: a clone whose base branch exists only as origin/<name>.
    let tmp = TempDir::new().unwrap();
    let mut up = GitRepo::with_examples(&tmp.path().join("upstream"));
    let c1 = up.commit("examples");
    let clone = tmp.path().join("ci-clone");
    git2::build::RepoBuilder::new()
        .clone(&up.file_url(), &clone)
        .unwrap();
    let out = validate(&tmp, &s(&clone), Some("origin/main"));
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains(&format!("(origin/main@sha1:{c1})")),
        "{out:?}"
    );
}
