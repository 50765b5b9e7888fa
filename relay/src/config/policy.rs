//! Request policies (`[policies.<name>]`): the business rules a request must pass, or is rewritten by, before the
//! vendor is called. A tenant names one (`[[tenants]] policy`), a route names its default (`[[routes]] policy`);
//! the tenant's wins. Plain data: checked and compiled here (deny patterns into one set), applied by
//! [`crate::policy`].

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use regex::{Regex, RegexBuilder};
use serde::Deserialize;

use super::{ConfigError, field};

/// The largest compiled size of a policy's deny patterns together (bytes): a pattern set that would take more is
/// refused at startup instead of slowing every request.
const MAX_PATTERN_SIZE: usize = 1 << 20;

/// The request members that are prompt text (strings, arrays, message objects): read by the size and deny rules,
/// never edited by `force` or `remove`.
pub const PROMPT: [&str; 7] = [
    "messages",
    "system",
    "prompt",
    "input",
    "instructions",
    "contents",
    "systemInstruction",
];

/// `[policies.<name>]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    /// Models a request may name: exact names, or prefixes ending in `*`. Absent: any model.
    pub models: Option<Vec<String>>,
    /// A name the front end uses → the vendor's model it stands for (`fast = "gpt-4o-mini"`).
    #[serde(default)]
    pub aliases: HashMap<String, String>,
    /// Cap on `max_tokens` / `max_completion_tokens` / `max_output_tokens`: larger values are lowered to it.
    pub max_tokens: Option<u64>,
    /// Written into a request that names no cap (into `max_tokens_field`); absent: `max_tokens`, when set.
    pub default_max_tokens: Option<u64>,
    /// The member a default cap is written to: `max_tokens` (chat completions, Anthropic), `max_completion_tokens`
    /// (OpenAI's reasoning models), `max_output_tokens` (OpenAI's Responses API), `generationConfig.maxOutputTokens`
    /// (Gemini).
    #[serde(default = "default_tokens_field")]
    pub max_tokens_field: String,
    /// Members set whatever the request says (tables merge: `stream_options.include_usage = true`).
    #[serde(default)]
    pub force: toml::Table,
    /// Members taken out of every request: `logit_bias`, or a dotted path into an object (`stream_options.x`).
    #[serde(default)]
    pub remove: Vec<String>,
    /// Most entries in `messages` (or `input`).
    pub max_messages: Option<usize>,
    /// Most bytes of prompt text: every message's text, `system`, `prompt`, `input`.
    pub max_prompt_bytes: Option<usize>,
    /// Refused when the prompt text contains one of these, exactly.
    #[serde(default)]
    pub deny_substrings: Vec<String>,
    /// Refused when the prompt text matches one of these regular expressions (Rust `regex` syntax, `(?i)` for
    /// case-insensitive).
    #[serde(default)]
    pub deny_patterns: Vec<String>,
}

fn default_tokens_field() -> String {
    "max_tokens".into()
}

/// The allowed models: exact names and prefixes.
#[derive(Clone, Debug, Default)]
pub struct Models {
    pub exact: HashSet<String>,
    pub prefixes: Vec<String>,
}

impl Models {
    pub fn allows(&self, model: &str) -> bool {
        self.exact.contains(model) || self.prefixes.iter().any(|p| model.starts_with(p.as_str()))
    }
}

/// The deny rules: the substrings as one alternation (one search finds any of them; which one is looked up only
/// after a match), each pattern as its own regex (so that each keeps its literal prefilter, which a combined set
/// loses: a set of the example's patterns took 5 µs per request where the regexes take well under one). Rules
/// are named for the client, the metric and the log by their place (`deny_substrings[0]`, `deny_patterns[2]`),
/// never by the text they look for.
#[derive(Clone, Debug)]
pub struct Deny {
    pub substrings: Option<Regex>,
    pub substring_list: Vec<String>,
    pub patterns: Vec<Regex>,
}

