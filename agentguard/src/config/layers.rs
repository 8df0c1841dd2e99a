//! Where each option's value comes from: a flag, then an `AGENTGUARD_*`
//! environment variable, then the config file, then the built-in default.
//!
//! One naming rule covers all of them: the flag `--audit-batch-max` is the
//! key `audit_batch_max` in the file and `AGENTGUARD_AUDIT_BATCH_MAX` in the
//! environment. The rule is applied to clap's own definition of the
//! commands, so an option added to `run` is at once a file key and a
//! variable, parsed and checked by the same value parser as the flag.
//!
//! The plan is computed before anything runs: [`Layers::plan`] reads the
//! variables and the file, checks every value against the option it names
//! (an unknown key is an error with file and line), and gives clap the
//! winning value as the option's default, so that a flag still overrides it.

use std::{
    collections::BTreeMap,
    ffi::OsString,
    fmt,
    path::{Path, PathBuf},
};

use clap::{Arg, ArgMatches, Command, parser::ValueSource};
use serde::Serialize;
use thiserror::Error;
use toml::Spanned;

/// The daemon's config file: every `run` option, as `key = value`.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/agentguard/agentguard.toml";
/// Names another config file (the `--config` flag wins over it).
pub const CONFIG_ENV: &str = "AGENTGUARD_CONFIG";
/// Prefix of the variable that sets an option.
pub const ENV_PREFIX: &str = "AGENTGUARD_";

/// Commands that take no value from the environment or the file: a
/// verify-proxy fronts a tool server, often on another host, and is not
/// configured by the daemon's file.
const UNLAYERED_COMMANDS: &[&str] = &["verify-proxy"];

#[derive(Debug, Error)]
pub enum LayerError {
    #[error("failed to read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}:{line}: unknown key {key:?} (known keys: {known})")]
    UnknownKey {
        path: PathBuf,
        line: usize,
        key: String,
        known: String,
    },
    #[error("{path}:{line}: {key}: {message}")]
    BadValue {
        path: PathBuf,
        line: usize,
        key: String,
        message: String,
    },
    #[error("{var}: {message}")]
    BadEnv { var: String, message: String },
}

/// Where an option's value came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Source {
    Flag,
    Env { var: String },
    File { path: PathBuf, line: usize },
    Default,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Flag => f.write_str("flag"),
            Source::Env { var } => write!(f, "env {var}"),
            Source::File { path, line } => write!(f, "file {}:{line}", path.display()),
            Source::Default => f.write_str("default"),
        }
    }
}

/// The environment variable of option `id` (clap's id: `audit_batch_max`).
pub fn env_var(id: &str) -> String {
    format!("{ENV_PREFIX}{}", id.to_ascii_uppercase())
}

/// Which config file to read: `--config` (found in `argv` before any `--`),
/// else `$AGENTGUARD_CONFIG`, else the default path. The flag is also
/// declared to clap (for `--help`); it is read here first because the file
/// shapes how the rest of the command line is parsed.
pub fn config_path(argv: &[OsString]) -> (PathBuf, bool) {
    let mut args = argv.iter().skip(1);
    while let Some(arg) = args.next() {
        let Some(s) = arg.to_str() else { continue };
        if s == "--" {
            break;
        }
        if s == "--config"
            && let Some(value) = args.next()
        {
            return (PathBuf::from(value), true);
        }
        if let Some(value) = s.strip_prefix("--config=") {
            return (PathBuf::from(value), true);
        }
    }
    match std::env::var_os(CONFIG_ENV) {
        Some(v) if !v.is_empty() => (PathBuf::from(v), true),
        _ => (PathBuf::from(DEFAULT_CONFIG_FILE), false),
    }
}

/// A parsed config file: each key with its values (as the strings a flag
/// would carry) and its line.
#[derive(Debug, Clone, Default)]
pub struct ConfigFile {
    pub path: PathBuf,
    entries: BTreeMap<String, (Vec<String>, usize)>,
}

