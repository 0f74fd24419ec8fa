//! The fixture parser: never panics; what it accepts is a valid secret set.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xtask::fuzzing::{parse_fixtures, valid_name, MAX_VALUE_BYTES};

fuzz_target!(|data: &[u8]| {
    if let Ok(pairs) = parse_fixtures(data) {
        assert!(!pairs.is_empty());
        for (name, value) in pairs {
            assert!(valid_name(&name));
            assert!(value.len() <= MAX_VALUE_BYTES);
        }
    }
});
