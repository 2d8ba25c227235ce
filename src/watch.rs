//! `--watch`: re-run a command whenever the repository directory (or the state snapshot)
//! changes, for authors editing policies. Events are debounced (an editor's save is
//! several events); Ctrl-C ends the loop with exit 0.

use std::future::Future;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use notify::{Event, EventKind, RecursiveMode, Watcher};

use crate::flags::{Outcome, RepoArgs};

/// Quiet time after the last change before re-running.
pub const DEBOUNCE: Duration = Duration::from_millis(300);

/// Runs `once`, then again after every change under `--repo`'s directory or of `state`,
/// until Ctrl-C. The repository must be a directory read as it is on disk (no URL, no
/// `--rev`, no `--verify-signatures`): a commit does not change while it is watched.
/// A run that fails prints its error and the loop goes on; the next save may fix it.
pub async fn watch<F, Fut>(
    repo: &RepoArgs,
    state: Option<&Path>,
    mut once: F,
) -> anyhow::Result<Outcome>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Outcome>>,
{
    let checkout = cloud4iot_source::open(&repo.source())?;
    if !checkout.live {
        bail!(
            "--watch needs a local directory read as it is on disk; {} is read at a revision (drop --rev, a URL or --verify-signatures)",
            cloud4iot_source::redact(&repo.repo)
        );
    }
    let dir = checkout.dir.canonicalize().unwrap_or(checkout.dir);
    let state = state.map(|s| s.canonicalize().unwrap_or_else(|_| s.to_path_buf()));

    // notify directly rather than a debouncer crate: the event kinds are needed, because
    // inotify also reports files being opened, and every run opens them all.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<notify::Result<Event>>();
    let mut watcher = notify::recommended_watcher(move |res| {
        let _ = tx.send(res);
    })
    .context("starting the file watcher")?;
    watcher
        .watch(&dir, RecursiveMode::Recursive)
        .with_context(|| format!("watching {}", dir.display()))?;
    if let Some(state) = &state
        && !state.starts_with(&dir)
    {
        // Its directory, not the file: an editor that saves by writing a new file and
        // renaming it over the old one replaces the file, and a watch on the old file sees
        // that once and nothing after. `relevant` keeps only the snapshot's own events.
        let parent = state.parent().unwrap_or(state);
        watcher
            .watch(parent, RecursiveMode::NonRecursive)
            .with_context(|| format!("watching {}", parent.display()))?;
    }
    let changes = |event: &Event| {
        matches!(
            event.kind,
            EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_)
        ) && event
            .paths
            .iter()
            .any(|p| relevant(p, &dir, state.as_deref()))
    };

    let mut run = async || {
        if std::io::stdout().is_terminal() {
            // Clear the screen and home the cursor: each run replaces the last.
            print!("\x1b[2J\x1b[H");
        }
        let result = once().await;
        let _ = std::io::stdout().flush();
        match result {
            Ok(outcome) => eprintln!(
                "-- exit {}; watching {} (Ctrl-C to stop)",
                outcome as u8,
                dir.display()
            ),
            Err(err) => eprintln!(
                "error: {err:#}\n-- watching {} (Ctrl-C to stop)",
                dir.display()
            ),
        }
    };
    run().await;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = &mut ctrl_c => return Ok(Outcome::Clean),
            event = rx.recv() => match event {
                None => bail!("the file watcher stopped"),
                Some(Ok(event)) if changes(&event) => {
                    tracing::debug!(paths = ?event.paths, "changed");
                    // Debounce: an editor's save is several events; run once it is quiet.
                    loop {
                        match tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                            Ok(Some(_)) => continue,
                            Ok(None) => bail!("the file watcher stopped"),
                            Err(_) => break,
                        }
                    }
                    run().await;
                }
                Some(Ok(_)) => {}
                Some(Err(err)) => tracing::warn!(error = %err, "file watcher"),
            },
        }
    }
}

/// Whether a changed path can change the result: YAML files and `.sourceignore` under the
/// repository (not in hidden directories such as `.git`), or the state snapshot. Editors'
/// swap and backup files are not.
pub fn relevant(path: &Path, dir: &Path, state: Option<&Path>) -> bool {
    if state.is_some_and(|s| s == path) {
        return true;
    }
    let Ok(rel) = path.strip_prefix(dir) else {
        return false;
    };
    let hidden_dir = rel.parent().is_some_and(|p| {
        p.components()
            .any(|c| c.as_os_str().to_string_lossy().starts_with('.'))
    });
    if hidden_dir {
        return false;
    }
    let name = rel
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name == ".sourceignore"
        || (!name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_configuration_files_trigger_a_run() {
        let dir = Path::new("/r");
        assert!(relevant(Path::new("/r/policies/a.yaml"), dir, None));
        assert!(relevant(Path::new("/r/f.yml"), dir, None));
        assert!(relevant(Path::new("/r/.sourceignore"), dir, None));
        assert!(relevant(
            Path::new("/s/home.yaml"),
            dir,
            Some(Path::new("/s/home.yaml"))
        ));
        assert!(!relevant(Path::new("/r/.git/index"), dir, None));
        assert!(!relevant(Path::new("/r/policies/.a.yaml.swp"), dir, None));
        assert!(!relevant(Path::new("/r/policies/a.yaml~"), dir, None));
        assert!(!relevant(Path::new("/elsewhere/a.yaml"), dir, None));
    }
}
