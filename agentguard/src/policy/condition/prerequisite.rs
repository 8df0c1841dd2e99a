//! Prerequisites of a condition: top-level conjuncts of the form
//! `field == "literal"` or `field in ["a", "b"]` over a plain string field
//! (the MCP tool or method, an argument, the agent's name or program, the
//! request's method, host or path, `on_behalf_of`, `intent`). The whole
//! expression is true only if each of them is, so a request whose field
//! is not one of the literals cannot satisfy it, whatever the rest says.
//!
//! Checking them on the request and message as they are, before any value
//! is converted for the interpreter, lets a decision among many tools that
//! differ in such a literal (fifty MCP tools, one per organisation) skip
//! the conditions that cannot hold, as OPA's rule indexing does. A check
//! only ever skips: when it passes, or when an expression has no such
//! conjunct, the interpreter decides. A field that is missing or is not a
//! string fails the check, as it makes `==` with a string false or an
//! error, and `in` the same.

use cel::common::ast::{Expr, IdedExpr, LiteralValue};
use serde_json::Value as Json;

use super::{AgentIdentity, McpView, RequestView};

/// What a request and one of its messages say, as they are.
#[derive(Debug, Clone, Copy)]
pub struct Known<'a> {
    pub request: RequestView<'a>,
    pub identity: &'a AgentIdentity,
    pub on_behalf_of: Option<&'a str>,
    pub intent: Option<&'a str>,
    /// The JSON-RPC message being decided; `None` for a request decided as
    /// a whole, where `mcp` is null.
    pub mcp: Option<McpView<'a>>,
}

/// A string field of the variables.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Field {
    McpMethod,
    McpTool,
    /// `mcp.arguments.a.b`: the keys below `arguments`.
    McpArgument(Vec<String>),
    AgentName,
    AgentExe,
    AgentComm,
    AgentCgroup,
    RequestMethod,
    RequestHost,
    RequestPath,
    OnBehalfOf,
    Intent,
}

/// One conjunct: the field must be a string equal to one of `values`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prerequisite {
    field: Field,
    values: Vec<String>,
}

impl Prerequisite {
    /// Whether the request meets it (and the interpreter must decide).
    pub fn met(&self, known: &Known<'_>) -> bool {
        value(&self.field, known).is_some_and(|v| self.values.iter().any(|want| want == v))
    }
}

/// The field's value, if it is there and a string.
fn value<'a>(field: &Field, k: &Known<'a>) -> Option<&'a str> {
    match field {
        Field::McpMethod => k.mcp?.method,
        Field::McpTool => k
            .mcp?
            .target
            .filter(|t| t.kind == crate::mcp::TargetKind::Tool)
            .map(|t| t.name.as_str()),
        Field::McpArgument(path) => {
            let mut v: &Json = k.mcp?.arguments?;
            for key in path {
                v = v.as_object()?.get(key)?;
            }
            v.as_str()
        }
        Field::AgentName => Some(&k.identity.name),
        Field::AgentExe => k.identity.exe.as_deref(),
        Field::AgentComm => Some(&k.identity.comm),
        Field::AgentCgroup => Some(&k.identity.cgroup),
        Field::RequestMethod => Some(k.request.method),
        Field::RequestHost => Some(k.request.host),
        Field::RequestPath => Some(k.request.path),
        Field::OnBehalfOf => k.on_behalf_of,
        Field::Intent => k.intent,
    }
}

/// Conditions keyed by their first prerequisite: for a list of them (the
/// tools that may take one method), which ones a request and message can
/// meet, found with one lookup per field rather than one check per
/// condition. A decision among fifty MCP tools that differ in an argument
/// (one per organisation) then tries the one or two that can hold. A
/// condition is left out only if its first prerequisite fails, so only
/// if it cannot hold ([`super::Condition::cannot_hold`]).
#[derive(Debug, Clone, Default)]
pub struct KeyIndex {
    /// For each field some first prerequisite names: each of its literals,
    /// and the positions of the conditions that list it.
    keyed: Vec<(Field, std::collections::HashMap<String, Vec<u32>>)>,
    /// Positions with no condition, or one without a prerequisite.
    unkeyed: Vec<u32>,
}

