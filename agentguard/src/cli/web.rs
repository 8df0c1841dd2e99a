//! The web view's flags on `agentguard run`, and `agentguard web`: the
//! helpers that make its users file's entries.

use std::{io::BufRead as _, net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Args, Subcommand};

use crate::{
    config::ConfigError,
    web::{WebOptions, users},
};

#[derive(Debug, Args)]
pub struct WebRunArgs {
    /// Serve the web view for auditors and approvers on this address
    /// (HTTPS; off unless given).
    #[arg(long, value_name = "ADDR", requires = "web_users")]
    web_listen: Option<SocketAddr>,
    /// Who may sign in to the web view, and with which role (TOML; see
    /// `agentguard web hash-password` and `new-token`).
    #[arg(long, value_name = "FILE")]
    web_users: Option<PathBuf>,
    /// Serve the web view with this certificate chain (PEM)... (default: a
    /// leaf from agentguard's CA, <state-dir>/ca/ca.crt)
    #[arg(long, requires = "web_tls_key")]
    web_tls_cert: Option<PathBuf>,
    /// ...and this key (PEM).
    #[arg(long, requires = "web_tls_cert")]
    web_tls_key: Option<PathBuf>,
    /// A name (DNS or IP) the CA's web view certificate is also for, beside
    /// localhost and the listen address; repeatable.
    #[arg(long, value_name = "NAME")]
    web_tls_name: Vec<String>,
}

impl WebRunArgs {
    /// The web view's options; `None`: off. clap's `requires` sees flags
    /// only, so what a variable or the config file sets is checked here:
    /// half a configuration is an error, never a web view silently off.
    pub fn options(&self) -> Result<Option<WebOptions>, ConfigError> {
        let needs = |flag, needs| Err(ConfigError::Needs { flag, needs });
        match (&self.web_tls_cert, &self.web_tls_key) {
            (Some(_), None) => return needs("--web-tls-cert", "--web-tls-key"),
            (None, Some(_)) => return needs("--web-tls-key", "--web-tls-cert"),
            _ => {}
        }
        let Some(listen) = self.web_listen else {
            return Ok(None);
        };
        let Some(users) = self.web_users.clone() else {
            return needs("--web-listen", "--web-users");
        };
        Ok(Some(WebOptions {
            listen,
            users,
            cert_and_key: self.web_tls_cert.clone().zip(self.web_tls_key.clone()),
            names: self.web_tls_name.clone(),
        }))
    }
}

#[derive(Debug, Subcommand)]
pub enum WebCommand {
    /// Read a password on stdin and print its Argon2id hash, for a
    /// `[[user]]` of the users file.
    HashPassword,
    /// Print a new bearer token (give it to the program) and its SHA-256
    /// (for a `[[token]]` of the users file).
    NewToken,
}

pub fn run(command: WebCommand) -> Result<ExitCode, super::CliError> {
    match command {
        WebCommand::HashPassword => {
            let mut line = String::new();
            if let Err(e) = std::io::stdin().lock().read_line(&mut line) {
                eprintln!("agentguard: error: could not read the password: {e}");
                return Ok(ExitCode::FAILURE);
            }
            let password = line.trim_end_matches(['\r', '\n']);
            if password.is_empty() {
                eprintln!("agentguard: error: no password on stdin");
                return Ok(ExitCode::FAILURE);
            }
            println!("{}", users::hash_password(password)?);
        }
        WebCommand::NewToken => {
            let (token, sha256) = users::new_token()?;
            println!("token:  {token}\nsha256: {sha256}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
