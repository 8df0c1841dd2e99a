//! `[agent] listen`: the addresses and ports an agent may bind, so that it
//! cannot squat a port others dial. Each entry is `ADDRESS:PORT`:
//!
//! - `127.0.0.1:8080` or `[::1]:8080`: that address exactly, as the agent
//!   passes it to bind() (`0.0.0.0:8080` and `[::]:8080` are the wildcard
//!   binds, each its own entry);
//! - `*:8080`: any local address, IPv4 or IPv6.
//!
//! The default is none: the agent may still bind port 0 (the kernel picks
//! a free ephemeral port, as clients do before connecting), nothing else.

use std::{fmt, net::IpAddr};

/// One `listen` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ListenAddr {
    /// `None`: any local address (`*`).
    pub ip: Option<IpAddr>,
    pub port: u16,
}

impl ListenAddr {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "{raw:?} must be ADDRESS:PORT: an IPv4 address, [IPv6] or * for any, and a port 1-65535"
            )
        };
        let (host, port) = raw.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        if port == 0 {
            return Err(format!(
                "{raw:?}: port 0 needs no entry (an ephemeral port is always allowed)"
            ));
        }
        let ip = match host {
            "*" => None,
            h if h.starts_with('[') && h.ends_with(']') => {
                let v6: std::net::Ipv6Addr = h[1..h.len() - 1].parse().map_err(|_| bad())?;
                Some(IpAddr::V6(v6))
            }
            h => Some(IpAddr::V4(h.parse().map_err(|_| bad())?)),
        };
        Ok(Self { ip, port })
    }

    /// The address as the kernel programs compare it: IPv4 in its
    /// IPv4-mapped IPv6 form; `None` for any address.
    pub fn kernel_ip(&self) -> Option<[u8; 16]> {
        self.ip.map(|ip| match ip {
            IpAddr::V4(v4) => agentguard_common::v4_mapped(v4.octets()),
            IpAddr::V6(v6) => v6.octets(),
        })
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ip {
            None => write!(f, "*:{}", self.port),
            Some(IpAddr::V4(v4)) => write!(f, "{v4}:{}", self.port),
            Some(IpAddr::V6(v6)) => write!(f, "[{v6}]:{}", self.port),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse_and_print_as_written() {
        for entry in [
            "127.0.0.1:8080",
            "[::1]:9000",
            "*:3000",
            "0.0.0.0:80",
            "[::]:443",
        ] {
            assert_eq!(ListenAddr::parse(entry).unwrap().to_string(), entry);
        }
        assert_eq!(ListenAddr::parse("*:1").unwrap().kernel_ip(), None);
        assert_eq!(
            ListenAddr::parse("127.0.0.1:1").unwrap().kernel_ip(),
            Some(agentguard_common::v4_mapped([127, 0, 0, 1]))
        );
    }

    #[test]
    fn malformed_entries_say_what_is_expected() {
        for entry in [
            "8080",
            "localhost:8080",
            "::1:8080",
            "127.0.0.1:",
            "127.0.0.1:65536",
            "*:x",
            "[::1]",
        ] {
            let err = ListenAddr::parse(entry).unwrap_err();
            assert!(err.contains("ADDRESS:PORT"), "{entry}: {err}");
        }
        assert!(ListenAddr::parse("*:0").unwrap_err().contains("ephemeral"));
    }

    #[test]
    fn policies_list_entries_and_errors_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let head = "[agent]\nname = \"a\"\ncgroup = \"agentguard/a\"\n";
        let file = dir.path().join("a.toml");
        std::fs::write(&file, format!("{head}listen = [\"*:8080\", \"[::1]:9\"]\n")).unwrap();
        let set = crate::policy::load_path(dir.path()).unwrap();
        let listen: Vec<String> = set
            .agent("a")
            .unwrap()
            .listen
            .iter()
            .map(|l| l.to_string())
            .collect();
        assert_eq!(listen, ["*:8080", "[::1]:9"]);

        for (entries, want) in [
            ("[\"8080\"]", "agent.listen: \"8080\" must be ADDRESS:PORT"),
            ("[\"*:1\", \"*:1\"]", "agent.listen: *:1 is listed twice"),
        ] {
            std::fs::write(&file, format!("{head}listen = {entries}\n")).unwrap();
            let err = crate::policy::load_path(dir.path())
                .unwrap_err()
                .to_string();
            assert!(err.contains("a.toml:4:"), "{err}");
            assert!(err.contains(want), "{err}");
        }
        // No listen key: the policy is valid, and binds nothing.
        std::fs::write(&file, head).unwrap();
        let set = crate::policy::load_path(dir.path()).unwrap();
        assert!(set.agent("a").unwrap().listen.is_empty());
    }
}
