//! One repository file, any bytes: diagnostics naming the file and a line of it, never a panic, hang or blow-up.
//! The harness is shared with the test suite (tests/security.rs): fuzz/harness.rs.
#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::repository_loader(data));
