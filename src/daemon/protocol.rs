//! The daemon's wire protocol: JSON lines over a Unix stream socket, version 1.
//!
//! A request is one JSON object on one line (at most [`MAX_LINE`] bytes):
//! `{"v":1,"op":"create","job_id":"42","uid":1000}`. Every request gets exactly one reply line,
//! `{"v":1,"ok":true,…}` or `{"v":1,"ok":false,"error":"…"}`; after a `subscribe`, event lines
//! `{"v":1,"event":"…","job_id":"…",…}` follow. Parsing is pure and total: any bytes give a
//! request or an error message, never a panic (a property test below holds it to that).

use std::time::Duration;

use serde_json::{Map, Value};

use crate::cgroup::limits::Limits;
use crate::config;
use crate::job::batch::{JobId, Scheduler};
use crate::job::limits::LimitsVia;
use crate::job::meta::TimeLimit;

pub const VERSION: u64 = 1;

/// Longest request line accepted, newline excluded. A longer one gets an error reply and is
/// discarded up to its newline; the connection goes on.
pub const MAX_LINE: usize = 64 * 1024;

/// Most pids one `attach` may name.
pub const MAX_PIDS: usize = 4096;

/// Longest grace period or kill timeout a `cleanup` may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(3600);

/// Longest time limit a job may be given (a year).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(366 * 24 * 3600);

pub const DEFAULT_GRACE: Duration = Duration::from_secs(2);
pub const DEFAULT_KILL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Make the job's cgroup and record its owner (`uid` defaults to the caller's).
    Create {
        job_id: JobId,
        uid: Option<u32>,
        scheduler: Scheduler,
        /// A wall-clock limit the daemon enforces: SIGTERM when it passes, kill after the
        /// grace (`timeout_ms`, `kill_after_ms`).
        timeout: Option<TimeLimit>,
        /// Resource limits (`limits`: `{"memory_max": "512M" or bytes, "memory_high",
        /// "memory_swap_max", "pids_max", "cpu_max": "QUOTA/PERIOD", "cpuset": "0-3"}`) and
        /// which cgroup version carries them (`limits_via`: auto, cgroup-v2, cgroup-v1).
        limits: Limits,
        limits_via: LimitsVia,
    },
    /// Move processes into the job's cgroup.
    Attach {
        job_id: JobId,
        pids: Vec<i32>,
    },
    /// Send a signal to every process of the job.
    Signal {
        job_id: JobId,
        signal: i32,
    },
    Status {
        job_id: JobId,
    },
    List,
    /// The epilog: TERM, grace, kill, remove (the `cgjob job cleanup` policy).
    Cleanup {
        job_id: JobId,
        grace: Duration,
        kill_timeout: Duration,
    },
    /// Turn this connection into a stream of job events.
    Subscribe,
    /// Which daemon this is: its version and its parent cgroup (so a client can tell
    /// whether it serves the jobs the client means).
    Hello,
}

impl Request {
    pub fn job_id(&self) -> Option<&JobId> {
        match self {
            Request::Create { job_id, .. }
            | Request::Attach { job_id, .. }
            | Request::Signal { job_id, .. }
            | Request::Status { job_id }
            | Request::Cleanup { job_id, .. } => Some(job_id),
            Request::List | Request::Subscribe | Request::Hello => None,
        }
    }
}

