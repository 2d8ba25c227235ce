//! A commit signature (the `gpgsig` header's armored text) over some data, any bytes:
//! accepted only for a listed key, otherwise a refusal, never a panic. The input is
//! `armored signature \0 signed data`; the one allowed key is fixed (the seed in
//! fuzz/corpus/ssh_signature was signed by it, so the accepting path is reached too).
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use cloud4iot_source::signature::{self, AllowedSigners};
use libfuzzer_sys::fuzz_target;

const SIGNERS: &str = "fuzz@example.org namespaces=\"git\" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBr+iItaNmfX/fYoGWkv+WLQb3ZfbKVMAKGKeOpJ2Fgk\n";

fuzz_target!(|data: &[u8]| {
    static ALLOWED: OnceLock<AllowedSigners> = OnceLock::new();
    let allowed =
        ALLOWED.get_or_init(|| AllowedSigners::parse(Path::new("allowed_signers"), SIGNERS).unwrap());
    let (armored, signed) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let _ = signature::verify(armored, signed, 1_767_225_600, allowed);
});
