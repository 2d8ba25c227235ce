//! A commit signature over some data (`armored \0 data`), any bytes: accepted only for the listed key.
//! The harness is shared with the test suite (tests/security.rs): fuzz/harness.rs.
#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::ssh_signature(data));
