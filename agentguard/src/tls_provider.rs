//! The rustls provider of the proxy's two TLS sides (agents, upstreams):
//! ring's, with TLS_AES_128_GCM_SHA256 (and TLS 1.2's AES-128-GCM suites)
//! put first where the CPU has AES instructions.
//!
//! ring's default order puts TLS_AES_256_GCM_SHA384 first, and clients
//! that list it first (rustls, OpenSSL) get it from a server that follows
//! them. Its key schedule runs on SHA-384, which no x86 instruction
//! computes, where SHA-256 has SHA-NI; and AES-256 takes 14 rounds a block
//! to AES-128's 10. Measured with rustls 0.23 and ring 0.17 on the bench's
//! 2-core EPYC (in-memory handshakes, 3 rounds of 2,000), the server's
//! share of a resumed handshake: 73.5-78.0 µs with AES-256-GCM-SHA384,
//! 58.9-59.4 µs with AES-128-GCM-SHA256; of a full one, 81.0-83.5 µs
//! against 69.7-70.2. AES-128-GCM is what BoringSSL and Go's crypto/tls put
//! first, and its 128-bit security is that of the X25519 and P-256 keys
//! that protect the same connections; the other suites stay offered.
//!
//! Without AES instructions, AES-GCM is slow and ChaCha20-Poly1305 is
//! the better choice, which is what clients on such CPUs list first: there
//! the default order, and the client's, stand.

use std::sync::Arc;

use rustls::{
    CipherSuite,
    crypto::{CryptoProvider, ring},
};

/// ring's suites, AES-128-GCM first where the CPU has AES instructions.
pub fn provider() -> Arc<CryptoProvider> {
    let mut provider = ring::default_provider();
    if aes_in_hardware() {
        // A stable sort: the rest keep ring's order. TLS 1.2's AES-128-GCM
        // suites move up too, for a TLS 1.2 client gets the server's pick
        // as well.
        provider
            .cipher_suites
            .sort_by_key(|s| !is_aes_128_gcm(s.suite()));
    }
    Arc::new(provider)
}

fn is_aes_128_gcm(suite: CipherSuite) -> bool {
    matches!(
        suite,
        CipherSuite::TLS13_AES_128_GCM_SHA256
            | CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            | CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
    )
}

/// Whether a server should pick from its own order rather than the
/// client's: agents connect over loopback, so they run on this CPU, and
/// where it has AES instructions, AES-128-GCM is the cheapest suite for
/// both ends whatever a client lists first.
pub fn server_picks_suite() -> bool {
    aes_in_hardware()
}

fn aes_in_hardware() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
            && std::arch::is_aarch64_feature_detected!("pmull")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use rustls::SupportedCipherSuite;

    use super::*;

    #[test]
    fn every_suite_stays_offered_and_aes_128_leads_where_aes_is_in_hardware() {
        let provider = provider();
        let ours: Vec<_> = provider.cipher_suites.iter().map(|s| s.suite()).collect();
        let mut defaults: Vec<_> = ring::default_provider()
            .cipher_suites
            .iter()
            .map(|s| s.suite())
            .collect();
        let mut sorted = ours.clone();
        sorted.sort_by_key(|s| u16::from(*s));
        defaults.sort_by_key(|s| u16::from(*s));
        assert_eq!(sorted, defaults);
        if aes_in_hardware() {
            // Each version's AES-128-GCM suites lead, the rest in ring's
            // order.
            let tls13: Vec<_> = provider
                .cipher_suites
                .iter()
                .filter(|s| matches!(s, SupportedCipherSuite::Tls13(_)))
                .map(|s| s.suite())
                .collect();
            assert_eq!(
                tls13,
                [
                    CipherSuite::TLS13_AES_128_GCM_SHA256,
                    CipherSuite::TLS13_AES_256_GCM_SHA384,
                    CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
                ]
            );
            let ecdsa = [
                CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
                CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            ];
            let tls12_ecdsa: Vec<_> = ours.iter().filter(|s| ecdsa.contains(s)).collect();
            assert_eq!(tls12_ecdsa, ecdsa.iter().collect::<Vec<_>>());
        }
    }
}
