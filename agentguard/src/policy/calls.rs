//! What a `[[tool]]` says about the calls it allows, beyond host, method
//! and path: the protocol (`mcp`, `jsonrpc`), the MCP tools, resources and
//! prompts or JSON-RPC methods it allows, a `when` condition, a rate limit,
//! whether arguments are recorded, and the bound on the body it reads.

use std::sync::LazyLock;

use super::{Condition, NamePattern, RateRule, condition::Uses, names};
use crate::mcp::{Message, MessageKind, TargetKind};

/// The body bound of a tool that reads bodies, unless it sets `max_body`.
pub const DEFAULT_MAX_BODY: usize = 1 << 20;
/// The largest `max_body` a policy may set.
pub const MAX_MAX_BODY: usize = 16 << 20;

/// How a tool's requests are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// Decided on host, method and path (and `when`).
    #[default]
    Http,
    /// JSON-RPC 2.0 bodies: each message decided on its method.
    JsonRpc,
    /// MCP over Streamable HTTP: JSON-RPC, plus tools, resources and
    /// prompts by name, and the session methods every client needs.
    Mcp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::JsonRpc => "jsonrpc",
            Protocol::Mcp => "mcp",
        }
    }

    /// Whether requests of such a tool carry JSON-RPC bodies to parse.
    pub fn is_rpc(self) -> bool {
        !matches!(self, Protocol::Http)
    }
}

/// The MCP methods a session needs whatever it calls: set-up, liveness,
/// notifications either way, listing (filtered to what the agent may use),
/// and the task methods that only reach tasks an allowed call created
/// (MCP 2025-06-18 and 2025-11-25, lifecycle and utilities), and the
/// 2026-07-28 revision's stateless counterparts of `initialize` and the
/// GET event stream (`server/discover`, which SDKs probe before falling
/// back to `initialize`, and `subscriptions/listen`). Allowed by an MCP
/// tool without being listed; `when` and `rate` do not apply to them.
pub const MCP_SESSION_METHODS: [&str; 14] = [
    "initialize",
    "server/discover",
    "subscriptions/listen",
    "ping",
    "notifications/*",
    "tools/list",
    "resources/list",
    "resources/templates/list",
    "prompts/list",
    "logging/setLevel",
    "tasks/get",
    "tasks/result",
    "tasks/list",
    "tasks/cancel",
];

static SESSION: LazyLock<Vec<NamePattern>> = LazyLock::new(|| {
    MCP_SESSION_METHODS
        .iter()
        .map(|p| NamePattern::parse(p).expect("session patterns are valid"))
        .collect()
});

#[derive(Debug, Clone, Default)]
pub struct CallRules {
    pub protocol: Protocol,
    /// JSON-RPC methods allowed beyond the MCP ones (`rpc_methods`).
    pub rpc_methods: Vec<NamePattern>,
    pub mcp_tools: Vec<NamePattern>,
    pub mcp_tools_except: Vec<NamePattern>,
    pub mcp_resources: Vec<NamePattern>,
    pub mcp_prompts: Vec<NamePattern>,
    pub when: Option<Condition>,
    pub rate: Option<RateRule>,
    /// Record arguments in the audit record; otherwise only their SHA-256.
    pub record_arguments: bool,
    /// Most bytes of a body read to decide (JSON-RPC bodies, and bodies a
    /// condition reads); a longer body is refused.
    pub max_body: usize,
}

/// How one JSON-RPC message stands against a tool's names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageMatch {
    /// Session traffic (or a response): allowed, no condition, no rate.
    Session,
    /// A call the tool allows by name: the condition and rate apply.
    Call,
    /// Not allowed by this tool, and why.
    No(String),
}

impl CallRules {
    /// Whether deciding needs more than the request head: the tool's
    /// protocol, condition or rate.
    pub fn needs_call_aware_decision(&self) -> bool {
        self.protocol.is_rpc() || self.when.is_some() || self.rate.is_some()
    }

    /// Whether deciding reads the request body.
    pub fn reads_body(&self) -> bool {
        self.protocol.is_rpc() || self.when.as_ref().is_some_and(|c| c.uses().request_body)
    }

    pub fn uses(&self) -> Uses {
        self.when.as_ref().map(Condition::uses).unwrap_or_default()
    }

    /// Whether the tool allows the agent to use this MCP tool, prompt or
    /// resource by name (for list filtering: conditions are not known
    /// until a call).
    pub fn allows_name(&self, kind: TargetKind, name: &str) -> bool {
        if self.protocol != Protocol::Mcp {
            return false;
        }
        match kind {
            TargetKind::Tool => {
                names::any_matches(&self.mcp_tools, name)
                    && !names::any_matches(&self.mcp_tools_except, name)
            }
            TargetKind::Prompt => names::any_matches(&self.mcp_prompts, name),
            TargetKind::Resource => {
                !names::uri_has_dot_segments(name) && names::any_matches(&self.mcp_resources, name)
            }
        }
    }

