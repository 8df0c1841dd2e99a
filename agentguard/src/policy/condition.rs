//! `when = "<CEL>"` conditions on tools (the Common Expression Language,
//! <https://github.com/google/cel-spec>, through the `cel` crate).
//!
//! An expression is compiled when the policy loads and checked as far as an
//! interpreter without a type checker allows: syntax, size and nesting
//! bounds, every identifier a variable agentguard provides (or a
//! comprehension's own), every field of `request`, `mcp` and `agent` one
//! they have, every function one CEL defines, comparisons of those fields
//! with literals of the wrong type, and a result that can be a bool. At run
//! time an error (a missing key, a type mismatch) or a result that is not a
//! bool makes the condition fail: the tool does not allow the call.
//!
//! Cost is bounded: at most [`MAX_SOURCE`] bytes, [`MAX_NODES`] nodes and
//! [`MAX_PARSE_DEPTH`] levels of nesting, no comprehension inside another;
//! the data it sees is bounded too (JSON bodies to [`MAX_VALUES`] values,
//! headers to [`MAX_HEADERS`] of [`MAX_HEADER_VALUE`] bytes). CEL has no
//! loops but comprehensions over that data, so one evaluation is at most
//! about nodes × values steps.

use std::{
    collections::HashMap,
    sync::{Arc, LazyLock},
    time::SystemTime,
};

use cel::{
    Context, Env, Program, Value as Cel,
    common::{
        ast::{EntryExpr, Expr, IdedExpr, LiteralValue},
        types::{
            CelBool, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelNull, CelString,
            CelTimestamp, CelUInt,
        },
        value::Val,
    },
    objects::{Key, Map},
};
use hyper::HeaderMap;
use serde_json::Value as Json;

/// Longest expression accepted.
pub const MAX_SOURCE: usize = 4096;
/// Most AST nodes (after macros expand).
pub const MAX_NODES: usize = 1000;
/// Deepest nesting of expressions the parser accepts (parentheses, call
/// arguments, conditional branches).
pub const MAX_PARSE_DEPTH: u16 = 24;
/// Deepest AST after parsing (operator chains such as `a + b + c` nest one
/// level per operator). Evaluation recurses once per level.
pub const MAX_AST_DEPTH: usize = 64;
/// Stack for compiling: the generated parser recurses through about ten
/// rules per level of nesting, more than a worker thread's stack holds in a
/// debug build. Compiling happens at load only, on its own thread.
const COMPILE_STACK: usize = 64 << 20;
/// Most values (of any kind) of a JSON body or argument object converted
/// for a condition; a bigger one makes conditions that read it fail.
pub const MAX_VALUES: usize = 10_000;
/// Most request headers a condition sees, and the longest value: others are
/// left out.
pub const MAX_HEADERS: usize = 128;
pub const MAX_HEADER_VALUE: usize = 8192;

/// Headers that carry credentials: never shown to a condition (the agent's
/// own and, after injection, the policy's).
pub const CREDENTIAL_HEADERS: [&str; 5] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-api-key",
    "x-agentguard-intent",
];

static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| Arc::new(Env::stdlib()));

/// A compiled condition.
#[derive(Debug, Clone)]
pub struct Condition {
    source: String,
    program: Arc<Program>,
    uses: Uses,
    /// Conjuncts the expression cannot be true without: checked on the
    /// plain request and message before the interpreter runs.
    prerequisites: Vec<Prerequisite>,
}

/// Which variables an expression reads, so that only those are built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Uses {
    pub request: bool,
    pub mcp: bool,
    pub agent: bool,
    pub on_behalf_of: bool,
    pub intent: bool,
    pub now: bool,
    /// The fields that the audit record does not hold, read (or possibly
    /// read: `request` or `mcp` used as a whole sets them all): the body is
    /// read only for `request.body`, and `policy replay` says which events
    /// it cannot re-decide.
    pub request_headers: bool,
    pub request_body: bool,
    pub mcp_arguments: bool,
    pub mcp_params: bool,
}

impl Uses {
    /// Every variable (what a caller that does not know its conditions
    /// builds).
    pub const ALL: Uses = Uses {
        request: true,
        mcp: true,
        agent: true,
        on_behalf_of: true,
        intent: true,
        now: true,
        request_headers: true,
        request_body: true,
        mcp_arguments: true,
        mcp_params: true,
    };

