//! `agentguard config show`: the configuration `agentguard run` would use
//! with the same flags, environment and config file, and where each value
//! came from.
//!
//! The text output is itself a valid config file (each value followed by
//! its source as a comment), so an operator can start one from it.

use std::process::ExitCode;

use clap::{ArgMatches, Command, ValueEnum};
use serde::Serialize;

use crate::config::{
    DEFAULT_ADMIN_SOCKET,
    layers::{self, Layers, Source},
};

#[derive(Debug, Clone, Copy, Default, ValueEnum)]
pub enum Output {
    /// `key = value  # source`, a valid config file.
    #[default]
    Toml,
    /// `{"key": {"value": ..., "source": {...}}}`.
    Json,
}

/// One option's effective value.
#[derive(Debug, Serialize)]
struct Entry {
    key: String,
    /// `None`: not set (the option is off).
    value: Option<toml::Value>,
    source: Source,
}

/// Prints every option of `run` and the global ones, in the order `run
/// --help` lists them, from the matches of `config show`.
pub fn show(
    cli: &Command,
    layers: &Layers,
    matches: &ArgMatches,
    output: Output,
    problem: Option<String>,
) -> ExitCode {
    let mut keys: Vec<String> = Vec::new();
    if let Some(run) = cli.find_subcommand("run") {
        keys.extend(
            run.get_arguments()
                .filter(|a| !a.is_positional() && !matches!(a.get_id().as_str(), "help"))
                .map(|a| a.get_id().to_string()),
        );
    }
    for key in layers::keys(cli) {
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    let entries: Vec<Entry> = keys
        .iter()
        .map(|key| entry(cli, layers, matches, key))
        .collect();
    match output {
        Output::Json => {
            let map: serde_json::Map<String, serde_json::Value> = entries
                .iter()
                .map(|e| {
                    (
                        e.key.clone(),
                        serde_json::json!({ "value": e.value, "source": e.source }),
                    )
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&map).unwrap_or_default());
        }
        Output::Toml => {
            match &layers.file {
                Some(path) => println!("# config file: {}", path.display()),
                None => println!("# config file: none"),
            }
            println!("# precedence: flag > environment (AGENTGUARD_*) > config file > default");
            for e in &entries {
                let line = match &e.value {
                    Some(v) => format!("{} = {v}", e.key),
                    None => format!("# {} is not set", e.key),
                };
                println!("{line:<56} # {}", e.source);
            }
        }
    }
    match problem {
        Some(p) => {
            eprintln!("agentguard: error: this configuration would not start: {p}");
            ExitCode::FAILURE
        }
        None => ExitCode::SUCCESS,
    }
}

fn entry(cli: &Command, layers: &Layers, matches: &ArgMatches, key: &str) -> Entry {
    let raw: Option<Vec<String>> = matches
        .try_get_raw(key)
        .ok()
        .flatten()
        .map(|values| values.map(|v| v.to_string_lossy().into_owned()).collect());
    let many = cli
        .find_subcommand("run")
        .and_then(|r| r.get_arguments().find(|a| a.get_id() == key))
        .is_some_and(|a| matches!(a.get_action(), clap::ArgAction::Append));
    let mut source = layers.source(matches, key);
    let value = match raw {
        Some(values) if many => Some(toml::Value::Array(
            values.iter().map(|v| typed(v)).collect(),
        )),
        Some(values) if values.is_empty() => None,
        Some(values) => values.into_iter().next().map(|v| typed(&v)),
        // The global --admin-socket has no clap default (a verify-proxy
        // must not inherit one); the daemon's is this.
        None if key == "admin_socket" => {
            source = Source::Default;
            Some(toml::Value::String(DEFAULT_ADMIN_SOCKET.to_owned()))
        }
        None => None,
    };
    let value = match value {
        Some(toml::Value::Array(a)) if a.is_empty() => None,
        v => v,
    };
    Entry {
        key: key.to_owned(),
        value,
        source,
    }
}

/// The value as TOML: numbers and booleans bare, the rest as strings (the
/// file accepts either spelling for numbers).
fn typed(raw: &str) -> toml::Value {
    if let Ok(n) = raw.parse::<i64>() {
        return toml::Value::Integer(n);
    }
    match raw {
        "true" => toml::Value::Boolean(true),
        "false" => toml::Value::Boolean(false),
        _ => toml::Value::String(raw.to_owned()),
    }
}
