//! The ExternalSecret scanner: never panics, whatever YAML it is fed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xtask::fuzzing::scan_text;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let mut out = Vec::new();
        let _ = scan_text(text, "fuzz.yaml", None, None, true, &mut out);
    }
});
