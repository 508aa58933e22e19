#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = keel_fuzz::lcm_config(data);
});
