//! The architecture's invariants, enforced (rust-analyzer's tidy test): each
//! rule of ARCHITECTURE.md that a reading of the source can check fails this
//! test when broken, naming the file and line.
//!
//! - only `src/mcp/` and `src/transport/` use `rmcp` (MCP and JSON-RPC);
//! - only `src/store/` knows SQL (`sqlx`, `rusqlite`, SQL statements);
//! - `anyhow` only at the binary's edge (`main.rs`, `cli.rs`, `cli_tasks.rs`, `cli_store.rs`);
//! - no `print!`/`println!` in the library (stdout is JSON-RPC in `serve`),
//!   no `eprint!`/`eprintln!` outside the command line (logs use `tracing`),
//!   no `dbg!`;
//! - no `.unwrap()` or `.expect(` outside tests.
//!
//! Test code (`#[cfg(test)]` items, `tests.rs` files) is not checked.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::path::{Path, PathBuf};

/// A rule: what it forbids, where it applies, and what to do instead.
struct Rule {
    name: &'static str,
    /// Files (paths relative to `src/`, `/`-separated) the rule does not apply to.
    exempt: &'static [&'static str],
    /// True when a line of code (comments removed; string contents removed
    /// unless `in_strings`) breaks the rule.
    breaks: fn(&str) -> bool,
    /// Check the contents of string literals instead of the code.
    in_strings: bool,
    fix: &'static str,
}

fn has_word(line: &str, word: &str) -> bool {
    line.match_indices(word).any(|(i, _)| {
        let before = line[..i].chars().next_back();
        let after = line[i + word.len()..].chars().next();
        let ident = |c: char| c.is_alphanumeric() || c == '_';
        !before.is_some_and(ident) && !after.is_some_and(ident)
    })
}

fn has_macro(line: &str, name: &str) -> bool {
    line.match_indices(&format!("{name}!")).any(|(i, _)| {
        let before = line[..i].chars().next_back();
        !before.is_some_and(|c| c.is_alphanumeric() || c == '_')
    })
}

fn is_sql(text: &str) -> bool {
    let t = text.trim_start();
    [
        "SELECT ",
        "INSERT INTO",
        "DELETE FROM",
        "CREATE TABLE",
        "CREATE INDEX",
        "ALTER TABLE",
        "PRAGMA ",
    ]
    .iter()
    .any(|k| t.starts_with(k))
        || (t.starts_with("UPDATE ") && t.contains(" SET "))
}

const RULES: &[Rule] = &[
    Rule {
        name: "rmcp outside mcp/ and transport/",
        exempt: &["mcp/", "transport/"],
        breaks: |l| has_word(l, "rmcp"),
        in_strings: false,
        fix: "only src/mcp and src/transport speak MCP; give the engine a plain type",
    },
    Rule {
        name: "a SQL crate outside store/",
        exempt: &["store/"],
        breaks: |l| has_word(l, "sqlx") || has_word(l, "rusqlite"),
        in_strings: false,
        fix: "only src/store knows SQL; add a Store method",
    },
    Rule {
        name: "SQL outside store/",
        exempt: &["store/"],
        breaks: is_sql,
        in_strings: true,
        fix: "only src/store knows SQL; add a Store method",
    },
    Rule {
        name: "anyhow outside the binary's edge",
        exempt: &["main.rs", "cli.rs", "cli_tasks.rs", "cli_store.rs"],
        breaks: |l| has_word(l, "anyhow"),
        in_strings: false,
        fix: "use a thiserror enum; anyhow belongs to main.rs, cli.rs, cli_tasks.rs and cli_store.rs",
    },
    Rule {
        name: "print!/println! in the library",
        exempt: &[],
        breaks: |l| has_macro(l, "println") || has_macro(l, "print"),
        in_strings: false,
        fix: "stdout carries JSON-RPC in serve; the CLI writes with writeln! to a locked stdout",
    },
    Rule {
        name: "eprint!/eprintln! outside the command line",
        exempt: &["main.rs", "cli.rs", "cli_tasks.rs", "cli_store.rs"],
        breaks: |l| has_macro(l, "eprintln") || has_macro(l, "eprint"),
        in_strings: false,
        fix: "log with tracing (to stderr)",
    },
    Rule {
        name: "dbg!",
        exempt: &[],
        breaks: |l| has_macro(l, "dbg"),
        in_strings: false,
        fix: "remove it",
    },
    Rule {
        name: "unwrap/expect outside tests",
        exempt: &[],
        breaks: |l| l.contains(".unwrap()") || l.contains(".expect("),
        in_strings: false,
        fix: "return an error that says what to fix (or use unwrap_or_else with a reason)",
    },
];

/// One file split into code and string contents, line by line, with
/// comments and `#[cfg(test)]` items removed.
struct Source {
    code: Vec<String>,
    strings: Vec<String>,
}