/// Parse one request line (without its newline).
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    if line.len() > MAX_LINE {
        return Err(format!("request longer than {MAX_LINE} bytes"));
    }
    let v: Value = serde_json::from_slice(line).map_err(|e| format!("malformed request: {e}"))?;
    let Value::Object(o) = v else {
        return Err("malformed request: not a JSON object".into());
    };
    match o.get("v") {
        Some(Value::Number(n)) if n.as_u64() == Some(VERSION) => {}
        Some(other) => {
            return Err(format!(
                "unsupported protocol version {other} (this daemon speaks 1)"
            ))
        }
        None => return Err("missing field \"v\" (the protocol version, 1)".into()),
    }
    let op = match o.get("op") {
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err("field \"op\" must be a string".into()),
        None => return Err("missing field \"op\"".into()),
    };
    let allowed: &[&str] = match op {
        "create" => &[
            "job_id",
            "uid",
            "scheduler",
            "timeout_ms",
            "kill_after_ms",
            "limits",
            "limits_via",
        ],
        "attach" => &["job_id", "pids"],
        "signal" => &["job_id", "signal"],
        "status" => &["job_id"],
        "list" | "subscribe" | "hello" => &[],
        "cleanup" => &["job_id", "grace_ms", "kill_timeout_ms"],
        _ => return Err(format!("unknown op {:?}", truncated(op))),
    };
    if let Some(k) = o
        .keys()
        .find(|k| !matches!(k.as_str(), "v" | "op") && !allowed.contains(&k.as_str()))
    {
        return Err(format!("unknown field {:?} for op {op}", truncated(k)));
    }
    let r = match op {
        "create" => Request::Create {
            job_id: job_id(&o)?,
            uid: opt_uint(&o, "uid", u32::MAX as u64)?.map(|u| u as u32),
            scheduler: match o.get("scheduler") {
                None => Scheduler::Other,
                Some(v) => serde_json::from_value(v.clone()).map_err(|_| {
                    "field \"scheduler\" must be one of slurm, sge, pbs, other".to_string()
                })?,
            },
            timeout: time_limit(&o)?,
            limits: limits(&o)?,
            limits_via: match o.get("limits_via").map(Value::as_str) {
                None | Some(Some("auto")) => LimitsVia::Auto,
                Some(Some("cgroup-v2")) => LimitsVia::CgroupV2,
                Some(Some("cgroup-v1")) => LimitsVia::CgroupV1,
                _ => {
                    return Err(
                        "field \"limits_via\" must be one of auto, cgroup-v2, cgroup-v1".into(),
                    )
                }
            },
        },
        "attach" => Request::Attach {
            job_id: job_id(&o)?,
            pids: pids(&o)?,
        },
        "signal" => Request::Signal {
            job_id: job_id(&o)?,
            signal: signal(&o)?,
        },
        "status" => Request::Status {
            job_id: job_id(&o)?,
        },
        "list" => Request::List,
        "subscribe" => Request::Subscribe,
        "hello" => Request::Hello,
        "cleanup" => Request::Cleanup {
            job_id: job_id(&o)?,
            grace: wait(&o, "grace_ms", DEFAULT_GRACE)?,
            kill_timeout: wait(&o, "kill_timeout_ms", DEFAULT_KILL_TIMEOUT)?,
        },
        _ => unreachable!("ops are matched above"),
    };
    Ok(r)
}

/// At most 64 characters of client-supplied text go back into an error message.
fn truncated(s: &str) -> String {
    s.chars().take(64).collect()
}

fn job_id(o: &Map<String, Value>) -> Result<JobId, String> {
    match o.get("job_id") {
        Some(Value::String(s)) => JobId::parse(s),
        Some(_) => Err("field \"job_id\" must be a string".into()),
        None => Err("missing field \"job_id\"".into()),
    }
}

fn opt_uint(o: &Map<String, Value>, k: &str, max: u64) -> Result<Option<u64>, String> {
    match o.get(k) {
        None => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if n <= max => Ok(Some(n)),
            _ => Err(format!("field {k:?} must be an integer from 0 to {max}")),
        },
    }
}

fn pids(o: &Map<String, Value>) -> Result<Vec<i32>, String> {
    let Some(Value::Array(a)) = o.get("pids") else {
        return Err("field \"pids\" must be an array of process ids".into());
    };
    if a.is_empty() || a.len() > MAX_PIDS {
        return Err(format!(
            "field \"pids\" must name 1 to {MAX_PIDS} processes"
        ));
    }
    a.iter()
        .map(|p| match p.as_u64() {
            Some(n) if (1..=i32::MAX as u64).contains(&n) => Ok(n as i32),
            _ => Err(format!("bad pid {}", truncated(&p.to_string()))),
        })
        .collect()
}

