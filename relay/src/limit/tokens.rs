//! A tenant's tokens: per minute, per UTC day and per UTC month.
//!
//! Tokens are known for sure only when an answer ends (the vendor's usage), so a request **reserves** what it may
//! use before the vendor is called, and its answer **settles** to what it used when it ends:
//!
//! - the reservation is the request's prompt (estimated, [`crate::usage::estimate`]) plus its answer's cap (its
//!   `max_tokens`, `max_completion_tokens` or `max_output_tokens`, else the tenant's `reserve_output_tokens`),
//!   at most the smallest of the tenant's token limits ([`TokenLimits::reservation`]);
//! - a request is admitted only when its reservation fits in what is left of every limit, and the reservation is
//!   charged at once, so requests sent together see each other's reservations (N parallel requests cannot overrun
//!   a limit N times over, as they could when each was admitted while any token was left);
//! - at the end the difference is charged or given back: the vendor's usage, or an estimate for an answer without
//!   one, or nothing for a request the vendor refused or never answered.
//!
//! A limit is overrun only by an answer longer than its reservation (a request without `max_tokens` whose answer
//! is longer than `reserve_output_tokens`, or a prompt the estimate undercounted); the tenant is then in debt, and
//! waits until the debt is repaid.
//!
//! - **Per minute**: the same GCRA as [`super::rate`] with a cost: each token moves the tenant's theoretical arrival
//!   time one interval (`60 s / limit`) later; a request is admitted while its reservation is free. `remaining`
//!   and `reset` read like OpenAI's `x-ratelimit-*-tokens` headers, after the reservation.
//! - **Per day / per month**: fixed UTC calendar windows (a quota resets at 00:00 UTC, and on the first of the
//!   month); `Retry-After` is the time until the window turns. A reservation is settled in the window it was made
//!   in (in this process: while that window lasts).

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::rate::{RateRefused, RateState, state_for};
use crate::config::TokenLimits;

const MINUTE: Duration = Duration::from_secs(60);
const DAY: u64 = 86_400;

/// A calendar window of a token quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    Day,
    Month,
}

impl Window {
    pub fn name(self) -> &'static str {
        match self {
            Window::Day => "day",
            Window::Month => "month",
        }
    }
}

/// Refused by a quota: `used` of `limit` in this `window`, which turns in `retry_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaRefused {
    pub window: Window,
    pub limit: u64,
    pub used: u64,
    pub retry_after: Duration,
}

/// Why tokens refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokensRefused {
    PerMinute(RateRefused),
    Quota(QuotaRefused),
}

/// The UTC calendar at one instant of the wall clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Calendar {
    /// Seconds since the Unix epoch.
    pub unix: u64,
}

impl Calendar {
    pub fn now() -> Self {
        let unix = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Self { unix }
    }

    /// Days since 1970-01-01.
    pub fn day(self) -> u64 {
        self.unix / DAY
    }

    /// Months since 1970-01.
    pub fn month(self) -> u64 {
        let (y, m, _) = civil(self.day());
        (y - 1970) * 12 + (m - 1)
    }

    /// `YYYY-MM-DD` of a day number.
    pub fn date(day: u64) -> String {
        let (y, m, d) = civil(day);
        format!("{y:04}-{m:02}-{d:02}")
    }

    /// The day number of `YYYY-MM-DD`, if it is a real date from 1970 on.
    pub fn parse_date(text: &str) -> Option<u64> {
        let mut parts = text.splitn(3, '-');
        let mut next = |len: usize| {
            let p = parts.next()?;
            (p.len() == len && p.bytes().all(|b| b.is_ascii_digit()))
                .then(|| p.parse::<u64>().ok())
                .flatten()
        };
        let (y, m, d) = (next(4)?, next(2)?, next(2)?);
        let day = days_from_civil(y, m, d)?;
        (civil(day) == (y, m, d)).then_some(day)
    }

