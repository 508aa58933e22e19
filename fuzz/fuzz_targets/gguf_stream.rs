#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = keel_fuzz::gguf_stream(data);
});
