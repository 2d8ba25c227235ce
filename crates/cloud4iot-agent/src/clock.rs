//! The gateway's wall clock, as the agent reads it for `firstSeen`, `lastSeen` and the
//! heartbeat.
//!
//! Test-only hook: `CLOUD4IOT_TEST_CLOCK_OFFSET` (e.g. `-10m`, `2m`) shifts it, to play a
//! gateway whose clock is wrong (no real-time clock, NTP blocked) without touching the
//! machine's clock. Timers are not affected. Not a user setting: the controller reads
//! report times on the API server's clock anyway.

use std::sync::OnceLock;

use jiff::{SignedDuration, Timestamp};

/// The environment variable of the test-only clock offset.
pub const TEST_OFFSET_ENV: &str = "CLOUD4IOT_TEST_CLOCK_OFFSET";

fn offset() -> SignedDuration {
    static OFFSET: OnceLock<SignedDuration> = OnceLock::new();
    *OFFSET.get_or_init(|| {
        let Ok(text) = std::env::var(TEST_OFFSET_ENV) else {
            return SignedDuration::ZERO;
        };
        let (negative, magnitude) = match text.trim().strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text.trim()),
        };
        match magnitude.parse::<cloud4iot_core::model::Duration>() {
            Ok(d) if negative => -d.as_signed(),
            Ok(d) => d.as_signed(),
            Err(e) => {
                tracing::warn!("{TEST_OFFSET_ENV}: {e}; ignored");
                SignedDuration::ZERO
            }
        }
    })
}

/// Now, on the gateway's clock.
pub fn now() -> Timestamp {
    let now = Timestamp::now();
    now.checked_add(offset()).unwrap_or(now)
}
