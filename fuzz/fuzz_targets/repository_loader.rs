//! One repository file, any bytes: loading, schema and semantic checks must return
//! diagnostics, never panic, hang or blow up.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut loaded = cloud4iot_core::load::Loaded::default();
    loaded.add_file(Path::new("fuzz.yaml"), text);
    let _ = loaded.finish();
});
