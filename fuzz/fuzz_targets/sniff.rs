//! `agentguard::fuzzing::sniff`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| agentguard::fuzzing::sniff(data));
