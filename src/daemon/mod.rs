//! The node daemon: one root process that owns the job cgroups under its parent and serves the
//! job operations (create, attach, signal, status, list, cleanup, events) on a Unix socket.
//!
//! - `protocol`: the JSON-lines wire format and its validation (pure).
//! - `auth`: peer credentials and who may do what (pure, but for the getsockopt).
//! - `results`: the bounded JSON-lines log of finished jobs.
//! - `metrics`: counters and gauges in Prometheus text format, to a textfile.
//! - `client`: the other end, for `cgjob job …`.
//! - `server`: the one epoll loop over the listener, the clients, every job's `cgroup.events`
//!   and a signalfd.
//!
//! Nothing lives only in the daemon's memory: a job's owner record is on its cgroup (see
//! `job::meta`), so a restarted daemon adopts what it finds.

pub mod auth;
pub mod client;
pub mod metrics;
pub mod police;
pub mod protocol;
pub mod results;
pub mod server;
pub mod timer;

/// Tell systemd (or anything speaking the sd_notify protocol) a state change, e.g.
/// `READY=1\nSTATUS=…`: one datagram to `$NOTIFY_SOCKET` (a path, or `@name` for the
/// abstract namespace). Without the variable, nothing happens.
pub fn sd_notify(state: &str) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(());
    };
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(target.as_os_str());
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None => SocketAddr::from_pathname(&target)?,
    };
    let sock = UnixDatagram::unbound()?;
    sock.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn sd_notify_sends_one_datagram() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("notify");
        let rx = std::os::unix::net::UnixDatagram::bind(&p).unwrap();
        // The environment is process-wide; no other test reads NOTIFY_SOCKET.
        std::env::set_var("NOTIFY_SOCKET", &p);
        super::sd_notify("READY=1\nSTATUS=ok").unwrap();
        std::env::remove_var("NOTIFY_SOCKET");
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=ok");
        assert!(super::sd_notify("READY=1").is_ok(), "no socket: a no-op");
    }
}
