//! The receiver's protocol state machine: which control-lane frame may come
//! in which state, and where it leads. The driver loops over `(state,
//! frame)` pairs; a frame that does not belong to the current state is a
//! protocol error that names both.
//!
//! ```text
//!            Layout, Pending, ImageChunk, EndOfRound(n = next)
//!               ┌──────┐
//!               v      │
//!  start ──> Rounds{next} ──Switchover{postcopy}──> Running{switch}
//!                                                     │  VerifyDigests
//!                                                     v
//!                                                  Verifying{switch} ──Done──> Finished
//!                                   Running{switch} ──Done─────────────────────┘
//! ```
//!
//! The data lanes follow the state too ([`State::accepting`]): pages during
//! the rounds and post-copy, none after the pre-copy switch or the end.
use pagehop_dest::intake::Accepting;
use pagehop_wire::FrameKind;

use crate::report::SwitchKind;

/// Where the receiver stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Before the switch: layouts, rounds (the next one expected), the
    /// pending set.
    Rounds { next_round: u32 },
    /// After the switch: the process runs.
    Running { switch: SwitchKind },
    /// Verification digests are coming.
    Verifying { switch: SwitchKind },
    /// The source's final `Done`: the migration is over.
    Finished,
}

/// A control-lane frame, as the state machine sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    Layout,
    EndOfRound {
        round: u32,
    },
    Pending,
    /// Part of CRIU's images (before a CRIU switch).
    ImageChunk,
    Switchover {
        postcopy: bool,
    },
    VerifyDigests,
    Done,
    /// Any other kind (a `Pages` frame on the control lane, a `Hello`...).
    Other(FrameKind),
}

/// A frame that does not belong to the state it arrived in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("protocol: {what} {}", .state.describe())]
pub struct OutOfOrder {
    pub what: String,
    pub state: State,
}

impl State {
    pub fn start() -> Self {
        State::Rounds { next_round: 0 }
    }

    /// Whether the switch happened (the process may run).
    pub fn switched(self) -> bool {
        !matches!(self, State::Rounds { .. })
    }

    /// What the data lanes may deliver in this state. After a pre-copy
    /// switch nothing: the final round was acknowledged whole before it.
    /// During post-copy pages keep coming until the source's final `Done`,
    /// also after every page is installed: a background push and a demand
    /// answer can both carry a page, and the later copy is simply late.
    pub fn accepting(self) -> Accepting {
        match self {
            State::Rounds { .. } => Accepting::Rounds,
            State::Running {
                switch: SwitchKind::Postcopy,
            }
            | State::Verifying {
                switch: SwitchKind::Postcopy,
            } => Accepting::Postcopy,
            State::Running {
                switch: SwitchKind::Precopy,
            }
            | State::Verifying {
                switch: SwitchKind::Precopy,
            } => Accepting::AfterSwitch,
            State::Finished => Accepting::AfterDone,
        }
    }

    fn describe(self) -> String {
        match self {
            State::Rounds { next_round } => {
                format!("before the switch (expecting round {next_round})")
            }
            State::Running { switch } => format!("after the {} switch", switch_name(switch)),
            State::Verifying { switch } => {
                format!(
                    "during verification after the {} switch",
                    switch_name(switch)
                )
            }
            State::Finished => "after the migration's Done".to_string(),
        }
    }

    /// The state after `event`, or why `event` does not belong here.
    pub fn next(self, event: Event) -> Result<State, OutOfOrder> {
        let refuse = |what: String| Err(OutOfOrder { what, state: self });
        match (self, event) {
            (State::Rounds { .. }, Event::Layout | Event::Pending | Event::ImageChunk) => Ok(self),
            (State::Rounds { next_round }, Event::EndOfRound { round }) if round == next_round => {
                Ok(State::Rounds {
                    next_round: round + 1,
                })
            }
            (State::Rounds { .. }, Event::EndOfRound { round }) => {
                refuse(format!("the end of round {round} arrived"))
            }
            (State::Rounds { .. }, Event::Switchover { postcopy }) => Ok(State::Running {
                switch: if postcopy {
                    SwitchKind::Postcopy
                } else {
                    SwitchKind::Precopy
                },
            }),
            (State::Running { switch } | State::Verifying { switch }, Event::VerifyDigests) => {
                Ok(State::Verifying { switch })
            }
            (State::Running { .. } | State::Verifying { .. }, Event::Done) => Ok(State::Finished),
            (_, Event::Switchover { .. }) => refuse("a second Switchover arrived".to_string()),
            (State::Rounds { .. }, Event::Done) => refuse("Done arrived".to_string()),
            (State::Rounds { .. }, Event::VerifyDigests) => {
                refuse("verification digests arrived".to_string())
            }
            (_, Event::Other(kind)) => refuse(format!("an unexpected {kind} frame arrived")),
            (_, event) => refuse(format!("{} arrived", event.name())),
        }
    }
}