    /// What either reads.
    pub fn union(self, other: Uses) -> Uses {
        Uses {
            request: self.request || other.request,
            mcp: self.mcp || other.mcp,
            agent: self.agent || other.agent,
            on_behalf_of: self.on_behalf_of || other.on_behalf_of,
            intent: self.intent || other.intent,
            now: self.now || other.now,
            request_headers: self.request_headers || other.request_headers,
            request_body: self.request_body || other.request_body,
            mcp_arguments: self.mcp_arguments || other.mcp_arguments,
            mcp_params: self.mcp_params || other.mcp_params,
        }
    }

    /// The fields read that the audit record does not hold (`arguments`
    /// is held where `record_arguments` is set).
    pub fn unrecorded(&self, arguments_recorded: bool) -> Vec<&'static str> {
        [
            (self.request_headers, "request.headers"),
            (self.request_body, "request.body"),
            (self.mcp_arguments && !arguments_recorded, "mcp.arguments"),
            (self.mcp_params, "mcp.params"),
        ]
        .into_iter()
        .filter_map(|(read, name)| read.then_some(name))
        .collect()
    }
}

/// A type agentguard knows a field to have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ty {
    String,
    Int,
    Map,
    Timestamp,
    Bool,
    /// Anything (JSON bodies, arguments, values that may be null).
    Dyn,
}

const ROOTS: [(&str, Ty); 6] = [
    ("request", Ty::Map),
    ("mcp", Ty::Map),
    ("agent", Ty::Map),
    ("on_behalf_of", Ty::Dyn),
    ("intent", Ty::Dyn),
    ("now", Ty::Timestamp),
];

const REQUEST_FIELDS: [(&str, Ty); 7] = [
    ("method", Ty::String),
    ("host", Ty::String),
    ("port", Ty::Int),
    ("path", Ty::String),
    ("query", Ty::Map),
    ("headers", Ty::Map),
    ("body", Ty::Dyn),
];

const MCP_FIELDS: [(&str, Ty); 7] = [
    ("method", Ty::Dyn),
    ("tool", Ty::Dyn),
    ("resource", Ty::Dyn),
    ("prompt", Ty::Dyn),
    ("arguments", Ty::Dyn),
    ("params", Ty::Dyn),
    ("id", Ty::Dyn),
];

const AGENT_FIELDS: [(&str, Ty); 7] = [
    ("name", Ty::String),
    ("uid", Ty::Int),
    ("gid", Ty::Int),
    ("pid", Ty::Int),
    ("exe", Ty::Dyn),
    ("comm", Ty::String),
    ("cgroup", Ty::String),
];

/// The functions of CEL's standard definitions that the `cel` crate
/// implements (checked by a test that calls each). Operators are spelled
/// `_op_`, `!_`, `-_` or `@name` and are always allowed.
const FUNCTIONS: [&str; 25] = [
    "size",
    "contains",
    "startsWith",
    "endsWith",
    "matches",
    "int",
    "uint",
    "double",
    "string",
    "bytes",
    "bool",
    "type",
    "dyn",
    "duration",
    "timestamp",
    "getFullYear",
    "getMonth",
    "getDayOfYear",
    "getDayOfMonth",
    "getDate",
    "getDayOfWeek",
    "getHours",
    "getMinutes",
    "getSeconds",
    "getMilliseconds",
];

impl Condition {
    /// Compiles and checks `source`. The error says what is wrong, for the
    /// loader to place at the file, line and key.
    pub fn compile(source: &str) -> Result<Condition, String> {
        std::thread::scope(|s| {
            std::thread::Builder::new()
                .name("cel-compile".into())
                .stack_size(COMPILE_STACK)
                .spawn_scoped(s, || Self::compile_here(source))
                .map_err(|e| format!("cannot start the compiler thread: {e}"))?
                .join()
                .unwrap_or_else(|_| Err("the expression crashed the compiler".into()))
        })
    }

