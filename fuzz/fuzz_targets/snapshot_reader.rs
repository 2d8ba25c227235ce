//! A state snapshot, any bytes: an inventory or an error naming the item, never a panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(inv) = cloud4iot_core::state::parse_snapshot(text, Path::new("fuzz.yaml")) {
        // The snapshot's clock is derived from what was read.
        let _ = cloud4iot_core::clock::snapshot_time(&inv, jiff::Timestamp::UNIX_EPOCH);
    }
});
