//! A complete tool server that checks agentguard's request-bound tokens
//! with this crate alone: HTTPS, every request's token verified against the
//! request itself (at the tool's public origin) and spent, the verified
//! agent and the party it acts for in the answer.
//!
//! ```text
//! cargo run -p agentguard-verify --example tool_server --features fetch -- \
//!     LISTEN CERT.pem KEY.pem AUDIENCE ISSUER JWKS_URL JWKS_CA.pem PUBLIC_ORIGIN
//! ```
//!
//! The end-to-end tests run this very file (its `serve`) behind a real
//! agentguard, with tokens the daemon mints.

use std::{convert::Infallible, path::Path, sync::Arc};

use agentguard_verify::{JwksSource, Origin, Verifier, VerifierConfig};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{
    Request, Response, StatusCode,
    body::{Bytes, Incoming},
    service::service_fn,
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// Bodies are read whole (their hash is in the token), up to this.
const MAX_BODY: usize = 1 << 20;

/// The verifier for tokens minted for `audience` by `issuer`, whose keys
/// are at `jwks_url` (HTTPS, its certificate from the CA in `jwks_ca`),
/// bound to calls made to `origin`.
pub async fn verifier(
    audience: &str,
    issuer: &str,
    jwks_url: &str,
    jwks_ca: &Path,
    origin: &str,
) -> Result<Arc<Verifier>, Box<dyn std::error::Error>> {
    let mut cfg = VerifierConfig::new(audience, Some(issuer));
    cfg.origin = Some(Origin::parse(origin)?);
    let ca = CertificateDer::pem_file_iter(jwks_ca)?.collect::<Result<Vec<_>, _>>()?;
    let source = JwksSource::parse(jwks_url)?.with_roots(ca);
    Ok(Verifier::new(cfg, source).await?)
}

/// A TLS acceptor for the certificate chain and key in two PEM files.
pub fn tls(cert: &Path, key: &Path) -> Result<TlsAcceptor, Box<dyn std::error::Error>> {
    let chain = CertificateDer::pem_file_iter(cert)?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(key)?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, key)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves HTTPS on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, tls: TlsAcceptor, verifier: Arc<Verifier>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (tls, verifier) = (tls.clone(), verifier.clone());
        tokio::spawn(async move {
            let Ok(stream) = tls.accept(stream).await else {
                return;
            };
            let service = service_fn(move |req| {
                let verifier = verifier.clone();
                async move { Ok::<_, Infallible>(handle(&verifier, req).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// One call: verified, or refused with the status and challenge the crate
/// says.
async fn handle(verifier: &Verifier, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let Ok(body) = Limited::new(body, MAX_BODY).collect().await else {
        return answer(StatusCode::PAYLOAD_TOO_LARGE, "body too large".into(), None);
    };
    match verifier
        .verify_request(&parts, "https", &body.to_bytes())
        .await
    {
        Ok(claims) => {
            let json = serde_json::json!({
                "agent": claims.agent(),
                "on_behalf_of": claims.act.as_ref().map(|a| &a.sub),
                "scope": claims.scope,
                "jti": claims.jti,
            });
            answer(StatusCode::OK, json.to_string(), None)
        }
        Err(e) => {
            let scope = verifier.config().scope.as_deref();
            let challenge = e.challenge(scope, None).map(|c| c.to_string());
            let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::UNAUTHORIZED);
            let json = serde_json::json!({ "error": e.to_string() });
            answer(status, json.to_string(), challenge)
        }
    }
}

fn answer(status: StatusCode, body: String, challenge: Option<String>) -> Response<Full<Bytes>> {
    let mut r = Response::builder()
        .status(status)
        .header("content-type", "application/json");
    if let Some(c) = challenge {
        r = r.header("www-authenticate", c);
    }
    r.body(Full::new(Bytes::from(body)))
        .expect("a valid response")
}

#[allow(dead_code)] // Run as the example; the tests call `serve`.
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, cert, key, audience, issuer, jwks, jwks_ca, origin] = args.as_slice() else {
        return Err(
            "usage: tool_server LISTEN CERT KEY AUDIENCE ISSUER JWKS_URL JWKS_CA ORIGIN".into(),
        );
    };
    let verifier = verifier(audience, issuer, jwks, Path::new(jwks_ca), origin).await?;
    let tls = tls(Path::new(cert), Path::new(key))?;
    let listener = TcpListener::bind(listen).await?;
    println!("listening on {}", listener.local_addr()?);
    serve(listener, tls, verifier).await;
    Ok(())
}