    /// Whether some tool's [`CallRules::match_message`] may take `m` as
    /// session traffic: a response, or a session method (`initialize`,
    /// notifications, ...) with no tool, resource or prompt named. For
    /// any other message every tool's conditions apply.
    pub fn may_be_session(m: &Message) -> bool {
        m.kind == MessageKind::Response
            || (m.target.is_none()
                && names::any_matches(&SESSION, m.method.as_deref().unwrap_or_default()))
    }

    /// Checks one message of a body against the tool's names.
    pub fn match_message(&self, m: &Message) -> MessageMatch {
        if m.kind == MessageKind::Response {
            // The client answering a request of the server's (sampling,
            // elicitation, roots): part of a session the tool allows.
            return MessageMatch::Session;
        }
        let method = m.method.as_deref().unwrap_or_default();
        if self.protocol == Protocol::Mcp {
            if let Some(target) = &m.target {
                let kind = target.kind.as_str();
                if target.kind == TargetKind::Resource && names::uri_has_dot_segments(&target.name)
                {
                    return MessageMatch::No(format!(
                        "resource URI {:?} has dot segments",
                        target.name
                    ));
                }
                return if self.allows_name(target.kind, &target.name) {
                    MessageMatch::Call
                } else if target.kind == TargetKind::Tool
                    && names::any_matches(&self.mcp_tools_except, &target.name)
                {
                    MessageMatch::No(format!("MCP tool {:?} is excepted", target.name))
                } else {
                    MessageMatch::No(format!("MCP {kind} {:?} is not allowed", target.name))
                };
            }
            if names::any_matches(&SESSION, method) {
                return MessageMatch::Session;
            }
        }
        if names::any_matches(&self.rpc_methods, method) {
            MessageMatch::Call
        } else {
            MessageMatch::No(format!("method {method:?} is not allowed"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mcp::Body;

    fn pats(list: &[&str]) -> Vec<NamePattern> {
        list.iter()
            .map(|p| NamePattern::parse(p).unwrap())
            .collect()
    }

    fn one(json: &str) -> Message {
        Body::parse(json.as_bytes()).unwrap().messages()[0].clone()
    }

    fn call(name: &str) -> Message {
        one(&format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"{name}"}}}}"#
        ))
    }

    #[test]
    fn mcp_names_session_methods_and_exceptions() {
        let rules = CallRules {
            protocol: Protocol::Mcp,
            mcp_tools: pats(&["list_*", "get_issue", "create_issue"]),
            mcp_tools_except: pats(&["list_secrets"]),
            mcp_resources: pats(&["repo://acme/*"]),
            mcp_prompts: pats(&["review"]),
            ..CallRules::default()
        };
        assert_eq!(
            rules.match_message(&call("list_issues")),
            MessageMatch::Call
        );
        assert_eq!(
            rules.match_message(&call("create_issue")),
            MessageMatch::Call
        );
        assert!(
            matches!(rules.match_message(&call("delete_repo")), MessageMatch::No(r) if r.contains("not allowed"))
        );
        assert!(
            matches!(rules.match_message(&call("list_secrets")), MessageMatch::No(r) if r.contains("excepted"))
        );
        for session in [
            r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#,
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
            r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#,
            r#"{"jsonrpc":"2.0","id":3,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":"srv-1","result":{}}"#,
        ] {
            assert_eq!(
                rules.match_message(&one(session)),
                MessageMatch::Session,
                "{session}"
            );
        }
        let read = |uri: &str| {
            one(&format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{{"uri":"{uri}"}}}}"#
            ))
        };
        assert_eq!(
            rules.match_message(&read("repo://acme/widgets/README")),
            MessageMatch::Call
        );
        assert!(matches!(
            rules.match_message(&read("repo://other/x")),
            MessageMatch::No(_)
        ));
        assert!(
            matches!(rules.match_message(&read("repo://acme/../other/x")), MessageMatch::No(r) if r.contains("dot"))
        );
        let prompt =
            one(r#"{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":"review"}}"#);
        assert_eq!(rules.match_message(&prompt), MessageMatch::Call);
        // Other methods need rpc_methods.
        let complete = one(r#"{"jsonrpc":"2.0","id":1,"method":"sampling/x"}"#);
        assert!(matches!(
            rules.match_message(&complete),
            MessageMatch::No(_)
        ));
        assert!(rules.allows_name(TargetKind::Tool, "list_pulls"));
        assert!(!rules.allows_name(TargetKind::Tool, "list_secrets"));
        assert!(!rules.allows_name(TargetKind::Prompt, "other"));
    }

    #[test]
    fn json_rpc_tools_allow_only_their_methods() {
        let rules = CallRules {
            protocol: Protocol::JsonRpc,
            rpc_methods: pats(&["eth_get*", "eth_call"]),
            ..CallRules::default()
        };
        let m = |method: &str| {
            one(&format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"{method}"}}"#
            ))
        };
        assert_eq!(rules.match_message(&m("eth_call")), MessageMatch::Call);
        assert_eq!(
            rules.match_message(&m("eth_getBalance")),
            MessageMatch::Call
        );
        assert!(matches!(
            rules.match_message(&m("eth_sendRawTransaction")),
            MessageMatch::No(_)
        ));
        // No MCP session methods for plain JSON-RPC, nor tool names.
        assert!(matches!(
            rules.match_message(&m("initialize")),
            MessageMatch::No(_)
        ));
        assert!(!rules.allows_name(TargetKind::Tool, "x"));
    }

    /// The call keys are checked when the policy loads, and errors name the
    /// file, line and key; files without them load as before.
    #[test]
    fn call_keys_are_validated_with_file_line_and_key() {
        let head = "[agent]\nname = \"a\"\ncgroup = \"agentguard/a\"\n\n[[tool]]\nname = \"t\"\nhost = \"x.org\"\nmethods = [\"POST\"]\npaths = [\"/mcp\"]\n";
        let load = |extra: &str| {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("a.toml"), format!("{head}{extra}")).unwrap();
            crate::policy::load_path(dir.path()).map_err(|e| e.to_string())
        };
        let set = load("protocol = \"mcp\"\nmcp_tools = [\"list_*\"]\nwhen = 'mcp.arguments.owner == \"acme\"'\nrate = \"20/min\"\nrate_per = \"on_behalf_of\"\nrecord_arguments = true\nmax_body = \"4M\"\n").unwrap();
        let calls = &set.agents[0].tools[0].calls;
        assert_eq!(calls.protocol, Protocol::Mcp);
        assert_eq!(calls.max_body, 4 << 20);
        assert!(calls.record_arguments && calls.when.is_some());
        assert_eq!(calls.rate.unwrap().per, crate::policy::RatePer::OnBehalfOf);
        assert_eq!(
            load("").unwrap().agents[0].tools[0].calls.protocol,
            Protocol::Http
        );

        for (extra, want) in [
            ("protocol = \"grpc\"\n", "a.toml:10:12: tool.protocol"),
            (
                "mcp_tools = [\"x\"]\n",
                "a.toml:10:13: tool.mcp_tools: only for protocol = \"mcp\"",
            ),
            (
                "protocol = \"jsonrpc\"\nmcp_prompts = [\"x\"]\n",
                "a.toml:11:15: tool.mcp_prompts",
            ),
            ("rpc_methods = [\"x\"]\n", "a.toml:10:15: tool.rpc_methods"),
            (
                "protocol = \"mcp\"\nmcp_tools = [\"\"]\n",
                "tool.mcp_tools: a name pattern must not be empty",
            ),
            ("when = \"request.path ==\"\n", "a.toml:10:8: tool.when: "),
            (
                "when = \"requst.path == '/'\"\n",
                "a.toml:10:8: tool.when: unknown variable \"requst\"",
            ),
            ("when = \"mcp.tool == 'x'\"\n", "tool.when: mcp is only set"),
            ("rate = \"20/fortnight\"\n", "a.toml:10:8: tool.rate"),
            ("rate_per = \"agent\"\n", "tool.rate_per: give a rate too"),
            (
                "rate = \"1/s\"\nrate_per = \"user\"\n",
                "a.toml:11:12: tool.rate_per",
            ),
            (
                "record_arguments = true\n",
                "tool.record_arguments: only for",
            ),
            (
                "max_body = \"1M\"\n",
                "tool.max_body: only for tools that read bodies",
            ),
            (
                "protocol = \"mcp\"\nmax_body = \"1G\"\n",
                "tool.max_body: at most 16 MiB",
            ),
            (
                "protocol = \"mcp\"\nmax_body = \"lots\"\n",
                "tool.max_body: \"lots\" is not a size",
            ),
            (
                "mcp_tols = [\"x\"]\n",
                "a.toml:10:1: unknown field `mcp_tols`",
            ),
        ] {
            let err = load(extra).unwrap_err();
            assert!(err.contains(want), "{extra}: {err}");
        }
        // An MCP tool needs POST.
        let err = load("protocol = \"mcp\"\n").map(|_| ()).and_then(|_| {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(
                dir.path().join("a.toml"),
                head.replace("[\"POST\"]", "[\"GET\"]") + "protocol = \"mcp\"\n",
            )
            .unwrap();
            crate::policy::load_path(dir.path())
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
        assert!(
            err.unwrap_err()
                .contains("a.toml:8:11: tool.methods: a protocol = \"mcp\" tool needs \"POST\"")
        );
    }
}
