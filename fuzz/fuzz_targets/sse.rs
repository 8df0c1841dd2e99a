//! `agentguard::fuzzing::sse`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| agentguard::fuzzing::sse(data));
