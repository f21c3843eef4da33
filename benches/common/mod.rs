//! What several benchmarks share: a throwaway project and `/proc` readings.

#![allow(dead_code)] // each bench uses its own subset

/// A temp project with one agent `a` on `openai/gpt-4o-mini` and `toml` as
/// its `dispatch.toml`.
///
/// Projects live under `DISPATCH_BENCH_DIR`, else cargo's target/tmp, not
/// in the system temp folder: a real project is a checkout, and on the
/// measuring machine /tmp shares an ext4 block group with every test suite's
/// temp files, where creating a file costs ~600 µs instead of ~45 µs (see
/// BENCHMARKS.md).
pub fn project(toml: &str) -> tempfile::TempDir {
    let base = std::env::var_os("DISPATCH_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    std::fs::create_dir_all(&base).expect("bench dir");
    let dir = tempfile::tempdir_in(&base).expect("tempdir");
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
