//! Language runtimes the end-to-end tests use as unmodified agents.
//!
//! python3 and node come with the machine image rather than from setup, so a
//! missing one is a warning here and a loud failure in the tests that need it.

use anyhow::Result;

use crate::cmd;

const RUNTIMES: &[&str] = &["python3", "node"];

/// Python packages the end-to-end tests import, as (PyPI name, module,
/// pinned version): `requests` in client scripts; the official MCP SDK
/// (client and streamable-HTTP server of the MCP tests; 2.x has `Client`
/// and `MCPServer`, so it is pinned); the export validators in
/// `tests/validators/`: the OpenTelemetry project's OTLP message classes,
/// and the OCSF schema (shipped in the package, so nothing is fetched at
/// test time: `ocsf-lib` only reads the schema from its server) with the
/// JSON Schema validator that checks events against it. Pinned where a
/// test depends on the API or the schema, so a new release cannot turn CI red.
const PYTHON_PACKAGES: &[(&str, &str, Option<&str>)] = &[
    ("requests", "requests", None),
    ("mcp", "mcp", Some("2.3.0")),
    (
        "opentelemetry-proto",
        "opentelemetry.proto.collector.logs.v1.logs_service_pb2",
        Some("1.45.2"),
    ),
    ("ocsf-json-schema", "ocsf_json_schema", Some("1.2.0")),
    ("jsonschema", "jsonschema", Some("4.26.0")),
    // The official SDKs of the APIs in policies/, run as agents holding only
    // placeholders (tests/tests/sdk_placeholders.rs): pinned, since where an
    // SDK puts its key changes between versions (that is what is tested).
    ("openai", "openai", Some("3.60.0")),
    ("anthropic", "anthropic", Some("2.16.0")),
    ("PyGithub", "github", Some("2.10.0")),
    ("slack-sdk", "slack_sdk", Some("3.48.0")),
    // The authorization server of the token-exchange tests
    // (tests/servers/oauth_server.py): Authlib's server framework (RFC 6749,
    // RFC 7523 client assertions and JWT-bearer grant) on Flask.
    ("authlib", "authlib", Some("1.9.10")),
    // The JWT library Python tool servers verify agentguard's tokens with
    // (tests/tests/token_verifiers.rs); `crypto` brings ES256 and EdDSA.
    ("PyJWT[crypto]", "jwt, cryptography", Some("2.15.1")),
    ("flask", "flask", Some("3.1.3")),
    // AWS as the agent sees it: boto3 and the AWS CLI, unmodified, against
    // moto's server (signature verification on, STS included).
    ("boto3", "boto3", Some("1.43.11")),
    ("awscli", "awscli", Some("1.45.11")),
    ("moto[server]", "moto.server", Some("5.2.1")),
];

pub fn check() -> Result<()> {
    for &runtime in RUNTIMES {
        match cmd::probe(cmd::new(runtime).arg("--version")) {
            Some(version) => {
                println!("setup: {runtime} ({version}) already present, skipping");
            }
            None => println!(
                "setup: warning: `{runtime} --version` does not run; the end-to-end \
                 tests that use {runtime} as a client will fail"
            ),
        }
    }
    for &(package, module, version) in PYTHON_PACKAGES {
        // Present, and at the pinned version if there is one. Extras
        // (`moto[server]`) are pip's business; the distribution is `moto`,
        // and importing `module` shows the extras are there.
        let dist = package.split('[').next().unwrap_or(package);
        let check = match version {
            Some(v) => format!(
                "import {module}, importlib.metadata as m; assert m.version('{dist}') == '{v}'"
            ),
            None => format!("import {module}"),
        };
        let spec = match version {
            Some(v) => format!("{package}=={v}"),
            None => package.to_owned(),
        };
        if cmd::probe(cmd::new("python3").args(["-c", &check])).is_some() {
            println!("setup: python package {spec} already present, skipping");
        } else {
            println!("setup: installing python package {spec} (used by the end-to-end tests)");
            cmd::run(cmd::new("python3").args(["-m", "pip", "install", "--quiet", &spec]))?;
        }
    }
    Ok(())
}