    fn compile_here(source: &str) -> Result<Condition, String> {
        if source.trim().is_empty() {
            return Err("the expression is empty".into());
        }
        if source.len() > MAX_SOURCE {
            return Err(format!("the expression is longer than {MAX_SOURCE} bytes"));
        }
        // The bounded parse first: it refuses deep nesting before anything
        // else walks the tree.
        let ast = ENV
            .parser()
            .max_recursion_depth(MAX_PARSE_DEPTH)
            .parse(source)
            .map_err(|e| one_line(&e.to_string()))?;
        let mut check = Checker::default();
        let ty = check.walk(&ast, &mut Vec::new(), 0)?;
        if check.nodes > MAX_NODES {
            return Err(format!(
                "the expression has {} nodes (at most {MAX_NODES})",
                check.nodes
            ));
        }
        if !matches!(ty, Ty::Bool | Ty::Dyn) {
            return Err(format!(
                "the expression gives a {}, not a bool",
                ty_name(ty)
            ));
        }
        let program = ENV.compile(source).map_err(|e| one_line(&e.to_string()))?;
        Ok(Condition {
            source: source.to_owned(),
            program: Arc::new(program),
            uses: check.uses,
            prerequisites: prerequisites(&ast),
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn uses(&self) -> Uses {
        self.uses
    }

    /// Whether a prerequisite already fails on the plain values: then the
    /// expression cannot be true (it is false or an error), and a decision
    /// passes over the tool without running the interpreter, the way OPA
    /// indexes rules. `false` says nothing: evaluate.
    pub fn cannot_hold(&self, known: &Known<'_>) -> bool {
        self.prerequisites.iter().any(|p| !p.met(known))
    }

    /// Evaluates the condition. `Err` (the expression failed, or gave
    /// something other than a bool) means it does not hold.
    pub fn evaluate(&self, vars: &Vars) -> Result<bool, String> {
        self.evaluate_bound(&vars.bind())
    }

    /// Evaluates against variables bound once for many conditions (binding
    /// converts every value into the interpreter's form: done once per
    /// request or message, not once per tool).
    pub fn evaluate_bound(&self, bound: &Bound) -> Result<bool, String> {
        if !bound.built.covers(self.uses) {
            return Err(NOT_BUILT.to_owned());
        }
        for (name, why) in &bound.missing {
            if self.uses.reads(name) {
                return Err(format!("{name} is unavailable: {why}"));
            }
        }
        match self.program.execute(&bound.ctx) {
            Ok(Cel::Bool(b)) => Ok(b),
            Ok(other) => Err(format!(
                "the expression gave {:?}, not a bool",
                other.type_of().to_string()
            )),
            Err(e) => Err(one_line(&e.to_string())),
        }
    }
}

impl Uses {
    /// Whether everything `other` reads is here.
    fn covers(self, other: Uses) -> bool {
        self.union(other) == self
    }

    fn reads(&self, name: &str) -> bool {
        match name {
            "request" => self.request,
            "mcp" => self.mcp,
            "agent" => self.agent,
            "on_behalf_of" => self.on_behalf_of,
            "intent" => self.intent,
            _ => self.now,
        }
    }
}

/// [`Vars`] bound into an interpreter context.
pub struct Bound {
    ctx: Context<'static, 'static>,
    /// Variables that could not be built, and why.
    missing: Vec<(&'static str, String)>,
    built: Uses,
}

impl Vars {
    /// Binds every variable that could be built.
    pub fn bind(&self) -> Bound {
        self.bind_with_mcp_value(&self.mcp)
    }

    /// Binds the variables as [`Vars::with_mcp`] would have them, without
    /// copying the others first.
    pub fn bind_with_mcp(&self, m: McpView<'_>) -> Bound {
        if self.built.mcp {
            self.bind_with_mcp_value(&mcp_value(&m, &self.built))
        } else {
            self.bind()
        }
    }

    fn bind_with_mcp_value(&self, mcp: &Result<Cel, String>) -> Bound {
        let mut ctx = Context::with_env(ENV.clone());
        let mut missing = Vec::new();
        for (name, value) in [
            ("request", &self.request),
            ("mcp", mcp),
            ("agent", &self.agent),
            ("on_behalf_of", &self.on_behalf_of),
            ("intent", &self.intent),
            ("now", &self.now),
        ] {
            match value.as_ref().map_err(String::clone).and_then(to_val) {
                Ok(v) => ctx.add_variable_as_val(name, v),
                Err(why) => missing.push((name, why)),
            }
        }
        Bound {
            ctx,
            missing,
            built: self.built,
        }
    }
}

/// `v` as the interpreter holds it: what `Context::add_variable_from_value`
/// makes of it, converted by reference. That one takes the value and
/// clones each map whole before converting its entries, each of them
/// cloned again: binding the variables for a JSON-RPC member was a
/// quarter of an MCP call's decision among the bench's fifty tools
/// (measured in the commit that made this). The
/// kinds of value a variable is built from are converted here; any other
/// goes through cel's own conversion, and one that cannot be converted
/// leaves its variable missing (conditions that read it fail).
fn to_val(v: &Cel) -> Result<Box<dyn Val>, String> {
    Ok(match v {
        Cel::Null => Box::new(CelNull),
        Cel::Bool(b) => Box::new(CelBool::from(*b)),
        Cel::Int(i) => Box::new(CelInt::from(*i)),
        Cel::UInt(u) => Box::new(CelUInt::from(*u)),
        Cel::Float(f) => Box::new(CelDouble::from(*f)),
        Cel::String(s) => Box::new(CelString::from(String::clone(s))),
        Cel::Timestamp(t) => Box::new(CelTimestamp::from(*t)),
        Cel::List(items) => Box::new(CelList::from(
            items.iter().map(to_val).collect::<Result<Vec<_>, _>>()?,
        )),
        Cel::Map(m) => {
            // Sized at once: collecting through `Result` would grow it.
            let mut entries = HashMap::with_capacity(m.map.len());
            for (k, v) in m.map.iter() {
                entries.insert(CelMapKey::from(k.clone()), to_val(v)?);
            }
            Box::new(CelMap::from(entries))
        }
        other => other
            .clone()
            .try_into()
            .map_err(|e| format!("cannot be bound: {e}"))?,
    })
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn ty_name(ty: Ty) -> &'static str {
    match ty {
        Ty::String => "string",
        Ty::Int => "int",
        Ty::Map => "map",
        Ty::Timestamp => "timestamp",
        Ty::Bool => "bool",
        Ty::Dyn => "dyn",
    }
}

#[derive(Default)]
struct Checker {
    nodes: usize,
    depth: usize,
    uses: Uses,
}

impl Checker {
    /// Walks `e`; `scope` holds the comprehension variables in force and
    /// `loops` how many comprehensions enclose `e`. Returns the type where
    /// known.
    fn walk(&mut self, e: &IdedExpr, scope: &mut Vec<String>, loops: usize) -> Result<Ty, String> {
        self.depth += 1;
        if self.depth > MAX_AST_DEPTH {
            return Err(format!(
                "the expression nests deeper than {MAX_AST_DEPTH} levels"
            ));
        }
        let ty = self.walk_node(e, scope, loops);
        self.depth -= 1;
        ty
    }

    fn walk_node(
        &mut self,
        e: &IdedExpr,
        scope: &mut Vec<String>,
        loops: usize,
    ) -> Result<Ty, String> {
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return Err(format!("the expression has more than {MAX_NODES} nodes"));
        }
        match &e.expr {
            Expr::Unspecified => Ok(Ty::Dyn),
            Expr::Literal(l) => Ok(literal_ty(l)),
            Expr::Ident(name) => {
                // The variable as a whole: any of its fields may be read.
                if !scope.contains(name) {
                    self.field(name, "*");
                }
                self.ident(name, scope)
            }
            Expr::Select(sel) => {
                // A field of a root variable: one it has.
                if let Expr::Ident(root) = &sel.operand.expr
                    && !scope.contains(root)
                {
                    let fields: Option<&[(&str, Ty)]> = match root.as_str() {
                        "request" => Some(&REQUEST_FIELDS),
                        "mcp" => Some(&MCP_FIELDS),
                        "agent" => Some(&AGENT_FIELDS),
                        _ => None,
                    };
                    if let Some(fields) = fields {
                        self.ident(root, scope)?;
                        self.nodes += 1;
                        let Some((_, ty)) = fields.iter().find(|(f, _)| *f == sel.field) else {
                            let known: Vec<&str> = fields.iter().map(|(f, _)| *f).collect();
                            return Err(format!(
                                "{root} has no field {:?} (it has {})",
                                sel.field,
                                known.join(", ")
                            ));
                        };
                        self.field(root, &sel.field);
                        return Ok(if sel.test { Ty::Bool } else { *ty });
                    }
                }
                self.walk(&sel.operand, scope, loops)?;
                Ok(if sel.test { Ty::Bool } else { Ty::Dyn })
            }
            Expr::Call(call) => {
                let name = call.func_name.as_str();
                let operator = name.starts_with(['_', '@', '!', '-']);
                if !operator && !FUNCTIONS.contains(&name) {
                    return Err(format!("unknown function {name:?}"));
                }
                let target = match &call.target {
                    Some(t) => Some(self.walk(t, scope, loops)?),
                    None => None,
                };
                let mut args = Vec::with_capacity(call.args.len());
                for a in &call.args {
                    args.push((
                        self.walk(a, scope, loops)?,
                        matches!(a.expr, Expr::Literal(_)),
                    ));
                }
                call_ty(name, target, &args)
            }
            Expr::Comprehension(c) => {
                if loops >= 1 {
                    return Err("a comprehension (all, exists, map, filter, ...) inside another is not allowed: its cost would multiply".into());
                }
                self.walk(&c.iter_range, scope, loops)?;
                self.walk(&c.accu_init, scope, loops)?;
                let depth = scope.len();
                scope.push(c.iter_var.clone());
                if let Some(v2) = &c.iter_var2 {
                    scope.push(v2.clone());
                }
                scope.push(c.accu_var.clone());
                self.walk(&c.loop_cond, scope, loops + 1)?;
                self.walk(&c.loop_step, scope, loops + 1)?;
                // The result sees the accumulator, not the iteration variables.
                scope.truncate(depth);
                scope.push(c.accu_var.clone());
                let ty = self.walk(&c.result, scope, loops)?;
                scope.truncate(depth);
                Ok(ty)
            }
            Expr::List(list) => {
                for el in &list.elements {
                    self.walk(el, scope, loops)?;
                }
                Ok(Ty::Dyn)
            }
            Expr::Map(map) => {
                for entry in &map.entries {
                    match &entry.expr {
                        EntryExpr::MapEntry(m) => {
                            self.walk(&m.key, scope, loops)?;
                            self.walk(&m.value, scope, loops)?;
                        }
                        EntryExpr::StructField(_) => {
                            return Err("struct fields are not supported".into());
                        }
                    }
                }
                Ok(Ty::Map)
            }
            Expr::Struct(s) => Err(format!(
                "message types such as {:?} are not supported",
                s.type_name
            )),
        }
    }

    /// Marks a field of `root` as read (`*`: every field).
    fn field(&mut self, root: &str, field: &str) {
        let all = field == "*";
        let u = &mut self.uses;
        match root {
            "request" => {
                u.request_headers |= all || field == "headers";
                u.request_body |= all || field == "body";
            }
            "mcp" => {
                u.mcp_arguments |= all || field == "arguments";
                u.mcp_params |= all || field == "params";
            }
            _ => {}
        }
    }

    fn ident(&mut self, name: &str, scope: &[String]) -> Result<Ty, String> {
        if scope.iter().any(|s| s == name) {
            return Ok(Ty::Dyn);
        }
        let Some((_, ty)) = ROOTS.iter().find(|(r, _)| *r == name) else {
            let roots: Vec<&str> = ROOTS.iter().map(|(r, _)| *r).collect();
            return Err(format!(
                "unknown variable {name:?} (there are {})",
                roots.join(", ")
            ));
        };
        let flag = match name {
            "request" => &mut self.uses.request,
            "mcp" => &mut self.uses.mcp,
            "agent" => &mut self.uses.agent,
            "on_behalf_of" => &mut self.uses.on_behalf_of,
            "intent" => &mut self.uses.intent,
            _ => &mut self.uses.now,
        };
        *flag = true;
        Ok(*ty)
    }
}

fn literal_ty(l: &LiteralValue) -> Ty {
    match l {
        LiteralValue::Boolean(_) => Ty::Bool,
        LiteralValue::Int(_) => Ty::Int,
        LiteralValue::String(_) => Ty::String,
        // Bytes, doubles, uints and null: none of agentguard's fields has
        // those types, so comparing with them is caught below.
        LiteralValue::Bytes(_)
        | LiteralValue::Double(_)
        | LiteralValue::UInt(_)
        | LiteralValue::Null => Ty::Dyn,
    }
}

/// The type of a call where it matters: comparisons of a typed field with a
/// literal of another type are refused (they would be false, or an error,
/// for every request), logical operators and predicates are bool.
fn call_ty(name: &str, target: Option<Ty>, args: &[(Ty, bool)]) -> Result<Ty, String> {
    const COMPARISONS: [&str; 6] = ["_==_", "_!=_", "_<_", "_<=_", "_>_", "_>=_"];
    if COMPARISONS.contains(&name)
        && let [(a, a_lit), (b, b_lit)] = args
    {
        let typed = |t: &Ty| !matches!(t, Ty::Dyn);
        if typed(a) && typed(b) && a != b && (*a_lit || *b_lit) {
            return Err(format!(
                "{} compares a {} with a {}",
                name.trim_matches('_'),
                ty_name(*a),
                ty_name(*b)
            ));
        }
        return Ok(Ty::Bool);
    }
    Ok(match name {
        "_&&_"
        | "_||_"
        | "!_"
        | "@in"
        | "@not_strictly_false"
        | "startsWith"
        | "endsWith"
        | "matches" => Ty::Bool,
        "contains" if target == Some(Ty::String) => Ty::Bool,
        "size" | "getFullYear" | "getMonth" | "getDayOfYear" | "getDayOfMonth" | "getDate"
        | "getDayOfWeek" | "getHours" | "getMinutes" | "getSeconds" | "getMilliseconds" | "int" => {
            Ty::Int
        }
        "string" => Ty::String,
        _ => Ty::Dyn,
    })
}

/// The values a condition may read, built once per request (and `mcp` once
/// per JSON-RPC member). A value that could not be built (a body over the
/// bounds) is an `Err` with the reason: conditions that read it fail.
#[derive(Debug, Clone)]
pub struct Vars {
    pub request: Result<Cel, String>,
    pub mcp: Result<Cel, String>,
    pub agent: Result<Cel, String>,
    pub on_behalf_of: Result<Cel, String>,
    pub intent: Result<Cel, String>,
    pub now: Result<Cel, String>,
    /// What was built ([`Vars::new`]'s `needs`).
    built: Uses,
}

/// The kernel's account of who sent the request.
#[derive(
    Debug, Clone, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(deny_unknown_fields)]
pub struct AgentIdentity {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
    #[serde(default)]
    pub pid: u32,
    pub exe: Option<String>,
    #[serde(default)]
    pub comm: String,
    #[serde(default)]
    pub cgroup: String,
}

impl From<&crate::identity::Identity> for AgentIdentity {
    fn from(id: &crate::identity::Identity) -> Self {
        Self {
            name: id.agent.to_string(),
            uid: id.uid,
            gid: id.gid,
            pid: id.pid,
            exe: id.exe.as_ref().map(|p| p.to_string_lossy().into_owned()),
            comm: id.comm.clone(),
            cgroup: id.cgroup.clone(),
        }
    }
}

/// The request as conditions see it.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub method: &'a str,
    pub host: &'a str,
    pub port: u16,
    /// Normalised path, no query.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: Option<&'a HeaderMap>,
    /// The parsed body, when its content type is JSON and it was read.
    pub body: Option<&'a Json>,
}

/// One JSON-RPC member as conditions see it.
#[derive(Debug, Clone, Copy, Default)]
pub struct McpView<'a> {
    pub method: Option<&'a str>,
    pub target: Option<&'a crate::mcp::Target>,
    pub arguments: Option<&'a Json>,
    pub params: Option<&'a Json>,
    pub id: Option<&'a Json>,
}