impl Event {
    fn name(self) -> String {
        match self {
            Event::Layout => "a Layout".into(),
            Event::EndOfRound { round } => format!("the end of round {round}"),
            Event::Pending => "a Pending list".into(),
            Event::ImageChunk => "an image chunk".into(),
            Event::Switchover { .. } => "a Switchover".into(),
            Event::VerifyDigests => "verification digests".into(),
            Event::Done => "Done".into(),
            Event::Other(kind) => format!("a {kind} frame"),
        }
    }
}

fn switch_name(switch: SwitchKind) -> &'static str {
    match switch {
        SwitchKind::Precopy => "pre-copy",
        SwitchKind::Postcopy => "post-copy",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(events: &[Event]) -> Result<State, OutOfOrder> {
        events.iter().try_fold(State::start(), |s, &e| s.next(e))
    }

    #[test]
    fn a_precopy_migration_runs_through() {
        let s = run(&[
            Event::Layout,
            Event::EndOfRound { round: 0 },
            Event::Layout,
            Event::EndOfRound { round: 1 },
            Event::Switchover { postcopy: false },
            Event::VerifyDigests,
            Event::VerifyDigests,
            Event::Done,
        ])
        .expect("in order");
        assert_eq!(s, State::Finished);
    }

    #[test]
    fn a_postcopy_migration_runs_through_without_verification() {
        let s = run(&[
            Event::Layout,
            Event::EndOfRound { round: 0 },
            Event::Pending,
            Event::Pending,
            Event::Switchover { postcopy: true },
        ])
        .expect("in order");
        assert_eq!(
            s,
            State::Running {
                switch: SwitchKind::Postcopy
            }
        );
        assert_eq!(s.accepting(), Accepting::Postcopy);
        assert_eq!(s.next(Event::Done), Ok(State::Finished));
    }

    #[test]
    fn a_second_switchover_is_refused() {
        let err = run(&[
            Event::Switchover { postcopy: false },
            Event::Switchover { postcopy: true },
        ])
        .expect_err("twice");
        assert_eq!(
            err.state,
            State::Running {
                switch: SwitchKind::Precopy
            }
        );
        assert_eq!(
            err.to_string(),
            "protocol: a second Switchover arrived after the pre-copy switch"
        );
    }

    #[test]
    fn done_before_the_switch_is_refused() {
        let err = run(&[Event::EndOfRound { round: 0 }, Event::Done]).expect_err("early");
        assert_eq!(
            err.to_string(),
            "protocol: Done arrived before the switch (expecting round 1)"
        );
        assert!(run(&[Event::VerifyDigests]).is_err());
    }

    #[test]
    fn rounds_come_in_order() {
        let err = run(&[
            Event::EndOfRound { round: 0 },
            Event::EndOfRound { round: 2 },
        ])
        .expect_err("skipped a round");
        assert!(err.to_string().contains("round 2"), "{err}");
        assert!(run(&[Event::EndOfRound { round: 1 }]).is_err());
        assert!(
            run(&[
                Event::EndOfRound { round: 0 },
                Event::EndOfRound { round: 0 }
            ])
            .is_err()
        );
    }

    #[test]
    fn nothing_belongs_after_done() {
        let done = run(&[Event::Switchover { postcopy: false }, Event::Done]).expect("done");
        for e in [
            Event::Layout,
            Event::EndOfRound { round: 0 },
            Event::Pending,
            Event::VerifyDigests,
            Event::Done,
            Event::Switchover { postcopy: false },
            Event::Other(FrameKind::Pages),
        ] {
            let err = done.next(e).expect_err("after done");
            assert!(
                err.to_string().ends_with("after the migration's Done"),
                "{err}"
            );
        }
        // The data lanes take no pages after Done, nor after a pre-copy switch.
        assert_eq!(done.accepting(), Accepting::AfterDone);
        assert_eq!(
            State::Running {
                switch: SwitchKind::Precopy
            }
            .accepting(),
            Accepting::AfterSwitch
        );
    }

    #[test]
    fn late_postcopy_pages_are_taken_until_the_final_done() {
        let verifying = State::Verifying {
            switch: SwitchKind::Postcopy,
        };
        assert_eq!(verifying.accepting(), Accepting::Postcopy);
        let precopy = State::Verifying {
            switch: SwitchKind::Precopy,
        };
        assert_eq!(precopy.accepting(), Accepting::AfterSwitch);
        assert_eq!(
            verifying.next(Event::Done).map(State::accepting),
            Ok(Accepting::AfterDone)
        );
    }

    #[test]
    fn layout_pending_and_rounds_only_before_the_switch() {
        let running = State::Running {
            switch: SwitchKind::Precopy,
        };
        for e in [
            Event::Layout,
            Event::Pending,
            Event::EndOfRound { round: 3 },
        ] {
            assert!(running.next(e).is_err(), "{e:?}");
        }
        let err = State::start()
            .next(Event::Other(FrameKind::Pages))
            .expect_err("pages on control");
        assert!(err.to_string().contains("unexpected Pages frame"), "{err}");
    }
}