/// Separate code from comments and string literals, keeping line numbers.
fn split(text: &str) -> Source {
    let mut code = vec![String::new()];
    let mut strings = vec![String::new()];
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    let newline = |code: &mut Vec<String>, strings: &mut Vec<String>| {
        code.push(String::new());
        strings.push(String::new());
    };
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '\n' {
            newline(&mut code, &mut strings);
            i += 1;
        } else if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if chars[i] == '\n' {
                        newline(&mut code, &mut strings);
                    }
                    i += 1;
                }
            }
        } else if c == 'r' && (next == Some('"') || next == Some('#')) && !ident_before(&chars, i) {
            // Raw string: r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                code.last_mut().unwrap().push(c);
                i += 1;
                continue;
            }
            j += 1;
            code.last_mut().unwrap().push_str("\"\"");
            loop {
                match chars.get(j) {
                    None => break,
                    Some('"') if (1..=hashes).all(|k| chars.get(j + k) == Some(&'#')) => {
                        j += 1 + hashes;
                        break;
                    }
                    Some('\n') => newline(&mut code, &mut strings),
                    Some(&ch) => strings.last_mut().unwrap().push(ch),
                }
                j += 1;
            }
            i = j;
        } else if c == '"' {
            code.last_mut().unwrap().push_str("\"\"");
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    // `\` + newline continues the string on the next line.
                    if chars.get(i + 1) == Some(&'\n') {
                        newline(&mut code, &mut strings);
                    }
                    i += 2;
                    continue;
                }
                if chars[i] == '\n' {
                    newline(&mut code, &mut strings);
                } else {
                    strings.last_mut().unwrap().push(chars[i]);
                }
                i += 1;
            }
            i += 1;
        } else if c == '\'' && is_char_literal(&chars, i) {
            code.last_mut().unwrap().push_str("' '");
            i += 1;
            while i < chars.len() && chars[i] != '\'' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else {
            code.last_mut().unwrap().push(c);
            i += 1;
        }
    }
    let mut src = Source { code, strings };
    drop_test_items(&mut src);
    src
}

fn ident_before(chars: &[char], i: usize) -> bool {
    i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_')
}

/// `'x'`, `'\n'`, `'\u{1F600}'`: a char literal, not a lifetime.
fn is_char_literal(chars: &[char], i: usize) -> bool {
    matches!(
        (chars.get(i + 1), chars.get(i + 2)),
        (Some('\\'), _) | (Some(_), Some('\''))
    )
}

/// Blank out every item marked `#[cfg(test)]` (a `mod tests { ... }`, a
/// test-only fn or field), by matching its braces in the code.
fn drop_test_items(src: &mut Source) {
    let mut line = 0;
    while line < src.code.len() {
        if src.code[line].trim() != "#[cfg(test)]" {
            line += 1;
            continue;
        }
        // Blank from the attribute to the end of the item: the first `;` at
        // depth 0 or the `}` closing its first `{`.
        let mut depth = 0i32;
        let mut opened = false;
        let mut end = line;
        'scan: for (n, l) in src.code.iter().enumerate().skip(line + 1) {
            for ch in l.chars() {
                match ch {
                    '{' => {
                        depth += 1;
                        opened = true;
                    }
                    '}' => {
                        depth -= 1;
                        if opened && depth == 0 {
                            end = n;
                            break 'scan;
                        }
                    }
                    ';' | ',' if !opened && depth == 0 => {
                        end = n;
                        break 'scan;
                    }
                    _ => {}
                }
            }
            end = n;
        }
        for n in line..=end {
            src.code[n].clear();
            src.strings[n].clear();
        }
        line = end + 1;
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Every broken rule in one file's text: `rel:line: rule: the line (fix)`.
fn check(rel: &str, text: &str) -> Vec<String> {
    if rel.ends_with("/tests.rs") || rel == "tests.rs" {
        return Vec::new();
    }
    let src = split(text);
    let mut problems = Vec::new();
    for rule in RULES {
        if rule.exempt.iter().any(|e| rel == *e || rel.starts_with(e)) {
            continue;
        }
        let lines = if rule.in_strings {
            &src.strings
        } else {
            &src.code
        };
        for (n, l) in lines.iter().enumerate() {
            if (rule.breaks)(l) {
                problems.push(format!(
                    "src/{rel}:{}: {}: {} ({})",
                    n + 1,
                    rule.name,
                    l.trim(),
                    rule.fix
                ));
            }
        }
    }
    problems
}

#[test]
fn the_source_keeps_the_invariants() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    files.sort();
    assert!(files.len() > 50, "found only {} files", files.len());
    let mut problems = Vec::new();
    for f in &files {
        let rel = f
            .strip_prefix(&root)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        problems.extend(check(&rel, &std::fs::read_to_string(f).unwrap()));
    }
    assert!(problems.is_empty(), "\n{}\n", problems.join("\n"));
}

/// The checker finds what it must, and only that.
#[test]
fn the_checker_catches_each_rule() {
    let bad = r#"
use rmcp::model::Tool;
fn f() -> anyhow::Result<()> {
    let q = "SELECT id FROM tasks";
    let c = sqlx::query(q);
    println!("hi");
    eprintln!("hi");
    dbg!(1);
    let x = Some(1).unwrap();
    let y = Some(1).expect("y");
    Ok(())
}
"#;
    let found = check("engine/x.rs", bad);
    for rule in RULES {
        assert!(
            found.iter().any(|p| p.contains(rule.name)),
            "{} not caught:\n{}",
            rule.name,
            found.join("\n")
        );
    }
    let fine = r##"
//! Mentions rmcp, anyhow, println!, .unwrap() and SELECT in a comment.
/* and in a block comment: rmcp::x, .expect( */
fn g() -> Option<u8> {
    let s = "rmcp=warn, .unwrap() and anyhow in a string";
    let r = r#"println!("x")"#;
    let c = '"';
    let lifetime: &'static str = "ok";
    Some(1).unwrap_or(2).checked_add(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn t() {
        let v: Option<u8> = None;
        v.unwrap();
        println!("{}", "SELECT 1");
    }
}
"##;
    assert_eq!(check("engine/y.rs", fine), Vec::<String>::new());
    assert!(check("store/z.rs", "const Q: &str = \"SELECT 1\";").is_empty());
    assert!(
        check(
            "cli.rs",
            "fn m() -> anyhow::Result<()> { eprintln!(\"x\"); Ok(()) }"
        )
        .is_empty()
    );
}
