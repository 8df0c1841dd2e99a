//! Empty library target: `agentguard` lists this crate as a build-dependency
//! only so that cargo rebuilds the daemon when the kernel programs change.
#![no_std]
