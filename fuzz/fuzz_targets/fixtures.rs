//! The fixture parser: never panics; what it accepts is a valid secret set.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xtask::secrets::fixtures;

fuzz_target!(|data: &[u8]| {
    if let Ok(pairs) = fixtures::parse(data) {
        assert!(!pairs.is_empty());
        for (name, value) in pairs {
            assert!(fixtures::valid_name(&name));
            assert!(value.len() <= fixtures::MAX_VALUE_BYTES);
        }
    }
});
