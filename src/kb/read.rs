//! Chunked text reads and whole-file byte reads.

use std::io::{Read, Seek, SeekFrom};

use super::{DEFAULT_READ_LIMIT, Kb, KbError, MAX_READ_LIMIT, MAX_RESOURCE_BYTES, ReadChunk};

/// How much of the start of a file is checked for NUL bytes: the same
/// heuristic git and ripgrep use to call a file binary.
const BINARY_SNIFF_BYTES: u64 = 8 * 1024;

/// Longest UTF-8 encoding of one character, i.e. how far a chunk edge may
/// have to move to reach a character boundary.
const MAX_CHAR_BYTES: usize = 4;

/// A UTF-8 continuation byte (`10xxxxxx`) never starts a character.
fn is_continuation(b: u8) -> bool {
    b & 0xC0 == 0x80
}

pub(super) fn read(
    kb: &Kb,
    rel: &str,
    offset: u64,
    limit: Option<u64>,
) -> Result<ReadChunk, KbError> {
    let parsed = super::path::RelPath::parse(rel)?;
    if parsed.is_root() {
        return Err(KbError::EmptyPath);
    }
    let (mut file, total) = kb.open_file(&parsed)?;
    let rel = parsed.display();
    let binary = || KbError::Binary { path: rel.clone() };
    let io_err = |e: std::io::Error| KbError::from_io(&e, "read", &rel);

    // Judge the file as a whole, not just the requested chunk, so that a
    // binary file is refused consistently whatever offset is asked for.
    let mut head = Vec::new();
    file.by_ref()
        .take(BINARY_SNIFF_BYTES)
        .read_to_end(&mut head)
        .map_err(io_err)?;
    if head.contains(&0) {
        return Err(binary());
    }

    let limit = match limit {
        None | Some(0) => DEFAULT_READ_LIMIT,
        Some(n) => n.min(MAX_READ_LIMIT),
    };
    if offset >= total {
        return Ok(ReadChunk {
            path: rel,
            content: String::new(),
            offset,
            bytes_read: 0,
            total_bytes: total,
            next_offset: None,
            eof: true,
        });
    }

    // Read a few bytes beyond `limit` so both edges can be moved to character
    // boundaries without a second read: up to 3 skipped at the start, and a
    // whole character at the end when the limit is smaller than one.
    let slack = 2 * MAX_CHAR_BYTES as u64;
    let want = limit.saturating_add(slack).min(total - offset);
    file.seek(SeekFrom::Start(offset)).map_err(io_err)?;
    let mut buf = Vec::with_capacity(usize::try_from(want).unwrap_or(0));
    file.by_ref()
        .take(want)
        .read_to_end(&mut buf)
        .map_err(io_err)?;
    // The file may have shrunk since it was measured.
    let at_physical_end = (buf.len() as u64) < want || offset + want >= total;

    // An offset inside a character moves forward to the next character.
    let start = buf
        .iter()
        .take(MAX_CHAR_BYTES - 1)
        .take_while(|&&b| is_continuation(b))
        .count();
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut end = start.saturating_add(limit).min(buf.len());
    if end < buf.len() {
        // Not the end of the data: back off to the start of the character
        // the limit cut into.
        let mut e = end;
        while e > start && end - e < MAX_CHAR_BYTES && is_continuation(buf[e]) {
            e -= 1;
        }
        end = if e > start {
            e
        } else {
            // A limit smaller than the character at `start`: return that
            // whole character so paging always makes progress.
            let mut e = (start + 1).min(buf.len());
            while e < buf.len() && is_continuation(buf[e]) {
                e += 1;
            }
            e
        };
    }
    let content = std::str::from_utf8(&buf[start..end])
        .map_err(|_| binary())?
        .to_owned();
    let chunk_start = offset + start as u64;
    let chunk_end = offset + end as u64;
    let eof = end == buf.len() && at_physical_end;
    Ok(ReadChunk {
        path: rel,
        content,
        offset: chunk_start,
        bytes_read: chunk_end - chunk_start,
        total_bytes: total,
        next_offset: if eof { None } else { Some(chunk_end) },
        eof,
    })
}

pub(super) fn read_bytes(kb: &Kb, rel: &str) -> Result<Vec<u8>, KbError> {
    let parsed = super::path::RelPath::parse(rel)?;
    if parsed.is_root() {
        return Err(KbError::EmptyPath);
    }
    let (file, size) = kb.open_file(&parsed)?;
    let rel = parsed.display();
    let too_large = |size| KbError::TooLarge {
        path: rel.clone(),
        size,
        limit: MAX_RESOURCE_BYTES,
    };
    if size > MAX_RESOURCE_BYTES {
        return Err(too_large(size));
    }
    // Read one byte past the cap in case the file grew after it was measured.
    let mut buf = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    file.take(MAX_RESOURCE_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| KbError::from_io(&e, "read", &rel))?;
    if buf.len() as u64 > MAX_RESOURCE_BYTES {
        return Err(too_large(buf.len() as u64));
    }
    Ok(buf)
}
