//! JSON-RPC 2.0 request bodies (<https://www.jsonrpc.org/specification>) and
//! what MCP puts in them: the method, the id, and for `tools/call`,
//! `resources/read` and `prompts/get` the tool, resource or prompt the call
//! is about, with its arguments.
//!
//! Parsing is strict (see [`super::strict`]) and bounded: the caller reads at
//! most the tool's body bound and refuses a longer body; this module refuses
//! batches of more than [`MAX_BATCH`] members.

use serde_json::Value;

use super::{McpError, strict};

/// Most members a batch may have. Each member is decided (and may be
/// audited) on its own; a client has no need for more.
pub const MAX_BATCH: usize = 64;

/// A parsed request body: one message or a batch (JSON-RPC §6).
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    Single(Message),
    Batch(Vec<Message>),
}

impl Body {
    /// Parses a JSON-RPC 2.0 body. Every member must be a well-formed
    /// request, notification or response; anything else refuses the whole
    /// body (a member agentguard cannot read is never forwarded).
    pub fn parse(bytes: &[u8]) -> Result<Body, McpError> {
        let value = strict::parse(bytes).map_err(McpError::Parse)?;
        match value {
            Value::Array(items) => {
                if items.is_empty() {
                    return Err(McpError::Invalid("empty batch".into()));
                }
                if items.len() > MAX_BATCH {
                    return Err(McpError::Invalid(format!(
                        "batch of {} members (at most {MAX_BATCH})",
                        items.len()
                    )));
                }
                let members = items
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| {
                        Message::from_value(v).map_err(|e| match e {
                            McpError::Invalid(m) => {
                                McpError::Invalid(format!("batch member {i}: {m}"))
                            }
                            other => other,
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Body::Batch(members))
            }
            other => Ok(Body::Single(Message::from_value(other)?)),
        }
    }

    pub fn messages(&self) -> &[Message] {
        match self {
            Body::Single(m) => std::slice::from_ref(m),
            Body::Batch(ms) => ms,
        }
    }

    pub fn is_batch(&self) -> bool {
        matches!(self, Body::Batch(_))
    }
}

/// What a message is (JSON-RPC §4, §4.1, §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// Has a method and an id: it gets a response.
    Request,
    /// Has a method and no id: it gets no response, not even an error.
    Notification,
    /// Has a result or an error: an MCP client answering a request of the
    /// server's (sampling, elicitation, roots).
    Response,
}

/// What an MCP call names. Resources are named by URI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    Tool,
    Resource,
    Prompt,
}

impl TargetKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::Tool => "tool",
            TargetKind::Resource => "resource",
            TargetKind::Prompt => "prompt",
        }
    }
}

/// The tool, resource or prompt an MCP request is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub kind: TargetKind,
    /// The tool or prompt name, or the resource URI.
    pub name: String,
}

/// One JSON-RPC message.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub kind: MessageKind,
    /// `None` for a notification. A string, a number or null otherwise;
    /// echoed unchanged in any error agentguard answers with.
    pub id: Option<Value>,
    /// `None` for a response.
    pub method: Option<String>,
    /// `params` (an object or an array), if given.
    pub params: Option<Value>,
    /// For `tools/call`, `prompts/get`, `resources/read`,
    /// `resources/subscribe`, `resources/unsubscribe` and
    /// `completion/complete`: what the call names.
    pub target: Option<Target>,
    /// The member as received, forwarded as is when it is allowed.
    pub raw: Value,
}

