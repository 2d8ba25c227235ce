//! The loop of a task beside the main one that follows some sources and, while this replica
//! leads, writes what they show: changes are gathered for a while and written in one go
//! (a burst is one write), a failed write is tried again later, and a replica that
//! becomes leader writes at once whatever is out of line.

use std::ops::ControlFlow;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::sync::watch;
use tokio::time::Instant;

/// What such a task keeps and writes.
pub(crate) trait Follower {
    /// One item of the task's sources.
    type Change;

    /// Takes one change in: `Continue(true)` when a write may now be due, `Break` to end
    /// the task.
    fn take(&mut self, change: Self::Change) -> ControlFlow<(), bool>;

    /// Writes what is out of line (called only while leading); false when it failed.
    async fn write(&mut self) -> bool;
}

/// How long changes gather, and how long a failed write waits.
pub(crate) struct Timing {
    pub settle: Duration,
    pub retry: Duration,
}

/// Runs `follower` on `changes` until `stop`, the leader's sender goes, `changes` ends or
/// the follower breaks.
pub(crate) async fn run<F: Follower>(
    mut follower: F,
    mut changes: impl Stream<Item = F::Change> + Unpin,
    mut leader: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
    timing: Timing,
) {
    let mut due: Option<Instant> = None;
    let soon = || Instant::now() + timing.settle;
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            changed = leader.changed() => {
                if changed.is_err() {
                    return;
                }
                if *leader.borrow_and_update() {
                    due.get_or_insert_with(soon);
                }
            }
            change = changes.next() => {
                let Some(change) = change else { return };
                match follower.take(change) {
                    ControlFlow::Break(()) => return,
                    ControlFlow::Continue(true) => {
                        due.get_or_insert_with(soon);
                    }
                    ControlFlow::Continue(false) => {}
                }
            }
            () = until(due) => {
                due = None;
                if *leader.borrow() && !follower.write().await {
                    due = Some(Instant::now() + timing.retry);
                }
            }
        }
    }
}

/// Resolves at `due`; never without one.
async fn until(due: Option<Instant>) {
    match due {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Takes a change as due when it is `true`; records when it writes, and fails its first
    /// write.
    struct Probe {
        writes: Arc<Mutex<Vec<Duration>>>,
        start: Instant,
    }

    impl Follower for Probe {
        type Change = bool;

        fn take(&mut self, due: bool) -> ControlFlow<(), bool> {
            ControlFlow::Continue(due)
        }

        async fn write(&mut self) -> bool {
            let mut writes = self.writes.lock().unwrap();
            writes.push(self.start.elapsed());
            writes.len() > 1
        }
    }

    #[tokio::test(start_paused = true)]
    async fn writes_only_while_leading_a_burst_once_after_settle_and_retries_a_failure() {
        let secs = Duration::from_secs;
        let writes = Arc::new(Mutex::new(Vec::new()));
        let probe = Probe {
            writes: writes.clone(),
            start: Instant::now(),
        };
        let (changes, rx) = futures::channel::mpsc::unbounded();
        let (leader_tx, leader) = watch::channel(false);
        let (_stop_tx, stop) = watch::channel(false);
        let timing = Timing {
            settle: secs(1),
            retry: secs(5),
        };
        let task = tokio::spawn(run(probe, rx, leader, stop, timing));
        changes.unbounded_send(true).unwrap();
        tokio::time::sleep(secs(2)).await;
        assert!(
            writes.lock().unwrap().is_empty(),
            "a standby writes nothing"
        );
        leader_tx.send(true).unwrap();
        changes.unbounded_send(true).unwrap();
        changes.unbounded_send(false).unwrap();
        tokio::time::sleep(secs(10)).await;
        // Due 1 s after becoming leader; the failed write is tried again 5 s later.
        assert_eq!(*writes.lock().unwrap(), [secs(3), secs(8)]);
        drop(changes);
        task.await.expect("the task ends with its sources");
    }
}
