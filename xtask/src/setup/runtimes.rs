//! Language runtimes the end-to-end tests use as unmodified agents.
//!
//! python3 and node come with the machine image rather than from setup, so a
//! missing one is a warning here and a loud failure in the tests that need it.

use anyhow::Result;

use crate::cmd;

const RUNTIMES: &[&str] = &["python3", "node"];

/// Python packages the end-to-end tests import, as (PyPI name, module):
/// `requests` in client scripts; the export validators in
/// `tests/validators/`: the OpenTelemetry project's OTLP message classes,
/// and the OCSF schema (shipped in the package, so nothing is fetched at
/// test time: `ocsf-lib` only reads the schema from its server) with the
/// JSON Schema validator that checks events against it.
const PYTHON_PACKAGES: &[(&str, &str)] = &[
    ("requests", "requests"),
    (
        "opentelemetry-proto",
        "opentelemetry.proto.collector.logs.v1.logs_service_pb2",
    ),
    ("ocsf-json-schema", "ocsf_json_schema"),
    ("jsonschema", "jsonschema"),
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
    for &(package, module) in PYTHON_PACKAGES {
        let import = format!("import {module}");
        if cmd::probe(cmd::new("python3").args(["-c", &import])).is_some() {
            println!("setup: python package {package} already present, skipping");
        } else {
            println!("setup: installing python package {package} (used by the end-to-end tests)");
            cmd::run(cmd::new("python3").args(["-m", "pip", "install", "--quiet", package]))?;
        }
    }
    Ok(())
}
