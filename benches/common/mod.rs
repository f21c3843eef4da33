//! What several benchmarks share: a throwaway project and `/proc` readings.

#![allow(dead_code)] // each bench uses its own subset

/// A temp project with one agent `a` on `openai/gpt-4o-mini` and `toml` as
/// its `dispatch.toml`.
pub fn project(toml: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("agents")).expect("mkdir");
    std::fs::write(
        dir.path().join("agents/a.agent.md"),
        "---\nmodel: openai/gpt-4o-mini\n---\nBench.\n",
    )
    .expect("agent");
    std::fs::write(dir.path().join("dispatch.toml"), toml).expect("toml");
    dir
}

/// A `/proc/<pid>/status` field in kB (`VmRSS`, `VmHWM`); `None` is this process.
pub fn status_kb(pid: Option<u32>, key: &str) -> u64 {
    let path = match pid {
        Some(p) => format!("/proc/{p}/status"),
        None => "/proc/self/status".to_string(),
    };
    let text = std::fs::read_to_string(path).expect("read /proc status");
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("status field")
}
