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

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> WebRunArgs {
        WebRunArgs {
            web_listen: None,
            web_users: None,
            web_tls_cert: None,
            web_tls_key: None,
            web_tls_name: Vec::new(),
        }
    }

    /// A variable or the config file can set one `web_*` key without the
    /// other (clap's `requires` sees flags only): that is an error, not a
    /// web view silently off.
    #[test]
    fn half_a_web_configuration_is_an_error() {
        assert!(args().options().unwrap().is_none(), "off by default");
        let listen_only = WebRunArgs {
            web_listen: Some("127.0.0.1:9443".parse().unwrap()),
            ..args()
        };
        let e = listen_only.options().unwrap_err().to_string();
        assert_eq!(e, "--web-listen needs --web-users too");
        let cert_only = WebRunArgs {
            web_tls_cert: Some("/etc/web.crt".into()),
            ..args()
        };
        let e = cert_only.options().unwrap_err().to_string();
        assert_eq!(e, "--web-tls-cert needs --web-tls-key too");
        let key_only = WebRunArgs {
            web_tls_key: Some("/etc/web.key".into()),
            ..args()
        };
        let e = key_only.options().unwrap_err().to_string();
        assert_eq!(e, "--web-tls-key needs --web-tls-cert too");
        let full = WebRunArgs {
            web_listen: Some("127.0.0.1:9443".parse().unwrap()),
            web_users: Some("/etc/agentguard/web-users.toml".into()),
            web_tls_cert: Some("/etc/web.crt".into()),
            web_tls_key: Some("/etc/web.key".into()),
            web_tls_name: vec!["guard.example".into()],
        };
        let options = full.options().unwrap().expect("on");
        assert_eq!(options.listen.to_string(), "127.0.0.1:9443");
        assert_eq!(
            options.cert_and_key,
            Some(("/etc/web.crt".into(), "/etc/web.key".into()))
        );
        assert_eq!(options.names, ["guard.example"]);
    }
}
