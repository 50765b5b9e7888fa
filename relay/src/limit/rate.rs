//! A request rate per tenant: the generic cell rate algorithm (GCRA) with a burst of the whole limit.
//!
//! `limit` requests per `period`: each admitted request moves the tenant's theoretical arrival time (TAT) one
//! emission interval (`period / limit`) later; a request is admitted while the TAT is at most `period` ahead of
//! now (after its own interval is added). So a tenant that has been quiet may send `limit` requests at once,
//! exactly, and then one per interval; one number per tenant, no log of past requests. What the client is told
//! follows OpenAI's headers: `remaining` is how many could still go now, `reset` how long until all of the limit
//! is back.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// The state after a request was admitted, or at the refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateState {
    pub limit: u32,
    pub remaining: u32,
    /// Until the whole limit is available again.
    pub reset: Duration,
}

/// Refused: `retry_after` is when one request will be admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateRefused {
    pub state: RateState,
    pub retry_after: Duration,
}

/// One tenant's rate.
#[derive(Debug)]
pub struct Gcra {
    limit: u32,
    period: Duration,
    interval: Duration,
    /// The theoretical arrival time and the latest `now` seen; `None` until the first request (a full burst is
    /// available).
    tat: Mutex<Option<(Instant, Instant)>>,
}

impl Gcra {
    /// `limit` ≥ 1 requests per `period` (the configuration refuses 0).
    pub fn new(limit: u32, period: Duration) -> Self {
        let limit = limit.max(1);
        Self {
            limit,
            period,
            interval: period / limit,
            tat: Mutex::new(None),
        }
    }

    /// The same tenant's rate after a reload set its limit to `limit`: the arrival time it had carries over, so
    /// a reload never hands a tenant a fresh burst.
    pub fn carried(&self, limit: u32) -> Self {
        let next = Self::new(limit, self.period);
        let tat = *self
            .tat
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *next
            .tat
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = tat;
        next
    }

    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// Admits one request at `now` (and counts it), or says when to retry.
    pub fn admit(&self, now: Instant) -> Result<RateState, RateRefused> {
        let mut tat = self
            .tat
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Requests that started a moment apart may arrive here in either order: time never goes back, or a later
        // one would see the limit a fraction of an interval fuller than it is (one request less remaining).
        let now = tat.map_or(now, |(_, seen)| seen.max(now));
        let current = tat.map_or(now, |(t, _)| t.max(now));
        let next = current + self.interval;
        let ahead = next - now;
        if ahead > self.period {
            *tat = Some((current, now));
            return Err(RateRefused {
                state: self.state(current - now),
                retry_after: ahead - self.period,
            });
        }
        *tat = Some((next, now));
        Ok(self.state(ahead))
    }

    /// What the headers say when the TAT is `ahead` of now.
    fn state(&self, ahead: Duration) -> RateState {
        state_for(self.limit, self.period, self.interval, ahead)
    }
}

/// What the headers say for `limit` per `period` (emission `interval`) when the TAT is `ahead` of now.
pub fn state_for(limit: u32, period: Duration, interval: Duration, ahead: Duration) -> RateState {
    let free = period.saturating_sub(ahead);
    // Whole intervals of headroom; the division is exact at the boundaries (both are multiples of `interval`).
    let remaining = (free.as_nanos() / interval.as_nanos().max(1)) as u32;
    RateState {
        limit,
        remaining: remaining.min(limit),
        reset: ahead,
    }
}

/// OpenAI's duration format for `x-ratelimit-reset-*`: `20ms`, `1.5s`, `6m0s`.
pub fn reset_header(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        let s = format!("{:.3}", d.as_secs_f64());
        format!("{}s", s.trim_end_matches('0').trim_end_matches('.'))
    } else {
        format!("{}m{}s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_quiet_tenant_gets_exactly_its_limit_at_once_then_one_per_interval() {
        let g = Gcra::new(30, Duration::from_secs(60));
        let start = Instant::now();
        for i in 0..30 {
            let s = g.admit(start).unwrap();
            assert_eq!(s.remaining, 29 - i, "request {i}");
            assert_eq!(s.reset, Duration::from_secs(2 * u64::from(i + 1)));
        }
        let refused = g.admit(start).unwrap_err();
        assert_eq!(refused.retry_after, Duration::from_secs(2));
        assert_eq!(refused.state.remaining, 0);
        // Refusals are not counted: after the interval exactly one more goes.
        tokio::time::advance(Duration::from_millis(1999)).await;
        assert!(g.admit(Instant::now()).is_err());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(g.admit(Instant::now()).unwrap().remaining, 0);
        assert!(g.admit(Instant::now()).is_err());
        // A whole period later the whole burst is back.
        tokio::time::advance(Duration::from_secs(60)).await;
        for _ in 0..30 {
            g.admit(Instant::now()).unwrap();
        }
        assert!(g.admit(Instant::now()).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn requests_that_arrive_out_of_their_start_order_count_the_same() {
        let g = Gcra::new(3, Duration::from_secs(60));
        let early = Instant::now();
        tokio::time::advance(Duration::from_millis(5)).await;
        let late = Instant::now();
        assert_eq!(g.admit(late).unwrap().remaining, 2);
        assert_eq!(g.admit(early).unwrap().remaining, 1);
        assert_eq!(g.admit(early).unwrap().remaining, 0);
        assert!(g.admit(late).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_tenant_at_its_rate_is_never_refused() {
        let g = Gcra::new(60, Duration::from_secs(60));
        for _ in 0..200 {
            let s = g.admit(Instant::now()).unwrap();
            assert_eq!(s.remaining, 59);
            tokio::time::advance(Duration::from_secs(1)).await;
        }
    }

    #[test]
    fn reset_reads_like_openais() {
        let cases = [
            (20, "20ms"),
            (1500, "1.5s"),
            (2000, "2s"),
            (1234, "1.234s"),
            (360_000, "6m0s"),
            (61_500, "1m1s"),
        ];
        for (ms, text) in cases {
            assert_eq!(reset_header(Duration::from_millis(ms)), text);
        }
    }
}
