//! The knowledge-base tools and resources through a real MCP client.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod common;

use common::*;
use rmcp::model::{PaginatedRequestParams, ReadResourceRequestParams, ResourceContents};
use serde_json::json;

#[tokio::test]
async fn standard_folders_exist_on_start() {
    let p = Project::new();
    let c = connect(&p).await;
    let out = c.ok("kb_list", json!({})).await;
    let paths: Vec<&str> = out["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["context", "inbox", "outbox", "sessions"]);
    for e in out["entries"].as_array().unwrap() {
        assert_eq!(e["kind"], "dir");
    }
    c.close().await;
}

#[tokio::test]
async fn write_read_append_create_new() {
    let p = Project::new();
    let c = connect(&p).await;
    let w = c
        .ok(
            "kb_write",
            json!({"path": "context/team.md", "content": "# Team\n\nAlice\n"}),
        )
        .await;
    assert_eq!(w["created"], true);
    assert_eq!(w["mode"], "overwrite");
    assert_eq!(
        std::fs::read_to_string(p.kb().join("context/team.md")).unwrap(),
        "# Team\n\nAlice\n"
    );

    c.ok(
        "kb_write",
        json!({"path": "context/team.md", "content": "Bob\n", "mode": "append"}),
    )
    .await;
    let r = c.ok("kb_read", json!({"path": "context/team.md"})).await;
    assert_eq!(r["content"], "# Team\n\nAlice\nBob\n");
    assert_eq!(r["eof"], true);

    let msg = c
        .err(
            "kb_write",
            json!({"path": "context/team.md", "content": "x", "mode": "create_new"}),
        )
        .await;
    assert!(msg.contains("exists"), "{msg}");
    assert_eq!(
        std::fs::read_to_string(p.kb().join("context/team.md")).unwrap(),
        "# Team\n\nAlice\nBob\n"
    );

    c.ok(
        "kb_write",
        json!({"path": "deep/new/folder/n.md", "content": "n"}),
    )
    .await;
    assert!(p.kb().join("deep/new/folder/n.md").is_file());

    c.ok(
        "kb_write",
        json!({"path": "context/team.md", "content": "replaced"}),
    )
    .await;
    assert_eq!(
        std::fs::read_to_string(p.kb().join("context/team.md")).unwrap(),
        "replaced"
    );
    // Atomic writes leave no temp files behind.
    let leftovers: Vec<_> = std::fs::read_dir(p.kb().join("context"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(leftovers, ["team.md"]);
    c.close().await;
}

#[tokio::test]
async fn reads_page_through_big_files_without_splitting_characters() {
    let p = Project::new();
    // 3-byte characters so that chunk edges fall inside characters.
    let text: String = (0..40_000)
        .map(|i| if i % 100 == 99 { '\n' } else { '€' })
        .collect();
    p.write("_kb/context/big.md", &text);
    let c = connect(&p).await;
    let mut offset = 0u64;
    let mut rebuilt = String::new();
    let mut calls = 0;
    loop {
        let r = c
            .ok(
                "kb_read",
                json!({"path": "context/big.md", "offset": offset, "limit": 10_000}),
            )
            .await;
        assert_eq!(r["total_bytes"], text.len() as u64);
        rebuilt.push_str(r["content"].as_str().unwrap());
        calls += 1;
        if r["eof"] == true {
            break;
        }
        offset = r["next_offset"].as_u64().unwrap();
    }
    assert_eq!(rebuilt, text);
    assert!(calls > 10);
    // A huge limit is clamped, not refused.
    let r = c
        .ok(
            "kb_read",
            json!({"path": "context/big.md", "limit": 1u64 << 40}),
        )
        .await;
    assert!(r["bytes_read"].as_u64().unwrap() <= 1024 * 1024);
    c.close().await;
}

#[tokio::test]
async fn every_traversal_form_is_refused() {
    let p = Project::new();
    p.write("secret.txt", "TOP SECRET");
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("passwd"), "root:x:0:0").unwrap();
    std::fs::create_dir_all(p.kb().join("context")).unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("passwd"),
        p.kb().join("context/link-out.md"),
    )
    .unwrap();
    std::os::unix::fs::symlink(outside.path(), p.kb().join("dir-out")).unwrap();
    std::fs::write(p.kb().join("context/real.md"), "inside").unwrap();
    std::os::unix::fs::symlink("real.md", p.kb().join("context/link-in.md")).unwrap();
    // An absolute link is refused even when it points inside: the KB is
    // opened beneath its root's handle, which knows no absolute paths.
    std::os::unix::fs::symlink(
        p.kb().join("context/real.md"),
        p.kb().join("context/link-abs.md"),
    )
    .unwrap();
    let c = connect(&p).await;

    let attempts = [
        "../secret.txt",
        "context/../../secret.txt",
        "..\\secret.txt",
        "context\\..\\..\\secret.txt",
        "/etc/passwd",
        "\\etc\\passwd",
        "C:\\Windows\\win.ini",
        "C:/Windows/win.ini",
        "context/\u{0}x.md",
        "context/link-out.md",
        "dir-out/passwd",
        "context/link-abs.md",
    ];
    for path in attempts {
        let msg = c.err("kb_read", json!({"path": path})).await;
        assert!(
            !msg.contains("root:x") && !msg.contains("TOP SECRET"),
            "{path}: {msg}"
        );
        assert!(
            !msg.contains(p.root().to_str().unwrap()),
            "error leaks the machine path: {msg}"
        );
        c.err("kb_write", json!({"path": path, "content": "pwned"}))
            .await;
        c.err("kb_list", json!({"path": path})).await;
        c.err("kb_search", json!({"query": "root", "path": path}))
            .await;
    }
    // Nothing was written outside.
    assert_eq!(
        std::fs::read_to_string(outside.path().join("passwd")).unwrap(),
        "root:x:0:0"
    );
    assert!(!outside.path().join("pwned").exists());
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 1);
    assert_eq!(
        std::fs::read_to_string(p.root().join("secret.txt")).unwrap(),
        "TOP SECRET"
    );
    // A symlink that stays inside is fine.
    let r = c.ok("kb_read", json!({"path": "context/link-in.md"})).await;
    assert_eq!(r["content"], "inside");
    // The search never reports text from outside.
    let s = c.ok("kb_search", json!({"query": "root:x"})).await;
    assert_eq!(s["matches"], json!([]));
    // Messages say what to do.
    let msg = c.err("kb_read", json!({"path": "../x"})).await;
    assert!(
        msg.contains("..") && msg.contains("inside the knowledge base"),
        "{msg}"
    );
    c.close().await;
}