fn signal(o: &Map<String, Value>) -> Result<i32, String> {
    let s = match o.get("signal") {
        None => return Ok(libc::SIGTERM),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(_) => return Err("field \"signal\" must be a name or a number".into()),
    };
    crate::process::signals::parse_signal(&s)
        .map(|s| s as i32)
        .map_err(|e| format!("field \"signal\": {}", truncated(&e)))
}

/// The `limits` object, each value checked by the parser of the matching `cgjob` flag.
fn limits(o: &Map<String, Value>) -> Result<Limits, String> {
    let mut l = Limits::default();
    let Some(v) = o.get("limits") else {
        return Ok(l);
    };
    let Value::Object(m) = v else {
        return Err("field \"limits\" must be an object".into());
    };
    for (k, v) in m {
        let text = match v {
            Value::Null => continue,
            Value::String(s) => s.clone(),
            Value::Number(n) if n.is_u64() => n.to_string(),
            _ => {
                return Err(format!(
                    "limit {:?} must be a string or a non-negative integer",
                    truncated(k)
                ))
            }
        };
        let bad = |e: String| format!("limit {k}: {}", truncated(&e));
        match k.as_str() {
            "memory_max" => l.memory_max = Some(config::parse_size(&text).map_err(bad)?),
            "memory_high" => l.memory_high = Some(config::parse_size(&text).map_err(bad)?),
            "memory_swap_max" => l.memory_swap_max = Some(config::parse_size(&text).map_err(bad)?),
            "pids_max" => l.pids_max = Some(config::parse_pids_max(&text).map_err(bad)?),
            // `cpu.max` form ("50000 100000") or the flag's ("50000/100000").
            "cpu_max" => {
                l.cpu_max = Some(config::parse_cpu_max(&text.replacen(' ', "/", 1)).map_err(bad)?)
            }
            "cpuset" => l.cpuset = Some(config::parse_cpuset(&text).map_err(bad)?),
            _ => return Err(format!("unknown limit {:?}", truncated(k))),
        }
    }
    Ok(l)
}

/// `timeout_ms` (1 ms to [`MAX_TIMEOUT`]) and its `kill_after_ms` (which needs it).
fn time_limit(o: &Map<String, Value>) -> Result<Option<TimeLimit>, String> {
    let after = opt_uint(o, "timeout_ms", MAX_TIMEOUT.as_millis() as u64)?;
    let kill_after = wait(o, "kill_after_ms", DEFAULT_GRACE)?;
    match after {
        Some(0) => Err("field \"timeout_ms\" must be at least 1".into()),
        Some(ms) => Ok(Some(TimeLimit::new(Duration::from_millis(ms), kill_after))),
        None if o.contains_key("kill_after_ms") => {
            Err("field \"kill_after_ms\" needs \"timeout_ms\"".into())
        }
        None => Ok(None),
    }
}

fn wait(o: &Map<String, Value>, k: &str, default: Duration) -> Result<Duration, String> {
    Ok(opt_uint(o, k, MAX_WAIT.as_millis() as u64)?
        .map(Duration::from_millis)
        .unwrap_or(default))
}

/// A success reply: `fields` (an object) with `v` and `ok` added.
pub fn ok_reply(fields: Value) -> String {
    let mut m = match fields {
        Value::Object(m) => m,
        Value::Null => Map::new(),
        other => {
            let mut m = Map::new();
            m.insert("result".into(), other);
            m
        }
    };
    m.insert("v".into(), VERSION.into());
    m.insert("ok".into(), true.into());
    line(Value::Object(m))
}

/// An error reply.
pub fn error_reply(error: &str) -> String {
    line(serde_json::json!({"v": VERSION, "ok": false, "error": error}))
}