impl Vars {
    /// `hidden_headers`: names (lower case) of headers the agent's
    /// credentials are injected into, hidden beside [`CREDENTIAL_HEADERS`].
    /// `needs`: what the conditions to be evaluated read (the union of
    /// their [`Condition::uses`]); nothing else is built, and a condition
    /// that reads more fails rather than see a value left out.
    pub fn new(
        request: RequestView<'_>,
        identity: &AgentIdentity,
        on_behalf_of: Option<&str>,
        intent: Option<&str>,
        now: SystemTime,
        hidden_headers: &[&str],
        needs: Uses,
    ) -> Vars {
        let unbuilt = || Err(NOT_BUILT.to_owned());
        Vars {
            request: if needs.request {
                request_value(&request, hidden_headers, needs.request_headers)
            } else {
                unbuilt()
            },
            mcp: Ok(Cel::Null),
            agent: if needs.agent {
                Ok(map([
                    ("name", Cel::from(identity.name.clone())),
                    ("uid", Cel::Int(identity.uid.into())),
                    ("gid", Cel::Int(identity.gid.into())),
                    ("pid", Cel::Int(identity.pid.into())),
                    ("exe", identity.exe.clone().map_or(Cel::Null, Cel::from)),
                    ("comm", Cel::from(identity.comm.clone())),
                    ("cgroup", Cel::from(identity.cgroup.clone())),
                ]))
            } else {
                unbuilt()
            },
            on_behalf_of: Ok(on_behalf_of.map_or(Cel::Null, |s| Cel::from(s.to_owned()))),
            intent: Ok(intent.map_or(Cel::Null, |s| Cel::from(s.to_owned()))),
            now: if needs.now { timestamp(now) } else { unbuilt() },
            built: needs,
        }
    }

