//! Titles of markdown notes, shown in listings and as MCP resource names so
//! a model can pick the right note without opening each one.

use std::borrow::Cow;
use std::io::Read;

use pulldown_cmark::{Event, Options, Parser, Tag, TagEnd};

use super::TITLE_SCAN_BYTES;

/// Titles longer than this (in characters) are cut, to keep listings compact.
const MAX_TITLE_CHARS: usize = 200;

/// True for file names that get a title: `.md` and `.markdown`, any case.
pub fn is_markdown(name: &str) -> bool {
    let Some((_, ext)) = name.rsplit_once('.') else {
        return false;
    };
    ext.eq_ignore_ascii_case("md") || ext.eq_ignore_ascii_case("markdown")
}

/// Reads the start of a markdown file and returns its title. Unreadable or
/// binary files simply have none: a title is a convenience, not worth failing
/// a listing over.
pub fn title_of_reader(file: impl Read) -> Option<String> {
    let mut buf = Vec::new();
    file.take(TITLE_SCAN_BYTES).read_to_end(&mut buf).ok()?;
    if buf.contains(&0) {
        return None;
    }
    let text: Cow<'_, str> = match std::str::from_utf8(&buf) {
        Ok(s) => Cow::Borrowed(s),
        // Cut inside a character by the scan limit: drop the partial one.
        Err(e) if e.error_len().is_none() => {
            Cow::Owned(String::from_utf8_lossy(&buf[..e.valid_up_to()]).into_owned())
        }
        Err(_) => String::from_utf8_lossy(&buf),
    };
    title_of_markdown(&text)
}

/// The title of a markdown document: the `title:` of its YAML front matter if
/// present, otherwise the text of its first non-empty heading (ATX `# x` or
/// setext `x` / `===`).
pub fn title_of_markdown(text: &str) -> Option<String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let body = match split_front_matter(text) {
        Some((front, body)) => {
            if let Some(title) = front_matter_title(front) {
                return Some(title);
            }
            body
        }
        None => text,
    };
    first_heading(body)
}

/// Splits a leading `---` … `---` (or `...`) block from the body. Without a
/// closing line the `---` is just a thematic break, so there is no front
/// matter.
fn split_front_matter(text: &str) -> Option<(&str, &str)> {
    let mut lines = text.split_inclusive('\n');
    let first = lines.next()?;
    if first.trim_end() != "---" {
        return None;
    }
    let start = first.len();
    let mut pos = start;
    for line in lines {
        let trimmed = line.trim_end();
        if trimmed == "---" || trimmed == "..." {
            return Some((&text[start..pos], &text[pos + line.len()..]));
        }
        pos += line.len();
    }
    None
}

/// The top-level `title:` value of a YAML front matter block, for the plain
/// and quoted scalar forms people actually write.
fn front_matter_title(front: &str) -> Option<String> {
    for line in front.lines() {
        let Some(value) = line.strip_prefix("title:") else {
            continue;
        };
        let value = value.trim();
        let title = if let Some(inner) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
            inner.replace("\\\"", "\"").replace("\\\\", "\\")
        } else if let Some(inner) = value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
            inner.replace("''", "'")
        } else if value.starts_with(['|', '>']) {
            // Block scalars are rare in titles; fall back to the heading.
            return None;
        } else {
            // A plain scalar ends at a comment.
            value.split(" #").next().unwrap_or("").trim().to_owned()
        };
        return tidy(&title);
    }
    None
}

/// The text of the first heading with any text in it.
fn first_heading(body: &str) -> Option<String> {
    let mut current: Option<String> = None;
    for event in Parser::new_ext(body, Options::empty()) {
        match (event, current.as_mut()) {
            (Event::Start(Tag::Heading { .. }), _) => current = Some(String::new()),
            (Event::End(TagEnd::Heading(_)), Some(text)) => {
                if let Some(title) = tidy(text) {
                    return Some(title);
                }
                current = None;
            }
            (Event::Text(t) | Event::Code(t), Some(text)) => text.push_str(&t),
            (Event::SoftBreak | Event::HardBreak, Some(text)) => text.push(' '),
            _ => {}
        }
    }
    None
}

/// Collapses whitespace and caps the length; `None` if nothing is left.
fn tidy(raw: &str) -> Option<String> {
    let words: Vec<&str> = raw.split_whitespace().collect();
    if words.is_empty() {
        return None;
    }
    let joined = words.join(" ");
    if joined.chars().count() <= MAX_TITLE_CHARS {
        return Some(joined);
    }
    let mut cut: String = joined.chars().take(MAX_TITLE_CHARS).collect();
    cut.push('…');
    Some(cut)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atx_heading() {
        assert_eq!(
            title_of_markdown("intro text\n\n## The *Plan* for `v2`\n\n# Later\n").as_deref(),
            Some("The Plan for v2")
        );
    }

    #[test]
    fn setext_heading() {
        assert_eq!(
            title_of_markdown("Release notes\n=============\n\nbody\n").as_deref(),
            Some("Release notes")
        );
        assert_eq!(
            title_of_markdown("Two line\nsetext title\n---\n").as_deref(),
            Some("Two line setext title")
        );
    }

    #[test]
    fn front_matter_title_wins() {
        let doc = "---\nauthor: me\ntitle: \"Quoted: title\"\n---\n# Heading\n";
        assert_eq!(title_of_markdown(doc).as_deref(), Some("Quoted: title"));
        let doc = "---\ntitle: plain # comment\n...\n# Heading\n";
        assert_eq!(title_of_markdown(doc).as_deref(), Some("plain"));
        let doc = "---\ntitle: 'it''s'\n---\n";
        assert_eq!(title_of_markdown(doc).as_deref(), Some("it's"));
    }

    #[test]
    fn front_matter_without_title_is_skipped() {
        // Without skipping, `tags: x` + `---` would parse as a setext heading.
        let doc = "---\ntags: x\n---\n\nSome text\n\n# Real title\n";
        assert_eq!(title_of_markdown(doc).as_deref(), Some("Real title"));
        // Nested keys are not the title.
        let doc = "---\nmeta:\n  title: nested\n---\n# Top\n";
        assert_eq!(title_of_markdown(doc).as_deref(), Some("Top"));
    }

    #[test]
    fn unclosed_front_matter_is_a_rule() {
        assert_eq!(
            title_of_markdown("---\n# Title\n").as_deref(),
            Some("Title")
        );
    }

    #[test]
    fn no_heading_no_title() {
        assert_eq!(title_of_markdown("just text\n\n- a list\n"), None);
        assert_eq!(title_of_markdown(""), None);
        assert_eq!(
            title_of_markdown("#\n\n# Second\n").as_deref(),
            Some("Second")
        );
        assert_eq!(title_of_markdown("```\n# not a heading\n```\n"), None);
    }

    #[test]
    fn long_titles_are_cut() {
        let doc = format!("# {}\n", "x".repeat(500));
        let title = title_of_markdown(&doc).unwrap_or_default();
        assert_eq!(title.chars().count(), MAX_TITLE_CHARS + 1);
        assert!(title.ends_with('…'));
    }

    #[test]
    fn markdown_extensions() {
        assert!(is_markdown("a.md"));
        assert!(is_markdown("A.MD"));
        assert!(is_markdown("b.markdown"));
        assert!(!is_markdown("md"));
        assert!(!is_markdown("a.txt"));
    }
}