/// An event line for subscribers.
pub fn event_line(event: &str, job_id: &str, extra: Value) -> String {
    let mut m = match extra {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    m.insert("v".into(), VERSION.into());
    m.insert("event".into(), event.into());
    m.insert("job_id".into(), job_id.into());
    line(Value::Object(m))
}

/// An event line about the node rather than a job (`police`).
pub fn node_event_line(event: &str, extra: Value) -> String {
    let mut m = match extra {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    m.insert("v".into(), VERSION.into());
    m.insert("event".into(), event.into());
    line(Value::Object(m))
}

fn line(v: Value) -> String {
    let mut s = serde_json::to_string(&v).expect("a JSON value serializes");
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Request, String> {
        parse_request(s.as_bytes())
    }

    #[test]
    fn valid_requests() {
        let id = |s: &str| JobId::parse(s).unwrap();
        let cases: Vec<(&str, Request)> = vec![
            (
                r#"{"v":1,"op":"create","job_id":"42","uid":1000}"#,
                Request::Create {
                    job_id: id("42"),
                    uid: Some(1000),
                    scheduler: Scheduler::Other,
                    timeout: None,
                    limits: Limits::default(),
                    limits_via: LimitsVia::Auto,
                },
            ),
            (
                r#"{"v":1,"op":"create","job_id":"42","scheduler":"slurm"}"#,
                Request::Create {
                    job_id: id("42"),
                    uid: None,
                    scheduler: Scheduler::Slurm,
                    timeout: None,
                    limits: Limits::default(),
                    limits_via: LimitsVia::Auto,
                },
            ),
            (
                r#"{"op":"attach","v":1,"job_id":"7.x","pids":[1,2]}"#,
                Request::Attach {
                    job_id: id("7.x"),
                    pids: vec![1, 2],
                },
            ),
            (
                r#"{"v":1,"op":"signal","job_id":"1","signal":"KILL"}"#,
                Request::Signal {
                    job_id: id("1"),
                    signal: 9,
                },
            ),
            (
                r#"{"v":1,"op":"signal","job_id":"1","signal":10}"#,
                Request::Signal {
                    job_id: id("1"),
                    signal: 10,
                },
            ),
            (
                r#"{"v":1,"op":"signal","job_id":"1"}"#,
                Request::Signal {
                    job_id: id("1"),
                    signal: 15,
                },
            ),
            (
                r#"{"v":1,"op":"status","job_id":"1"}"#,
                Request::Status { job_id: id("1") },
            ),
            (r#"{"v":1,"op":"list"}"#, Request::List),
            (r#"{"v":1,"op":"subscribe"}"#, Request::Subscribe),
            (r#"{"v":1,"op":"hello"}"#, Request::Hello),
            (
                r#"{"v":1,"op":"cleanup","job_id":"1","grace_ms":0}"#,
                Request::Cleanup {
                    job_id: id("1"),
                    grace: Duration::ZERO,
                    kill_timeout: DEFAULT_KILL_TIMEOUT,
                },
            ),
        ];
        for (line, want) in cases {
            assert_eq!(p(line).as_ref(), Ok(&want), "{line}");
        }
        let line = r#"{"v":1,"op":"create","job_id":"42","timeout_ms":60000,"kill_after_ms":500}"#;
        let Ok(Request::Create {
            timeout: Some(t), ..
        }) = p(line)
        else {
            panic!("{line}")
        };
        assert_eq!((t.after_ms, t.kill_after_ms), (60000, 500));
        // Limits in either form: the flag's text, or as the client serializes them.
        let line = r#"{"v":1,"op":"create","job_id":"42","limits":{"memory_max":"32M","pids_max":20,"cpu_max":"50000 100000","cpuset":"0"},"limits_via":"cgroup-v1"}"#;
        let Ok(Request::Create {
            limits, limits_via, ..
        }) = p(line)
        else {
            panic!("{line}")
        };
        assert_eq!(limits_via, LimitsVia::CgroupV1);
        assert_eq!(
            serde_json::to_value(&limits).unwrap(),
            serde_json::json!({"memory_max": 33554432, "memory_high": null, "memory_swap_max": null, "pids_max": 20, "cpu_max": "50000 100000", "cpuset": "0"})
        );
        let left = t.left();
        assert!(left <= Duration::from_secs(60) && left > Duration::from_secs(50));
    }

    #[test]
    fn invalid_requests_say_why() {
        let cases: &[(&str, &str)] = &[
            ("", "malformed"),
            (r#"{"v":1,"op":"create","job_id":"4"#, "malformed"),
            ("[1,2]", "not a JSON object"),
            (r#"{"op":"list"}"#, "missing field \"v\""),
            (r#"{"v":2,"op":"list"}"#, "unsupported protocol version 2"),
            (r#"{"v":"1","op":"list"}"#, "unsupported protocol version"),
            (r#"{"v":1}"#, "missing field \"op\""),
            (r#"{"v":1,"op":7}"#, "must be a string"),
            (r#"{"v":1,"op":"rm -rf"}"#, "unknown op"),
            (
                r#"{"v":1,"op":"list","job_id":"1"}"#,
                "unknown field \"job_id\"",
            ),
            (r#"{"v":1,"op":"status"}"#, "missing field \"job_id\""),
            (r#"{"v":1,"op":"status","job_id":"../etc"}"#, "job id"),
            (r#"{"v":1,"op":"status","job_id":"a/b"}"#, "job id"),
            (r#"{"v":1,"op":"status","job_id":42}"#, "must be a string"),
            (r#"{"v":1,"op":"create","job_id":"1","uid":-1}"#, "\"uid\""),
            (
                r#"{"v":1,"op":"create","job_id":"1","uid":4294967296}"#,
                "\"uid\"",
            ),
            (
                r#"{"v":1,"op":"create","job_id":"1","scheduler":"cron"}"#,
                "scheduler",
            ),
            (
                r#"{"v":1,"op":"create","job_id":"1","timeout_ms":0}"#,
                "\"timeout_ms\" must be at least 1",
            ),
            (
                r#"{"v":1,"op":"create","job_id":"1","timeout_ms":1e3}"#,
                "\"timeout_ms\"",
            ),
            (
                r#"{"v":1,"op":"create","job_id":"1","timeout_ms":99999999999999}"#,
                "\"timeout_ms\"",
            ),
            (
                r#"{"v":1,"op":"create","job_id":"1","kill_after_ms":5}"#,
                "needs \"timeout_ms\"",
            ),
            (
                r#"{"v":1,"op":"create","job_id":"1","limits":{"memory_max":"lots"}}"#,
                "limit memory_max: invalid size",
            ),
            (
                r#"{"v":1,"op":"create","job_id":"1","limits":{"pids_max":-1}}"#,
                "must be a string or a non-negative integer",
            ),
            (
                r#"{"v":1,"op":"create","job_id":"1","limits":{"gpus":"2"}}"#,
                "unknown limit \"gpus\"",
            ),
            (
                r#"{"v":1,"op":"create","job_id":"1","limits":[]}"#,
                "must be an object",
            ),
            (
                r#"{"v":1,"op":"create","job_id":"1","limits_via":"v3"}"#,
                "limits_via",
            ),
            (r#"{"v":1,"op":"attach","job_id":"1"}"#, "\"pids\""),
            (
                r#"{"v":1,"op":"attach","job_id":"1","pids":[]}"#,
                "\"pids\"",
            ),
            (
                r#"{"v":1,"op":"attach","job_id":"1","pids":[0]}"#,
                "bad pid",
            ),
            (
                r#"{"v":1,"op":"attach","job_id":"1","pids":[-3]}"#,
                "bad pid",
            ),
            (
                r#"{"v":1,"op":"attach","job_id":"1","pids":["1"]}"#,
                "bad pid",
            ),
            (
                r#"{"v":1,"op":"signal","job_id":"1","signal":"NOPE"}"#,
                "\"signal\"",
            ),
            (
                r#"{"v":1,"op":"signal","job_id":"1","signal":[]}"#,
                "\"signal\"",
            ),
            (
                r#"{"v":1,"op":"cleanup","job_id":"1","grace_ms":3600001}"#,
                "grace_ms",
            ),
        ];
        for (line, want) in cases {
            let e = p(line).expect_err(line);
            assert!(e.contains(want), "{line}: {e:?} lacks {want:?}");
        }
        let long = format!(r#"{{"v":1,"op":"list","x":"{}"}}"#, "a".repeat(MAX_LINE));
        assert!(p(&long).unwrap_err().contains("longer than"));
    }

    #[test]
    fn replies_are_json_lines() {
        let r = ok_reply(serde_json::json!({"job_id": "1"}));
        assert!(r.ends_with('\n') && r.matches('\n').count() == 1);
        let v: Value = serde_json::from_str(&r).unwrap();
        assert_eq!((v["v"].as_u64(), v["ok"].as_bool()), (Some(1), Some(true)));
        // Client text in an error cannot break the line.
        let e = error_reply("unknown op \"a\nb\"");
        assert_eq!(e.matches('\n').count(), 1);
        let v: Value = serde_json::from_str(&e).unwrap();
        assert_eq!(v["ok"], false);
    }

    /// A small deterministic PRNG (xorshift64*): the property test needs no crate and always
    /// runs the same cases.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Random bytes and mutations of valid requests never panic the parser, and whatever it
    /// returns makes one well-formed reply line.
    #[test]
    fn parser_is_total_on_random_and_mutated_input() {
        let seeds: &[&[u8]] = &[
            br#"{"v":1,"op":"create","job_id":"42","uid":1000,"scheduler":"slurm"}"#,
            br#"{"v":1,"op":"attach","job_id":"42","pids":[1,2,3]}"#,
            br#"{"v":1,"op":"signal","job_id":"42","signal":"TERM"}"#,
            br#"{"v":1,"op":"cleanup","job_id":"42","grace_ms":10,"kill_timeout_ms":20}"#,
            br#"{"v":1,"op":"status","job_id":"42"}"#,
            br#"{"v":1,"op":"list"}"#,
        ];
        let alphabet = b"{}[]\":,0123456789-+.eE \\u\0\xff\xc3tfnlvopjbidsa/";
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut oks = 0;
        for i in 0..20_000 {
            let input: Vec<u8> = if i % 4 == 0 {
                let n = rng.below(200);
                (0..n).map(|_| rng.next() as u8).collect()
            } else {
                let mut v = seeds[rng.below(seeds.len())].to_vec();
                for _ in 0..1 + rng.below(4) {
                    let at = rng.below(v.len() + 1);
                    match rng.below(4) {
                        0 if at < v.len() => {
                            v.remove(at);
                        }
                        1 => v.insert(at, alphabet[rng.below(alphabet.len())]),
                        2 if at < v.len() => v[at] = alphabet[rng.below(alphabet.len())],
                        _ => v.truncate(at),
                    }
                }
                v
            };
            let reply = match parse_request(&input) {
                Ok(r) => {
                    oks += 1;
                    // A request that parses has every field in range.
                    if let Some(id) = r.job_id() {
                        assert!(JobId::parse(id.as_str()).is_ok());
                    }
                    ok_reply(Value::Null)
                }
                Err(e) => error_reply(&e),
            };
            assert_eq!(reply.matches('\n').count(), 1, "{input:?}");
            let v: Value = serde_json::from_str(&reply).expect("reply is JSON");
            assert_eq!(v["v"], 1);
        }
        // The mutations are not all fatal: some still parse, so both paths were exercised.
        assert!(oks > 100, "only {oks} inputs parsed");
    }
}