    /// Until the window that holds this instant ends.
    pub fn until_end(self, window: Window) -> Duration {
        let next_day = (self.day() + 1) * DAY;
        let end = match window {
            Window::Day => next_day,
            Window::Month => {
                let (y, m, _) = civil(self.day());
                let (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                days_from_civil(y, m, 1).map_or(next_day, |d| d * DAY)
            }
        };
        Duration::from_secs(end.saturating_sub(self.unix))
    }
}

/// (year, month, day) of a day number (Howard Hinnant's `civil_from_days`, for days from 1970 on).
fn civil(day: u64) -> (u64, u64, u64) {
    let z = day + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// The day number of a date from 1970 on (`days_from_civil`).
fn days_from_civil(y: u64, m: u64, d: u64) -> Option<u64> {
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || y < 1970 {
        return None;
    }
    let y = if m <= 2 { y - 1 } else { y };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe).checked_sub(719_468)
}

/// The token arithmetic of a tenant's limits (the limits themselves are configuration: [`crate::config::TokenLimits`]).
impl TokenLimits {
    pub fn any(&self) -> bool {
        self.per_minute.is_some() || self.per_day.is_some() || self.per_month.is_some()
    }

    /// The per-minute limit's emission interval (one token).
    pub fn interval(limit: u32) -> Duration {
        MINUTE / limit.max(1)
    }

    /// What a request that may use `wanted` tokens reserves: that, but at most the smallest limit (a request
    /// larger than a limit may still go when the whole limit is free; it is settled to what it used).
    pub fn reservation(&self, wanted: u64) -> u64 {
        [self.per_minute.map(u64::from), self.per_day, self.per_month]
            .into_iter()
            .flatten()
            .fold(wanted.max(1), u64::min)
    }

    /// What is left of the per-minute limit when its TAT is `ahead` of now: the headers' state.
    pub fn per_minute_state(limit: u32, ahead: Duration) -> RateState {
        state_for(limit, MINUTE, Self::interval(limit), ahead)
    }

    /// The per-minute verdict on reserving `tokens` when the TAT is `ahead` of now: the state after the
    /// reservation, or the refusal (with the state before it).
    pub fn per_minute_verdict(
        limit: u32,
        ahead: Duration,
        tokens: u64,
    ) -> Result<RateState, RateRefused> {
        let cost = Self::cost(limit, tokens);
        let need = ahead.saturating_add(cost);
        if need > MINUTE {
            return Err(RateRefused {
                state: Self::per_minute_state(limit, ahead),
                retry_after: need - MINUTE,
            });
        }
        Ok(Self::per_minute_state(limit, need))
    }

    /// The time `tokens` take of a per-minute limit.
    pub fn cost(limit: u32, tokens: u64) -> Duration {
        Self::interval(limit).saturating_mul(u32::try_from(tokens).unwrap_or(u32::MAX))
    }

    /// The quotas' verdict on reserving `tokens` when `day_used` and `month_used` are used at `cal`.
    pub fn quotas(
        &self,
        day_used: u64,
        month_used: u64,
        tokens: u64,
        cal: Calendar,
    ) -> Result<(), QuotaRefused> {
        let windows = [
            (Window::Day, self.per_day, day_used),
            (Window::Month, self.per_month, month_used),
        ];
        for (window, limit, used) in windows {
            if let Some(limit) = limit.filter(|l| used.saturating_add(tokens) > *l) {
                return Err(QuotaRefused {
                    window,
                    limit,
                    used,
                    retry_after: cal.until_end(window),
                });
            }
        }
        Ok(())
    }

    /// The whole verdict on reserving `tokens` (a [`TokenLimits::reservation`]): the per-minute state after it
    /// for the headers (`None` without a per-minute limit), or why not.
    pub fn verdict(
        &self,
        ahead: Duration,
        (day_used, month_used): (u64, u64),
        tokens: u64,
        cal: Calendar,
    ) -> Result<Option<RateState>, TokensRefused> {
        self.quotas(day_used, month_used, tokens, cal)
            .map_err(TokensRefused::Quota)?;
        self.per_minute
            .map(|limit| Self::per_minute_verdict(limit, ahead, tokens))
            .transpose()
            .map_err(TokensRefused::PerMinute)
    }
}

/// One tenant's tokens in this process.
#[derive(Debug)]
pub struct TokenBudget {
    limits: TokenLimits,
    state: Mutex<Spent>,
}

#[derive(Clone, Debug, Default)]
struct Spent {
    /// The per-minute theoretical arrival time; `None`: nothing owed.
    tat: Option<Instant>,
    /// (day number, tokens used that day), (month number, tokens used that month).
    day: (u64, u64),
    month: (u64, u64),
}

impl Spent {
    fn used(&self, cal: Calendar) -> (u64, u64) {
        let day = if self.day.0 == cal.day() {
            self.day.1
        } else {
            0
        };
        let month = if self.month.0 == cal.month() {
            self.month.1
        } else {
            0
        };
        (day, month)
    }
}

impl TokenBudget {
    pub fn new(limits: TokenLimits) -> Self {
        Self {
            limits,
            state: Mutex::new(Spent::default()),
        }
    }

