//! The rustls provider of the proxy's two TLS sides (agents, upstreams):
//! aws-lc-rs's, with TLS_AES_128_GCM_SHA256 (and TLS 1.2's AES-128-GCM
//! suites) put first where the CPU has AES instructions.
//!
//! Why aws-lc-rs rather than ring, which the rest of the daemon's TLS
//! (JWKS, admin, exports) keeps: on the bench's 2-core EPYC, one core,
//! best of 3 rounds of 50,000 (2026-12-05), an X25519 key generation and
//! agreement, which every full and resumed TLS 1.3 handshake does, took
//! 21.4 µs against ring's 41.7 µs; sealing a 16 KiB record with
//! AES-128-GCM 0.70 µs against 1.42 µs (AVX-512 against AVX2), a 1,100-byte
//! one 0.14 µs against 0.18 µs.
//!
//! Key exchange: toward upstreams, over real networks, the provider's
//! groups: X25519 first (the one key share a ClientHello carries), then
//! P-256, P-384 and X25519MLKEM768, the post-quantum hybrid, which a server
//! that prefers it gets by asking for it (a HelloRetryRequest; rustls then
//! remembers the group for that server). Toward agents, which connect over
//! loopback, the hybrid is left out: a rustls server takes the group the
//! client lists first, and clients that list the hybrid first (Chrome, Go,
//! OpenSSL 3.5) would pay an ML-KEM encapsulation on every handshake for
//! bytes that never leave the host. Those are the groups ring offered.
//!
//! The providers' default order puts TLS_AES_256_GCM_SHA384 first, and
//! clients that list it first (rustls, OpenSSL) get it from a server that
//! follows them. Its key schedule runs on SHA-384, which no x86 instruction
//! computes, where SHA-256 has SHA-NI; and AES-256 takes 14 rounds a block
//! to AES-128's 10. Measured with rustls 0.23 and ring 0.17 on the same
//! machine (in-memory handshakes, 3 rounds of 2,000), the server's share of
//! a resumed handshake: 73.5-78.0 µs with AES-256-GCM-SHA384, 58.9-59.4 µs
//! with AES-128-GCM-SHA256; of a full one, 81.0-83.5 µs against 69.7-70.2.
//! AES-128-GCM is what BoringSSL and Go's crypto/tls put first, and its
//! 128-bit security is that of the X25519 and P-256 keys that protect the
//! same connections; the other suites stay offered.
//!
//! Without AES instructions, AES-GCM is slow and ChaCha20-Poly1305 is
//! the better choice, which is what clients on such CPUs list first: there
//! the default order, and the client's, stand.

use std::sync::Arc;

use rustls::{
    CipherSuite, NamedGroup,
    crypto::{CryptoProvider, aws_lc_rs},
};

/// The provider of the agent-facing server: [`upstream_side`]'s without
/// the post-quantum hybrid groups.
pub fn agent_side() -> Arc<CryptoProvider> {
    let mut provider = provider();
    provider.kx_groups.retain(|g| {
        !matches!(
            g.name(),
            NamedGroup::X25519MLKEM768 | NamedGroup::secp256r1MLKEM768
        )
    });
    Arc::new(provider)
}

/// The provider of the client toward upstreams.
pub fn upstream_side() -> Arc<CryptoProvider> {
    Arc::new(provider())
}

/// aws-lc-rs's suites, AES-128-GCM first where the CPU has AES
/// instructions.
fn provider() -> CryptoProvider {
    let mut provider = aws_lc_rs::default_provider();
    if aes_in_hardware() {
        // A stable sort: the rest keep the provider's order. TLS 1.2's AES-128-GCM
        // suites move up too, for a TLS 1.2 client gets the server's pick
        // as well.
        provider
            .cipher_suites
            .sort_by_key(|s| !is_aes_128_gcm(s.suite()));
    }
    provider
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

    /// Agents (loopback) get the classical groups, X25519 first; upstreams
    /// may also get the post-quantum hybrid, after them.
    #[test]
    fn the_hybrid_group_is_offered_toward_upstreams_only() {
        let names = |p: &CryptoProvider| -> Vec<NamedGroup> {
            p.kx_groups.iter().map(|g| g.name()).collect()
        };
        assert_eq!(
            names(&agent_side()),
            [
                NamedGroup::X25519,
                NamedGroup::secp256r1,
                NamedGroup::secp384r1
            ]
        );
        let upstream = names(&upstream_side());
        assert_eq!(upstream[0], NamedGroup::X25519);
        assert!(
            upstream.contains(&NamedGroup::X25519MLKEM768),
            "{upstream:?}"
        );
    }

    #[test]
    fn every_suite_stays_offered_and_aes_128_leads_where_aes_is_in_hardware() {
        let provider = provider();
        let ours: Vec<_> = provider.cipher_suites.iter().map(|s| s.suite()).collect();
        let mut defaults: Vec<_> = aws_lc_rs::default_provider()
            .cipher_suites
            .iter()
            .map(|s| s.suite())
            .collect();
        let mut sorted = ours.clone();
        sorted.sort_by_key(|s| u16::from(*s));
        defaults.sort_by_key(|s| u16::from(*s));
        assert_eq!(sorted, defaults);
        if aes_in_hardware() {
            // Each version's AES-128-GCM suites lead, the rest in the provider's
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
