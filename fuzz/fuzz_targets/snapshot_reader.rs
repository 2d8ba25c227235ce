//! A state snapshot, any bytes: an inventory or an error naming the file, never a panic.
//! The harness is shared with the test suite (tests/security.rs): fuzz/harness.rs.
#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::snapshot_reader(data));