    /// The same request, seen for one JSON-RPC member.
    pub fn with_mcp(&self, m: McpView<'_>) -> Vars {
        let mut vars = self.clone();
        if self.built.mcp {
            vars.mcp = mcp_value(&m, &self.built);
        }
        vars
    }
}

/// Why a variable no condition reads is not there.
const NOT_BUILT: &str = "not built: no condition of the agent was known to read it";

fn timestamp(now: SystemTime) -> Result<Cel, String> {
    let since = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|_| "the clock is before 1970".to_owned())?;
    let utc = chrono::DateTime::from_timestamp(since.as_secs() as i64, since.subsec_nanos())
        .ok_or_else(|| "the time is out of range".to_owned())?;
    Ok(Cel::Timestamp(utc.fixed_offset()))
}

fn map<const N: usize>(entries: [(&str, Cel); N]) -> Cel {
    let m: HashMap<Key, Cel> = entries
        .into_iter()
        .map(|(k, v)| (Key::from(k), v))
        .collect();
    Cel::Map(Map { map: Arc::new(m) })
}

fn request_value(r: &RequestView<'_>, hidden: &[&str], with_headers: bool) -> Result<Cel, String> {
    let query = r.query.map(query_map).unwrap_or_else(|| map([]));
    let headers = r
        .headers
        .filter(|_| with_headers)
        .map(|h| headers_map(h, hidden))
        .unwrap_or_else(|| map([]));
    let body = match r.body {
        None => Cel::Null,
        Some(json) => match json_to_cel(json) {
            Ok(v) => v,
            Err(why) => return Err(format!("request.body: {why}")),
        },
    };
    Ok(map([
        ("method", Cel::from(r.method.to_owned())),
        ("host", Cel::from(r.host.to_owned())),
        ("port", Cel::Int(r.port.into())),
        ("path", Cel::from(r.path.to_owned())),
        ("query", query),
        ("headers", headers),
        ("body", body),
    ]))
}

