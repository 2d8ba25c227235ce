//! ssh remotes against a real `sshd` on loopback (keys made here with ssh-key): the key
//! of `--ssh-key`, the ssh agent, a rejected key, an unknown host key.
//!
//! Needs OpenSSH's `sshd` (Debian: openssh-server) and `git-upload-pack` on the machine;
//! where `sshd` is missing the test fails and says what to install (.ci/run installs it).

mod git_support;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use git_support::*;
use ssh_key::{LineEnding, PrivateKey};
use tempfile::TempDir;

/// A guard against a hung start, not a measurement.
const PATIENCE: Duration = Duration::from_secs(30);

fn sshd_binary() -> Option<PathBuf> {
    ["/usr/sbin/sshd", "/usr/bin/sshd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn write_key(key: &PrivateKey, path: &Path) {
    key.write_openssh_file(path, LineEnding::LF).unwrap();
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
}

fn wait_for(addr: SocketAddr) {
    let start = Instant::now();
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(start.elapsed() < PATIENCE, "sshd did not listen on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Sshd {
    _proc: Kill,
    port: u16,
    host_key: PrivateKey,
}

/// `sshd` on a free loopback port accepting `user_key` for the current user.
fn sshd(sshd: &Path, dir: &Path, user_key: &PrivateKey) -> Sshd {
    let host_key = new_key();
    write_key(&host_key, &dir.join("host_key"));
    std::fs::write(
        dir.join("authorized_keys"),
        user_key.public_key().to_openssh().unwrap() + "\n",
    )
    .unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = format!(
        "Port {port}\nListenAddress 127.0.0.1\nHostKey {0}/host_key\nAuthorizedKeysFile {0}/authorized_keys\n\
         PasswordAuthentication no\nKbdInteractiveAuthentication no\nStrictModes no\nUsePAM no\nPidFile {0}/sshd.pid\n",
        dir.display()
    );
    std::fs::write(dir.join("sshd_config"), config).unwrap();
    // Privilege separation wants this directory when sshd runs as root.
    let _ = std::fs::create_dir_all("/run/sshd");
    let child = Command::new(sshd)
        .args(["-D", "-e", "-f"])
        .arg(dir.join("sshd_config"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("sshd.log")).unwrap())
        .spawn()
        .unwrap();
    let proc = Kill(child);
    wait_for(SocketAddr::from(([127, 0, 0, 1], port)));
    Sshd {
        _proc: proc,
        port,
        host_key,
    }
}

fn user() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "root".to_owned())
}

#[test]
fn ssh_remote_with_key_file_agent_and_errors() {
    let sshd_bin = sshd_binary()
        .expect("no sshd on this machine: install OpenSSH (Debian: apt-get install openssh-server openssh-client); .ci/run does");
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path();
    let user_key = new_key();
    write_key(&user_key, &dir.join("user_key"));
    let other_key = new_key();
    write_key(&other_key, &dir.join("other_key"));
    let server = sshd(&sshd_bin, dir, &user_key);

    let mut g = GitRepo::with_examples(&dir.join("upstream"));
    let c1 = g.commit("examples");
    let url = format!(
        "ssh://{}@127.0.0.1:{}{}",
        user(),
        server.port,
        g.dir.display()
    );

    // The client's home: known_hosts with the server's key.
    let home = dir.join("home");
    std::fs::create_dir_all(home.join(".ssh")).unwrap();
    let known = format!(
        "[127.0.0.1]:{} {}\n",
        server.port,
        server.host_key.public_key().to_openssh().unwrap()
    );
    std::fs::write(home.join(".ssh/known_hosts"), known).unwrap();
    let validate = |home: &Path, extra: &[&str]| {
        let mut cmd = cloud4iot(dir);
        cmd.env("HOME", home)
            .args(["validate", "--repo", &url])
            .args(extra);
        run(&mut cmd)
    };

    let out = validate(
        &home,
        &["--ssh-key", dir.join("user_key").to_str().unwrap()],
    );
    assert_eq!(
        out.code,
        0,
        "{out:?}\nsshd log:\n{}",
        std::fs::read_to_string(dir.join("sshd.log")).unwrap_or_default()
    );
    assert!(out.stdout.contains(&format!("(main@sha1:{c1})")), "{out:?}");

    let out = validate(
        &home,
        &["--ssh-key", dir.join("other_key").to_str().unwrap()],
    );
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains(&format!(
            "authentication to {url} failed: the server did not accept the key of --ssh-key (and no ssh agent is running)"
        )),
        "{out:?}"
    );

    let out = validate(&home, &[]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains(
            "no ssh key to offer: pass --ssh-key FILE (or CLOUD4IOT_SSH_KEY), or run an ssh agent"
        ),
        "{out:?}"
    );

    let stranger = dir.join("stranger-home");
    std::fs::create_dir_all(&stranger).unwrap();
    let out = validate(
        &stranger,
        &["--ssh-key", dir.join("user_key").to_str().unwrap()],
    );
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr
            .contains(&format!("the ssh host key of {url} is not trusted:")),
        "{out:?}"
    );

    // The ssh agent, when the machine has one; a rejected --ssh-key falls back to it.
    let agent_sock = dir.join("agent.sock");
    let Ok(agent) = Command::new("ssh-agent")
        .arg("-D")
        .arg("-a")
        .arg(&agent_sock)
        .stdout(Stdio::null())
        .spawn()
    else {
        panic!(
            "no ssh-agent on this machine: install OpenSSH (Debian: openssh-client); .ci/run does"
        );
    };
    let _agent = Kill(agent);
    let start = Instant::now();
    while !agent_sock.exists() {
        assert!(start.elapsed() < PATIENCE, "ssh-agent did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let added = Command::new("ssh-add")
        .arg("-q")
        .arg(dir.join("user_key"))
        .env("SSH_AUTH_SOCK", &agent_sock)
        .status()
        .unwrap();
    assert!(added.success());
    let mut cmd = cloud4iot(dir);
    cmd.env("HOME", &home)
        .env("SSH_AUTH_SOCK", &agent_sock)
        .args(["validate", "--repo", &url, "--ssh-key"])
        .arg(dir.join("other_key"));
    let out = run(&mut cmd);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains(&format!("(main@sha1:{c1})")), "{out:?}");
}
