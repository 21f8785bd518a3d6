//! Interactive terminal behaviour: run from an interactive shell, Ctrl-C and Ctrl-Z act on the
//! job as they would without cgjob. Each test drives a real `bash -i` on a pseudo-terminal it
//! owns (the shell is the session leader and the pty its controlling terminal), types commands
//! into the master side and reads the screen back, every wait bounded.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::*;

/// Bound on any one expectation (a prompt, a line of output, a process state).
const STEP: Duration = Duration::from_secs(10);

/// A master/slave pseudo-terminal pair, both close-on-exec, the slave not yet anyone's
/// controlling terminal. The window is wide so that readline never scrolls a typed line.
fn open_pty() -> (OwnedFd, OwnedFd) {
    // SAFETY: plain libc calls; every descriptor is checked and owned right after.
    unsafe {
        let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        assert!(m >= 0, "posix_openpt: {}", std::io::Error::last_os_error());
        let master = OwnedFd::from_raw_fd(m);
        assert_eq!(libc::grantpt(m), 0, "grantpt");
        assert_eq!(libc::unlockpt(m), 0, "unlockpt");
        let mut name = [0 as libc::c_char; 128];
        assert_eq!(
            libc::ptsname_r(m, name.as_mut_ptr(), name.len()),
            0,
            "ptsname_r"
        );
        let s = libc::open(
            name.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        assert!(
            s >= 0,
            "open pty slave: {}",
            std::io::Error::last_os_error()
        );
        let slave = OwnedFd::from_raw_fd(s);
        let ws = libc::winsize {
            ws_row: 50,
            ws_col: 400,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        assert_eq!(libc::ioctl(m, libc::TIOCSWINSZ, &ws), 0, "TIOCSWINSZ");
        let fl = libc::fcntl(m, libc::F_GETFL);
        assert_eq!(libc::fcntl(m, libc::F_SETFL, fl | libc::O_NONBLOCK), 0);
        (master, slave)
    }
}

/// An interactive bash on a pty of its own. Dropping it kills the shell (by pid) and reaps it;
/// the job's processes are killed by the `TestJob` guard (they carry its marker).
struct Term {
    master: OwnedFd,
    bash: Child,
    /// Everything the terminal printed, carriage returns removed.
    screen: String,
    /// How much of `screen` the expectations have consumed.
    pos: usize,
    closed: bool,
}

impl Term {
    fn start(t: &TestJob) -> Term {
        let (master, slave) = open_pty();
        let mut c = Command::new("bash");
        c.args(["--norc", "--noprofile", "-i"])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("TERM", "dumb")
            .env("PS1", "$ ")
            .env("PS2", "> ")
            .env("HOME", t.dir.path())
            .env("HISTFILE", "/dev/null")
            .env("INPUTRC", "/dev/null")
            .env(MARKER_VAR, &t.marker)
            .env("TMPD", t.dir.path())
            .env("CGJOB", env!("CARGO_BIN_EXE_cgjob"))
            .env("CGP", &t.parent)
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave));
        // SAFETY: async-signal-safe calls only between fork and exec.
        unsafe {
            c.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let bash = c.spawn().expect("spawn an interactive bash on the pty");
        // `c` (and with it the parent's copies of the slave) is dropped here, so the master
        // reports EOF once the shell and everything it started have closed the terminal.
        drop(c);
        let mut term = Term {
            master,
            bash,
            screen: String::new(),
            pos: 0,
            closed: false,
        };
        term.expect("$ ");
        term
    }

    fn fd(&self) -> RawFd {
        self.master.as_raw_fd()
    }

    fn shell_pid(&self) -> i32 {
        self.bash.id() as i32
    }

    /// The terminal's foreground process group (asked through the master side).
    fn foreground(&self) -> i32 {
        // SAFETY: ioctl on our own descriptor.
        unsafe { libc::tcgetpgrp(self.fd()) }
    }

    /// Type bytes at the keyboard.
    fn send(&mut self, bytes: &[u8]) {
        let mut off = 0;
        let end = Instant::now() + STEP;
        while off < bytes.len() {
            // SAFETY: writing from a live slice.
            let n =
                unsafe { libc::write(self.fd(), bytes[off..].as_ptr().cast(), bytes.len() - off) };
            if n > 0 {
                off += n as usize;
                continue;
            }
            let e = std::io::Error::last_os_error();
            assert!(
                e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::Interrupted,
                "write to the pty: {e}"
            );
            assert!(Instant::now() < end, "the terminal does not take input");
            self.pump(Duration::from_millis(20));
        }
    }

    /// Type a command line.
    fn line(&mut self, cmd: &str) {
        self.send(format!("{cmd}\n").as_bytes());
    }

    /// Read what the terminal prints for up to `wait` (less if something arrives).
    fn pump(&mut self, wait: Duration) {
        if self.closed {
            std::thread::sleep(wait);
            return;
        }
        let mut pfd = libc::pollfd {
            fd: self.fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, wait.as_millis() as libc::c_int) };
        if r <= 0 {
            return;
        }
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: reading into a local buffer.
            let n = unsafe { libc::read(self.fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 {
                let s = String::from_utf8_lossy(&buf[..n as usize]).replace('\r', "");
                self.screen.push_str(&s);
                continue;
            }
            if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock {
                return;
            }
            // EIO: no process has the terminal open any more.
            self.closed = true;
            return;
        }
    }

    /// Wait until the terminal prints `pat` after what was consumed; consume up to its end.
    fn expect(&mut self, pat: &str) {
        let end = Instant::now() + STEP;
        loop {
            if let Some(i) = self.screen[self.pos..].find(pat) {
                self.pos += i + pat.len();
                return;
            }
            assert!(
                Instant::now() < end && !self.closed,
                "timed out waiting for {pat:?} on the terminal; it shows after the last \
                 match:\n{}\n--- whole transcript ---\n{}",
                &self.screen[self.pos..],
                self.screen
            );
            self.pump(Duration::from_millis(50));
        }
    }

    /// Everything printed during `d`, consumed.
    fn drain_for(&mut self, d: Duration) -> String {
        let end = Instant::now() + d;
        while Instant::now() < end {
            self.pump(end.saturating_duration_since(Instant::now()));
        }
        let s = self.screen[self.pos..].to_owned();
        self.pos = self.screen.len();
        s
    }

    /// Wait (bounded) for a condition seen from outside, reading the terminal meanwhile so the
    /// job never blocks on a full pty buffer.
    fn wait_until(&mut self, what: &str, mut f: impl FnMut(&mut Term) -> bool) {
        let end = Instant::now() + STEP;
        while !f(self) {
            assert!(
                Instant::now() < end,
                "timed out waiting for {what}; terminal transcript:\n{}",
                self.screen
            );
            self.pump(Duration::from_millis(20));
        }
    }

    /// `$?` of the last foreground command, asked of the shell.
    fn status(&mut self) -> i32 {
        self.line("echo \"rc=$?\"");
        // The echo of the typed line shows `rc=$?`, never `rc=<digit>`.
        let end = Instant::now() + STEP;
        loop {
            let rest = &self.screen[self.pos..];
            if let Some(i) = rest.find("rc=") {
                let tail = &rest[i + 3..];
                if let Some(nl) = tail.find('\n') {
                    if let Ok(n) = tail[..nl].trim().parse::<i32>() {
                        self.pos += i + 3 + nl;
                        return n;
                    }
                    // The typed line's echo: skip past it.
                    self.pos += i + 3;
                    continue;
                }
            }
            assert!(
                Instant::now() < end && !self.closed,
                "no rc= line; transcript:\n{}",
                self.screen
            );
            self.pump(Duration::from_millis(50));
        }
    }
}

impl Drop for Term {
    fn drop(&mut self) {
        let _ = self.bash.kill();
        let _ = self.bash.wait();
    }
}

/// Fields of /proc/PID/stat after the command name: (state, ppid, pgrp).
fn stat_of(pid: i32) -> Option<(char, i32, i32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut it = s.rsplit_once(") ")?.1.split_whitespace();
    let state = it.next()?.chars().next()?;
    let ppid = it.next()?.parse().ok()?;
    let pgrp = it.next()?.parse().ok()?;
    Some((state, ppid, pgrp))
}

fn comm_of(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// The job's main process (the one in the job cgroup whose parent is outside it, once it has
/// exec'd `comm`) and cgjob's pid (its parent).
fn main_and_cgjob(term: &mut Term, t: &TestJob, comm: &str) -> (i32, i32) {
    let mut found = None;
    term.wait_until(
        &format!("the job's {comm} in {}", t.job_cgroup().display()),
        |_| {
            let inside = procs(&t.job_cgroup());
            found = inside.iter().copied().find_map(|p| {
                let (_, ppid, _) = stat_of(p)?;
                (!inside.contains(&ppid) && comm_of(p) == comm).then_some((p, ppid))
            });
            found.is_some()
        },
    );
    let (main, cgjob) = found.unwrap();
    assert_eq!(comm_of(cgjob), "cgjob", "the main process is cgjob's child");
    (main, cgjob)
}

/// Nothing of the job left and its cgroup gone, checked once cgjob has returned (the shell
/// printed the status): cgjob returns only when no process of the job is left. The shell
/// carries the marker too (so that the guard kills it should the test fail) and is the only
/// marked process allowed to be alive.
fn assert_clean_but_shell(t: &TestJob, term: &Term) {
    let shell = format!("pid {} ", term.shell_pid());
    let left: Vec<String> = t
        .survivors()
        .into_iter()
        .filter(|s| !s.starts_with(&shell))
        .collect();
    assert!(left.is_empty(), "processes of the job survived: {left:#?}");
    assert!(
        !t.job_cgroup().exists(),
        "job cgroup {} was not removed",
        t.job_cgroup().display()
    );
}

/// Type `cmd` (a `cgjob run` of a bash job) at the prompt and wait until the job's main process
/// has the terminal; returns (main, cgjob).
fn start_in_foreground(term: &mut Term, t: &TestJob, cmd: &str) -> (i32, i32) {
    term.line(cmd);
    let (main, cgjob) = main_and_cgjob(term, t, "bash");
    term.wait_until("the job to have the terminal", |term| {
        term.foreground() == main
    });
    (main, cgjob)
}

/// Ctrl-Z: the shell reports the job stopped and prompts again.
fn ctrl_z(term: &mut Term) {
    term.send(b"\x1a");
    term.expect("Stopped");
    term.expect("$ ");
}

/// Ctrl-Z, then `bg`: wait until the job's main process and cgjob run again, in the
/// background.
fn stop_and_bg(term: &mut Term, main: i32, cgjob: i32) {
    ctrl_z(term);
    term.line("bg");
    term.expect("$ ");
    term.wait_until("the job to run in the background", |_| {
        state_of(main) != Some('T') && state_of(cgjob) != Some('T')
    });
}

const TICKER: &str = "bash -c 'while :; do echo tick; sleep 0.2; done'";

#[test]
fn ctrl_c_interrupts_the_job_in_the_foreground() {
    let t = TestJob::new("tty-int");
    let mut term = Term::start(&t);
    term.line("\"$CGJOB\" run --parent \"$CGP\" --name job -- sleep 1000");
    let (main, cgjob) = main_and_cgjob(&mut term, &t, "sleep");
    let (_, _, pgrp) = stat_of(main).unwrap();
    assert_eq!(pgrp, main, "the job has a process group of its own");
    assert_eq!(
        term.foreground(),
        main,
        "the job's process group has the terminal (cgjob is {cgjob})"
    );
    term.send(b"\x03");
    term.expect("$ ");
    assert_eq!(term.status(), 130, "Ctrl-C: 128 + SIGINT");
    assert_eq!(
        term.foreground(),
        term.shell_pid(),
        "the shell has the terminal back"
    );
    assert_clean_but_shell(&t, &term);
    // The shell still works.
    term.line("echo still-$((40+2))");
    term.expect("still-42\n");
}

#[test]
fn ctrl_z_stops_the_job_and_fg_resumes_it() {
    let t = TestJob::new("tty-stop");
    let mut term = Term::start(&t);
    term.line(&format!(
        "\"$CGJOB\" run --parent \"$CGP\" --name job -- {TICKER}"
    ));
    let (main, cgjob) = main_and_cgjob(&mut term, &t, "bash");
    term.expect("tick\n");
    term.expect("tick\n");
    assert_eq!(term.foreground(), main, "the job has the terminal");

    ctrl_z(&mut term);
    term.wait_until("the job's main process to be stopped", |_| {
        state_of(main) == Some('T')
    });
    term.wait_until("cgjob to be stopped (as the shell's job)", |_| {
        state_of(cgjob) == Some('T')
    });
    assert_eq!(
        term.foreground(),
        term.shell_pid(),
        "the shell has the terminal while the job is stopped"
    );
    let quiet = term.drain_for(Duration::from_millis(1200));
    assert!(
        !quiet.contains("tick\n"),
        "the stopped job kept printing:\n{quiet}"
    );
    assert!(
        procs(&t.job_cgroup())
            .iter()
            .all(|p| state_of(*p).is_none_or(|s| s == 'T')),
        "every process of the job is stopped"
    );
    // The shell works meanwhile.
    term.line("echo alive-$((6*7))");
    term.expect("alive-42\n");

    term.line("fg");
    term.expect("tick\n");
    term.expect("tick\n");
    assert_ne!(state_of(main), Some('T'), "the job runs again");
    assert_ne!(state_of(cgjob), Some('T'), "cgjob runs again");
    assert_eq!(term.foreground(), main, "the job has the terminal again");

    term.send(b"\x03");
    term.expect("$ ");
    assert_eq!(term.status(), 130, "Ctrl-C after fg: 128 + SIGINT");
    assert_clean_but_shell(&t, &term);
}

#[test]
fn the_job_reads_typed_input() {
    let t = TestJob::new("tty-read");
    let mut term = Term::start(&t);
    start_in_foreground(
        &mut term,
        &t,
        "\"$CGJOB\" run --parent \"$CGP\" --name job -- bash -c 'read line; echo \"got:$line\"; exit 7'",
    );
    term.line("hello there");
    term.expect("got:hello there\n");
    term.expect("$ ");
    assert_eq!(term.status(), 7);
    assert_clean_but_shell(&t, &term);
}

/// Ctrl-Z, `bg`: the job runs on in the background while the shell keeps the terminal; when it
/// then reads from the terminal it is stopped (as `bash -c 'read x' &` would be) without taking
/// the terminal from the shell; `fg` lets it read.
#[test]
fn bg_then_reading_the_terminal_stops_the_job_and_fg_lets_it_read() {
    let t = TestJob::new("tty-bg");
    let mut term = Term::start(&t);
    let (main, cgjob) = start_in_foreground(
        &mut term,
        &t,
        "\"$CGJOB\" run --parent \"$CGP\" --name job -- bash -c \
         'until [ -e \"$TMPD/go\" ]; do sleep 0.1; done; read line; echo \"got:$line\"; exit 9'",
    );
    stop_and_bg(&mut term, main, cgjob);
    assert_eq!(
        term.foreground(),
        term.shell_pid(),
        "bg: the shell keeps the terminal"
    );

    // Now the job reads from the terminal, from the background.
    std::fs::write(t.path("go"), "").unwrap();
    term.wait_until("the job to be stopped by its read (SIGTTIN)", |_| {
        state_of(main) == Some('T')
    });
    std::thread::sleep(Duration::from_millis(300));
    term.pump(Duration::from_millis(100));
    assert_eq!(
        term.foreground(),
        term.shell_pid(),
        "a background job's read must not take the terminal from the shell \
         (shell {}, cgjob {cgjob}, main {main}); transcript:\n{}",
        term.shell_pid(),
        term.screen
    );
    term.line("echo alive-$((6*7))");
    term.expect("alive-42\n");

    term.line("fg");
    term.wait_until("the job to have the terminal after fg", |term| {
        term.foreground() == main
    });
    term.line("typed");
    term.expect("got:typed\n");
    term.expect("$ ");
    assert_eq!(term.status(), 9);
    assert_clean_but_shell(&t, &term);
}

/// Started in the background (`cmd &`), brought to the foreground with `fg`: then Ctrl-Z stops
/// the job (not just cgjob), and after another `fg` the job reads typed input.
#[test]
fn started_in_background_then_fg_behaves_as_a_foreground_job() {
    let t = TestJob::new("tty-bgstart");
    let mut term = Term::start(&t);
    term.line(&format!(
        "\"$CGJOB\" run --parent \"$CGP\" --name job -- {TICKER} > \"$TMPD/out\" &"
    ));
    let (main, cgjob) = main_and_cgjob(&mut term, &t, "bash");
    term.expect("$ ");
    assert_eq!(
        term.foreground(),
        term.shell_pid(),
        "the shell keeps the terminal"
    );
    let ticks = || {
        std::fs::read_to_string(t.path("out"))
            .unwrap_or_default()
            .matches("tick")
            .count()
    };
    term.line("fg");
    term.wait_until("ticks after fg", |_| ticks() >= 3);

    ctrl_z(&mut term);
    term.wait_until(
        &format!("the job's main process {main} to be stopped by Ctrl-Z (cgjob {cgjob})"),
        |_| state_of(main) == Some('T'),
    );
    assert_eq!(state_of(cgjob), Some('T'), "cgjob stopped too");
    let before = ticks();
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(ticks(), before, "the job kept running after Ctrl-Z");

    term.line("fg");
    term.wait_until("ticks after the second fg", |_| ticks() >= before + 2);
    term.send(b"\x03");
    term.expect("$ ");
    assert_eq!(term.status(), 130);
    assert_clean_but_shell(&t, &term);
}

/// Ctrl-Z, `bg`, and the job then ends on its own while the shell waits at its prompt: the
/// shell keeps the terminal (cgjob must not take it back on its way out when it is in the
/// background) and goes on reading commands.
#[test]
fn a_job_ending_in_the_background_leaves_the_terminal_to_the_shell() {
    let t = TestJob::new("tty-bgend");
    let mut term = Term::start(&t);
    let (main, cgjob) = start_in_foreground(
        &mut term,
        &t,
        "\"$CGJOB\" run --parent \"$CGP\" --name job -- bash -c \
         'until [ -e \"$TMPD/go\" ]; do sleep 0.1; done; exit 5'",
    );
    stop_and_bg(&mut term, main, cgjob);

    std::fs::write(t.path("go"), "").unwrap();
    term.wait_until("cgjob to end", |_| state_of(cgjob).is_none_or(|s| s == 'Z'));
    term.pump(Duration::from_millis(300));
    assert_eq!(
        term.foreground(),
        term.shell_pid(),
        "the terminal belongs to the shell after a background job ended (cgjob {cgjob}); \
         transcript:\n{}",
        term.screen
    );
    term.line("echo alive-$((6*7))");
    term.expect("alive-42\n");
    // bash reports the background job's status itself, before a prompt ("[1]+  Exit 5");
    // once reported, `wait %1` no longer knows it, so look for the report.
    term.line("jobs; echo jobs-listed");
    term.expect("jobs-listed\n");
    assert!(
        term.screen.contains("Exit 5"),
        "the job's status reached the shell; transcript:\n{}",
        term.screen
    );
    assert_clean_but_shell(&t, &term);
}
