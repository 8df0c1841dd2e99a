//! An agent's tools in policy order, with the index a request's method
//! narrows them by. Every request is matched against the agent's tools
//! (what to read of the body, then the decision): without the index each
//! match touched every tool, a cache line or more apiece (measured in the
//! bench's 55-tool policy: ~70 L1 misses a request in `body_need` alone,
//! for GETs that none of its 50 POST-only MCP tools can take). With it a
//! request visits only the tools that take its method, in the same order,
//! so every decision is the one a full scan makes.

use std::ops::Deref;

use hyper::Method;

use super::{
    condition::{KeyIndex, Known},
    model::{MethodSet, ToolPolicy},
};

/// Positions into the list, one set per standard method and one for the
/// tools that name any other method.
const SLOTS: usize = MethodSet::STANDARD_COUNT + 1;

#[derive(Debug, Clone, Default)]
pub struct Tools {
    list: Vec<ToolPolicy>,
    /// For each of [`MethodSet`]'s standard methods, then for the others,
    /// the positions of the tools that may take it, ascending.
    by_method: [Box<[u32]>; SLOTS],
    /// The same positions keyed by the first prerequisite of the tools'
    /// call conditions ([`Tools::for_call`]).
    by_call: [KeyIndex; SLOTS],
}

impl Tools {
    pub fn new(list: Vec<ToolPolicy>) -> Self {
        let by_method: [Box<[u32]>; SLOTS] = std::array::from_fn(|slot| {
            list.iter()
                .enumerate()
                .filter(|(_, t)| match slot {
                    s if s < MethodSet::STANDARD_COUNT => t.methods.has_standard(s),
                    _ => t.methods.has_other(),
                })
                .map(|(i, _)| u32::try_from(i).expect("fewer than 2^32 tools"))
                .collect()
        });
        let by_call = std::array::from_fn(|slot| {
            KeyIndex::new(
                by_method[slot]
                    .iter()
                    .map(|&i| (i, list[i as usize].calls.when.as_ref())),
            )
        });
        Self {
            list,
            by_method,
            by_call,
        }
    }

    /// The tools that may take `method`, in policy order. A tool listed
    /// here for a non-standard method may not take this one: callers still
    /// check the method (`decide::endpoint_matches`).
    pub fn for_method<'a>(&'a self, method: &Method) -> impl Iterator<Item = &'a ToolPolicy> + 'a {
        let slot = MethodSet::standard_index(method).unwrap_or(MethodSet::STANDARD_COUNT);
        self.by_method[slot].iter().map(|&i| &self.list[i as usize])
    }

    /// Of [`Tools::for_method`], in policy order, the tools whose call
    /// condition may hold for `known` (a request and one of its JSON-RPC
    /// messages): those left out have a condition whose first
    /// prerequisite fails. Such a tool can still allow session traffic
    /// (conditions are not applied to it), and a denial names tools this
    /// leaves out: callers use it only for a message no tool takes as
    /// session traffic, and only to find the tool that allows. `None`
    /// when no tool of the method has a condition with a prerequisite:
    /// the index would leave nothing out.
    pub fn for_call<'a>(
        &'a self,
        method: &Method,
        known: &Known<'_>,
    ) -> Option<impl Iterator<Item = &'a ToolPolicy> + use<'a>> {
        let slot = MethodSet::standard_index(method).unwrap_or(MethodSet::STANDARD_COUNT);
        let index = &self.by_call[slot];
        index.keys_any().then(|| {
            index
                .candidates(known)
                .into_iter()
                .map(|i| &self.list[i as usize])
        })
    }
}

impl Deref for Tools {
    type Target = [ToolPolicy];

    fn deref(&self) -> &[ToolPolicy] {
        &self.list
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::load_path;

    fn tools(body: &str) -> Tools {
        let dir = tempfile::tempdir().unwrap();
        let head = "[agent]\nname = \"bot\"\ncgroup = \"agentguard/bot\"\n";
        std::fs::write(dir.path().join("a.toml"), format!("{head}{body}")).unwrap();
        load_path(dir.path()).unwrap().agents.remove(0).tools
    }

    fn names<'a>(it: impl Iterator<Item = &'a ToolPolicy>) -> Vec<&'a str> {
        it.map(|t| t.name.as_str()).collect()
    }

    #[test]
    fn a_method_visits_the_tools_that_take_it_in_policy_order() {
        let t = tools(
            r#"
[[tool]]
name = "read"
host = "a.example"
methods = ["GET", "HEAD"]
paths = ["/*"]
[[tool]]
name = "write"
host = "a.example"
methods = ["POST", "PUT"]
paths = ["/*"]
[[tool]]
name = "dav"
host = "a.example"
methods = ["PROPFIND", "GET"]
paths = ["/*"]
[[tool]]
name = "read.too"
host = "b.example"
methods = ["GET"]
paths = ["/*"]
"#,
        );
        assert_eq!(
            names(t.for_method(&Method::GET)),
            ["read", "dav", "read.too"]
        );
        assert_eq!(names(t.for_method(&Method::POST)), ["write"]);
        assert!(t.for_method(&Method::DELETE).next().is_none());
        // Any other method visits the tools that name another method; the
        // caller checks which.
        let propfind = Method::from_bytes(b"PROPFIND").unwrap();
        assert_eq!(names(t.for_method(&propfind)), ["dav"]);
        let report = Method::from_bytes(b"REPORT").unwrap();
        assert_eq!(names(t.for_method(&report)), ["dav"]);
        // The list itself is the policy's, whole and in order.
        assert_eq!(names(t.iter()), ["read", "write", "dav", "read.too"]);
    }
}
