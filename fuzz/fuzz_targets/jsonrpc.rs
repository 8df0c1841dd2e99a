//! `agentguard::fuzzing::jsonrpc`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| agentguard::fuzzing::jsonrpc(data));