impl ConfigFile {
    /// Reads `path`. A missing file is no error when nobody asked for it
    /// (`explicit` false: the default path on a host without a config).
    pub fn load(path: &Path, explicit: bool) -> Result<Option<Self>, LayerError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(path, &text).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => Ok(None),
            Err(source) => Err(LayerError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self, LayerError> {
        let at = |offset: usize| {
            let before = &text[..offset.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            (line, column)
        };
        let table: BTreeMap<Spanned<String>, Spanned<toml::Value>> =
            toml::from_str(text).map_err(|e| {
                let (line, column) = at(e.span().map_or(0, |s| s.start));
                LayerError::Syntax {
                    path: path.to_owned(),
                    line,
                    column,
                    message: e.message().trim().to_owned(),
                }
            })?;
        let mut entries = BTreeMap::new();
        for (key, value) in table {
            let line = at(key.span().start).0;
            let key = key.into_inner();
            let bad = |message: &str| LayerError::BadValue {
                path: path.to_owned(),
                line,
                key: key.clone(),
                message: message.to_owned(),
            };
            let values = match value.into_inner() {
                toml::Value::Array(items) => items
                    .into_iter()
                    .map(|v| scalar(v).ok_or_else(|| bad("an array may hold only plain values")))
                    .collect::<Result<Vec<_>, _>>()?,
                toml::Value::Table(_) => {
                    return Err(bad(
                        "sections are not used: write every option as `key = value` at the top level",
                    ));
                }
                other => vec![scalar(other).ok_or_else(|| bad("unsupported value"))?],
            };
            entries.insert(key, (values, line));
        }
        Ok(Self {
            path: path.to_owned(),
            entries,
        })
    }

    pub fn get(&self, key: &str) -> Option<(&[String], usize)> {
        self.entries
            .get(key)
            .map(|(values, line)| (values.as_slice(), *line))
    }

    pub fn keys(&self) -> impl Iterator<Item = (&str, usize)> {
        self.entries
            .iter()
            .map(|(k, (_, line))| (k.as_str(), *line))
    }
}

/// A TOML scalar as the text of a flag's value.
fn scalar(value: toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        toml::Value::Datetime(d) => Some(d.to_string()),
        toml::Value::Array(_) | toml::Value::Table(_) => None,
    }
}

/// The options a file or the environment may set: every argument of `run`
/// plus the global ones (`--admin-socket`, `--log-format`).
pub fn keys(cli: &Command) -> Vec<String> {
    let mut keys: Vec<String> = cli
        .get_arguments()
        .filter(|a| a.is_global_set() && a.get_id() != "config")
        .map(|a| a.get_id().to_string())
        .collect();
    if let Some(run) = cli.find_subcommand("run") {
        keys.extend(
            run.get_arguments()
                .filter(|a| is_option(a))
                .map(|a| a.get_id().to_string()),
        );
    }
    keys.sort();
    keys.dedup();
    keys
}

fn is_option(arg: &Arg) -> bool {
    !matches!(arg.get_id().as_str(), "help" | "version") && !arg.is_positional()
}

/// The values the environment and the file give, chosen and checked, for
/// the command about to be parsed.
#[derive(Debug, Default)]
pub struct Layers {
    /// key → (values, where they came from); only keys that have one.
    chosen: BTreeMap<String, (Vec<String>, Source)>,
    pub file: Option<PathBuf>,
}

impl Layers {
    /// Reads every option's variable and the file's keys, and checks each
    /// value with the parser of the option it sets (`cli`'s `run`
    /// subcommand, or the top level for global options).
    pub fn plan(cli: &Command, file: Option<&ConfigFile>) -> Result<Self, LayerError> {
        let keys = keys(cli);
        let mut layers = Layers {
            file: file.map(|f| f.path.clone()),
            ..Layers::default()
        };
        if let Some(file) = file {
            for (key, line) in file.keys() {
                if !keys.iter().any(|k| k == key) {
                    return Err(LayerError::UnknownKey {
                        path: file.path.clone(),
                        line,
                        key: key.to_owned(),
                        known: keys.join(", "),
                    });
                }
            }
        }
        for key in &keys {
            let Some((owner, arg)) = find_arg(cli, key) else {
                continue;
            };
            let var = env_var(key);
            let (values, source) = match std::env::var(&var) {
                Ok(v) if !v.is_empty() => {
                    // Several values (--dns-upstream) are comma-separated.
                    let values: Vec<String> = if takes_many(arg) {
                        v.split(',').map(|s| s.trim().to_owned()).collect()
                    } else {
                        vec![v]
                    };
                    (values, Source::Env { var: var.clone() })
                }
                _ => match file.and_then(|f| f.get(key)) {
                    Some((values, line)) => (
                        values.to_vec(),
                        Source::File {
                            path: file.map(|f| f.path.clone()).unwrap_or_default(),
                            line,
                        },
                    ),
                    None => continue,
                },
            };
            if values.len() > 1 && !takes_many(arg) {
                return Err(value_error(key, &source, "takes one value, not a list"));
            }
            check(owner, arg, &values).map_err(|e| value_error(key, &source, &e))?;
            layers.chosen.insert(key.clone(), (values, source));
        }
        Ok(layers)
    }

