//! The MCP resource-server front (MCP authorization spec, "Authorization
//! Server Discovery"): verify-proxy serves the OAuth 2.0 Protected Resource
//! Metadata (RFC 9728) of the server it guards, and its 401s point to it.
//! The tokens it accepts are those whose audience is the server's canonical
//! resource URI (RFC 8707 §2).

use agentguard_verify::metadata::{
    ProtectedResourceMetadata, WELL_KNOWN_PATH, metadata_path, metadata_url,
};
use hyper::{Method, Response, StatusCode, header};

use crate::token::serve::{Body, full};

/// What verify-proxy says about the resource it guards.
#[derive(Debug, Clone)]
pub struct ResourceFront {
    /// Path-suffixed (RFC 9728 §3.1).
    path: String,
    /// For `resource_metadata` in challenges (RFC 9728 §5.1).
    url: String,
    document: String,
}

impl ResourceFront {
    /// The front of `resource` (its canonical URI), naming
    /// `authorization_servers` (agentguard's issuer) and, when known, the
    /// scopes it needs and the JWKS URL.
    pub fn new(
        resource: &str,
        authorization_servers: Vec<String>,
        scope: Option<&str>,
        jwks_uri: Option<String>,
    ) -> Result<Self, String> {
        let mut doc = ProtectedResourceMetadata::new(resource, authorization_servers)?;
        doc.scopes_supported = scope
            .map(|s| s.split_ascii_whitespace().map(str::to_owned).collect())
            .unwrap_or_default();
        doc.jwks_uri = jwks_uri;
        Ok(Self {
            path: metadata_path(resource)?,
            url: metadata_url(resource)?,
            document: serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?,
        })
    }

    pub fn metadata_url(&self) -> &str {
        &self.url
    }

    /// The metadata document for a request to one of its two paths: the
    /// path-suffixed one, and the root one that clients try next (the MCP
    /// spec's discovery order). `None` for any other request.
    pub fn answer(&self, method: &Method, path: &str) -> Option<Response<Body>> {
        if path != self.path && path != WELL_KNOWN_PATH {
            return None;
        }
        if method != Method::GET && method != Method::HEAD {
            let mut r = full(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n");
            r.headers_mut()
                .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
            return Some(r);
        }
        Some(full(
            StatusCode::OK,
            "application/json",
            self.document.clone(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_is_served_at_both_well_known_paths_only() {
        let f = ResourceFront::new(
            "https://tool.example/mcp",
            vec!["spiffe://agentguard.local/agentguard".into()],
            Some("tools:call tools:list"),
            Some("https://127.0.0.1:9477/.well-known/jwks.json".into()),
        )
        .unwrap();
        assert_eq!(
            f.metadata_url(),
            "https://tool.example/.well-known/oauth-protected-resource/mcp"
        );
        for path in [
            "/.well-known/oauth-protected-resource/mcp",
            "/.well-known/oauth-protected-resource",
        ] {
            let r = f.answer(&Method::GET, path).unwrap();
            assert_eq!(r.status(), StatusCode::OK, "{path}");
        }
        assert!(f.answer(&Method::GET, "/mcp").is_none());
        assert!(
            f.answer(&Method::GET, "/.well-known/oauth-protected-resource/other")
                .is_none()
        );
        assert_eq!(
            f.answer(&Method::POST, "/.well-known/oauth-protected-resource")
                .unwrap()
                .status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        let doc: serde_json::Value = serde_json::from_str(&f.document).unwrap();
        assert_eq!(doc["resource"], "https://tool.example/mcp");
        assert_eq!(
            doc["authorization_servers"][0],
            "spiffe://agentguard.local/agentguard"
        );
        assert_eq!(doc["scopes_supported"][1], "tools:list");
        assert_eq!(doc["bearer_methods_supported"][0], "header");
    }
}