/// `mcp`, with `arguments` and `params` converted only where a condition
/// reads them (`built`); an unread one is left out, so that a read of it
/// fails rather than sees nothing. (They hold the whole call: converting
/// both was most of the cost of binding a message's variables.)
fn mcp_value(m: &McpView<'_>, built: &Uses) -> Result<Cel, String> {
    let name_of = |kind| {
        m.target
            .filter(|t| t.kind == kind)
            .map_or(Cel::Null, |t| Cel::from(t.name.clone()))
    };
    let json = |v: Option<&Json>, what: &str| match v {
        None => Ok(Cel::Null),
        Some(v) => json_to_cel(v).map_err(|why| format!("mcp.{what}: {why}")),
    };
    let mut fields: HashMap<Key, Cel> = HashMap::with_capacity(7);
    let mut put = |k: &str, v: Cel| {
        fields.insert(Key::from(k), v);
    };
    put(
        "method",
        m.method.map_or(Cel::Null, |s| Cel::from(s.to_owned())),
    );
    put("tool", name_of(crate::mcp::TargetKind::Tool));
    put("resource", name_of(crate::mcp::TargetKind::Resource));
    put("prompt", name_of(crate::mcp::TargetKind::Prompt));
    if built.mcp_arguments {
        let arguments = json(m.arguments, "arguments")?;
        put(
            "arguments",
            if arguments == Cel::Null {
                map([])
            } else {
                arguments
            },
        );
    }
    if built.mcp_params {
        put("params", json(m.params, "params")?);
    }
    put("id", json(m.id, "id")?);
    Ok(Cel::Map(Map {
        map: Arc::new(fields),
    }))
}