    /// `cli` with the chosen values as defaults of the command at `path`
    /// (the subcommand names, `["audit", "verify"]`) and of the global
    /// options. A flag given on the command line still wins.
    pub fn apply(&self, mut cli: Command, path: &[String]) -> Command {
        if path
            .first()
            .is_some_and(|c| UNLAYERED_COMMANDS.contains(&c.as_str()))
        {
            return cli;
        }
        for (key, (values, _)) in &self.chosen {
            if cli.get_arguments().any(|a| a.get_id() == key.as_str()) {
                cli = cli.mut_arg(key, |a| a.default_values(values.iter().cloned()));
            }
        }
        apply_path(cli, path, &self.chosen)
    }

    /// Where the value of `key` in `matches` came from.
    pub fn source(&self, matches: &ArgMatches, key: &str) -> Source {
        match matches.value_source(key) {
            Some(ValueSource::CommandLine) => Source::Flag,
            Some(ValueSource::EnvVariable) => Source::Env { var: env_var(key) },
            _ => self
                .chosen
                .get(key)
                .map_or(Source::Default, |(_, source)| source.clone()),
        }
    }
}

fn apply_path(
    cmd: Command,
    path: &[String],
    chosen: &BTreeMap<String, (Vec<String>, Source)>,
) -> Command {
    let Some((first, rest)) = path.split_first() else {
        return cmd;
    };
    cmd.mut_subcommand(first, |mut sub| {
        if rest.is_empty() {
            for (key, (values, _)) in chosen {
                if sub
                    .get_arguments()
                    .any(|a| a.get_id() == key.as_str() && !a.is_global_set())
                {
                    sub = sub.mut_arg(key, |a| a.default_values(values.iter().cloned()));
                }
            }
            sub
        } else {
            apply_path(sub, rest, chosen)
        }
    })
}

/// The argument `key` sets, and the command that owns it (for its parser).
fn find_arg<'a>(cli: &'a Command, key: &str) -> Option<(&'a Command, &'a Arg)> {
    if let Some(arg) = cli
        .get_arguments()
        .find(|a| a.is_global_set() && a.get_id() == key)
    {
        return Some((cli, arg));
    }
    let run = cli.find_subcommand("run")?;
    run.get_arguments()
        .find(|a| a.get_id() == key)
        .map(|a| (run, a))
}

