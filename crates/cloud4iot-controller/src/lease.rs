//! Leader election over a coordination.k8s.io/v1 Lease, client-go semantics:
//! - optimistic concurrency: every write is a `replace` carrying the resourceVersion read,
//!   so of two candidates exactly one wins (the other gets 409 and stays standby);
//! - expiry is judged by *local observation time* (when this process last saw the record
//!   change), never by comparing the holder's renewTime with our clock: clock skew between
//!   nodes does not matter;
//! - the leader renews every `retry_period`; if it could not renew for `renew_deadline`
//!   (< lease_duration) it steps down before anyone else may acquire: only the leader writes;
//! - release on shutdown: holderIdentity cleared, leaseDurationSeconds 1, so the standby
//!   takes over at its next retry instead of after the lease duration.
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;

#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub name: String,
    pub namespace: String,
    /// Pod name (downward API) + a random suffix: unique per process.
    pub identity: String,
    pub lease_duration: Duration, // 15s
    pub renew_deadline: Duration, // 10s
    pub retry_period: Duration,   // 2s
}

/// What this process last saw of the Lease.
#[derive(Clone, Debug)]
struct Observed {
    lease: Lease,
    /// Local monotonic time at which `holder/renewTime/resourceVersion` last changed.
    at: Instant,
}

#[derive(Debug, PartialEq)]
pub enum Step {
    /// The Lease does not exist: create it held by us.
    Create(LeaseSpec),
    /// Write this spec with the resourceVersion we read (acquire or renew).
    Replace(LeaseSpec),
    /// Someone else holds a lease that has not expired by our observation.
    Wait,
}

/// Pure decision (unit-tested without a cluster).
pub fn decide(
    current: Option<&Lease>,
    observed_at: Instant,
    now_mono: Instant,
    now: jiff::Timestamp,
    me: &str,
    duration: Duration,
) -> Step {
    let Some(lease) = current else {
        return Step::Create(LeaseSpec {
            holder_identity: Some(me.to_owned()),
            lease_duration_seconds: Some(duration.as_secs() as i32),
            acquire_time: Some(MicroTime(now)),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(0),
            ..LeaseSpec::default()
        });
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.as_deref().filter(|h| !h.is_empty());
    let theirs = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(0).max(0) as u64);
    let ours = holder == Some(me);
    if let Some(_other) = holder.filter(|_| !ours)
        && observed_at + theirs > now_mono
    {
        return Step::Wait;
    }
    let mut next = spec.clone();
    next.holder_identity = Some(me.to_owned());
    next.lease_duration_seconds = Some(duration.as_secs() as i32);
    next.renew_time = Some(MicroTime(now));
    if !ours {
        next.acquire_time = Some(MicroTime(now));
        next.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    Step::Replace(next)
}

pub struct Elector {
    api: Api<Lease>,
    cfg: LeaseConfig,
    observed: Option<Observed>,
}

impl Elector {
    pub fn new(client: Client, cfg: LeaseConfig) -> Self {
        Elector {
            api: Api::namespaced(client, &cfg.namespace),
            cfg,
            observed: None,
        }
    }

    fn note(&mut self, lease: Option<Lease>) {
        let Some(lease) = lease else {
            self.observed = None;
            return;
        };
        let changed = self
            .observed
            .as_ref()
            .is_none_or(|o| o.lease.metadata.resource_version != lease.metadata.resource_version);
        let at = match &self.observed {
            Some(o) if !changed => o.at,
            _ => Instant::now(),
        };
        self.observed = Some(Observed { lease, at });
    }

    /// One attempt: Ok(true) when we hold the lease after it.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let current = self.api.get_opt(&self.cfg.name).await?;
        self.note(current.clone());
        let at = self.observed.as_ref().map_or_else(Instant::now, |o| o.at);
        let step = decide(
            current.as_ref(),
            at,
            Instant::now(),
            jiff::Timestamp::now(),
            &self.cfg.identity,
            self.cfg.lease_duration,
        );
        let written = match step {
            Step::Wait => return Ok(false),
            Step::Create(spec) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.cfg.name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(spec),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            Step::Replace(spec) => {
                let mut lease = current.expect("Replace follows a read");
                lease.spec = Some(spec); // metadata.resourceVersion kept: the precondition
                lease.metadata.managed_fields = None;
                self.api
                    .replace(&self.cfg.name, &PostParams::default(), &lease)
                    .await
            }
        };
        match written {
            Ok(lease) => {
                self.note(Some(lease));
                Ok(true)
            }
            // Lost the race (409 Conflict / AlreadyExists): someone else wrote first.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the lease up if we hold it (on SIGTERM, after the in-flight request ended).
    pub async fn release(&mut self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.cfg.name).await? else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.cfg.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(jiff::Timestamp::now()));
        lease.metadata.managed_fields = None;
        match self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()), // no longer ours
            Err(e) => Err(e),
        }
    }

    /// Runs until `stop`; publishes leadership on `tx`. Writers gate on `*rx.borrow()` and
    /// abort in-flight work when it turns false.
    pub async fn run(mut self, tx: watch::Sender<bool>, mut stop: watch::Receiver<bool>) {
        // When the last successful renewal was *sent*: the others judge expiry from when
        // they saw it written, which is later, so stepping down `renew_deadline` after
        // this instant is always before anyone may acquire.
        let mut last_renew: Option<Instant> = None;
        let step_down = |tx: &watch::Sender<bool>, why: &str| {
            if tx.send_replace(false) {
                tracing::warn!("{why}: no longer the leader");
            }
        };
        loop {
            let leader = *tx.borrow();
            let deadline = last_renew
                .filter(|_| leader)
                .map(|t| t + self.cfg.renew_deadline);
            // A leader's request may not outlive its deadline; a candidate's may take a
            // retry period.
            let budget = deadline.map_or(self.cfg.retry_period.max(Duration::from_secs(1)), |d| {
                d.saturating_duration_since(Instant::now())
            });
            let sent = Instant::now();
            match tokio::time::timeout(budget, self.try_acquire_or_renew()).await {
                Ok(Ok(true)) => {
                    last_renew = Some(sent);
                    if !leader {
                        tracing::info!(identity = %self.cfg.identity, "acquired the lease");
                    }
                    tx.send_if_modified(|l| !std::mem::replace(l, true));
                }
                Ok(Ok(false)) if leader => {
                    // Someone else holds it now (our renew lost a race): step down at once.
                    step_down(&tx, "another replica holds the lease");
                    last_renew = None;
                }
                Ok(Ok(false)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "lease"),
                Err(_) => tracing::warn!("lease request timed out"),
            }
            let now = Instant::now();
            if *tx.borrow() && last_renew.is_none_or(|t| now >= t + self.cfg.renew_deadline) {
                step_down(&tx, "could not renew the lease within the renew deadline");
                last_renew = None;
            }
            let mut pause = if *tx.borrow() {
                self.cfg.retry_period
            } else {
                self.cfg.retry_period + self.cfg.retry_period.mul_f64(0.2 * rand_unit())
            };
            if let Some(t) = last_renew.filter(|_| *tx.borrow()) {
                // Wake in time to step down if renewals keep failing.
                pause = pause.min((t + self.cfg.renew_deadline).saturating_duration_since(now));
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.changed() => break,
            }
        }
        if *tx.borrow() {
            tx.send_replace(false); // writers stop first
        }
        let released = tokio::time::timeout(Duration::from_secs(5), self.release()).await;
        match released {
            Ok(Ok(())) => tracing::info!("released the lease"),
            Ok(Err(e)) => tracing::warn!(error = %e, "releasing the lease"),
            Err(_) => tracing::warn!("releasing the lease timed out"),
        }
    }
}