#[tokio::test]
async fn list_reports_types_sizes_times_and_titles() {
    let p = Project::new();
    p.write(
        "_kb/outbox/review.md",
        "---\nagent: code-review\n---\n\n# Review of PR 7\n\nBody\n",
    );
    p.write("_kb/outbox/plain.txt", "just text");
    p.write(
        "_kb/outbox/setext.md",
        "Setext Title\n============\n\ntext\n",
    );
    p.write("_kb/outbox/.hidden.md", "# hidden");
    let c = connect(&p).await;
    let out = c.ok("kb_list", json!({"path": "outbox"})).await;
    let entries = out["entries"].as_array().unwrap();
    let paths: Vec<&str> = entries
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        ["outbox/plain.txt", "outbox/review.md", "outbox/setext.md"]
    );
    assert_eq!(entries[0]["kind"], "file");
    assert_eq!(entries[0]["size"], 9);
    assert!(entries[0]["modified"].as_str().unwrap().ends_with('Z'));
    assert!(entries[0].get("title").is_none());
    assert_eq!(entries[1]["title"], "Review of PR 7");
    assert_eq!(entries[2]["title"], "Setext Title");

    let all = c.ok("kb_list", json!({"recursive": true})).await;
    let paths: Vec<&str> = all["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert!(paths.contains(&"outbox/review.md") && paths.contains(&"inbox"));
    let limited = c
        .ok("kb_list", json!({"recursive": true, "limit": 2}))
        .await;
    assert_eq!(limited["entries"].as_array().unwrap().len(), 2);
    assert_eq!(limited["truncated"], true);
    c.close().await;
}