/// Query parameters, decoded as HTML forms do (`+` is a space). A name
/// given more than once maps to the list of its values, so a condition
/// written for one value does not hold for `?state=open&state=closed`.
fn query_map(query: &str) -> Cel {
    let mut seen: HashMap<String, Vec<String>> = HashMap::new();
    let mut order = Vec::new();
    for (k, v) in form_urlencoded::parse(query.as_bytes()).take(MAX_HEADERS) {
        let k = k.into_owned();
        if !seen.contains_key(&k) {
            order.push(k.clone());
        }
        seen.entry(k).or_default().push(v.into_owned());
    }
    let m: HashMap<Key, Cel> = order
        .into_iter()
        .map(|k| {
            let mut values = seen.remove(&k).unwrap_or_default();
            let v = if values.len() == 1 {
                Cel::from(values.remove(0))
            } else {
                Cel::List(Arc::new(values.into_iter().map(Cel::from).collect()))
            };
            (Key::from(k), v)
        })
        .collect();
    Cel::Map(Map { map: Arc::new(m) })
}

/// Header names in lower case; repeated headers joined with ", " (RFC 9110
/// §5.3). Credential headers are never shown.
fn headers_map(headers: &HeaderMap, hidden: &[&str]) -> Cel {
    let mut m: HashMap<Key, Cel> = HashMap::new();
    for name in headers.keys().take(MAX_HEADERS) {
        let n = name.as_str();
        if CREDENTIAL_HEADERS.contains(&n) || hidden.iter().any(|h| h.eq_ignore_ascii_case(n)) {
            continue;
        }
        let joined = headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect::<Vec<_>>()
            .join(", ");
        if joined.len() <= MAX_HEADER_VALUE {
            m.insert(Key::from(n), Cel::from(joined));
        }
    }
    Cel::Map(Map { map: Arc::new(m) })
}

