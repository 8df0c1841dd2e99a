//! Answers agentguard gives in JSON-RPC terms, and the split of a batch
//! into the members that go upstream and the errors answered here.
//!
//! An MCP SDK turns a bare HTTP 403 into a transport failure that ends the
//! session; a JSON-RPC error with the request's id is an error of that one
//! call, which the client reports as such. In a batch only the denied
//! members get an error; the others are forwarded (JSON-RPC §6).

use serde_json::{Value, json};

use super::{Body, MessageKind};

/// JSON-RPC 2.0 §5.1.
pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
/// MCP (SEP-2243): the MCP headers do not match the body.
pub const HEADER_MISMATCH: i64 = -32001;
/// agentguard's policy refused the call. In the implementation-defined
/// server-error range (-32000 to -32099) that MCP leaves free.
pub const POLICY_DENIED: i64 = -32003;
/// Over a rate limit, with `data.retryAfterMs`: the code the MCP draft
/// "Standardize Rate-Limiting Errors" reserves.
pub const RATE_LIMITED: i64 = -32023;

/// A JSON-RPC error response for the request with `id` (null when the id
/// could not be read, JSON-RPC §5).
pub fn error_response(id: Option<&Value>, code: i64, message: &str, data: Option<Value>) -> Value {
    let mut error = json!({ "code": code, "message": message });
    if let Some(data) = data {
        error["data"] = data;
    }
    json!({
        "jsonrpc": "2.0",
        "id": id.cloned().unwrap_or(Value::Null),
        "error": error,
    })
}

/// What happens to one member of a body.
#[derive(Debug, Clone, PartialEq)]
pub enum MemberOutcome {
    Forward,
    /// Answered here with this JSON-RPC error (code, message, data). A
    /// denied notification or response gets no answer (JSON-RPC §4.1): it
    /// is dropped.
    Refuse {
        code: i64,
        message: String,
        data: Option<Value>,
    },
}

/// The plan for a body once every member is decided.
#[derive(Debug, Clone, PartialEq)]
pub struct BodyPlan {
    /// What to send upstream: `None` when nothing is. A single allowed
    /// message is forwarded as the exact bytes received; a batch with some
    /// members denied as a new array of the allowed members, as received
    /// (one member left: that member alone).
    pub forward: Option<Forward>,
    /// The error responses agentguard answers itself, in member order.
    pub local: Vec<Value>,
    /// Whether the agent expects an array back (it sent a batch).
    pub batch: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Forward {
    /// The body as received.
    Original,
    /// A batch of the allowed members.
    Rewritten(Vec<u8>),
}

impl BodyPlan {
    /// `outcomes` has one entry per member of `body`, in order.
    pub fn new(body: &Body, outcomes: &[MemberOutcome]) -> BodyPlan {
        let messages = body.messages();
        assert_eq!(messages.len(), outcomes.len(), "one outcome per member");
        let mut local = Vec::new();
        let mut kept = Vec::new();
        for (m, outcome) in messages.iter().zip(outcomes) {
            match outcome {
                MemberOutcome::Forward => kept.push(&m.raw),
                MemberOutcome::Refuse {
                    code,
                    message,
                    data,
                } => {
                    if m.kind == MessageKind::Request {
                        local.push(error_response(m.id.as_ref(), *code, message, data.clone()));
                    }
                }
            }
        }
        let forward = if kept.is_empty() {
            None
        } else if kept.len() == messages.len() {
            Some(Forward::Original)
        } else if let [one] = kept.as_slice() {
            // A lone member goes as itself: MCP 2025-06-18 dropped batches,
            // and servers of that revision on refuse an array. Its answer
            // (one response, or 202) is merged back into the array the
            // agent expects.
            Some(Forward::Rewritten(
                serde_json::to_vec(one).expect("JSON values serialise"),
            ))
        } else {
            // Serialising parsed values is faithful: the strict parser
            // refused every form two readers could disagree on.
            Some(Forward::Rewritten(
                serde_json::to_vec(&kept).expect("JSON values serialise"),
            ))
        };
        BodyPlan {
            forward,
            local,
            batch: body.is_batch(),
        }
    }

    /// The body agentguard answers with when nothing is forwarded: the
    /// errors (an array for a batch). `None` when there is nothing to say
    /// (only notifications and responses were denied): the MCP answer to
    /// those is `202 Accepted` with no body.
    pub fn local_body(&self) -> Option<Vec<u8>> {
        match (self.batch, self.local.as_slice()) {
            (_, []) => None,
            (false, [one]) => Some(serde_json::to_vec(one).expect("JSON values serialise")),
            (_, all) => Some(serde_json::to_vec(all).expect("JSON values serialise")),
        }
    }

    /// Merges a JSON response from upstream (an array of responses, as a
    /// server answers a batch, or an empty body when it answered 202 to a
    /// batch of notifications) with the local errors.
    pub fn merge_json(&self, upstream: &[u8]) -> Result<Vec<u8>, String> {
        let mut all: Vec<Value> = if upstream.iter().all(u8::is_ascii_whitespace) {
            Vec::new()
        } else {
            match serde_json::from_slice(upstream) {
                Ok(Value::Array(items)) => items,
                Ok(one @ Value::Object(_)) => vec![one],
                Ok(_) | Err(_) => {
                    return Err("upstream answered a batch with no JSON-RPC responses".into());
                }
            }
        };
        all.extend(self.local.iter().cloned());
        Ok(serde_json::to_vec(&all).expect("JSON values serialise"))
    }

