//! `[agent] systemd_unit`: an agent that is a systemd service. Its cgroup
//! is the unit's own, which systemd creates at each start and removes at
//! each stop; agentguard guards it rather than making one of its own
//! (systemd's tree belongs to systemd: cgroup-delegation(7)).
//!
//! The cgroup is named by the unit's slice path: `system.slice/x.service`
//! unless the policy says otherwise (for a unit with `Slice=`).

use super::model::CgroupRelPath;

/// A validated service unit name, e.g. `support-bot.service`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SystemdUnit(String);

/// Where systemd puts a service with no `Slice=`.
const DEFAULT_SLICE: &str = "system.slice";

impl SystemdUnit {
    /// A service unit name: ASCII letters, digits, `-`, `_` and `.`, at
    /// most 255 characters, ending in `.service`. systemd.unit(5) allows
    /// `:`, `\` and `@` too (escapes, template instances), which agent
    /// cgroup paths do not take.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let Some(stem) = raw.strip_suffix(".service") else {
            return Err(format!(
                "{raw:?} must be a service unit name ending in \".service\""
            ));
        };
        let chars_ok = raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if stem.is_empty() || raw.len() > 255 || !chars_ok {
            return Err(format!(
                "{raw:?} is not a usable unit name (ASCII letters, digits, '-', '_' and '.', at most 255 characters; template instances are not supported)"
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The unit's cgroup when it runs in the default slice.
    pub fn default_cgroup(&self) -> CgroupRelPath {
        // A unit name is a valid path component (no '/', no "..").
        CgroupRelPath::parse(&format!("{DEFAULT_SLICE}/{}", self.0))
            .unwrap_or_else(|_| unreachable!("validated unit names are cgroup components"))
    }

    /// Checks that `cgroup` is where systemd puts this unit: the unit's
    /// own directory below a chain of slices (`a.slice/a-b.slice/x.service`).
    /// Only the service manager makes slices, so no delegated subtree (a
    /// user's manager, a container) can hold a directory that passes.
    pub fn check_cgroup(&self, cgroup: &CgroupRelPath) -> Result<(), String> {
        let parts: Vec<&str> = cgroup.as_str().split('/').collect();
        let (unit, slices) = parts
            .split_last()
            .unwrap_or_else(|| unreachable!("a cgroup path has a component"));
        if *unit != self.0 {
            return Err(format!(
                "{cgroup} is not the cgroup of {}: it must end in \"/{}\"",
                self.0, self.0
            ));
        }
        if slices.is_empty() {
            return Err(format!(
                "{cgroup}: a unit's cgroup is below its slice (\"{DEFAULT_SLICE}/{}\")",
                self.0
            ));
        }
        let mut parent = "";
        for slice in slices {
            let Some(name) = slice.strip_suffix(".slice") else {
                return Err(format!(
                    "{cgroup}: {slice:?} is not a slice; a unit's cgroup sits below slices only"
                ));
            };
            // systemd.slice(5): "a-b.slice" is the child of "a.slice".
            let nested = parent.is_empty() && !name.contains('-')
                || !parent.is_empty()
                    && name
                        .strip_prefix(parent)
                        .is_some_and(|rest| rest.starts_with('-') && !rest[1..].contains('-'));
            if !nested || name.is_empty() {
                return Err(format!(
                    "{cgroup}: {slice:?} cannot be there (systemd nests \"a-b.slice\" inside \"a.slice\")"
                ));
            }
            parent = name;
        }
        Ok(())
    }
}

impl std::fmt::Display for SystemdUnit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cg(s: &str) -> CgroupRelPath {
        CgroupRelPath::parse(s).unwrap()
    }

    #[test]
    fn unit_names_are_services() {
        assert!(SystemdUnit::parse("support-bot.service").is_ok());
        assert!(SystemdUnit::parse("bot_eu-1.v2.service").is_ok());
        for bad in [
            "support-bot",
            "support-bot.socket",
            ".service",
            "bot@.service",
            "a/b.service",
            "a b.service",
        ] {
            assert!(SystemdUnit::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn the_cgroup_is_the_unit_below_slices() {
        let unit = SystemdUnit::parse("support-bot.service").unwrap();
        assert_eq!(
            unit.default_cgroup().as_str(),
            "system.slice/support-bot.service"
        );
        for ok in [
            "system.slice/support-bot.service",
            "agents.slice/support-bot.service",
            "agents.slice/agents-eu.slice/support-bot.service",
        ] {
            assert!(unit.check_cgroup(&cg(ok)).is_ok(), "{ok}");
        }
        for bad in [
            "support-bot.service",
            "system.slice/other.service",
            // A user's manager: units there are the user's, not root's.
            "user.slice/user-1000.slice/user-manager.service/app.slice/support-bot.service",
            "system.slice/podman.service/support-bot.service",
            "agents.slice/other-eu.slice/support-bot.service",
            "agents-eu.slice/support-bot.service",
        ] {
            assert!(unit.check_cgroup(&cg(bad)).is_err(), "{bad} accepted");
        }
    }
}