/// A JSON value as CEL values, at most [`MAX_VALUES`] of them.
pub fn json_to_cel(json: &Json) -> Result<Cel, String> {
    let mut budget = MAX_VALUES;
    convert(json, &mut budget)
}

fn convert(json: &Json, budget: &mut usize) -> Result<Cel, String> {
    if *budget == 0 {
        return Err(format!("more than {MAX_VALUES} values"));
    }
    *budget -= 1;
    Ok(match json {
        Json::Null => Cel::Null,
        Json::Bool(b) => Cel::Bool(*b),
        Json::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => Cel::Int(i),
            (None, Some(u), _) => Cel::UInt(u),
            (_, _, Some(f)) => Cel::Float(f),
            _ => Cel::Null,
        },
        Json::String(s) => Cel::from(s.clone()),
        Json::Array(items) => Cel::List(Arc::new(
            items
                .iter()
                .map(|v| convert(v, budget))
                .collect::<Result<_, _>>()?,
        )),
        Json::Object(obj) => {
            let mut m = HashMap::with_capacity(obj.len());
            for (k, v) in obj {
                m.insert(Key::from(k.clone()), convert(v, budget)?);
            }
            Cel::Map(Map { map: Arc::new(m) })
        }
    })
}

mod prerequisite;

pub use prerequisite::KeyIndex;
pub use prerequisite::Known;
use prerequisite::{Prerequisite, prerequisites};

#[cfg(test)]
mod tests;
