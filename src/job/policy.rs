//! POLICY, pure: the escalation ladder of one job as a state machine (nextest's lesson:
//! escalation as pure functions tested with tables). The supervisor feeds it events and
//! carries out the actions it returns; nothing here touches the system.

use std::time::{Duration, Instant};

use serde::Serialize;

/// What to do about processes still running when the main process has exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LeftoverPolicy {
    /// SIGTERM (+SIGCONT) them, wait the grace period, then kill.
    #[default]
    Term,
    /// Let them finish on their own, bounded by the timeout if there is one.
    Wait,
}

/// How far the timeout got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TimeoutPhase {
    /// No timeout, or it did not fire.
    #[default]
    None,
    /// The timeout signal was sent.
    Signalled,
    /// The job was killed after `--kill-after`.
    Killed,
}

/// The settings the ladder needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Ladder {
    pub grace: Duration,
    pub leftovers: LeftoverPolicy,
    pub timeout: Option<Duration>,
    pub timeout_signal: i32,
    pub kill_after: Duration,
    /// How long to wait for `populated 0` after the first kill before declaring the rest
    /// unkillable.
    pub kill_timeout: Duration,
    /// How often to repeat a kill pass while the cgroup is still populated.
    pub rekill_interval: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The main process runs.
    Running,
    /// Main has exited; leftovers run on, by choice.
    Waiting,
    /// Leftovers were sent SIGTERM; waiting for them until `until`.
    Grace { until: Instant },
    /// Kill passes are under way; give up at `until`.
    Killing { until: Instant, next_pass: Instant },
    /// Over.
    Done { unkillable: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A signal cgjob received (other than SIGCHLD).
    Signal(i32),
    /// The main process has exited; `empty` says whether nothing of the job is left.
    MainExited { empty: bool },
    /// Nothing of the job is left.
    Empty,
    /// Time has passed: deadlines are checked.
    Tick,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Forward a received signal to the job.
    Forward(i32),
    /// Send the timeout signal (then SIGCONT) to the main process.
    SignalMain(i32),
    /// Record every leftover as it is now.
    Snapshot,
    /// SIGTERM then SIGCONT every leftover.
    TermLeftovers,
    /// One kill pass over everything of the job.
    KillPass,
    /// Stop supervising.
    Finish,
}

/// Signals that, received while leftovers are left to run (`Waiting`), mean "end it now".
const ENDING: &[i32] = &[libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT];

/// The state of one job's ladder.
#[derive(Debug, Clone)]
pub struct Escalation {
    ladder: Ladder,
    phase: Phase,
    timeout: TimeoutPhase,
    timeout_at: Option<Instant>,
    kill_at: Option<Instant>,
}

impl Escalation {
    pub fn new(ladder: Ladder, started: Instant) -> Self {
        let timeout_at = ladder.timeout.map(|t| started + t);
        Escalation {
            ladder,
            phase: Phase::Running,
            timeout: TimeoutPhase::None,
            timeout_at,
            kill_at: None,
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn timeout_phase(&self) -> TimeoutPhase {
        self.timeout
    }

    /// Whether the supervisor should look for emptiness (main gone, or being killed).
    pub fn wants_empty(&self) -> bool {
        matches!(
            self.phase,
            Phase::Waiting | Phase::Grace { .. } | Phase::Killing { .. }
        )
    }

    /// The next moment a `Tick` can change anything.
    pub fn next_deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Running => match self.timeout {
                TimeoutPhase::None => self.timeout_at,
                TimeoutPhase::Signalled => self.kill_at,
                TimeoutPhase::Killed => None,
            },
            Phase::Waiting => match self.timeout {
                TimeoutPhase::None => self.timeout_at,
                _ => None,
            },
            Phase::Grace { until } => Some(until),
            Phase::Killing { until, next_pass } => Some(until.min(next_pass)),
            Phase::Done { .. } => None,
        }
    }

    fn start_killing(&mut self, now: Instant) -> Vec<Action> {
        self.phase = Phase::Killing {
            until: now + self.ladder.kill_timeout,
            next_pass: now + self.ladder.rekill_interval,
        };
        vec![Action::KillPass]
    }

    fn start_grace(&mut self, now: Instant) -> Vec<Action> {
        self.phase = Phase::Grace {
            until: now + self.ladder.grace,
        };
        vec![Action::TermLeftovers]
    }