/// Cheap jitter without a rand dependency.
pub(crate) fn rand_unit() -> f64 {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    f64::from(n % 1000) / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(by: &str, secs: i32) -> Lease {
        Lease {
            metadata: ObjectMeta {
                resource_version: Some("7".into()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(by.into()),
                lease_duration_seconds: Some(secs),
                lease_transitions: Some(3),
                ..LeaseSpec::default()
            }),
        }
    }

    #[test]
    fn waits_for_a_live_holder_then_takes_over() {
        let t0 = Instant::now();
        let now = jiff::Timestamp::now();
        let d = Duration::from_secs(15);
        let other = held("b", 15);
        assert_eq!(
            decide(Some(&other), t0, t0 + Duration::from_secs(14), now, "a", d),
            Step::Wait
        );
        let Step::Replace(s) = decide(Some(&other), t0, t0 + Duration::from_secs(16), now, "a", d)
        else {
            panic!()
        };
        assert_eq!(s.holder_identity.as_deref(), Some("a"));
        assert_eq!(s.lease_transitions, Some(4));
    }

    #[test]
    fn renews_its_own_and_takes_a_released_one() {
        let t0 = Instant::now();
        let now = jiff::Timestamp::now();
        let d = Duration::from_secs(15);
        let Step::Replace(s) = decide(Some(&held("a", 15)), t0, t0, now, "a", d) else {
            panic!()
        };
        assert_eq!(s.lease_transitions, Some(3));
        let released = held("", 1);
        assert!(matches!(
            decide(Some(&released), t0, t0, now, "a", d),
            Step::Replace(_)
        ));
        assert!(matches!(decide(None, t0, t0, now, "a", d), Step::Create(_)));
    }
}
