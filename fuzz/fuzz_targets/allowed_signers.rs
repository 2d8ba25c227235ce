//! An OpenSSH allowed_signers file, any bytes: signers or an error with file:line.
//! The harness is shared with the test suite (tests/security.rs): fuzz/harness.rs.
#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::allowed_signers(data));