impl Message {
    fn from_value(value: Value) -> Result<Message, McpError> {
        let Value::Object(obj) = &value else {
            return Err(McpError::Invalid("a message must be a JSON object".into()));
        };
        // Keys that differ from ours only in case would be the same key to a
        // server decoding with Go's encoding/json: refuse the ambiguity.
        for key in obj.keys() {
            let lower = key.to_ascii_lowercase();
            if ENVELOPE_KEYS.contains(&lower.as_str()) && key != &lower {
                return Err(McpError::Invalid(format!(
                    "key {key:?} differs from {lower:?} only in case"
                )));
            }
        }
        if obj.get("jsonrpc") != Some(&Value::String("2.0".into())) {
            return Err(McpError::Invalid("\"jsonrpc\" must be \"2.0\"".into()));
        }
        let id = match obj.get("id") {
            None => None,
            Some(id @ (Value::String(_) | Value::Number(_) | Value::Null)) => Some(id.clone()),
            Some(_) => {
                return Err(McpError::Invalid(
                    "\"id\" must be a string, a number or null".into(),
                ));
            }
        };
        let has_result = obj.contains_key("result");
        let has_error = obj.contains_key("error");
        let (kind, method, params) = match obj.get("method") {
            Some(Value::String(m)) => {
                if has_result || has_error {
                    return Err(McpError::Invalid(
                        "a message cannot have both a method and a result or error".into(),
                    ));
                }
                let params = match obj.get("params") {
                    None => None,
                    Some(p @ (Value::Object(_) | Value::Array(_))) => Some(p.clone()),
                    Some(_) => {
                        return Err(McpError::Invalid(
                            "\"params\" must be an object or an array".into(),
                        ));
                    }
                };
                let kind = if id.is_some() {
                    MessageKind::Request
                } else {
                    MessageKind::Notification
                };
                (kind, Some(m.clone()), params)
            }
            Some(_) => return Err(McpError::Invalid("\"method\" must be a string".into())),
            None => {
                if has_result == has_error || id.is_none() {
                    return Err(McpError::Invalid(
                        "a message needs a method, or an id and exactly one of result and error"
                            .into(),
                    ));
                }
                (MessageKind::Response, None, None)
            }
        };
        let target = match (&method, &params) {
            (Some(m), p) => target_of(m, p.as_ref())?,
            (None, _) => None,
        };
        Ok(Message {
            kind,
            id,
            method,
            params,
            target,
            raw: value,
        })
    }

    /// The arguments of a `tools/call` or `prompts/get` (`params.arguments`),
    /// or the whole `params` of any other request; `None` when absent.
    pub fn arguments(&self) -> Option<&Value> {
        let params = self.params.as_ref()?;
        match self.target.as_ref().map(|t| t.kind) {
            Some(TargetKind::Tool | TargetKind::Prompt)
                if self.method.as_deref() != Some("completion/complete") =>
            {
                params.get("arguments")
            }
            _ => Some(params),
        }
    }
}

/// Envelope and params keys agentguard reads.
const ENVELOPE_KEYS: [&str; 9] = [
    "jsonrpc",
    "id",
    "method",
    "params",
    "result",
    "error",
    "name",
    "uri",
    "arguments",
];

