//! An OpenSSH allowed_signers file, any bytes: signers or an error with file:line.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = cloud4iot_source::signature::AllowedSigners::parse(Path::new("allowed_signers"), text);
});
