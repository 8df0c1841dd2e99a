//! `agentguard::fuzzing::http_head`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| agentguard::fuzzing::http_head(data));
