//! `agentguard run`'s time limits and per-agent caps (the defaults of
//! `crate::proxy::limits`).

use std::time::Duration;

use clap::Args;

use crate::{
    config::{ConfigError, parse_duration},
    proxy::limits::{
        DEFAULT_AGENT_CONNECTIONS, DEFAULT_AGENT_REQUESTS, DEFAULT_CLIENT_TIMEOUT,
        DEFAULT_FD_RESERVE, DEFAULT_PASSTHROUGH_IDLE_TIMEOUT, DEFAULT_UPSTREAM_IDLE_TIMEOUT,
        DEFAULT_UPSTREAM_RESPONSE_TIMEOUT, DEFAULT_UPSTREAM_TLS_TIMEOUT, LimitOptions,
        MAX_PASSTHROUGH_IDLE_TIMEOUT,
    },
};

#[derive(Debug, Args)]
pub struct LimitRunArgs {
    /// How long an agent's connection may wait with no request in progress
    /// (its first request included), and for a request head or a body
    /// hashed into a token; then it is closed.
    #[arg(long, default_value = DEFAULT_CLIENT_TIMEOUT, value_name = "DURATION")]
    client_timeout: String,
    /// Connections one agent may hold open at once (at most a quarter of
    /// the proxy's socket budget unless a policy sets agent.limits).
    #[arg(long, default_value_t = DEFAULT_AGENT_CONNECTIONS, value_name = "N")]
    agent_max_connections: u32,
    /// Requests one agent may have in flight at once.
    #[arg(long, default_value_t = DEFAULT_AGENT_REQUESTS, value_name = "N")]
    agent_max_requests: u32,
    /// Descriptors kept from the proxy's sockets for the admin socket, DNS
    /// and the audit store.
    #[arg(long, default_value_t = DEFAULT_FD_RESERVE, value_name = "N")]
    fd_reserve: u64,
    /// The upstream's TLS handshake.
    #[arg(long, default_value = DEFAULT_UPSTREAM_TLS_TIMEOUT, value_name = "DURATION")]
    upstream_tls_timeout: String,
    /// From the end of the request body to the upstream's response head
    /// (a tool's timeouts.response_head overrides it).
    #[arg(long, default_value = DEFAULT_UPSTREAM_RESPONSE_TIMEOUT, value_name = "DURATION")]
    upstream_response_timeout: String,
    /// Between two pieces of a response body (a tool's timeouts.body_idle
    /// overrides it).
    #[arg(long, default_value = DEFAULT_UPSTREAM_IDLE_TIMEOUT, value_name = "DURATION")]
    upstream_idle_timeout: String,
    /// A passthrough connection on which no byte moved either way for this
    /// long is closed (0s: never; at most 30d).
    #[arg(long, default_value = DEFAULT_PASSTHROUGH_IDLE_TIMEOUT, value_name = "DURATION")]
    passthrough_idle_timeout: String,
}

impl LimitRunArgs {
    pub fn options(&self) -> Result<LimitOptions, ConfigError> {
        for (flag, n) in [
            ("--agent-max-connections", self.agent_max_connections),
            ("--agent-max-requests", self.agent_max_requests),
        ] {
            if n == 0 {
                return Err(ConfigError::Zero { flag });
            }
        }
        Ok(LimitOptions {
            client_timeout: parse_duration("--client-timeout", &self.client_timeout)?,
            agent_connections: self.agent_max_connections,
            agent_requests: self.agent_max_requests,
            fd_reserve: self.fd_reserve,
            upstream_tls: parse_duration("--upstream-tls-timeout", &self.upstream_tls_timeout)?,
            upstream_response: parse_duration(
                "--upstream-response-timeout",
                &self.upstream_response_timeout,
            )?,
            upstream_idle: parse_duration("--upstream-idle-timeout", &self.upstream_idle_timeout)?,
            passthrough_idle: passthrough_idle(&self.passthrough_idle_timeout)?,
        })
    }
}

/// `--passthrough-idle-timeout`: None for `0s` (no limit).
fn passthrough_idle(value: &str) -> Result<Option<Duration>, ConfigError> {
    const FLAG: &str = "--passthrough-idle-timeout";
    let limit = parse_duration(FLAG, value)?;
    if limit > MAX_PASSTHROUGH_IDLE_TIMEOUT {
        return Err(ConfigError::DurationTooLong {
            flag: FLAG,
            value: value.to_owned(),
            max: "30d",
        });
    }
    Ok((!limit.is_zero()).then_some(limit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passthrough_idle_limit_is_off_at_zero_and_capped() {
        assert_eq!(
            passthrough_idle("1h").unwrap(),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(passthrough_idle("0s").unwrap(), None);
        assert_eq!(
            passthrough_idle("30d").unwrap(),
            Some(MAX_PASSTHROUGH_IDLE_TIMEOUT)
        );
        let err = passthrough_idle("31d").unwrap_err().to_string();
        assert_eq!(
            err,
            "--passthrough-idle-timeout: \"31d\" is longer than 30d"
        );
        assert!(matches!(
            passthrough_idle("soon"),
            Err(ConfigError::Duration { .. })
        ));
    }
}
