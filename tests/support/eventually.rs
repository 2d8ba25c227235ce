//! Waiting for what a real control plane, controller or agent does in its own time.

use std::time::{Duration, Instant};

/// Polls `probe` every 100 ms until it returns `Some`, or panics with `what` and `context()`
/// (a process's log, the last thing read) once `timeout` has passed.
pub async fn eventually<T>(
    what: &str,
    timeout: Duration,
    context: impl Fn() -> String,
    mut probe: impl AsyncFnMut() -> Option<T>,
) -> T {
    let started = Instant::now();
    loop {
        if let Some(t) = probe().await {
            return t;
        }
        if started.elapsed() > timeout {
            panic!("{what}: not after {timeout:?}\n{}", context());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
