//! The stream's time limits, decided in one place: which deadline has passed, whether a keep-alive comment is
//! due, or when to look again. Pure: the tap keeps one `Sleep` and asks [`Timers::due`] whenever it wakes.

use std::time::Duration;

use tokio::time::Instant;

use crate::outcome::Failure;

/// The stream's time limits, from the route.
#[derive(Clone, Copy, Debug)]
pub struct Timers {
    /// From the request's start until the first body frame.
    pub first_byte_deadline: Instant,
    /// Longest silence between two upstream frames.
    pub idle: Duration,
    /// The stream's whole life.
    pub total_deadline: Instant,
    /// A `: keep-alive` comment after this much silence either way, only at event boundaries.
    pub keepalive: Option<Duration>,
}

/// What the timers say at a moment.
#[derive(Debug, PartialEq, Eq)]
pub enum Due {
    Fail(Failure),
    Ping,
    Wait(Instant),
}

impl Timers {
    /// The limits of a stream that started at `started`: deadlines from it, durations as they are.
    pub fn starting(
        started: Instant,
        first_byte: Duration,
        idle: Duration,
        total: Duration,
        keepalive: Option<Duration>,
    ) -> Self {
        Self {
            first_byte_deadline: started + first_byte,
            idle,
            total_deadline: started + total,
            keepalive,
        }
    }

    /// `last_frame`: the last upstream data frame; `last_activity`: the last byte sent either way;
    /// `at_boundary`: whether a comment may be inserted now without splitting an event.
    pub fn due(
        &self,
        now: Instant,
        last_frame: Option<Instant>,
        last_activity: Instant,
        at_boundary: bool,
    ) -> Due {
        if now >= self.total_deadline {
            return Due::Fail(Failure::TotalTimeout);
        }
        let (silence_deadline, silence) = match last_frame {
            None => (self.first_byte_deadline, Failure::UpstreamFirstByteTimeout),
            Some(at) => (at + self.idle, Failure::UpstreamIdleTimeout),
        };
        if now >= silence_deadline {
            return Due::Fail(silence);
        }
        let mut wake = silence_deadline.min(self.total_deadline);
        if let (Some(every), true) = (self.keepalive, at_boundary) {
            let ping_at = last_activity + every;
            if now >= ping_at {
                return Due::Ping;
            }
            wake = wake.min(ping_at);
        }
        Due::Wait(wake)
    }
}
