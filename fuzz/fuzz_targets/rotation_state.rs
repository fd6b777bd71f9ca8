#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sqlite_tde_fuzz::targets::rotation_state(data);
});