/// Parses `values` as the default of a copy of `arg`: the very path they
/// take later, so a value that passes here parses there, and one that
/// fails is reported with its file and line or variable.
fn check(owner: &Command, arg: &Arg, values: &[String]) -> Result<(), String> {
    let probe = arg
        .clone()
        .required(false)
        .default_values(values.iter().cloned());
    Command::new(owner.get_name().to_owned())
        .no_binary_name(true)
        .arg(probe)
        .try_get_matches_from(Vec::<OsString>::new())
        .map(|_| ())
        .map_err(|e| clap_message(&e))
}

fn takes_many(arg: &Arg) -> bool {
    matches!(arg.get_action(), clap::ArgAction::Append)
}

fn value_error(key: &str, source: &Source, message: &str) -> LayerError {
    match source {
        Source::File { path, line } => LayerError::BadValue {
            path: path.clone(),
            line: *line,
            key: key.to_owned(),
            message: message.to_owned(),
        },
        _ => LayerError::BadEnv {
            var: env_var(key),
            message: message.to_owned(),
        },
    }
}

/// clap's first line, without its `error: ` lead-in.
fn clap_message(e: &clap::Error) -> String {
    let text = e.to_string();
    let first = text.lines().next().unwrap_or_default();
    first.strip_prefix("error: ").unwrap_or(first).to_owned()
}

/// The subcommand path of `matches`: `["audit", "verify"]`.
pub fn subcommand_path(matches: &ArgMatches) -> Vec<String> {
    let mut path = Vec::new();
    let mut m = matches;
    while let Some((name, sub)) = m.subcommand() {
        path.push(name.to_owned());
        m = sub;
    }
    path
}

/// The matches of the innermost subcommand.
pub fn leaf(matches: &ArgMatches) -> &ArgMatches {
    let mut m = matches;
    while let Some((_, sub)) = m.subcommand() {
        m = sub;
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> Result<ConfigFile, LayerError> {
        ConfigFile::parse(Path::new("/etc/agentguard/agentguard.toml"), text)
    }

    #[test]
    fn keys_and_lines_are_kept() {
        let f = file("# comment\nproxy_port = 977\n\ndns_upstream = [\"127.0.0.1:53\", \"[::1]:53\"]\nreport_kernel_redirects = true\n").unwrap();
        assert_eq!(f.get("proxy_port"), Some((&["977".to_owned()][..], 2)));
        assert_eq!(
            f.get("dns_upstream").unwrap(),
            (&["127.0.0.1:53".to_owned(), "[::1]:53".to_owned()][..], 4)
        );
        assert_eq!(f.get("report_kernel_redirects").unwrap().0, ["true"]);
    }

    #[test]
    fn syntax_errors_and_sections_name_the_line() {
        let e = file("proxy_port = 977\nstate_dir = /var\n").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("/etc/agentguard/agentguard.toml:2:"),
            "{e}"
        );
        let e = file("[audit]\nbatch_max = 5\n").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("/etc/agentguard/agentguard.toml:1: audit: sections"),
            "{e}"
        );
    }

    #[test]
    fn config_flag_is_found_before_the_command_separator() {
        let argv = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            config_path(&argv(&["agentguard", "--config", "/x.toml", "run"])),
            (PathBuf::from("/x.toml"), true)
        );
        assert_eq!(
            config_path(&argv(&["agentguard", "run", "--config=/y.toml"])),
            (PathBuf::from("/y.toml"), true)
        );
        // After `--` it belongs to the agent's command line.
        let (path, _) = config_path(&argv(&[
            "agentguard",
            "exec",
            "--agent",
            "a",
            "--",
            "x",
            "--config",
            "/z",
        ]));
        assert_ne!(path, PathBuf::from("/z"));
    }

    #[test]
    fn env_names_follow_the_flag() {
        assert_eq!(env_var("audit_batch_max"), "AGENTGUARD_AUDIT_BATCH_MAX");
        assert_eq!(env_var("admin_socket"), "AGENTGUARD_ADMIN_SOCKET");
    }
}