impl Deny {
    /// The first rule `text` breaks, by name.
    pub fn check(&self, text: &str) -> Option<String> {
        if let Some(any) = &self.substrings
            && any.is_match(text)
        {
            let i = self
                .substring_list
                .iter()
                .position(|s| text.contains(s.as_str()));
            return Some(format!("deny_substrings[{}]", i.unwrap_or(0)));
        }
        let i = self.patterns.iter().position(|p| p.is_match(text))?;
        Some(format!("deny_patterns[{i}]"))
    }
}

/// A checked policy.
#[derive(Clone, Debug)]
pub struct Policy {
    pub name: Arc<str>,
    pub models: Option<Models>,
    pub aliases: HashMap<String, String>,
    pub max_tokens: Option<u64>,
    pub default_max_tokens: Option<u64>,
    pub max_tokens_field: String,
    /// A JSON object merged into the request.
    pub force: serde_json::Map<String, serde_json::Value>,
    /// Dotted paths, split.
    pub remove: Vec<Vec<String>>,
    pub max_messages: Option<usize>,
    pub max_prompt_bytes: Option<usize>,
    pub deny: Option<Deny>,
}

impl Policy {
    /// `raw` checked and compiled as the policy `name` (what loading `[policies.<name>]` does).
    pub fn compile(name: &str, raw: &RawPolicy) -> Result<Policy, ConfigError> {
        validate(name, raw)
    }

    /// Whether the request's text must be read (for its size or the deny rules).
    pub fn reads_text(&self) -> bool {
        self.max_prompt_bytes.is_some() || self.deny.is_some()
    }
}

/// Every `[policies.<name>]`, checked.
pub(super) fn validate_policies(
    raw: &HashMap<String, RawPolicy>,
) -> Result<HashMap<String, Arc<Policy>>, ConfigError> {
    raw.iter()
        .map(|(name, p)| Ok((name.clone(), Arc::new(validate(name, p)?))))
        .collect()
}

/// The policy `name` refers to, from `at` (`tenants[1].policy`, `routes[0].policy`).
pub(super) fn named(
    at: &str,
    name: Option<&str>,
    policies: &HashMap<String, Arc<Policy>>,
) -> Result<Option<Arc<Policy>>, ConfigError> {
    name.map(|n| {
        policies.get(n).cloned().ok_or_else(|| {
            field(
                at,
                format!("no [policies.{n}] is configured (a policy is declared once, by name)"),
            )
        })
    })
    .transpose()
}

