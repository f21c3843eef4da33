//! Keeping API keys out of logs, errors and results.
//!
//! A key lives only inside [`ApiKey`], whose `Debug` prints nothing of it and
//! which has no `Display`. Text that comes from a provider (error bodies, stream
//! errors) goes through [`scrub`] before it reaches a message, because some
//! endpoints echo the request's credentials back.

use std::fmt;

/// The longest piece of provider text (error body, stream error) kept in a message.
pub const MAX_DETAIL_CHARS: usize = 300;

/// An API key. `Debug` is redacted and there is no `Display`, so formatting a
/// struct that holds one cannot leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wrap a key value.
    pub fn new(value: impl Into<String>) -> ApiKey {
        ApiKey(value.into())
    }

    /// The key itself, for the one place that needs it: the request header.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

const REDACTED: &str = "[redacted]";

/// Every configured key value in `text` replaced by `[redacted]`: for what a
/// provider *answers* (a model echoing a key it saw), where the broader
/// patterns of [`scrub`] would also cut ordinary text such as a code review
/// quoting `sk-…` examples. Keys shorter than 8 characters are left alone
/// (such a value would redact ordinary words and is no real key).
pub fn scrub_keys(text: &str, keys: &[ApiKey]) -> Option<String> {
    let present: Vec<&ApiKey> = keys
        .iter()
        .filter(|k| k.0.len() >= 8 && text.contains(k.0.as_str()))
        .collect();
    if present.is_empty() {
        return None;
    }
    let mut out = text.to_string();
    for k in present {
        out = out.replace(k.0.as_str(), REDACTED);
    }
    Some(out)
}

/// Remove secrets from provider text: every occurrence of `key`, anything that
/// looks like an OpenAI/Anthropic/OpenRouter key (`sk-…`), and the token after
/// `Bearer`.
pub fn scrub(text: &str, key: Option<&ApiKey>) -> String {
    let mut out = text.to_string();
    if let Some(k) = key {
        // A very short "key" would redact ordinary words; such a key is
        // useless anyway, and the patterns below still apply.
        if k.0.len() >= 4 {
            out = out.replace(k.0.as_str(), REDACTED);
        }
    }
    let out = redact_after(&out, "sk-", 6, true);
    redact_bearer(&out)
}

/// Characters that can appear in a key or bearer token.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'+' | b'/' | b'=')
}

/// Replace `prefix` + at least `min` token characters with `prefix` + `[redacted]`,
/// when the prefix starts a word (so `task-…` is left alone).
fn redact_after(text: &str, prefix: &str, min: usize, keep_prefix: bool) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let mut copied = 0;
    while let Some(pos) = text[i..].find(prefix) {
        let start = i + pos;
        let word_start = start == 0 || !bytes[start - 1].is_ascii_alphanumeric();
        let mut end = start + prefix.len();
        while end < bytes.len() && is_token_byte(bytes[end]) {
            end += 1;
        }
        if word_start && end - (start + prefix.len()) >= min {
            out.push_str(&text[copied..start]);
            if keep_prefix {
                out.push_str(prefix);
            }
            out.push_str(REDACTED);
            copied = end;
            i = end;
        } else {
            i = start + prefix.len();
        }
    }
    out.push_str(&text[copied..]);
    out
}

/// Replace the token after `Bearer` (any case, any spacing) with `[redacted]`;
/// tokens shorter than 8 characters are words, not credentials.
fn redact_bearer(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let mut copied = 0;
    while let Some(pos) = lower[i..].find("bearer") {
        let start = i + pos;
        let mut j = start + "bearer".len();
        let mut spaces = 0;
        while j < bytes.len() && (bytes[j] == b' ' || bytes[j] == b'\t') {
            j += 1;
            spaces += 1;
        }
        let token_start = j;
        while j < bytes.len() && is_token_byte(bytes[j]) {
            j += 1;
        }
        if spaces > 0 && j - token_start >= 8 {
            out.push_str(&text[copied..token_start]);
            out.push_str(REDACTED);
            copied = j;
            i = j;
        } else {
            i = start + "bearer".len();
        }
    }
    out.push_str(&text[copied..]);
    out
}

/// Shorten `text` to at most `max` characters (ending in `…` when cut), on a
/// character boundary, with whitespace runs collapsed so a message stays on one line.
pub fn clip(text: &str, max: usize) -> String {
    let collapsed: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if collapsed.chars().count() <= max {
        return collapsed;
    }
    let mut out: String = collapsed.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let k = ApiKey::new("sk-secret-value-123");
        let s = format!("{k:?}");
        assert!(!s.contains("secret"), "{s}");
    }

    #[test]
    fn scrubs_the_key_and_key_like_tokens() {
        let k = ApiKey::new("my-custom-key-42");
        let s = scrub(
            "bad key my-custom-key-42; also sk-or-v1-abcdef123456 and Authorization: Bearer xyz.abc-123456 done",
            Some(&k),
        );
        assert!(!s.contains("my-custom-key-42"), "{s}");
        assert!(!s.contains("abcdef123456"), "{s}");
        assert!(!s.contains("xyz.abc"), "{s}");
        assert!(s.contains("sk-[redacted]"), "{s}");
        assert!(s.contains("Bearer [redacted]"), "{s}");
        assert!(s.ends_with("done"), "{s}");
    }

    #[test]
    fn leaves_ordinary_words_alone() {
        let s = scrub(
            "task-runner failed; disk-full; sk- short; bearer of bad news",
            None,
        );
        assert_eq!(
            s,
            "task-runner failed; disk-full; sk- short; bearer of bad news"
        );
        let s = scrub("ask-me-anything", None);
        assert_eq!(s, "ask-me-anything");
    }

    #[test]
    fn clip_cuts_on_char_boundaries() {
        assert_eq!(clip("short", 300), "short");
        let long = "é".repeat(400);
        let c = clip(&long, 300);
        assert_eq!(c.chars().count(), 300);
        assert!(c.ends_with('…'));
        assert_eq!(clip("a\n  b\tc", 10), "a b c");
    }
}
