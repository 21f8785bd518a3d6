//! Signal names and numbers, parsed at the edge (`TERM`, `SIGTERM`, `15`), and the signal set
//! the supervisor takes through its signalfd.

use nix::sys::signal::{SigSet, Signal};

/// Signals forwarded to the job (tini's list, plus SIGCONT so a `kill -CONT` reaches it).
pub const FORWARDED: &[Signal] = &[
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
    Signal::SIGCONT,
];

/// Everything the supervisor blocks and reads from its signalfd: the forwarded signals,
/// SIGCHLD, SIGTTOU/SIGTTIN (blocked so that handing the terminal back and forth with
/// `tcsetpgrp` from the background does not stop us) and SIGTSTP (passed on to the job).
pub fn supervisor_set() -> SigSet {
    let mut s = SigSet::empty();
    for sig in FORWARDED {
        s.add(*sig);
    }
    s.add(Signal::SIGCHLD);
    s.add(Signal::SIGTTOU);
    s.add(Signal::SIGTTIN);
    s.add(Signal::SIGTSTP);
    s
}

static SIGPIPE_WAS_IGNORED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Ignore SIGPIPE in cgjob, remembering whether it was ignored already (by whoever started
/// cgjob), so that the command gets it as it was.
pub fn ignore_sigpipe() {
    // SAFETY: installs SIG_IGN; the previous handler is only compared.
    let old = unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    SIGPIPE_WAS_IGNORED.store(old == libc::SIG_IGN, std::sync::atomic::Ordering::Relaxed);
}

/// The SIGPIPE disposition the command should get: what cgjob was started with.
pub fn inherited_sigpipe() -> libc::sighandler_t {
    if SIGPIPE_WAS_IGNORED.load(std::sync::atomic::Ordering::Relaxed) {
        libc::SIG_IGN
    } else {
        libc::SIG_DFL
    }
}

/// Parse a signal given as a name with or without `SIG` (any case) or as a number.
pub fn parse_signal(s: &str) -> Result<Signal, String> {
    let t = s.trim();
    if let Ok(n) = t.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| format!("unknown signal number {n}"));
    }
    let up = t.to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    name.parse::<Signal>().map_err(|_| {
        format!("unknown signal {s:?} (expected a name like TERM or a number like 15)")
    })
}

/// The conventional name of a signal number, e.g. `SIGKILL`.
pub fn name(sig: i32) -> String {
    Signal::try_from(sig)
        .map(|s| s.as_str().to_owned())
        .unwrap_or_else(|_| format!("SIG{sig}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_numbers() {
        let ok: &[(&str, Signal)] = &[
            ("TERM", Signal::SIGTERM),
            ("SIGTERM", Signal::SIGTERM),
            ("term", Signal::SIGTERM),
            ("15", Signal::SIGTERM),
            ("9", Signal::SIGKILL),
            ("sigkill", Signal::SIGKILL),
            (" HUP ", Signal::SIGHUP),
            ("USR1", Signal::SIGUSR1),
        ];
        for (s, want) in ok {
            assert_eq!(parse_signal(s), Ok(*want), "{s}");
        }
        for bad in ["", "NOPE", "SIG", "0", "65", "-1", "1.5", "TERM9"] {
            assert!(parse_signal(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn names() {
        assert_eq!(name(9), "SIGKILL");
        assert_eq!(name(15), "SIGTERM");
        assert_eq!(name(40), "SIG40");
    }
}
