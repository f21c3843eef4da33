//! Who this process is to the store. A task records the process driving it
//! (`host:pid:start-ms`), which holds a lease on it ([`super::lease`]); a
//! process of this host that is gone need not have its lease run out.

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

/// True when `holder` names a process of this host that is gone (or an
/// earlier process that had this pid): its lease need not run out before
/// its work is taken over. A holder of another host, or one that is not a
/// tag we wrote, is judged by its lease alone (false).
pub fn dead_here(holder: &str) -> bool {
    if holder == this_process() {
        return false;
    }
    let mut parts = holder.rsplitn(3, ':');
    let (Some(_start), Some(pid), Some(host)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let Ok(pid) = pid.parse::<i32>() else {
        return false;
    };
    let ours = this_process();
    let our_host = ours.rsplitn(3, ':').nth(2).unwrap_or("");
    if host != our_host {
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
        assert!(!dead_here(this_process()));
        assert!(!dead_here("garbage"));
        let host = this_process().rsplitn(3, ':').nth(2).unwrap().to_string();
        // pid 1 always exists.
        assert!(!dead_here(&format!("{host}:1:5")));
        // A pid far above pid_max does not.
        assert!(dead_here(&format!("{host}:2147483646:5")));
        // Our pid, an earlier start: a predecessor.
        assert!(dead_here(&format!("{host}:{}:5", std::process::id())));
        assert!(!dead_here("other-machine:123:5"));
    }
}
