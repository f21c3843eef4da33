//! Which process owns a task. A task records the server process driving it
//! (`host:pid:start-ms`); recovery takes over a task only when that process is
//! gone, so two servers on one store never re-run each other's work.

use std::sync::OnceLock;

/// This process's owner tag.
pub fn this_process() -> &'static str {
    static TAG: OnceLock<String> = OnceLock::new();
    TAG.get_or_init(|| {
        format!(
            "{}:{}:{}",
            hostname(),
            std::process::id(),
            crate::task::now_millis()
        )
    })
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates
    // on success (and we stop at the first NUL either way).
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).replace(':', "_")
}

/// True when the owner of a task can no longer be driving it.
pub fn is_gone(owner: Option<&str>) -> bool {
    let Some(owner) = owner else { return true };
    if owner == this_process() {
        return false;
    }
    let mut parts = owner.rsplitn(3, ':');
    let (Some(_start), Some(pid), Some(host)) = (parts.next(), parts.next(), parts.next()) else {
        return true; // not a tag we wrote
    };
    let Ok(pid) = pid.parse::<i32>() else {
        return true;
    };
    let ours = this_process();
    let our_host = ours.rsplitn(3, ':').nth(2).unwrap_or("");
    if host != our_host {
        // Another machine: we cannot tell from here (a shared PostgreSQL store
        // needs heartbeats for that), so leave its tasks alone.
        return false;
    }
    if pid == std::process::id() as i32 {
        return true; // our pid, but an earlier process that had it
    }
    // SAFETY: kill with signal 0 sends nothing; it only checks that the pid exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners() {
        assert!(is_gone(None));
        assert!(!is_gone(Some(this_process())));
        assert!(is_gone(Some("garbage")));
        let host = this_process().rsplitn(3, ':').nth(2).unwrap().to_string();
        // pid 1 always exists.
        assert!(!is_gone(Some(&format!("{host}:1:5"))));
        // A pid far above pid_max does not.
        assert!(is_gone(Some(&format!("{host}:2147483646:5"))));
        assert!(!is_gone(Some("other-machine:123:5")));
    }
}
