//! Knowledge-base files as MCP resources: `kb://<path>` URIs, paged listing,
//! reading (text or base64 blob) and one URI template.

use base64::Engine;
use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};
use rmcp::model::{Resource, ResourceContents, ResourceTemplate};

use crate::kb::{Entry, KbError, KbView};

/// URI scheme of knowledge-base resources.
pub const SCHEME: &str = "kb://";
/// Resources per `resources/list` page.
pub const PAGE_SIZE: usize = 200;

/// Characters escaped in a path segment of a `kb://` URI.
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'\\')
    .add(b'^')
    .add(b'|');

/// The URI of a KB-relative path.
pub fn uri_for(path: &str) -> String {
    let encoded: Vec<String> = path
        .split('/')
        .map(|seg| utf8_percent_encode(seg, SEGMENT).to_string())
        .collect();
    format!("{SCHEME}{}", encoded.join("/"))
}

/// Errors turning a URI into a KB path.
#[derive(Debug, thiserror::Error)]
pub enum UriError {
    /// Not a `kb://` URI.
    #[error("`{0}` is not a knowledge-base URI: use kb://<path>, e.g. kb://outbox/report.md")]
    Scheme(String),
    /// Percent-decoding produced invalid UTF-8.
    #[error("`{0}` does not decode to UTF-8 text")]
    Encoding(String),
}

/// The KB-relative path a `kb://` URI names. The KB itself checks the path.
pub fn path_of(uri: &str) -> Result<String, UriError> {
    let rest = uri
        .strip_prefix(SCHEME)
        .ok_or_else(|| UriError::Scheme(uri.to_string()))?;
    percent_decode_str(rest)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| UriError::Encoding(uri.to_string()))
}

/// MIME type by file extension.
pub fn mime_for(path: &str) -> &'static str {
    let ext = path
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "md" | "markdown" => "text/markdown",
        "json" => "application/json",
        "yaml" | "yml" => "application/yaml",
        "toml" => "application/toml",
        "txt" | "log" => "text/plain",
        "csv" => "text/csv",
        "html" | "htm" => "text/html",
        "mmd" => "text/vnd.mermaid",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "svg" => "image/svg+xml",
        "pdf" => "application/pdf",
        _ => "application/octet-stream",
    }
}

/// One listed file as an MCP resource.
pub fn resource_for(e: &Entry) -> Resource {
    let name = e.path.rsplit('/').next().unwrap_or(&e.path).to_string();
    let mut r = Resource::new(uri_for(&e.path), name)
        .with_mime_type(mime_for(&e.path))
        .with_size(e.size);
    if let Some(t) = &e.title {
        r = r.with_title(t.clone());
    }
    r.with_description(format!("knowledge base: {}", e.path))
}

/// One page of resources and the cursor of the next. Cursors are the index of
/// the next file as a decimal string.
pub fn page(
    kb: &KbView,
    cursor: Option<&str>,
) -> Result<(Vec<Resource>, Option<String>), PageError> {
    let start = match cursor {
        None => 0,
        Some(c) => c
            .parse::<usize>()
            .map_err(|_| PageError::Cursor(c.to_string()))?,
    };
    let mut files = kb.all_files()?;
    let end = (start + PAGE_SIZE).min(files.len());
    let page = files.get_mut(start..end).unwrap_or(&mut []);
    // Only the page's titles: reading every file's would make each page
    // cost as much as the whole KB.
    kb.fill_titles(page);
    let items = page.iter().map(resource_for).collect();
    let next = (end < files.len()).then(|| end.to_string());
    Ok((items, next))
}

/// Errors listing resources.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    /// A cursor this server did not hand out.
    #[error(
        "invalid cursor `{0}`: pass the nextCursor of the previous page, or none for the first"
    )]
    Cursor(String),
    /// The KB could not be listed.
    #[error(transparent)]
    Kb(#[from] KbError),
}

/// The one template: any KB path.
pub fn template() -> ResourceTemplate {
    ResourceTemplate::new("kb://{+path}", "kb-file")
        .with_title("Knowledge-base file")
        .with_description(
            "A file in the markdown knowledge base by KB-relative path, e.g. kb://outbox/code-review-42.md",
        )
}

/// Read a resource: text when it is UTF-8 without NUL bytes, a base64 blob otherwise.
pub fn read(kb: &KbView, uri: &str, path: &str) -> Result<ResourceContents, KbError> {
    let bytes = kb.read_bytes(path)?;
    let mime = mime_for(path).to_string();
    let is_text = !bytes.contains(&0);
    match String::from_utf8(bytes) {
        Ok(text) if is_text => {
            let mime = if mime == "application/octet-stream" {
                "text/plain".to_string()
            } else {
                mime
            };
            Ok(ResourceContents::TextResourceContents {
                uri: uri.to_string(),
                mime_type: Some(mime),
                text,
                meta: None,
            })
        }
        Ok(text) => Ok(blob(uri, mime, text.into_bytes())),
        Err(e) => Ok(blob(uri, mime, e.into_bytes())),
    }
}

fn blob(uri: &str, mime: String, bytes: Vec<u8>) -> ResourceContents {
    ResourceContents::BlobResourceContents {
        uri: uri.to_string(),
        mime_type: Some(mime),
        blob: base64::engine::general_purpose::STANDARD.encode(bytes),
        meta: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_round_trip() {
        for p in ["outbox/a.md", "context/with space/é #1.md", "x%y?.md"] {
            let uri = uri_for(p);
            assert!(uri.starts_with("kb://"));
            assert_eq!(path_of(&uri).unwrap(), p, "{uri}");
        }
        assert!(path_of("file:///etc/passwd").is_err());
        // Encoded traversal decodes to `..`, which the KB then refuses.
        assert_eq!(path_of("kb://%2e%2e/x").unwrap(), "../x");
    }
}
