//! One module per subcommand: its arguments (a clap `Args` struct) and the work. The flags
//! several of them share are in [`crate::flags`]; [`crate::cli`] lists them and dispatches.

pub mod agent;
pub mod apply;
pub mod diff;
pub mod diff_base;
pub mod inputs;
pub mod manifests;
pub mod plan;
pub mod render;
pub mod run;
pub mod simulate;
pub mod status;
pub mod validate;

/// The value parser of every duration flag for which zero makes no sense (a period, a
/// deadline, a grace): `5s`, `2m`, `1h30m` or ISO 8601 `PT5S`; zero and negative values
/// are refused with a message naming the value.
pub fn nonzero_duration(s: &str) -> Result<std::time::Duration, String> {
    let d = duration(s)?;
    if d.is_zero() {
        return Err(format!("{s:?}: must be more than zero"));
    }
    Ok(d)
}

/// The value parser of a duration flag for which zero means "none" (e.g. no rate limit).
pub fn duration(s: &str) -> Result<std::time::Duration, String> {
    let d: cloud4iot_core::model::Duration = s.parse()?;
    std::time::Duration::try_from(d.as_signed()).map_err(|e| format!("{s:?}: {e}"))
}

/// The value parser of a size flag: bytes, or with a binary suffix `Ki`, `Mi`, `Gi`
/// (as Kubernetes quantities write them; `KiB`, `MiB`, `GiB` too). Zero is refused.
pub fn byte_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t
        .strip_suffix('B')
        .filter(|r| r.ends_with('i'))
        .unwrap_or(t);
    let (digits, shift) = match t {
        _ if t.ends_with("Ki") => (&t[..t.len() - 2], 10),
        _ if t.ends_with("Mi") => (&t[..t.len() - 2], 20),
        _ if t.ends_with("Gi") => (&t[..t.len() - 2], 30),
        _ => (t, 0),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a size (write e.g. 64Mi, 512Ki or 1000000)"))?;
    let bytes = n
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))?;
    if bytes == 0 {
        return Err(format!("{s:?}: must be more than zero"));
    }
    Ok(bytes)
}

/// Resolves on SIGTERM (what Kubernetes sends to stop a pod) or Ctrl-C: the long-running
/// commands (`run`, `agent`) stop cleanly on either.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: stopping"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes() {
        assert_eq!(
            nonzero_duration("2s"),
            Ok(std::time::Duration::from_secs(2))
        );
        assert!(
            nonzero_duration("0s")
                .unwrap_err()
                .contains("more than zero")
        );
        assert!(nonzero_duration("-1s").unwrap_err().contains("negative"));
        assert!(
            nonzero_duration("soon")
                .unwrap_err()
                .contains("not a duration")
        );
        assert_eq!(duration("0s"), Ok(std::time::Duration::ZERO));
        assert_eq!(byte_size("64Mi"), Ok(64 << 20));
        assert_eq!(byte_size("512KiB"), Ok(512 << 10));
        assert_eq!(byte_size("1000"), Ok(1000));
        assert!(byte_size("0").is_err());
        assert!(byte_size("64MB").is_err());
    }
}