    pub fn limits(&self) -> TokenLimits {
        self.limits
    }

    /// The same tenant's budget after a reload set its limits to `limits`: what it spent this minute, day and
    /// month carries over (a reload never hands a tenant fresh tokens).
    pub fn carried(&self, limits: TokenLimits) -> Self {
        Self {
            limits,
            state: Mutex::new(self.spent().clone()),
        }
    }

    fn spent(&self) -> std::sync::MutexGuard<'_, Spent> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reserves `tokens` (a [`TokenLimits::reservation`]) when they fit in every limit: the per-minute state
    /// after it, or why not (nothing reserved).
    pub fn reserve(
        &self,
        tokens: u64,
        now: Instant,
        cal: Calendar,
    ) -> Result<Option<RateState>, TokensRefused> {
        let mut spent = self.spent();
        let ahead = spent
            .tat
            .map_or(Duration::ZERO, |t| t.saturating_duration_since(now));
        let state = self.limits.verdict(ahead, spent.used(cal), tokens, cal)?;
        self.add(&mut spent, tokens, now, cal);
        Ok(state)
    }

    /// Settles a reservation of `reserved` tokens made at `made` to the `used` tokens of its answer: the
    /// difference charged or given back. A quota's refund goes to the window the reservation was made in, while
    /// that window lasts; what an answer used beyond its reservation is charged now.
    pub fn settle(&self, reserved: u64, used: u64, now: Instant, made: Calendar) {
        let mut spent = self.spent();
        if used >= reserved {
            self.add(&mut spent, used - reserved, now, Calendar::now());
            return;
        }
        let back = reserved - used;
        if let (Some(limit), Some(tat)) = (self.limits.per_minute, spent.tat) {
            let earlier = tat
                .checked_sub(TokenLimits::cost(limit, back))
                .unwrap_or(now);
            spent.tat = Some(earlier.max(now));
        }
        if spent.day.0 == made.day() {
            spent.day.1 = spent.day.1.saturating_sub(back);
        }
        if spent.month.0 == made.month() {
            spent.month.1 = spent.month.1.saturating_sub(back);
        }
    }

    /// Charges `tokens` (used beyond any reservation, or with no reservation at all).
    pub fn charge(&self, tokens: u64, now: Instant, cal: Calendar) {
        let mut spent = self.spent();
        self.add(&mut spent, tokens, now, cal);
    }

