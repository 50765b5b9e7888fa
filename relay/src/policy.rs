//! Stage 4½: the tenant's request policy ([`crate::config::Policy`]), on the body as read, before the tenant's
//! limits and the vendor call. A refused request gets 400/403 naming the rule ([`PolicyError`]); an allowed one goes
//! on as the client wrote it, or rewritten where a rule says so (a model alias, a `max_tokens` cap or default,
//! forced and removed members).
//!
//! One parse of the top level keeps each member as the client wrote it ([`serde_json::value::RawValue`]); a
//! rewritten body is those members in the client's order with only the edited ones written anew. The prompt text
//! (messages, `system`, `prompt`, `input`, `instructions`, Gemini's `contents`) is read, borrowed where it needs no
//! unescaping, only when a rule looks at it (size, deny patterns). Duplicate top-level members are refused: the
//! relay and the vendor could read different ones.

#[cfg(test)]
mod tests;
mod text;

use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::Arc;

use bytes::Bytes;
use http::StatusCode;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::config::Policy;

/// Why a policy refused a request. Every variant names its rule for the client, the metric and the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("the request body must be one JSON object with each member once ({0})")]
    InvalidBody(&'static str),
    #[error("`{0}` must be a whole number of tokens")]
    BadMaxTokens(&'static str),
    #[error("the request must name a model")]
    ModelRequired,
    #[error("model `{0}` is not allowed for this caller")]
    ModelNotAllowed(String),
    #[error("{got} messages is more than the {limit} allowed")]
    TooManyMessages { got: usize, limit: usize },
    #[error("{got} bytes of prompt text is more than the {limit} allowed")]
    PromptTooLarge { got: usize, limit: usize },
    #[error("the prompt contains text this caller may not send (rule {0})")]
    Denied(Arc<str>),
}

impl PolicyError {
    /// The rule, as the error's `code` and the metric's `rule` label (fixed names, a deny rule's index included).
    pub fn rule(&self) -> &str {
        match self {
            PolicyError::InvalidBody(_) => "body",
            PolicyError::BadMaxTokens(_) => "max_tokens",
            PolicyError::ModelRequired | PolicyError::ModelNotAllowed(_) => "models",
            PolicyError::TooManyMessages { .. } => "max_messages",
            PolicyError::PromptTooLarge { .. } => "max_prompt_bytes",
            PolicyError::Denied(name) => name,
        }
    }

    /// The request member at fault (OpenAI's `param`).
    pub fn param(&self) -> Option<&'static str> {
        match self {
            PolicyError::InvalidBody(_) => None,
            PolicyError::BadMaxTokens(field) => Some(field),
            PolicyError::ModelRequired | PolicyError::ModelNotAllowed(_) => Some("model"),
            PolicyError::TooManyMessages { .. }
            | PolicyError::PromptTooLarge { .. }
            | PolicyError::Denied(_) => Some("messages"),
        }
    }

    /// 403 for what this caller may not do (a model, denied text); 400 for a request no caller may send.
    pub fn status(&self) -> StatusCode {
        match self {
            PolicyError::ModelNotAllowed(_) | PolicyError::Denied(_) => StatusCode::FORBIDDEN,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// A refusal, with whose request it was and which policy refused it (the audit line names them).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{error}")]
pub struct Refused {
    pub tenant: Arc<str>,
    pub route: Arc<str>,
    pub policy: Arc<str>,
    #[source]
    pub error: PolicyError,
}

/// The rewrites a policy made, as a set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rewrites(u8);

impl Rewrites {
    pub const ALIAS: Rewrites = Rewrites(1);
    pub const MAX_TOKENS: Rewrites = Rewrites(2);
    pub const DEFAULT_MAX_TOKENS: Rewrites = Rewrites(4);
    pub const FORCE: Rewrites = Rewrites(8);
    pub const REMOVE: Rewrites = Rewrites(16);
    const NAMES: [(Rewrites, &'static str); 5] = [
        (Rewrites::ALIAS, "aliases"),
        (Rewrites::MAX_TOKENS, "max_tokens"),
        (Rewrites::DEFAULT_MAX_TOKENS, "default_max_tokens"),
        (Rewrites::FORCE, "force"),
        (Rewrites::REMOVE, "remove"),
    ];

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn contains(self, other: Rewrites) -> bool {
        self.0 & other.0 == other.0
    }

    fn add(&mut self, other: Rewrites) {
        self.0 |= other.0;
    }

    /// The rules that rewrote, by their config names.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        Self::NAMES
            .into_iter()
            .filter(move |(r, _)| self.contains(*r))
            .map(|(_, n)| n)
    }

    /// The same, comma-separated (the audit line's `policy_rewrites`).
    pub fn joined(self) -> String {
        let mut out = String::new();
        for name in self.names() {
            if !out.is_empty() {
                out.push(',');
            }
            out.push_str(name);
        }
        out
    }
}

/// The policy that allowed a request, by name, and the rules that rewrote it (the audit line's `policy` and
/// `policy_rewrites`).
pub type Applied = (Arc<str>, Rewrites);

/// What a policy made of an allowed request: the body to send when it rewrote it, and which rules did.
#[derive(Debug, Default)]
pub struct Allowed {
    pub body: Option<Bytes>,
    pub rewrites: Rewrites,
}

/// A member name, borrowed when it has no escapes.
#[derive(Deserialize)]
struct Key<'a>(#[serde(borrow)] Cow<'a, str>);

/// The top-level members, in the client's order, each value as written.
struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut out: Vec<(Cow<'de, str>, &'de RawValue)> = Vec::with_capacity(16);
                // A few members are compared directly; a body with many (a hostile one: a megabyte of `"a":1`
                // members) gets a set, so the check stays linear.
                let mut seen: Option<std::collections::HashSet<Cow<'de, str>>> = None;
                while let Some((Key(k), v)) = map.next_entry::<Key<'de>, &'de RawValue>()? {
                    let repeated = match &mut seen {
                        Some(set) => !set.insert(k.clone()),
                        None if out.len() < 32 => out.iter().any(|(s, _)| *s == k),
                        None => {
                            let mut set: std::collections::HashSet<_> =
                                out.iter().map(|(s, _)| s.clone()).collect();
                            let repeated = !set.insert(k.clone());
                            seen = Some(set);
                            repeated
                        }
                    };
                    if repeated {
                        return Err(serde::de::Error::custom("duplicate member"));
                    }
                    out.push((k, v));
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(Visit)
    }
}

/// A member's new value: as written, or written anew.
enum Value<'a> {
    Raw(&'a RawValue),
    New(String),
}

/// The fields that cap an answer's length.
const CAPS: [&str; 3] = ["max_tokens", "max_completion_tokens", "max_output_tokens"];

/// Applies `policy` to `body`.
pub fn apply(policy: &Policy, body: &[u8]) -> Result<Allowed, PolicyError> {
    // UTF-8 checked once for the whole body (SIMD) rather than string by string by the parser.
    let body = std::str::from_utf8(body).map_err(|_| PolicyError::InvalidBody("not UTF-8"))?;
    let Members(members) = serde_json::from_str(body).map_err(|e| {
        PolicyError::InvalidBody(if e.to_string().contains("duplicate") {
            "a member is repeated"
        } else {
            "not a JSON object"
        })
    })?;
    let mut rewrites = Rewrites::default();
    let mut values: Vec<(Cow<'_, str>, Value<'_>)> = members
        .iter()
        .map(|(k, v)| (k.clone(), Value::Raw(v)))
        .collect();
    model(policy, &mut values, &mut rewrites)?;
    if policy.max_messages.is_some() || policy.reads_text() {
        text::check(policy, &members)?;
    }
    max_tokens(policy, &mut values, &mut rewrites)?;
    remove(policy, &mut values, &mut rewrites);
    force(policy, &mut values, &mut rewrites);
    if rewrites.is_empty() {
        return Ok(Allowed::default());
    }
    Ok(Allowed {
        body: Some(write(&values, body.len())),
        rewrites,
    })
}

/// `body` without its top-level member `key`, every other member as written (`None`: no such member, or not a
/// JSON object). How a Gemini route moves the model from the body, where Gemini refuses it, to the path.
pub fn without_member(body: &[u8], key: &str) -> Option<Bytes> {
    let text = std::str::from_utf8(body).ok()?;
    let Members(members) = serde_json::from_str(text).ok()?;
    let at = members.iter().position(|(k, _)| k == key)?;
    let values: Vec<(Cow<'_, str>, Value<'_>)> = members
        .into_iter()
        .enumerate()
        .filter(|(i, _)| *i != at)
        .map(|(_, (k, v))| (k, Value::Raw(v)))
        .collect();
    Some(write(&values, body.len()))
}

/// The model: an alias replaced by its model, then checked against the allowed ones.
fn model(
    policy: &Policy,
    values: &mut [(Cow<'_, str>, Value<'_>)],
    rewrites: &mut Rewrites,
) -> Result<(), PolicyError> {
    if policy.models.is_none() && policy.aliases.is_empty() {
        return Ok(());
    }
    let at = values.iter().position(|(k, _)| k == "model");
    let named = match at.map(|i| &values[i].1) {
        Some(Value::Raw(raw)) => serde_json::from_str::<Cow<'_, str>>(raw.get()).ok(),
        _ => None,
    };
    let Some(named) = named else {
        return match &policy.models {
            Some(_) => Err(PolicyError::ModelRequired),
            None => Ok(()),
        };
    };
    let model = match policy.aliases.get(named.as_ref()) {
        Some(target) => {
            if let Some(i) = at {
                values[i].1 = Value::New(json_string(target));
            }
            rewrites.add(Rewrites::ALIAS);
            target.as_str()
        }
        None => named.as_ref(),
    };
    match &policy.models {
        Some(m) if !m.allows(model) => Err(PolicyError::ModelNotAllowed(printable(model))),
        _ => Ok(()),
    }
}

/// A model name as the error message shows it: at most 128 characters, control characters replaced.
fn printable(model: &str) -> String {
    model
        .chars()
        .take(128)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// Each cap above the policy's lowered to it (Gemini's `generationConfig.maxOutputTokens` too); none at all → the
/// default written into `max_tokens_field`.
fn max_tokens(
    policy: &Policy,
    values: &mut Vec<(Cow<'_, str>, Value<'_>)>,
    rewrites: &mut Rewrites,
) -> Result<(), PolicyError> {
    if policy.max_tokens.is_none() && policy.default_max_tokens.is_none() {
        return Ok(());
    }
    let mut named = false;
    for (key, value) in values.iter_mut() {
        if key == GEMINI_CONFIG {
            named |= gemini_cap(policy, value, rewrites)?;
            continue;
        }
        let Some(field) = CAPS.iter().find(|c| **c == *key) else {
            continue;
        };
        let Value::Raw(raw) = value else { continue };
        if raw.get() == "null" {
            continue;
        }
        let n: u64 =
            serde_json::from_str(raw.get()).map_err(|_| PolicyError::BadMaxTokens(field))?;
        named = true;
        if let Some(cap) = policy.max_tokens.filter(|cap| n > *cap) {
            *value = Value::New(cap.to_string());
            rewrites.add(Rewrites::MAX_TOKENS);
        }
    }
    let Some(default) = policy.default_max_tokens.filter(|_| !named) else {
        return Ok(());
    };
    let field = policy.max_tokens_field.as_str();
    let (key, forced) = match field.split_once('.') {
        Some((outer, inner)) => (outer, serde_json::json!({ inner: default })),
        None => (field, serde_json::json!(default)),
    };
    match values.iter_mut().find(|(k, _)| k == key) {
        // A `null` cap is replaced; an object (Gemini's generationConfig) gets the member merged in.
        Some((_, v)) => {
            let mut current = parse(v);
            merge(&mut current, &forced);
            *v = Value::New(current.to_string());
        }
        None => values.push((Cow::Owned(key.to_owned()), Value::New(forced.to_string()))),
    }
    rewrites.add(Rewrites::DEFAULT_MAX_TOKENS);
    Ok(())
}

/// Gemini's request options, where its answer cap lives.
const GEMINI_CONFIG: &str = "generationConfig";

/// Gemini's `generationConfig.maxOutputTokens` lowered to the cap: whether the request named one.
fn gemini_cap(
    policy: &Policy,
    value: &mut Value<'_>,
    rewrites: &mut Rewrites,
) -> Result<bool, PolicyError> {
    let field = "generationConfig.maxOutputTokens";
    let mut config = parse(value);
    let Some(n) = config.get("maxOutputTokens").filter(|n| !n.is_null()) else {
        return Ok(false);
    };
    let n = n.as_u64().ok_or(PolicyError::BadMaxTokens(field))?;
    if let Some(cap) = policy.max_tokens.filter(|cap| n > *cap) {
        config["maxOutputTokens"] = serde_json::json!(cap);
        *value = Value::New(config.to_string());
        rewrites.add(Rewrites::MAX_TOKENS);
    }
    Ok(true)
}

/// The members (or nested members) the policy removes.
fn remove(policy: &Policy, values: &mut Vec<(Cow<'_, str>, Value<'_>)>, rewrites: &mut Rewrites) {
    for path in &policy.remove {
        let Some(i) = values.iter().position(|(k, _)| *k == path[0]) else {
            continue;
        };
        if path.len() == 1 {
            values.remove(i);
            rewrites.add(Rewrites::REMOVE);
            continue;
        }
        let mut parsed = parse(&values[i].1);
        let removed = nested_parent(&mut parsed, &path[1..path.len() - 1])
            .and_then(|o| o.remove(&path[path.len() - 1]))
            .is_some();
        if removed {
            values[i].1 = Value::New(parsed.to_string());
            rewrites.add(Rewrites::REMOVE);
        }
    }
}

/// The object at `path` under `value`, if every step is an object.
fn nested_parent<'v>(
    value: &'v mut serde_json::Value,
    path: &[String],
) -> Option<&'v mut serde_json::Map<String, serde_json::Value>> {
    let mut at = value.as_object_mut()?;
    for step in path {
        at = at.get_mut(step)?.as_object_mut()?;
    }
    Some(at)
}

