//! The checks of a config file that TOML cannot express, and the line
//! each error points at. Role and permission names are checked by parsing
//! them as [`crate::rbac`] does.

use super::{AGENT_KINDS, AgentConfig, FileConfig};

/// The semantic checks TOML cannot express.
pub(super) fn check(cfg: &FileConfig) -> Result<(), Bad> {
    let mut names = std::collections::BTreeSet::new();
    for (i, a) in cfg.agents.iter().enumerate() {
        let bad = |field, message: String| Bad::new("agents", i, field, message);
        check_agent(a).map_err(|(field, m)| bad(field, m))?;
        if !names.insert(a.name.as_str()) {
            return Err(bad("name", format!("`{}` is configured twice", a.name)));
        }
    }
    let mut ids = std::collections::BTreeSet::new();
    for (i, s) in cfg.skills.iter().enumerate() {
        let bad = |field, message: String| Bad::new("skills", i, field, message);
        if s.skill_id.trim().is_empty() {
            return Err(bad("skill_id", "must not be empty".into()));
        }
        if !ids.insert(s.skill_id.as_str()) {
            return Err(bad(
                "skill_id",
                format!("`{}` is configured twice", s.skill_id),
            ));
        }
        for agent in &s.agents {
            let known = names.contains(agent.as_str())
                || agent == "echo"
                || super::DEFAULT_AGENT_NAMES.contains(&agent.as_str());
            if !known {
                return Err(bad(
                    "agents",
                    format!("names the agent `{agent}`, which is not configured"),
                ));
            }
        }
        for p in &s.required_permissions {
            if p.parse::<crate::rbac::Permission>().is_err() {
                return Err(bad(
                    "required_permissions",
                    format!("`{p}` is not a permission"),
                ));
            }
        }
    }
    Ok(())
}

/// A semantic error: where, and what.
pub(super) struct Bad {
    pub(super) table: &'static str,
    pub(super) index: usize,
    pub(super) field: &'static str,
    pub(super) message: String,
}

impl Bad {
    fn new(table: &'static str, index: usize, field: &'static str, message: String) -> Self {
        Bad {
            table,
            index,
            field,
            message,
        }
    }
}

/// One agent's checks: the field at fault and why.
fn check_agent(a: &AgentConfig) -> Result<(), (&'static str, String)> {
    if a.name.trim().is_empty() {
        return Err(("name", "must not be empty".into()));
    }
    if !AGENT_KINDS.contains(&a.kind.as_str()) {
        return Err((
            "kind",
            format!(
                "`{}` is not one of echo, command, openai, anthropic, ollama",
                a.kind
            ),
        ));
    }
    if a.timeout_ms == Some(0) {
        return Err(("timeout_ms", "must be at least 1".into()));
    }
    if a.max_concurrent == Some(0) {
        return Err(("max_concurrent", "must be at least 1".into()));
    }
    for role in a.allowed_roles.iter().flatten() {
        if role.parse::<crate::rbac::Role>().is_err() {
            return Err((
                "allowed_roles",
                format!("`{role}` is not a role (admin, developer, viewer, guest)"),
            ));
        }
    }
    match a.kind.as_str() {
        "command" => {
            if a.command.is_empty() || a.command[0].trim().is_empty() {
                return Err((
                    "command",
                    "must name a program for kind `command`, e.g. [\"claude\", \"-p\", \"{prompt}\"]"
                        .into(),
                ));
            }
            if !a.stdin && !a.command.iter().any(|arg| arg.contains("{prompt}")) {
                return Err((
                    "command",
                    "contains no \"{prompt}\" and stdin is false, so the prompt would not reach the program"
                        .into(),
                ));
            }
            for var in a.env.iter().flatten() {
                let name = var.split('=').next().unwrap_or("");
                let valid =
                    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !valid {
                    return Err(("env", format!("`{var}` is not NAME or NAME=value")));
                }
            }
        }
        "openai" | "ollama" | "anthropic" => {
            match &a.base_url {
                Some(url) if !(url.starts_with("http://") || url.starts_with("https://")) => {
                    return Err((
                        "base_url",
                        format!("`{url}` must start with http:// or https://"),
                    ));
                }
                None if a.kind != "anthropic" => {
                    return Err(("base_url", format!("is required for kind `{}`", a.kind)));
                }
                _ => {}
            }
            if a.kind != "anthropic" && a.model.as_deref().is_none_or(str::is_empty) {
                return Err(("model", format!("is required for kind `{}`", a.kind)));
            }
        }
        _ => {}
    }
    if a.kind != "command" && !a.command.is_empty() {
        return Err((
            "command",
            format!("applies to kind `command` only, not `{}`", a.kind),
        ));
    }
    Ok(())
}

/// The line of `field` in the `index`th `[[table]]` of `text` (or of the
/// table header when the field is absent). Only finds the usual
/// `[[table]]` layout; inline tables go without a line.
pub(super) fn locate(text: &str, table: &str, index: usize, field: &str) -> Option<usize> {
    let header = format!("[[{table}]]");
    let mut seen = 0usize;
    let mut in_block = false;
    let mut header_line = None;
    for (n, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.starts_with('[') {
            if in_block {
                break;
            }
            if t.starts_with(&header) {
                if seen == index {
                    in_block = true;
                    header_line = Some(n + 1);
                }
                seen += 1;
            }
            continue;
        }
        if in_block {
            let key = t.split('=').next().unwrap_or("").trim().trim_matches('"');
            if t.contains('=') && key == field {
                return Some(n + 1);
            }
        }
    }
    header_line
}
