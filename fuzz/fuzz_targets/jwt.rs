//! The tool side's token check (`agentguard-verify`), which sees whatever
//! bearer token a client sends. The first byte picks the mode: a raw token,
//! or claims signed by the trusted key with fields and the request taken
//! from the input (`method`, `url`, `htm`, `htu`, `aud`, `body`, one a
//! line), so the claim checks behind the signature are reached too.
#![no_main]

use std::sync::{Arc, OnceLock};

use agentguard_verify::{
    JwksSource, RequestBinding, Verifier, VerifierConfig, normalize_htu, testing::TestIssuer,
};

const AUDIENCE: &str = "https://tool.example.com/mcp";

struct Fixture {
    runtime: tokio::runtime::Runtime,
    issuer: TestIssuer,
    verifier: Arc<Verifier>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        let issuer = TestIssuer::eddsa("spiffe://agentguard.test/agentguard");
        let cfg = VerifierConfig::new(AUDIENCE, Some(issuer.issuer()));
        let verifier = runtime
            .block_on(Verifier::new(cfg, JwksSource::Static(issuer.jwks())))
            .expect("a verifier");
        Fixture {
            runtime,
            issuer,
            verifier,
        }
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    if mode.is_multiple_of(2) {
        let _ = f.runtime.block_on(f.verifier.check(&text, None));
        return;
    }
    let mut lines = text.split('\n');
    let mut next = || lines.next().unwrap_or_default();
    let (method, url, htm, htu, aud, body) = (next(), next(), next(), next(), next(), next());
    let Ok(binding) = RequestBinding::from_url(method, url, body.as_bytes()) else {
        return;
    };
    let base =
        RequestBinding::from_url("GET", "https://tool.example.com/mcp", b"").expect("a binding");
    let mut claims = f.issuer.claims("bot", AUDIENCE, "", &base, 60);
    claims.htm = htm.to_owned();
    claims.htu = htu.to_owned();
    if mode % 4 == 1 {
        claims.aud = aud.to_owned();
    }
    if mode % 8 >= 4 {
        claims.rh = binding.request_hash();
    }
    let token = f.issuer.sign(&claims);
    if let Ok(checked) = f.runtime.block_on(f.verifier.check(&token, Some(&binding))) {
        // Passed: the token names exactly this request.
        assert_eq!(checked.htm, binding.method);
        assert_eq!(
            normalize_htu(&checked.htu).ok(),
            binding.htu().ok(),
            "bound to {:?}, request {url:?}",
            checked.htu
        );
        assert_eq!(checked.rh, binding.request_hash());
        assert_eq!(checked.aud, AUDIENCE);
    }
});