impl KeyIndex {
    /// Indexes `conditions`, each with its position.
    pub fn new<'c>(
        conditions: impl IntoIterator<Item = (u32, Option<&'c super::Condition>)>,
    ) -> Self {
        let mut index = Self::default();
        for (at, condition) in conditions {
            let Some(key) = condition.and_then(|c| c.prerequisites.first()) else {
                index.unkeyed.push(at);
                continue;
            };
            let slot = match index.keyed.iter().position(|(f, _)| *f == key.field) {
                Some(slot) => slot,
                None => {
                    index.keyed.push((key.field.clone(), Default::default()));
                    index.keyed.len() - 1
                }
            };
            for value in &key.values {
                let at_value = index.keyed[slot].1.entry(value.clone()).or_default();
                if at_value.last() != Some(&at) {
                    at_value.push(at);
                }
            }
        }
        index
    }

    /// Whether some condition is keyed: else [`KeyIndex::candidates`]
    /// lists every position.
    pub fn keys_any(&self) -> bool {
        !self.keyed.is_empty()
    }

    /// The positions, ascending, of the conditions whose first
    /// prerequisite `known` meets, and of those without one.
    pub fn candidates(&self, known: &Known<'_>) -> Vec<u32> {
        let mut out = self.unkeyed.clone();
        for (field, by_value) in &self.keyed {
            if let Some(at) = value(field, known).and_then(|v| by_value.get(v)) {
                out.extend_from_slice(at);
            }
        }
        out.sort_unstable();
        out
    }
}

/// The prerequisites among the expression's top-level conjuncts.
pub fn prerequisites(ast: &IdedExpr) -> Vec<Prerequisite> {
    let mut conjuncts = Vec::new();
    flatten_and(ast, &mut conjuncts);
    conjuncts.into_iter().filter_map(prerequisite).collect()
}

fn flatten_and<'e>(e: &'e IdedExpr, out: &mut Vec<&'e IdedExpr>) {
    match &e.expr {
        Expr::Call(c) if c.func_name == "_&&_" && c.target.is_none() => {
            for a in &c.args {
                flatten_and(a, out);
            }
        }
        _ => out.push(e),
    }
}

fn prerequisite(e: &IdedExpr) -> Option<Prerequisite> {
    let Expr::Call(c) = &e.expr else { return None };
    if c.target.is_some() {
        return None;
    }
    match (c.func_name.as_str(), c.args.as_slice()) {
        ("_==_", [a, b]) => {
            let (field, literal) = match (field(a), string_literal(b)) {
                (Some(f), Some(l)) => (f, l),
                _ => (field(b)?, string_literal(a)?),
            };
            Some(Prerequisite {
                field,
                values: vec![literal.to_owned()],
            })
        }
        ("@in", [a, list]) => {
            let Expr::List(list) = &list.expr else {
                return None;
            };
            if !list.optional_indices.is_empty() {
                return None;
            }
            let values = list
                .elements
                .iter()
                .map(|el| string_literal(el).map(str::to_owned))
                .collect::<Option<Vec<_>>>()?;
            Some(Prerequisite {
                field: field(a)?,
                values,
            })
        }
        _ => None,
    }
}

fn string_literal(e: &IdedExpr) -> Option<&str> {
    match &e.expr {
        Expr::Literal(LiteralValue::String(s)) => Some(s.inner()),
        _ => None,
    }
}

/// A chain of plain field selections from a root variable, if it names a
/// string field.
fn field(e: &IdedExpr) -> Option<Field> {
    let mut names = Vec::new();
    let mut at = e;
    loop {
        match &at.expr {
            Expr::Select(sel) if !sel.test => {
                names.push(sel.field.as_str());
                at = &sel.operand;
            }
            Expr::Ident(root) => {
                names.push(root.as_str());
                break;
            }
            _ => return None,
        }
    }
    names.reverse();
    Some(match names.as_slice() {
        ["mcp", "method"] => Field::McpMethod,
        ["mcp", "tool"] => Field::McpTool,
        ["mcp", "arguments", rest @ ..] if !rest.is_empty() => {
            Field::McpArgument(rest.iter().map(|s| (*s).to_owned()).collect())
        }
        ["agent", "name"] => Field::AgentName,
        ["agent", "exe"] => Field::AgentExe,
        ["agent", "comm"] => Field::AgentComm,
        ["agent", "cgroup"] => Field::AgentCgroup,
        ["request", "method"] => Field::RequestMethod,
        ["request", "host"] => Field::RequestHost,
        ["request", "path"] => Field::RequestPath,
        ["on_behalf_of"] => Field::OnBehalfOf,
        ["intent"] => Field::Intent,
        _ => return None,
    })
}

#[cfg(test)]
mod tests;
