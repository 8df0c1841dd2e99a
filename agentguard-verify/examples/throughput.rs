//! How many tokens one core verifies per second: full checks (signature,
//! claims, binding to the request, single use) on tokens signed beforehand,
//! on a single-threaded runtime, one token after another.
//!
//! ```text
//! cargo run --release -p agentguard-verify --example throughput \
//!     --features redis,persistent,testing -- [N] [redis://127.0.0.1:PORT] [FILE.redb]
//! ```
//!
//! The Redis and file rows run only when given a URL and a path.

use std::{sync::Arc, time::Instant};

use agentguard_verify::{
    JwksSource, RequestBinding, Verifier, VerifierConfig,
    replay::{FileReplayStore, MemoryReplayStore, RedisOptions, RedisReplayStore, ReplayStore},
    testing::TestIssuer,
};

const ISS: &str = "spiffe://agentguard.local/agentguard";

async fn run(
    label: &str,
    issuer: &TestIssuer,
    store: Arc<dyn ReplayStore>,
    n: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut cfg = VerifierConfig::new("itsm", Some(ISS));
    cfg.scope = Some("tickets:write".into());
    let verifier =
        Verifier::with_replay_store(cfg, JwksSource::Static(issuer.jwks()), store).await?;
    let body = br#"{"title":"printer on fire"}"#;
    let binding =
        RequestBinding::from_url("POST", "https://tool.example/api/v2/tickets?dry=1", body)?;
    // Signed beforehand: only verification is timed.
    let tokens: Vec<String> = (0..n)
        .map(|_| issuer.mint("itsm", "tickets:write", &binding))
        .collect();
    let start = Instant::now();
    for t in &tokens {
        verifier.verify(t, Some(&binding)).await?;
    }
    let elapsed = start.elapsed();
    println!(
        "{label:<28} {n:>7} tokens  {:>8.1} ms  {:>8.0} tokens/s  {:>6.1} µs/token",
        elapsed.as_secs_f64() * 1e3,
        n as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e6 / n as f64
    );
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = args.first().map_or(Ok(20_000), |a| a.parse())?;
    let redis = args.get(1).cloned();
    let file = args.get(2).cloned();
    // One core: a current-thread runtime, nothing in parallel.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        for (alg, issuer) in [
            ("ES256", TestIssuer::es256(ISS)),
            ("EdDSA", TestIssuer::eddsa(ISS)),
        ] {
            let memory: Arc<dyn ReplayStore> = Arc::new(MemoryReplayStore::default());
            run(&format!("{alg}, memory"), &issuer, memory, n).await?;
            if let Some(url) = &redis {
                let store = RedisReplayStore::connect(url, RedisOptions::default()).await?;
                run(&format!("{alg}, redis"), &issuer, Arc::new(store), n).await?;
            }
            if let Some(path) = &file {
                let path = std::path::PathBuf::from(format!("{path}.{alg}"));
                let _ = std::fs::remove_file(&path);
                let store = FileReplayStore::open(&path, 1 << 22)?;
                run(
                    &format!("{alg}, file (fsync each)"),
                    &issuer,
                    Arc::new(store),
                    n / 10,
                )
                .await?;
            }
        }
        Ok(())
    })
}
