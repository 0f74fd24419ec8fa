//! The flag editor keeps every byte but the value, or refuses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xtask::fuzzing::{find_flag, set_flag, ProviderKind};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(flag) = find_flag(text, "f") else {
        return;
    };
    for to in [ProviderKind::Vault, ProviderKind::Azure] {
        if let Ok(out) = set_flag(text, "f", to) {
            assert_eq!(&out[..flag.start], &text[..flag.start]);
            assert_eq!(&out[flag.start + to.as_str().len()..], &text[flag.end..]);
            assert_eq!(find_flag(&out, "f").unwrap().value, to.as_str());
        }
    }
});