    fn add(&self, spent: &mut Spent, tokens: u64, now: Instant, cal: Calendar) {
        if tokens == 0 {
            return;
        }
        if let Some(limit) = self.limits.per_minute {
            let cost = TokenLimits::cost(limit, tokens);
            let from = spent.tat.map_or(now, |t| t.max(now));
            spent.tat = from.checked_add(cost).or(Some(from));
        }
        let (day, month) = spent.used(cal);
        spent.day = (cal.day(), day.saturating_add(tokens));
        spent.month = (cal.month(), month.saturating_add(tokens));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-28 12:00:00 UTC.
    const NOON: u64 = 1_795_867_200;

    #[test]
    fn the_calendar_knows_days_months_and_when_they_turn() {
        let cal = Calendar { unix: NOON };
        assert_eq!(Calendar::date(cal.day()), "2026-11-28");
        assert_eq!(Calendar::parse_date("2026-11-28"), Some(cal.day()));
        assert_eq!(Calendar::parse_date("2026-02-30"), None);
        assert_eq!(Calendar::parse_date("26-11-28"), None);
        assert_eq!(Calendar::parse_date("1970-01-01"), Some(0));
        assert_eq!(cal.until_end(Window::Day), Duration::from_secs(12 * 3600));
        // November has 30 days: two and a half days to go.
        assert_eq!(cal.until_end(Window::Month), Duration::from_secs(60 * 3600));
        let dec31 = Calendar::parse_date("2026-12-31").unwrap();
        let last = Calendar {
            unix: dec31 * DAY + DAY - 1,
        };
        assert_eq!(last.until_end(Window::Month), Duration::from_secs(1));
        assert_eq!(
            Calendar {
                unix: last.unix + 1
            }
            .month(),
            last.month() + 1
        );
        // Every day of four years round-trips.
        for day in 20_000..21_500 {
            assert_eq!(Calendar::parse_date(&Calendar::date(day)), Some(day));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn reservations_that_do_not_fit_wait_and_settle_to_what_was_used() {
        let cal = Calendar { unix: NOON };
        let b = TokenBudget::new(TokenLimits {
            per_minute: Some(100),
            ..TokenLimits::default()
        });
        let now = Instant::now;
        // Three requests at once reserving 30, 50 and 30: the third does not fit in the 20 left.
        assert_eq!(b.reserve(30, now(), cal).unwrap().unwrap().remaining, 70);
        let s = b.reserve(50, now(), cal).unwrap().unwrap();
        assert_eq!((s.remaining, s.reset), (20, Duration::from_secs(48)));
        let Err(TokensRefused::PerMinute(r)) = b.reserve(30, now(), cal) else {
            panic!("not refused");
        };
        // 10 tokens short: 6 s; nothing was reserved by the refusal.
        assert_eq!(r.retry_after, Duration::from_secs(6));
        assert_eq!(r.state.remaining, 20);
        // The first answer used 10 of its 30: 20 back, and now the third fits.
        b.settle(30, 10, now(), cal);
        assert_eq!(b.reserve(30, now(), cal).unwrap().unwrap().remaining, 10);
        // The second used 90 of its 50: 40 more charged, the tenant is 30 in debt: refused until the debt and
        // one token are repaid (31 tokens of 0.6 s).
        b.settle(50, 90, now(), cal);
        let Err(TokensRefused::PerMinute(r)) = b.reserve(1, now(), cal) else {
            panic!("not refused");
        };
        assert_eq!(r.retry_after, Duration::from_millis(18_600));
        tokio::time::advance(Duration::from_millis(18_599)).await;
        assert!(b.reserve(1, now(), cal).is_err());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(b.reserve(1, now(), cal).unwrap().unwrap().remaining, 0);
        // A refund never makes more than the whole limit free.
        tokio::time::advance(Duration::from_secs(120)).await;
        b.settle(1000, 0, now(), cal);
        assert_eq!(b.reserve(1, now(), cal).unwrap().unwrap().remaining, 99);
    }

    #[test]
    fn a_reservation_is_at_most_the_smallest_limit() {
        let limits = TokenLimits {
            per_minute: Some(100),
            per_day: Some(50),
            per_month: None,
        };
        assert_eq!(limits.reservation(4000), 50);
        assert_eq!(limits.reservation(7), 7);
        assert_eq!(limits.reservation(0), 1);
        assert_eq!(TokenLimits::default().reservation(4000), 4000);
    }

    #[test]
    fn quotas_count_per_utc_day_and_month() {
        let limits = TokenLimits {
            per_day: Some(100),
            per_month: Some(150),
            ..TokenLimits::default()
        };
        let b = TokenBudget::new(limits);
        let now = Instant::now();
        let noon = Calendar { unix: NOON };
        b.charge(90, now, noon);
        // 10 left: a reservation of 10 fits, one of 11 does not.
        assert!(b.reserve(11, now, noon).is_err());
        assert_eq!(b.reserve(10, now, noon), Ok(None));
        let Err(TokensRefused::Quota(q)) = b.reserve(1, now, noon) else {
            panic!("not refused");
        };
        assert_eq!((q.window, q.limit, q.used), (Window::Day, 100, 100));
        assert_eq!(q.retry_after, Duration::from_secs(12 * 3600));
        // The answer used 4 of its 10: 6 are back.
        b.settle(10, 4, now, noon);
        assert_eq!(b.reserve(6, now, noon), Ok(None));
        // The next day: the day's quota is back, the month's has 50 left.
        let tomorrow = Calendar { unix: NOON + DAY };
        assert_eq!(b.reserve(50, now, tomorrow), Ok(None));
        let Err(TokensRefused::Quota(q)) = b.reserve(1, now, tomorrow) else {
            panic!("not refused");
        };
        assert_eq!((q.window, q.used), (Window::Month, 150));
        // December.
        let december = Calendar {
            unix: NOON + 3 * DAY,
        };
        assert_eq!(b.reserve(1, now, december), Ok(None));
    }
}