/// The target of the MCP methods that name one (MCP 2025-06-18 and later:
/// server/tools, server/resources, server/prompts, server/utilities/completion).
fn target_of(method: &str, params: Option<&Value>) -> Result<Option<Target>, McpError> {
    let (kind, key, within) = match method {
        "tools/call" => (TargetKind::Tool, "name", None),
        "prompts/get" => (TargetKind::Prompt, "name", None),
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
            (TargetKind::Resource, "uri", None)
        }
        // params.ref is {"type": "ref/prompt", "name"} or
        // {"type": "ref/resource", "uri"}.
        "completion/complete" => {
            let reference = params.and_then(|p| p.get("ref"));
            match reference
                .and_then(|r| r.get("type"))
                .and_then(Value::as_str)
            {
                Some("ref/prompt") => (TargetKind::Prompt, "name", Some("ref")),
                Some("ref/resource") => (TargetKind::Resource, "uri", Some("ref")),
                _ => {
                    return Err(McpError::Invalid(
                        "completion/complete needs params.ref of type ref/prompt or ref/resource"
                            .into(),
                    ));
                }
            }
        }
        _ => return Ok(None),
    };
    let holder = match within {
        None => params,
        Some(field) => params.and_then(|p| p.get(field)),
    };
    if let Some(Value::Object(obj)) = holder {
        for k in obj.keys() {
            if k != key && k.eq_ignore_ascii_case(key) {
                return Err(McpError::Invalid(format!(
                    "key {k:?} differs from {key:?} only in case"
                )));
            }
        }
    }
    match holder.and_then(|h| h.get(key)) {
        Some(Value::String(name)) if !name.is_empty() => Ok(Some(Target {
            kind,
            name: name.clone(),
        })),
        _ => Err(McpError::Invalid(format!(
            "{method} needs a non-empty string params.{}{key}",
            within.map(|w| format!("{w}.")).unwrap_or_default()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn one(body: &str) -> Message {
        match Body::parse(body.as_bytes()).unwrap() {
            Body::Single(m) => m,
            Body::Batch(_) => panic!("batch"),
        }
    }

    #[test]
    fn a_tool_call_names_its_tool_and_arguments() {
        let m = one(
            r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"create_issue","arguments":{"owner":"acme","repo":"widgets"}}}"#,
        );
        assert_eq!(m.kind, MessageKind::Request);
        assert_eq!(m.id, Some(json!(7)));
        assert_eq!(m.method.as_deref(), Some("tools/call"));
        assert_eq!(
            m.target,
            Some(Target {
                kind: TargetKind::Tool,
                name: "create_issue".into()
            })
        );
        assert_eq!(
            m.arguments(),
            Some(&json!({"owner": "acme", "repo": "widgets"}))
        );
    }

    #[test]
    fn resources_prompts_and_completions_name_theirs() {
        let m = one(
            r#"{"jsonrpc":"2.0","id":"a","method":"resources/read","params":{"uri":"repo://acme/widgets/README.md"}}"#,
        );
        assert_eq!(m.target.unwrap().name, "repo://acme/widgets/README.md");
        let m = one(
            r#"{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":"review","arguments":{"lang":"rust"}}}"#,
        );
        assert_eq!(m.target.as_ref().unwrap().kind, TargetKind::Prompt);
        assert_eq!(m.arguments(), Some(&json!({"lang": "rust"})));
        let m = one(
            r#"{"jsonrpc":"2.0","id":2,"method":"completion/complete","params":{"ref":{"type":"ref/resource","uri":"file:///a/{x}"},"argument":{"name":"x","value":"b"}}}"#,
        );
        assert_eq!(
            m.target,
            Some(Target {
                kind: TargetKind::Resource,
                name: "file:///a/{x}".into()
            })
        );
    }

    #[test]
    fn notifications_responses_and_plain_methods() {
        let m = one(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
        assert_eq!(
            (m.kind, m.id.clone(), m.target.clone()),
            (MessageKind::Notification, None, None)
        );
        let m = one(r#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#);
        assert_eq!((m.kind, m.id), (MessageKind::Request, Some(Value::Null)));
        let m = one(r#"{"jsonrpc":"2.0","id":"s1","result":{"roots":[]}}"#);
        assert_eq!((m.kind, m.method), (MessageKind::Response, None));
        let m = one(r#"{"jsonrpc":"2.0","id":3,"method":"eth_call","params":[{"to":"0x0"}]}"#);
        assert_eq!(m.arguments(), Some(&json!([{"to": "0x0"}])));
    }

    #[test]
    fn batches_keep_their_members_in_order() {
        let body = Body::parse(
            br#"[{"jsonrpc":"2.0","id":1,"method":"tools/list"},{"jsonrpc":"2.0","method":"notifications/initialized"},{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"x"}}]"#,
        )
        .unwrap();
        assert!(body.is_batch());
        let methods: Vec<_> = body
            .messages()
            .iter()
            .map(|m| m.method.clone().unwrap())
            .collect();
        assert_eq!(
            methods,
            ["tools/list", "notifications/initialized", "tools/call"]
        );
        assert_eq!(body.messages()[2].arguments(), None);
    }

    #[test]
    fn malformed_messages_are_refused() {
        let too_many = format!(
            "[{}]",
            vec![r#"{"jsonrpc":"2.0","method":"ping","id":1}"#; MAX_BATCH + 1].join(",")
        );
        for bad in [
            "not json",
            "[]",
            "5",
            r#"{"id":1,"method":"ping"}"#,
            r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":{},"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":5}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":"x"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","result":{}}"#,
            r#"{"jsonrpc":"2.0","id":1}"#,
            r#"{"jsonrpc":"2.0","result":{}}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{},"error":{}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":""}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":7}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"resources/read"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"x"}}}"#,
            // Keys a case-insensitive decoder would take for ours.
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","Method":"x","params":{"name":"a"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","Name":"b"}}"#,
            r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}, 5]"#,
            too_many.as_str(),
        ] {
            assert!(Body::parse(bad.as_bytes()).is_err(), "{bad} accepted");
        }
    }
}
