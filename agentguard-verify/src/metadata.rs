//! OAuth 2.0 Protected Resource Metadata (RFC 9728): the document a
//! protected resource (an MCP server, per the MCP authorization spec)
//! serves so that clients learn which authorization server issues its
//! tokens, and where that document is.

use serde::{Deserialize, Serialize};

/// RFC 9728 §3: the well-known URI suffix.
pub const WELL_KNOWN_PATH: &str = "/.well-known/oauth-protected-resource";

/// The metadata of one protected resource (RFC 9728 §2). Only `resource`
/// is required by the RFC; the MCP authorization spec also requires at
/// least one `authorization_servers` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProtectedResourceMetadata {
    /// The resource identifier: the canonical resource URI (RFC 8707 §2),
    /// which is also the audience of the tokens it accepts. A client must
    /// check that it equals the URI it derived the metadata URL from
    /// (RFC 9728 §3.3).
    pub resource: String,
    /// Issuer identifiers of the authorization servers whose tokens the
    /// resource accepts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authorization_servers: Vec<String>,
    /// Where the issuer's public keys are, when the resource says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes_supported: Vec<String>,
    /// How the token is sent: `header` only (RFC 6750 §2.1).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bearer_methods_supported: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_name: Option<String>,
}

impl ProtectedResourceMetadata {
    /// The metadata of `resource` (an absolute `http(s)` URI without a
    /// fragment), naming `authorization_servers`, bearer tokens in the
    /// header only.
    pub fn new(resource: &str, authorization_servers: Vec<String>) -> Result<Self, String> {
        metadata_path(resource)?;
        Ok(Self {
            resource: resource.to_owned(),
            authorization_servers,
            jwks_uri: None,
            scopes_supported: Vec::new(),
            bearer_methods_supported: vec!["header".into()],
            resource_name: None,
        })
    }
}

/// Where the metadata of `resource` is served, as a path (RFC 9728 §3.1):
/// the well-known suffix inserted between the host and the resource's path,
/// so `https://tool.example/mcp` has `/.well-known/oauth-protected-resource/mcp`
/// and `https://tool.example/` has `/.well-known/oauth-protected-resource`.
pub fn metadata_path(resource: &str) -> Result<String, String> {
    let uri: http::Uri = resource
        .parse()
        .map_err(|e| format!("resource {resource:?}: {e}"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.authority().is_none() {
        return Err(format!(
            "resource {resource:?} must be an absolute http(s) URI"
        ));
    }
    if resource.contains('#') {
        return Err(format!("resource {resource:?} must not have a fragment"));
    }
    let path = match uri.path() {
        "/" | "" => "",
        p => p,
    };
    let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    Ok(format!("{WELL_KNOWN_PATH}{path}{query}"))
}

/// The full metadata URL of `resource`: what a 401's `resource_metadata`
/// names (RFC 9728 §5.1).
pub fn metadata_url(resource: &str) -> Result<String, String> {
    let path = metadata_path(resource)?;
    let origin = crate::Origin::of_uri(resource)?;
    Ok(format!("{origin}{path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_urls_follow_rfc_9728_section_3_1() {
        assert_eq!(
            metadata_url("https://resource.example.com/resource1").unwrap(),
            "https://resource.example.com/.well-known/oauth-protected-resource/resource1"
        );
        assert_eq!(
            metadata_url("https://resource.example.com").unwrap(),
            "https://resource.example.com/.well-known/oauth-protected-resource"
        );
        assert_eq!(
            metadata_url("https://Tool.Example:443/mcp").unwrap(),
            "https://tool.example/.well-known/oauth-protected-resource/mcp"
        );
        assert!(metadata_url("tool.example/mcp").is_err());
        assert!(metadata_url("ftp://tool.example/mcp").is_err());
        let doc = ProtectedResourceMetadata::new(
            "https://tool.example/mcp",
            vec!["https://as.example".into()],
        )
        .unwrap();
        let json = serde_json::to_value(&doc).unwrap();
        assert_eq!(json["resource"], "https://tool.example/mcp");
        assert_eq!(json["bearer_methods_supported"][0], "header");
        assert!(json.get("jwks_uri").is_none());
    }
}