/// The forced members merged in: a forced table into an object member key by key, anything else replaces.
fn force(policy: &Policy, values: &mut Vec<(Cow<'_, str>, Value<'_>)>, rewrites: &mut Rewrites) {
    for (key, forced) in &policy.force {
        match values.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => {
                let mut current = parse(v);
                merge(&mut current, forced);
                let next = current.to_string();
                let same = match v {
                    Value::Raw(raw) => raw.get() == next,
                    Value::New(s) => *s == next,
                };
                if !same {
                    *v = Value::New(next);
                    rewrites.add(Rewrites::FORCE);
                }
            }
            None => {
                values.push((Cow::Owned(key.clone()), Value::New(forced.to_string())));
                rewrites.add(Rewrites::FORCE);
            }
        }
    }
}

fn merge(into: &mut serde_json::Value, forced: &serde_json::Value) {
    match (into, forced) {
        (serde_json::Value::Object(into), serde_json::Value::Object(forced)) => {
            for (k, f) in forced {
                match into.get_mut(k) {
                    Some(v) => merge(v, f),
                    None => {
                        into.insert(k.clone(), f.clone());
                    }
                }
            }
        }
        (into, forced) => *into = forced.clone(),
    }
}

fn parse(v: &Value<'_>) -> serde_json::Value {
    let text = match v {
        Value::Raw(raw) => raw.get(),
        Value::New(s) => s.as_str(),
    };
    serde_json::from_str(text).unwrap_or(serde_json::Value::Null)
}

fn json_string(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// The members, in order, as one object.
fn write(values: &[(Cow<'_, str>, Value<'_>)], hint: usize) -> Bytes {
    let mut out = String::with_capacity(hint + 64);
    out.push('{');
    for (i, (k, v)) in values.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match k {
            // A name that needed no unescaping is written as the client wrote it.
            Cow::Borrowed(k) => {
                out.push('"');
                out.push_str(k);
                out.push_str("\":");
            }
            Cow::Owned(k) => {
                let _ = write!(out, "{}:", json_string(k));
            }
        }
        out.push_str(match v {
            Value::Raw(raw) => raw.get(),
            Value::New(s) => s,
        });
    }
    out.push('}');
    Bytes::from(out)
}