    /// The local errors as Server-Sent Events, to append to an upstream
    /// event stream (each response its own `message` event, the way
    /// Streamable HTTP servers send them).
    pub fn local_sse_events(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for e in &self.local {
            out.extend_from_slice(b"event: message\ndata: ");
            out.extend_from_slice(&serde_json::to_vec(e).expect("JSON values serialise"));
            out.extend_from_slice(b"\n\n");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refuse(code: i64) -> MemberOutcome {
        MemberOutcome::Refuse {
            code,
            message: "denied".into(),
            data: Some(json!({"rule": "mcp-tool"})),
        }
    }

    #[test]
    fn errors_carry_the_id() {
        let e = error_response(Some(&json!("abc")), POLICY_DENIED, "no", None);
        assert_eq!(
            e,
            json!({"jsonrpc":"2.0","id":"abc","error":{"code":-32003,"message":"no"}})
        );
        let e = error_response(None, PARSE_ERROR, "bad", Some(json!({"x": 1})));
        assert_eq!(e["id"], Value::Null);
        assert_eq!(e["error"]["data"]["x"], 1);
    }

    #[test]
    fn a_single_message_is_forwarded_or_answered() {
        let body =
            Body::parse(br#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"x"}}"#)
                .unwrap();
        let plan = BodyPlan::new(&body, &[MemberOutcome::Forward]);
        assert_eq!(plan.forward, Some(Forward::Original));
        assert!(plan.local.is_empty() && plan.local_body().is_none());
        let plan = BodyPlan::new(&body, &[refuse(POLICY_DENIED)]);
        assert_eq!(plan.forward, None);
        let answer: Value = serde_json::from_slice(&plan.local_body().unwrap()).unwrap();
        assert_eq!(answer["id"], 5);
        assert_eq!(answer["error"]["code"], POLICY_DENIED);
        // A denied notification is dropped without an answer.
        let note = Body::parse(br#"{"jsonrpc":"2.0","method":"notifications/x"}"#).unwrap();
        let plan = BodyPlan::new(&note, &[refuse(POLICY_DENIED)]);
        assert_eq!((plan.forward.clone(), plan.local_body()), (None, None));
    }

    #[test]
    fn a_batch_forwards_the_allowed_members_and_answers_the_rest() {
        let body = Body::parse(
            br#"[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"list_issues"}},
                {"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"delete_repo"}},
                {"jsonrpc":"2.0","method":"notifications/progress"},
                {"jsonrpc":"2.0","id":3,"method":"ping"}]"#,
        )
        .unwrap();
        let plan = BodyPlan::new(
            &body,
            &[
                MemberOutcome::Forward,
                refuse(POLICY_DENIED),
                refuse(POLICY_DENIED),
                MemberOutcome::Forward,
            ],
        );
        let Some(Forward::Rewritten(bytes)) = &plan.forward else {
            panic!("{:?}", plan.forward)
        };
        let forwarded = Body::parse(bytes).unwrap();
        let ids: Vec<_> = forwarded
            .messages()
            .iter()
            .map(|m| m.id.clone().unwrap())
            .collect();
        assert_eq!(ids, [json!(1), json!(3)]);
        assert_eq!(plan.local.len(), 1);
        assert_eq!(plan.local[0]["id"], 2);

        let merged: Value = serde_json::from_slice(
            &plan
                .merge_json(br#"[{"jsonrpc":"2.0","id":1,"result":{}},{"jsonrpc":"2.0","id":3,"result":{}}]"#)
                .unwrap(),
        )
        .unwrap();
        let ids: Vec<_> = merged
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].clone())
            .collect();
        assert_eq!(ids, [json!(1), json!(3), json!(2)]);
        assert_eq!(
            serde_json::from_slice::<Value>(&plan.merge_json(b"").unwrap()).unwrap()[0]["id"],
            2
        );
        assert!(plan.merge_json(b"<html>").is_err());

        let sse = String::from_utf8(plan.local_sse_events()).unwrap();
        assert!(
            sse.starts_with("event: message\ndata: {") && sse.ends_with("}\n\n"),
            "{sse}"
        );

        // One member left: sent as itself, its answer merged into an array.
        let plan = BodyPlan::new(
            &body,
            &[
                refuse(POLICY_DENIED),
                MemberOutcome::Forward,
                refuse(POLICY_DENIED),
                refuse(POLICY_DENIED),
            ],
        );
        let Some(Forward::Rewritten(bytes)) = &plan.forward else {
            panic!("{:?}", plan.forward)
        };
        let Body::Single(lone) = Body::parse(bytes).unwrap() else {
            panic!("a lone member is sent as itself")
        };
        assert_eq!(lone.id, Some(json!(2)));
        let merged: Value = serde_json::from_slice(
            &plan
                .merge_json(br#"{"jsonrpc":"2.0","id":2,"result":{}}"#)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(merged[0]["id"], 2);
        assert_eq!(merged[1]["id"], 1);
        assert_eq!(merged[2]["id"], 3);

        // Everything denied in a batch: an array of errors, nothing forwarded.
        let plan = BodyPlan::new(&body, &vec![refuse(RATE_LIMITED); 4]);
        assert_eq!(plan.forward, None);
        let all: Value = serde_json::from_slice(&plan.local_body().unwrap()).unwrap();
        assert_eq!(all.as_array().unwrap().len(), 3);
    }
}