fn validate(name: &str, p: &RawPolicy) -> Result<Policy, ConfigError> {
    let at = |f: &str| format!("policies.{name}.{f}");
    let valid_name = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !valid_name {
        return Err(field(
            format!("policies.{name}"),
            "a policy's name is 1 to 64 letters, digits, `-`, `_` or `.`",
        ));
    }
    let models = p
        .models
        .as_ref()
        .map(|list| models(&at("models"), list))
        .transpose()?;
    for (alias, target) in &p.aliases {
        if alias.is_empty() || target.is_empty() {
            return Err(field(at("aliases"), "an alias and its model are not empty"));
        }
        if models.as_ref().is_some_and(|m| !m.allows(target)) {
            return Err(field(
                at(&format!("aliases.{alias}")),
                format!("maps to `{target}`, which `models` does not allow"),
            ));
        }
    }
    for (key, value) in [
        ("max_tokens", p.max_tokens),
        ("default_max_tokens", p.default_max_tokens),
    ] {
        if value == Some(0) {
            return Err(field(at(key), "must be at least 1"));
        }
    }
    if let (Some(cap), Some(default)) = (p.max_tokens, p.default_max_tokens)
        && default > cap
    {
        return Err(field(
            at("default_max_tokens"),
            format!("is above max_tokens ({cap})"),
        ));
    }
    const FIELDS: [&str; 4] = [
        "max_tokens",
        "max_completion_tokens",
        "max_output_tokens",
        "generationConfig.maxOutputTokens",
    ];
    if !FIELDS.contains(&p.max_tokens_field.as_str()) {
        return Err(field(
            at("max_tokens_field"),
            format!("must be one of {}", FIELDS.join(", ")),
        ));
    }
    let force = match serde_json::to_value(&p.force) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => {
            return Err(field(
                at("force"),
                "must be a table of JSON-representable values",
            ));
        }
    };
    if force.contains_key("model") {
        return Err(field(
            at("force.model"),
            "use `models` and `aliases` to choose models",
        ));
    }
    if let Some(key) = force.keys().find(|k| PROMPT.contains(&k.as_str())) {
        return Err(field(
            at(&format!("force.{key}")),
            "a policy never edits the prompt text",
        ));
    }
    let remove = p
        .remove
        .iter()
        .enumerate()
        .map(|(i, path)| {
            let parts: Vec<String> = path.split('.').map(str::to_owned).collect();
            let fixed = parts[0] == "model" || PROMPT.contains(&parts[0].as_str());
            if parts.iter().any(String::is_empty) || fixed {
                return Err(field(
                    at(&format!("remove[{i}]")),
                    "a member name or dotted path, not `model` or the prompt text",
                ));
            }
            Ok(parts)
        })
        .collect::<Result<_, _>>()?;
    for (key, value) in [
        ("max_messages", p.max_messages),
        ("max_prompt_bytes", p.max_prompt_bytes),
    ] {
        if value == Some(0) {
            return Err(field(at(key), "must be at least 1"));
        }
    }
    Ok(Policy {
        name: Arc::from(name),
        models,
        aliases: p.aliases.clone(),
        max_tokens: p.max_tokens,
        default_max_tokens: p.default_max_tokens.or(p.max_tokens),
        max_tokens_field: p.max_tokens_field.clone(),
        force,
        remove,
        max_messages: p.max_messages,
        max_prompt_bytes: p.max_prompt_bytes,
        deny: deny(&at, p)?,
    })
}

fn models(at: &str, list: &[String]) -> Result<Models, ConfigError> {
    let mut m = Models::default();
    for name in list {
        match name.strip_suffix('*') {
            Some(prefix) if !prefix.contains('*') => m.prefixes.push(prefix.to_owned()),
            None if !name.is_empty() && !name.contains('*') => {
                m.exact.insert(name.clone());
            }
            _ => {
                return Err(field(
                    at,
                    format!("`{name}`: a model name, or a prefix ending in one `*`"),
                ));
            }
        }
    }
    Ok(m)
}

/// The substrings (escaped, as one alternation) and the patterns, each checked and named by its key on error.
fn deny(at: &dyn Fn(&str) -> String, p: &RawPolicy) -> Result<Option<Deny>, ConfigError> {
    if p.deny_substrings.is_empty() && p.deny_patterns.is_empty() {
        return Ok(None);
    }
    let build = |name: &str, source: &str| {
        RegexBuilder::new(source)
            .size_limit(MAX_PATTERN_SIZE)
            .build()
            .map_err(|e| field(at(name), format!("not a valid pattern: {e}")))
    };
    for (i, s) in p.deny_substrings.iter().enumerate() {
        if s.is_empty() {
            return Err(field(
                at(&format!("deny_substrings[{i}]")),
                "must not be empty",
            ));
        }
    }
    let substrings = match p.deny_substrings.as_slice() {
        [] => None,
        list => {
            let escaped: Vec<String> = list.iter().map(|s| regex::escape(s)).collect();
            Some(build("deny_substrings", &escaped.join("|"))?)
        }
    };
    let mut patterns = Vec::with_capacity(p.deny_patterns.len());
    for (i, s) in p.deny_patterns.iter().enumerate() {
        let name = format!("deny_patterns[{i}]");
        let one = build(&name, s)?;
        if one.is_match("") {
            return Err(field(
                at(&name),
                "matches empty text (it would refuse everything)",
            ));
        }
        patterns.push(one);
    }
    Ok(Some(Deny {
        substrings,
        substring_list: p.deny_substrings.clone(),
        patterns,
    }))
}
