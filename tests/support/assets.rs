//! Where the control-plane binaries (and the kubectl of the same release) come from.
//!
//! `KUBEBUILDER_ASSETS` naming a directory that holds all of them (the envtest
//! convention) wins; otherwise `tests/control-plane/build` builds them from the
//! published Go modules into a cache under `$HOME/.cache` (slow the first time,
//! instant after) and prints that directory. This runs once per test binary.
//! There is no skipping: a test that needs the binaries fails, saying why, when
//! they cannot be had.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The binaries a complete assets directory holds (envtest's directories hold kubectl too).
pub const BINARIES: [&str; 5] = [
    "etcd",
    "kube-apiserver",
    "kube-scheduler",
    "kube-controller-manager",
    "kubectl",
];

/// The Kubernetes release `tests/control-plane` builds.
pub const RELEASE: &str = "v1.37.2";

/// The kubectl built from the control plane's own release: tests and benches run this
/// one, never whatever kubectl the machine has on PATH.
pub fn kubectl() -> PathBuf {
    dir().join("kubectl")
}

/// Whether `dir` holds every binary in [`BINARIES`].
pub fn is_complete(dir: &Path) -> bool {
    BINARIES.iter().all(|b| dir.join(b).is_file())
}

/// The directory holding the control-plane binaries, building them on first use.
///
/// Panics with the reason (and what to do about it) when they cannot be had.
pub fn dir() -> &'static Path {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match DIR.get_or_init(find) {
        Ok(dir) => dir,
        Err(why) => panic!("{why}"),
    }
}

fn find() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("KUBEBUILDER_ASSETS").filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        if is_complete(&dir) {
            return Ok(dir);
        }
        eprintln!(
            "KUBEBUILDER_ASSETS={} lacks one of {BINARIES:?}; building them instead",
            dir.display()
        );
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/control-plane/build");
    let help = "the integration tests need a real Kubernetes control plane: set \
                KUBEBUILDER_ASSETS to a directory holding etcd, kube-apiserver, \
                kube-scheduler, kube-controller-manager and kubectl, or install Go >= 1.26 so \
                tests/control-plane/build can build them (see docs/src/testing.md)";
    let output = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit()) // progress of a long first build
        .output()
        .map_err(|e| format!("cannot run {}: {e}; {help}", script.display()))?;
    if !output.status.success() {
        return Err(format!(
            "{} failed ({}); {help}",
            script.display(),
            output.status
        ));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let dir = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| PathBuf::from(l.trim()))
        .ok_or_else(|| format!("{} printed no directory; {help}", script.display()))?;
    if !is_complete(&dir) {
        return Err(format!(
            "{} printed {}, which lacks one of {BINARIES:?}; {help}",
            script.display(),
            dir.display()
        ));
    }
    Ok(dir)
}