#[tokio::test]
async fn search_literal_regex_case_glob_binary_and_cap() {
    let p = Project::new();
    p.write("_kb/outbox/a.md", "alpha\nThe Bug is here\nomega\n");
    p.write("_kb/context/b.md", "no match\nbug (lower) a.b\n");
    p.write("_kb/context/c.txt", "bug in text file\n");
    let mut bin = b"bug\0\x01\x02 binary".to_vec();
    bin.extend(std::iter::repeat_n(0u8, 100));
    p.write("_kb/context/blob.bin", &bin);
    let c = connect(&p).await;

    let s = c.ok("kb_search", json!({"query": "bug"})).await;
    let hits: Vec<String> = s["matches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            format!(
                "{}:{}: {}",
                m["path"].as_str().unwrap(),
                m["line"],
                m["snippet"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        hits,
        [
            "context/b.md:2: bug (lower) a.b",
            "context/c.txt:1: bug in text file"
        ]
    );

    let s = c
        .ok(
            "kb_search",
            json!({"query": "bug", "case_insensitive": true}),
        )
        .await;
    assert_eq!(s["matches"].as_array().unwrap().len(), 3);

    // Literal by default: the dot is a dot.
    let s = c.ok("kb_search", json!({"query": "a.b"})).await;
    assert_eq!(s["matches"].as_array().unwrap().len(), 1);
    let s = c
        .ok(
            "kb_search",
            json!({"query": "^(alpha|omega)$", "regex": true}),
        )
        .await;
    assert_eq!(s["matches"].as_array().unwrap().len(), 2);

    let s = c
        .ok(
            "kb_search",
            json!({"query": "bug", "case_insensitive": true, "glob": "*.md"}),
        )
        .await;
    assert_eq!(s["matches"].as_array().unwrap().len(), 2);
    let s = c
        .ok(
            "kb_search",
            json!({"query": "bug", "case_insensitive": true, "path": "outbox"}),
        )
        .await;
    assert_eq!(s["matches"][0]["path"], "outbox/a.md");

    let s = c
        .ok("kb_search", json!({"query": "a", "max_results": 1}))
        .await;
    assert_eq!(s["matches"].as_array().unwrap().len(), 1);
    assert_eq!(s["truncated"], true);

    let msg = c
        .err("kb_search", json!({"query": "(unclosed", "regex": true}))
        .await;
    assert!(
        msg.contains("regex") || msg.contains("regular expression"),
        "{msg}"
    );
    let msg = c.err("kb_search", json!({"query": ""})).await;
    assert!(msg.contains("empty"), "{msg}");
    c.close().await;
}

#[tokio::test]
async fn kb_files_are_resources() {
    let p = Project::new();
    for i in 0..450 {
        p.write(&format!("_kb/outbox/r{i:03}.md"), format!("# Result {i}\n"));
    }
    p.write("_kb/context/space name.md", "# Spaced\n");
    p.write("_kb/context/img.bin", [0u8, 159, 146, 150]);
    let c = connect(&p).await;

    // Paging: every file exactly once.
    let mut uris = Vec::new();
    let mut cursor = None;
    let mut pages = 0;
    loop {
        let page = c
            .service
            .list_resources(Some(
                PaginatedRequestParams::default().with_cursor(cursor.clone()),
            ))
            .await
            .expect("resources/list");
        pages += 1;
        uris.extend(page.resources.iter().map(|r| r.uri.clone()));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert!(
        pages >= 3,
        "450 files should take several pages, took {pages}"
    );
    assert_eq!(uris.len(), 452);
    let unique: std::collections::BTreeSet<_> = uris.iter().collect();
    assert_eq!(unique.len(), 452);
    assert!(uris.contains(&"kb://outbox/r000.md".to_string()));
    assert!(uris.contains(&"kb://context/space%20name.md".to_string()));

    let all = c.service.list_all_resources().await.unwrap();
    let r = all.iter().find(|r| r.uri == "kb://outbox/r007.md").unwrap();
    assert_eq!(r.mime_type.as_deref(), Some("text/markdown"));
    assert_eq!(r.title.as_deref(), Some("Result 7"));

    let read = c
        .service
        .read_resource(ReadResourceRequestParams::new(
            "kb://context/space%20name.md",
        ))
        .await
        .unwrap();
    match &read.contents[0] {
        ResourceContents::TextResourceContents {
            text, mime_type, ..
        } => {
            assert_eq!(text, "# Spaced\n");
            assert_eq!(mime_type.as_deref(), Some("text/markdown"));
        }
        other => panic!("expected text, got {other:?}"),
    }
    let read = c
        .service
        .read_resource(ReadResourceRequestParams::new("kb://context/img.bin"))
        .await
        .unwrap();
    assert!(
        matches!(&read.contents[0], ResourceContents::BlobResourceContents { blob, .. } if blob == "AJ+Slg==")
    );

    for bad in [
        "kb://../secret",
        "kb://%2e%2e/secret",
        "file:///etc/passwd",
        "kb:///etc/passwd",
        "kb://nope.md",
    ] {
        let e = c
            .service
            .read_resource(ReadResourceRequestParams::new(bad))
            .await;
        assert!(e.is_err(), "{bad} should fail");
    }
    // SEP-2164: not found is -32602, with the URI asked for.
    match c
        .service
        .read_resource(ReadResourceRequestParams::new("kb://nope.md"))
        .await
    {
        Err(rmcp::ServiceError::McpError(e)) => {
            assert_eq!(e.code.0, -32602, "{e:?}");
            assert_eq!(e.data.unwrap()["uri"], "kb://nope.md");
        }
        other => panic!("{other:?}"),
    }

    let templates = c.service.list_resource_templates(None).await.unwrap();
    assert_eq!(templates.resource_templates[0].uri_template, "kb://{+path}");
    c.close().await;
}

#[tokio::test]
async fn new_files_send_list_changed() {
    let p = Project::new();
    let mut c = connect(&p).await;
    // A file written behind the server's back...
    p.write("_kb/inbox/from-outside.md", "# hi\n");
    let note = c.next_note(DEADLINE).await;
    assert_eq!(note, Some(Note::ResourceListChanged));
    let all = c.service.list_all_resources().await.unwrap();
    assert!(all.iter().any(|r| r.uri == "kb://inbox/from-outside.md"));
    // ...and one written through the tool.
    c.ok(
        "kb_write",
        json!({"path": "context/new.md", "content": "x"}),
    )
    .await;
    let note = c.next_note(DEADLINE).await;
    assert_eq!(note, Some(Note::ResourceListChanged));
    c.close().await;
}