    /// Feed one event; returns what to do, in order.
    pub fn on(&mut self, ev: Event, now: Instant) -> Vec<Action> {
        use Action::*;
        match (self.phase, ev) {
            (Phase::Done { .. }, _) => vec![],

            (Phase::Running, Event::Signal(s)) => vec![Forward(s)],
            (Phase::Running, Event::MainExited { empty: true }) => {
                self.phase = Phase::Done { unkillable: false };
                vec![Finish]
            }
            (Phase::Running, Event::MainExited { empty: false }) => {
                let mut acts = vec![Snapshot];
                let timed_out = self.timeout != TimeoutPhase::None;
                if self.ladder.leftovers == LeftoverPolicy::Term || timed_out {
                    acts.extend(self.start_grace(now));
                } else {
                    self.phase = Phase::Waiting;
                }
                acts
            }
            (Phase::Running, Event::Empty) => vec![],
            (Phase::Running, Event::Tick) => match self.timeout {
                TimeoutPhase::None if self.timeout_at.is_some_and(|t| now >= t) => {
                    self.timeout = TimeoutPhase::Signalled;
                    self.kill_at = Some(now + self.ladder.kill_after);
                    vec![SignalMain(self.ladder.timeout_signal)]
                }
                TimeoutPhase::Signalled if self.kill_at.is_some_and(|t| now >= t) => {
                    self.timeout = TimeoutPhase::Killed;
                    let mut acts = vec![Snapshot];
                    acts.extend(self.start_killing(now));
                    acts
                }
                _ => vec![],
            },

            (Phase::Waiting, Event::Signal(s)) if ENDING.contains(&s) => self.start_grace(now),
            (Phase::Waiting, Event::Signal(s)) => vec![Forward(s)],
            (Phase::Waiting, Event::Empty) => {
                self.phase = Phase::Done { unkillable: false };
                vec![Finish]
            }
            (Phase::Waiting, Event::Tick)
                if self.timeout == TimeoutPhase::None
                    && self.timeout_at.is_some_and(|t| now >= t) =>
            {
                self.timeout = TimeoutPhase::Signalled;
                self.start_grace(now)
            }
            (Phase::Waiting, _) => vec![],

            (Phase::Grace { .. }, Event::Empty) => {
                self.phase = Phase::Done { unkillable: false };
                vec![Finish]
            }
            (Phase::Grace { until }, Event::Tick) if now >= until => {
                if self.timeout == TimeoutPhase::Signalled {
                    self.timeout = TimeoutPhase::Killed;
                }
                self.start_killing(now)
            }
            (Phase::Grace { .. }, _) => vec![],

            (Phase::Killing { .. }, Event::Empty) => {
                self.phase = Phase::Done { unkillable: false };
                vec![Finish]
            }
            (Phase::Killing { until, .. }, Event::Tick) if now >= until => {
                self.phase = Phase::Done { unkillable: true };
                vec![Finish]
            }
            (Phase::Killing { until, next_pass }, Event::Tick) if now >= next_pass => {
                let _ = next_pass;
                self.phase = Phase::Killing {
                    until,
                    next_pass: now + self.ladder.rekill_interval,
                };
                vec![KillPass]
            }
            (Phase::Killing { .. }, _) => vec![],
        }
    }
}

/// How the main process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MainExit {
    Code(i32),
    Signal { signal: i32, core_dumped: bool },
}

impl std::fmt::Display for MainExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MainExit::Code(c) => write!(f, "exited {c}"),
            MainExit::Signal {
                signal,
                core_dumped,
            } => write!(
                f,
                "killed by {}{}",
                crate::process::signals::name(*signal),
                if *core_dumped { " (core dumped)" } else { "" }
            ),
        }
    }
}

/// cgjob's exit statuses (the README's table).
pub mod exit {
    /// The timeout fired (as GNU `timeout`).
    pub const TIMEOUT: i32 = 124;
    /// cgjob itself failed.
    pub const FAILURE: i32 = 125;
    /// The command was found but could not be executed.
    pub const NOT_EXECUTABLE: i32 = 126;
    /// The command was not found.
    pub const NOT_FOUND: i32 = 127;
    /// Processes of the job survived every kill (D state); the cgroup was left in place.
    pub const UNKILLABLE: i32 = 123;
    /// Bad command-line usage (clap's status).
    pub const USAGE: i32 = 2;
}

