//! The prompt's text, for the size and deny rules: every string under a `text`, `content` or `parts` member of the
//! messages (OpenAI, Anthropic), `system`, `prompt`, `input`, `instructions` (the Responses API), Gemini's
//! `contents` and `systemInstruction`, read without copying unless the JSON escapes something.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use super::PolicyError;
use crate::config::Policy;

use crate::config::policy::PROMPT;

/// Members whose entries are counted by `max_messages`.
const COUNTED: [&str; 3] = ["messages", "input", "contents"];

/// Text pieces found under one value.
struct Texts<'a>(Vec<Cow<'a, str>>, usize);

/// Collects into `.0`; `.1` counts the entries of a top-level array.
impl<'de> serde::Deserialize<'de> for Texts<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut pieces = Vec::new();
        let entries = d.deserialize_any(Collect {
            into: &mut pieces,
            top: true,
        })?;
        Ok(Texts(pieces, entries))
    }
}

/// Visits a value: strings are text; arrays' entries and objects' `text`/`content`/`parts` members are visited
/// again; anything else is skipped. Returns the number of entries when `top` is an array.
struct Collect<'p, 'a> {
    into: &'p mut Vec<Cow<'a, str>>,
    top: bool,
}

impl<'de> serde::de::DeserializeSeed<'de> for Collect<'_, 'de> {
    type Value = usize;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Collect<'_, 'de> {
    type Value = usize;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("prompt text")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<usize, E> {
        self.into.push(Cow::Borrowed(v));
        Ok(0)
    }
    fn visit_str<E>(self, v: &str) -> Result<usize, E> {
        self.into.push(Cow::Owned(v.to_owned()));
        Ok(0)
    }
    fn visit_string<E>(self, v: String) -> Result<usize, E> {
        self.into.push(Cow::Owned(v));
        Ok(0)
    }
    fn visit_bool<E>(self, _: bool) -> Result<usize, E> {
        Ok(0)
    }
    fn visit_i64<E>(self, _: i64) -> Result<usize, E> {
        Ok(0)
    }
    fn visit_u64<E>(self, _: u64) -> Result<usize, E> {
        Ok(0)
    }
    fn visit_f64<E>(self, _: f64) -> Result<usize, E> {
        Ok(0)
    }
    fn visit_unit<E>(self) -> Result<usize, E> {
        Ok(0)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
        let mut n = 0;
        while seq
            .next_element_seed(Collect {
                into: &mut *self.into,
                top: false,
            })?
            .is_some()
        {
            n += 1;
        }
        Ok(if self.top { n } else { 0 })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<usize, A::Error> {
        while let Some(super::Key(key)) = map.next_key()? {
            if matches!(key.as_ref(), "text" | "content" | "parts") {
                map.next_value_seed(Collect {
                    into: &mut *self.into,
                    top: false,
                })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(0)
    }
}

/// The message count, the text's size and the deny rules, on the members as written.
pub(super) fn check(
    policy: &Policy,
    members: &[(Cow<'_, str>, &RawValue)],
) -> Result<(), PolicyError> {
    let mut pieces: Vec<Cow<'_, str>> = Vec::new();
    for (key, raw) in members {
        if !PROMPT.contains(&key.as_ref()) {
            continue;
        }
        let Texts(found, entries) = serde_json::from_str(raw.get())
            .map_err(|_| PolicyError::InvalidBody("prompt text that cannot be read"))?;
        if let Some(limit) = policy.max_messages
            && COUNTED.contains(&key.as_ref())
            && entries > limit
        {
            return Err(PolicyError::TooManyMessages {
                got: entries,
                limit,
            });
        }
        pieces.extend(found);
    }
    if let Some(limit) = policy.max_prompt_bytes {
        let got: usize = pieces.iter().map(|p| p.len()).sum();
        if got > limit {
            return Err(PolicyError::PromptTooLarge { got, limit });
        }
    }
    if let Some(deny) = &policy.deny {
        // One search over the whole text (pieces joined by a line break) rather than one per piece.
        let joined;
        let text = match pieces.as_slice() {
            [one] => one.as_ref(),
            _ => {
                joined = pieces.join("\n");
                joined.as_str()
            }
        };
        if let Some(rule) = deny.check(text) {
            return Err(PolicyError::Denied(rule.into()));
        }
    }
    Ok(())
}
