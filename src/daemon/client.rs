//! The client side, for `cgjob job …`: talk to the daemon when one answers on its socket and
//! serves the same parent cgroup, so that the job commands give the same results either way
//! (and a user who may not write cgroupfs gets what the daemon allows them).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

/// Where the daemon listens unless `CGJOB_SOCKET` says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/cgjob/cgjob.sock";

/// How long a request may take, beyond what it asks to wait itself (a `create` that kills a
/// stale job's processes takes up to 10 s).
const SLACK: Duration = Duration::from_secs(30);

/// The daemon's socket: `$CGJOB_SOCKET`, else the default.
pub fn socket_path() -> PathBuf {
    std::env::var_os("CGJOB_SOCKET")
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

pub struct Client {
    w: UnixStream,
    r: BufReader<UnixStream>,
}

impl Client {
    /// A connection to the daemon on `socket`, if one answers there and its job parent is
    /// `parent`; `None` otherwise (then the caller acts directly).
    pub fn serving(socket: &Path, parent: &Path) -> Option<Client> {
        let w = UnixStream::connect(socket).ok()?;
        let r = BufReader::new(w.try_clone().ok()?);
        let mut c = Client { w, r };
        let hello = c
            .request(json!({"v": 1, "op": "hello"}), Duration::ZERO)
            .ok()?;
        let same = hello["parent"]
            .as_str()
            .is_some_and(|p| Path::new(p) == parent);
        if !same {
            tracing::info!(socket = %socket.display(), daemon_parent = %hello["parent"], "the daemon serves another parent; acting directly");
            return None;
        }
        tracing::debug!(socket = %socket.display(), "through the daemon");
        Some(c)
    }

    /// Send one request and return the reply's fields (without `v` and `ok`); the daemon's
    /// refusal or a broken connection is an `Err` with the message. `wait` is how long the
    /// request itself may take (a cleanup's grace and kill timeout).
    pub fn request(&mut self, req: Value, wait: Duration) -> Result<Value, String> {
        let broken = |e: std::io::Error| format!("the daemon did not answer: {e}");
        self.w
            .set_read_timeout(Some(wait + SLACK))
            .map_err(broken)?;
        let mut line = serde_json::to_vec(&req).expect("a JSON value serializes");
        line.push(b'\n');
        self.w.write_all(&line).map_err(broken)?;
        let mut reply = String::new();
        if self.r.read_line(&mut reply).map_err(broken)? == 0 {
            return Err("the daemon closed the connection".into());
        }
        let mut v: Value =
            serde_json::from_str(&reply).map_err(|e| format!("bad reply from the daemon: {e}"))?;
        if v["ok"] != true {
            return Err(v["error"]
                .as_str()
                .unwrap_or("the daemon refused without a reason")
                .to_owned());
        }
        if let Some(m) = v.as_object_mut() {
            m.remove("v");
            m.remove("ok");
        }
        Ok(v)
    }
}