/// The status cgjob exits with: unkillable leftovers first (the node is not clean), then the
/// timeout, then the main process's own status (128+N for death by signal N).
pub fn exit_status(main: Option<MainExit>, timeout: TimeoutPhase, unkillable: bool) -> i32 {
    if unkillable {
        return exit::UNKILLABLE;
    }
    if timeout != TimeoutPhase::None {
        return exit::TIMEOUT;
    }
    match main {
        Some(MainExit::Code(c)) => c,
        Some(MainExit::Signal { signal, .. }) => 128 + signal,
        None => exit::FAILURE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Action::*;

    fn ladder(leftovers: LeftoverPolicy, timeout: Option<u64>) -> Ladder {
        Ladder {
            grace: Duration::from_secs(2),
            leftovers,
            timeout: timeout.map(Duration::from_secs),
            timeout_signal: libc::SIGTERM,
            kill_after: Duration::from_secs(3),
            kill_timeout: Duration::from_secs(10),
            rekill_interval: Duration::from_millis(200),
        }
    }

    /// Run a script of (seconds after start, event) and collect (actions, phase name) per step.
    fn script(l: Ladder, steps: &[(f64, Event)]) -> (Vec<Vec<Action>>, Escalation) {
        let t0 = Instant::now();
        let mut e = Escalation::new(l, t0);
        let out = steps
            .iter()
            .map(|(s, ev)| e.on(*ev, t0 + Duration::from_secs_f64(*s)))
            .collect();
        (out, e)
    }

    #[test]
    fn ladder_table() {
        use Event::*;
        use LeftoverPolicy::*;
        let term = libc::SIGTERM;
        type Case = (
            &'static str,
            Ladder,
            Vec<(f64, Event)>,
            Vec<Vec<Action>>,
            TimeoutPhase,
            Option<bool>,
        );
        let cases: Vec<Case> = vec![
            (
                "clean exit",
                ladder(Term, None),
                vec![(1.0, MainExited { empty: true })],
                vec![vec![Finish]],
                TimeoutPhase::None,
                Some(false),
            ),
            (
                "signals are forwarded while main runs",
                ladder(Term, None),
                vec![(0.5, Signal(libc::SIGUSR1)), (0.6, Signal(term))],
                vec![vec![Forward(libc::SIGUSR1)], vec![Forward(term)]],
                TimeoutPhase::None,
                None,
            ),
            (
                "leftovers: term, grace, kill, empty",
                ladder(Term, None),
                vec![
                    (1.0, MainExited { empty: false }),
                    (2.0, Tick),
                    (3.0, Tick),
                    (3.1, Empty),
                ],
                vec![
                    vec![Snapshot, TermLeftovers],
                    vec![],
                    vec![KillPass],
                    vec![Finish],
                ],
                TimeoutPhase::None,
                Some(false),
            ),
            (
                "leftovers leave during grace",
                ladder(Term, None),
                vec![
                    (1.0, MainExited { empty: false }),
                    (1.5, Empty),
                    (9.0, Tick),
                ],
                vec![vec![Snapshot, TermLeftovers], vec![Finish], vec![]],
                TimeoutPhase::None,
                Some(false),
            ),
            (
                "signals are not forwarded during grace",
                ladder(Term, None),
                vec![(1.0, MainExited { empty: false }), (1.5, Signal(term))],
                vec![vec![Snapshot, TermLeftovers], vec![]],
                TimeoutPhase::None,
                None,
            ),
            (
                "kill passes repeat, then unkillable",
                ladder(Term, None),
                vec![
                    (1.0, MainExited { empty: false }),
                    (3.0, Tick),
                    (3.1, Tick),
                    (3.2, Tick),
                    (3.5, Tick),
                    (13.0, Tick),
                ],
                vec![
                    vec![Snapshot, TermLeftovers],
                    vec![KillPass],
                    vec![],
                    vec![KillPass],
                    vec![KillPass],
                    vec![Finish],
                ],
                TimeoutPhase::None,
                Some(true),
            ),
            (
                "timeout: signal, main obeys",
                ladder(Term, Some(5)),
                vec![(4.9, Tick), (5.0, Tick), (5.1, MainExited { empty: true })],
                vec![vec![], vec![SignalMain(term)], vec![Finish]],
                TimeoutPhase::Signalled,
                Some(false),
            ),
            (
                "timeout: main ignores TERM, killed after kill-after",
                ladder(Term, Some(5)),
                vec![
                    (5.0, Tick),
                    (7.9, Tick),
                    (8.0, Tick),
                    (8.01, MainExited { empty: false }),
                    (8.02, Empty),
                ],
                vec![
                    vec![SignalMain(term)],
                    vec![],
                    vec![Snapshot, KillPass],
                    vec![],
                    vec![Finish],
                ],
                TimeoutPhase::Killed,
                Some(false),
            ),
            (
                "wait policy: leftovers finish on their own",
                ladder(Wait, None),
                vec![
                    (1.0, MainExited { empty: false }),
                    (50.0, Tick),
                    (60.0, Empty),
                ],
                vec![vec![Snapshot], vec![], vec![Finish]],
                TimeoutPhase::None,
                Some(false),
            ),
            (
                "wait policy is bounded by the timeout",
                ladder(Wait, Some(10)),
                vec![
                    (1.0, MainExited { empty: false }),
                    (10.0, Tick),
                    (12.0, Tick),
                    (12.05, Empty),
                ],
                vec![
                    vec![Snapshot],
                    vec![TermLeftovers],
                    vec![KillPass],
                    vec![Finish],
                ],
                TimeoutPhase::Killed,
                Some(false),
            ),
            (
                "wait policy: TERM to cgjob ends the wait",
                ladder(Wait, None),
                vec![
                    (1.0, MainExited { empty: false }),
                    (2.0, Signal(term)),
                    (4.0, Tick),
                ],
                vec![vec![Snapshot], vec![TermLeftovers], vec![KillPass]],
                TimeoutPhase::None,
                None,
            ),
            (
                "wait policy: main exits after the timeout signal, no more waiting",
                ladder(Wait, Some(1)),
                vec![(1.0, Tick), (1.5, MainExited { empty: false })],
                vec![vec![SignalMain(term)], vec![Snapshot, TermLeftovers]],
                TimeoutPhase::Signalled,
                None,
            ),
        ];
        for (name, l, steps, want, want_timeout, want_done) in cases {
            let (got, e) = script(l, &steps);
            assert_eq!(got, want, "{name}");
            assert_eq!(e.timeout_phase(), want_timeout, "{name}");
            let done = match e.phase() {
                Phase::Done { unkillable } => Some(unkillable),
                _ => None,
            };
            assert_eq!(done, want_done, "{name}");
        }
    }

    #[test]
    fn deadlines() {
        let t0 = Instant::now();
        let mut e = Escalation::new(ladder(LeftoverPolicy::Term, Some(5)), t0);
        assert_eq!(e.next_deadline(), Some(t0 + Duration::from_secs(5)));
        e.on(Event::Tick, t0 + Duration::from_secs(5));
        assert_eq!(e.next_deadline(), Some(t0 + Duration::from_secs(8)));
        let mut e = Escalation::new(ladder(LeftoverPolicy::Term, None), t0);
        assert_eq!(e.next_deadline(), None);
        e.on(Event::MainExited { empty: false }, t0);
        assert_eq!(e.next_deadline(), Some(t0 + Duration::from_secs(2)));
        assert!(e.wants_empty());
    }

    #[test]
    fn exit_status_table() {
        let cases = [
            (Some(MainExit::Code(0)), TimeoutPhase::None, false, 0),
            (Some(MainExit::Code(3)), TimeoutPhase::None, false, 3),
            (
                Some(MainExit::Signal {
                    signal: 9,
                    core_dumped: false,
                }),
                TimeoutPhase::None,
                false,
                137,
            ),
            (
                Some(MainExit::Signal {
                    signal: 11,
                    core_dumped: true,
                }),
                TimeoutPhase::None,
                false,
                139,
            ),
            (Some(MainExit::Code(0)), TimeoutPhase::Signalled, false, 124),
            (
                Some(MainExit::Signal {
                    signal: 9,
                    core_dumped: false,
                }),
                TimeoutPhase::Killed,
                false,
                124,
            ),
            (
                Some(MainExit::Code(0)),
                TimeoutPhase::None,
                true,
                exit::UNKILLABLE,
            ),
            (None, TimeoutPhase::None, false, 125),
        ];
        for (main, t, u, want) in cases {
            assert_eq!(exit_status(main, t, u), want, "{main:?} {t:?} {u}");
        }
    }
}
