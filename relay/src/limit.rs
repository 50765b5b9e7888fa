//! Limits: streams open at once, in all and per tenant, each tenant's requests per minute ([`rate`]) and its tokens
//! per minute, per day and per month ([`tokens`]).
//!
//! Two steps. [`Limiter::admit_total`] runs after authentication and before the request body is read: one of the
//! relay's `max_streams` slots (503 when the relay is full), so that the relay never reads more bodies at once than
//! it serves streams. [`Limiter::enter`] runs once the body is read (its size and `max_tokens` make the token
//! reservation) and before any upstream call: one of the tenant's stream slots, then its tokens (the reservation
//! must fit, [`tokens`]), then its request rate (counted). Over any the answer is 429 naming the limit, with
//! `Retry-After` from the rate or window; a refused request takes and counts nothing. The response of an admitted
//! request carries OpenAI's `x-ratelimit-*-requests` and `x-ratelimit-*-tokens` headers.
//!
//! The [`StreamPermit`] is handed to the stream's end ([`crate::stack`]), so it is released when the stream ends,
//! however it ends: a slot is never held by a client that went away nor released while bytes still flow; its
//! reservation is settled to the tokens the answer used ([`crate::account`]), or given back in full when the
//! permit is dropped unsettled (the vendor refused or was never reached).
//!
//! The relay-wide stream slots are this process's. A tenant's stream slots, tokens and request rate are too, unless
//! `[store]` names Redis ([`store`]): then every replica counts them together, in one call at a stream's start (a
//! stream's tenant slot is a lease there, holding its reservation) and one at its end.

pub mod rate;
pub mod store;
pub mod tokens;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

pub use crate::config::{Limits, TokenLimits};
use rate::Gcra;
pub use rate::{RateRefused, RateState};
use store::{Lease, RedisStore};
use tokens::TokenBudget;
pub use tokens::{Calendar, QuotaRefused, TokensRefused};

/// What a request without `max_tokens` reserves for its answer, unless the tenant says otherwise.
pub const DEFAULT_RESERVE_OUTPUT: u64 = 1024;

/// What a request may use, for its token reservation: its prompt (estimated) and its answer's cap, if it named one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Want {
    pub prompt: u64,
    pub max_output: Option<u64>,
}

/// What an admitted request is told of its rates (each `None`: no such limit, or the store did not answer).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Admitted {
    pub requests: Option<RateState>,
    pub tokens: Option<RateState>,
}

/// Which limit was hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("the relay is at its limit of concurrent streams")]
    Total,
    #[error("this tenant is at its limit of concurrent streams")]
    Tenant,
    #[error("this tenant's limit of {} requests per minute is reached", .0.state.limit)]
    Requests(RateRefused),
    #[error("this tenant's limit of {} tokens per minute is used up", .0.state.limit)]
    Tokens(RateRefused),
    #[error("this tenant's quota of {} tokens per {} is used up", .0.limit, .0.window.name())]
    Quota(QuotaRefused),
    #[error("the limit store is unavailable")]
    StoreUnavailable,
}

/// The relay-wide slot of a request, taken before its body is read ([`Limiter::admit_total`]).
#[derive(Debug)]
pub struct TotalSlot(
    #[expect(
        dead_code,
        reason = "held, never read: dropping it gives the slot back"
    )]
    OwnedSemaphorePermit,
);

/// Slots held by one stream (held for their drop, which gives them back), and the tokens it reserved.
#[derive(Debug)]
pub struct StreamPermit {
    #[expect(
        dead_code,
        reason = "held, never read: dropping it gives the slot back"
    )]
    total: TotalSlot,
    tenant: TenantSlot,
    /// Tokens reserved in this process (with a store, the lease holds its reservation); given back in full when
    /// the permit is dropped unsettled (the vendor was never reached, or refused).
    reserved: Option<Reserved>,
}

/// A reservation of tokens in this process.
struct Reserved {
    limits: Arc<TenantLimits>,
    tokens: u64,
    made: Calendar,
}

impl std::fmt::Debug for Reserved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reserved")
            .field("tokens", &self.tokens)
            .finish_non_exhaustive()
    }
}

impl StreamPermit {
    /// The tenant's lease in the store, to be given back by the stream's end call ([`store::RedisStore::charge`])
    /// instead of on its own.
    pub fn take_lease(&mut self) -> Option<Lease> {
        match std::mem::replace(&mut self.tenant, TenantSlot::Unlimited) {
            TenantSlot::Lease(lease) => Some(lease),
            other => {
                self.tenant = other;
                None
            }
        }
    }

    /// Settles the tokens reserved in this process to the `used` tokens of the answer (charges them when nothing
    /// was reserved, as when the limits are off for this tenant: nothing to charge then).
    pub fn settle(&mut self, used: u64) {
        if let Some(r) = self.reserved.take() {
            r.limits
                .tokens
                .settle(r.tokens, used, Instant::now(), r.made);
        }
    }

    /// What this permit reserved in this process.
    pub fn reserved(&self) -> u64 {
        self.reserved.as_ref().map_or(0, |r| r.tokens)
    }
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        self.settle(0);
    }
}

/// Where a stream's tenant slot is held (held for its drop, which gives the slot back).
#[derive(Debug)]
#[expect(
    dead_code,
    reason = "the slots are held, never read: dropping them gives them back"
)]
enum TenantSlot {
    Local(LocalSlot),
    Lease(Lease),
    /// The store did not answer and `on_store_error = "allow"`.
    Unlimited,
}

/// A tenant's stream slot in this process. A reload that lowered the tenant's limit below the streams it had open
/// leaves a debt: slots given back while it lasts are forgotten instead, until the tenant is within its new limit.
#[derive(Debug)]
struct LocalSlot {
    permit: Option<OwnedSemaphorePermit>,
    debt: Arc<AtomicU32>,
}

impl Drop for LocalSlot {
    fn drop(&mut self) {
        let owed = self
            .debt
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| d.checked_sub(1))
            .is_ok();
        if let (true, Some(permit)) = (owed, self.permit.take()) {
            permit.forget();
        }
    }
}

/// The limits of one relay process; clones share the same slots (one per worker thread).
#[derive(Clone)]
pub struct Limiter {
    total: Arc<Semaphore>,
    tenants: HashMap<Arc<str>, Arc<TenantLimits>>,
    /// Where request rates are counted when replicas share them; `None`: in this process.
    store: Option<Arc<RedisStore>>,
}

/// One tenant's limits.
struct TenantLimits {
    streams: Arc<Semaphore>,
    /// Slots to forget as they are given back (a reload lowered `max_streams` below the streams open).
    debt: Arc<AtomicU32>,
    max_streams: u32,
    requests: Option<Gcra>,
    tokens: TokenBudget,
    reserve_output: u64,
}

impl TenantLimits {
    fn new(l: &Limits, per_tenant: u32) -> Self {
        let streams = l.max_streams.unwrap_or(per_tenant);
        Self {
            streams: Arc::new(Semaphore::new(streams as usize)),
            debt: Arc::default(),
            max_streams: streams,
            requests: l.requests_per_minute.map(|n| Gcra::new(n, MINUTE)),
            tokens: TokenBudget::new(l.tokens),
            reserve_output: l.reserve_output_tokens.unwrap_or(DEFAULT_RESERVE_OUTPUT),
        }
    }

    /// These limits changed to `l` by a reload, what was used carried over. The stream slots stay the same
    /// semaphore (the open streams' permits go back to it), grown or shrunk to the new count.
    fn carried(&self, l: &Limits, per_tenant: u32) -> Self {
        let streams = l.max_streams.unwrap_or(per_tenant);
        resize(&self.streams, &self.debt, self.max_streams, streams);
        Self {
            streams: self.streams.clone(),
            debt: self.debt.clone(),
            max_streams: streams,
            requests: match (&self.requests, l.requests_per_minute) {
                (Some(old), Some(n)) => Some(old.carried(n)),
                (None, Some(n)) => Some(Gcra::new(n, MINUTE)),
                (_, None) => None,
            },
            tokens: self.tokens.carried(l.tokens),
            reserve_output: l.reserve_output_tokens.unwrap_or(DEFAULT_RESERVE_OUTPUT),
        }
    }
}

/// Makes `slots` (of which `from` exist, some perhaps held) `to`: more are added (a debt paid first), fewer are
/// taken out of those free, and what is held beyond the new count becomes a debt, forgotten as it is given back.
fn resize(slots: &Semaphore, debt: &AtomicU32, from: u32, to: u32) {
    if to >= from {
        let mut more = to - from;
        let paid = debt
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| {
                Some(d - d.min(more))
            })
            .map_or(0, |d| d.min(more));
        more -= paid;
        slots.add_permits(more as usize);
    } else {
        let fewer = (from - to) as usize;
        let taken = slots.forget_permits(fewer);
        let owed = u32::try_from(fewer - taken).unwrap_or(u32::MAX);
        debt.fetch_add(owed, Ordering::AcqRel);
    }
}

const MINUTE: Duration = Duration::from_secs(60);

impl Limiter {
    /// `tenants`: every configured tenant (each gets `per_tenant` slots), no other limit.
    pub fn new<'a>(
        total: u32,
        per_tenant: u32,
        tenants: impl IntoIterator<Item = &'a Arc<str>>,
    ) -> Self {
        Self::with_limits(
            total,
            per_tenant,
            tenants.into_iter().map(|t| (t, Limits::default())),
        )
    }

    /// As [`Limiter::new`], each tenant with its own [`Limits`].
    pub fn with_limits<'a>(
        total: u32,
        per_tenant: u32,
        tenants: impl IntoIterator<Item = (&'a Arc<str>, Limits)>,
    ) -> Self {
        let tenants = tenants
            .into_iter()
            .map(|(t, l)| (t.clone(), Arc::new(TenantLimits::new(&l, per_tenant))))
            .collect();
        Self {
            total: Arc::new(Semaphore::new(total as usize)),
            tenants,
            store: None,
        }
    }

    /// The limiter after a reload: the same relay-wide slots and store; each tenant that stays keeps its open
    /// streams, the requests and tokens it used and its reservations, under its new limits (slots added or taken
    /// away, see `LocalSlot`); a new tenant starts afresh; a removed one is forgotten (its open streams finish).
    pub fn reloaded<'a>(
        &self,
        per_tenant: u32,
        tenants: impl IntoIterator<Item = (&'a Arc<str>, Limits)>,
    ) -> Self {
        let tenants = tenants
            .into_iter()
            .map(|(t, l)| {
                let limits = match self.tenants.get(t) {
                    Some(old) => old.carried(&l, per_tenant),
                    None => TenantLimits::new(&l, per_tenant),
                };
                (t.clone(), Arc::new(limits))
            })
            .collect();
        Self {
            total: self.total.clone(),
            tenants,
            store: self.store.clone(),
        }
    }

    /// Counts request rates in `store` (shared by replicas) instead of this process.
    pub fn with_store(mut self, store: Option<Arc<RedisStore>>) -> Self {
        self.store = store;
        self
    }

    /// A request's relay-wide slot (503 when the relay is full), taken before its body is read so that the
    /// relay never reads more bodies at once than it serves streams.
    pub fn admit_total(&self) -> Result<TotalSlot, LimitError> {
        self.total
            .clone()
            .try_acquire_owned()
            .map(TotalSlot)
            .map_err(|_| LimitError::Total)
    }

    /// A stream's start, once its body is read: one of the tenant's stream slots, then its tokens (the request
    /// may use up to its prompt and answer cap, `want`: the reservation, [`TokenLimits::reservation`], must fit, and is charged), then its
    /// request rate (counted). Never waits for a slot. The permit and what the response headers say, or which limit
    /// refused (nothing taken then).
    ///
    /// The tenant's limits are the store's when there is one (the slot a lease, see [`store`]), so that replicas
    /// share them, and the store decides all of them in one call; when it cannot answer, `on_store_error` decides:
    /// `allow` goes on without the tenant's limits (no headers, nothing reserved), `deny` is
    /// [`LimitError::StoreUnavailable`].
    pub async fn enter(
        &self,
        tenant: &str,
        total: TotalSlot,
        want: Want,
        now: Instant,
        cal: Calendar,
    ) -> Result<(StreamPermit, Admitted), LimitError> {
        let (name, limits) = self
            .tenants
            .get_key_value(tenant)
            .ok_or(LimitError::Tenant)?;
        let token_limits = limits.tokens.limits();
        let wanted = want
            .prompt
            .saturating_add(want.max_output.unwrap_or(limits.reserve_output));
        let reserve = token_limits.any().then(|| token_limits.reservation(wanted));
        let permit = |tenant, reserved| StreamPermit {
            total,
            tenant,
            reserved,
        };
        let Some(store) = &self.store else {
            let slot = LocalSlot {
                permit: Some(
                    limits
                        .streams
                        .clone()
                        .try_acquire_owned()
                        .map_err(|_| LimitError::Tenant)?,
                ),
                debt: limits.debt.clone(),
            };
            let tokens = match reserve {
                Some(n) => limits.tokens.reserve(n, now, cal).map_err(refused_tokens)?,
                None => None,
            };
            let reserved = reserve.map(|tokens| Reserved {
                limits: limits.clone(),
                tokens,
                made: cal,
            });
            // Refused by the rate, the permit is dropped here and gives its reservation back.
            let permit = permit(TenantSlot::Local(slot), reserved);
            let requests = match &limits.requests {
                Some(rate) => Some(rate.admit(now).map_err(LimitError::Requests)?),
                None => None,
            };
            return Ok((permit, Admitted { requests, tokens }));
        };
        let rpm = limits.requests.as_ref().map(Gcra::limit);
        let entered = store
            .enter(
                name,
                limits.max_streams,
                rpm,
                (token_limits, reserve.unwrap_or(0)),
                cal,
            )
            .await;
        match entered {
            Ok(Ok((lease, admitted))) => Ok((permit(TenantSlot::Lease(lease), None), admitted)),
            Ok(Err(refused)) => Err(refused),
            Err(e) => {
                store.unavailable(&e)?;
                Ok((permit(TenantSlot::Unlimited, None), Admitted::default()))
            }
        }
    }

    /// Charges the `tokens` an answer of `tenant` used without a reservation, in this process.
    pub fn charge_tokens(&self, tenant: &str, tokens: u64, now: Instant, cal: Calendar) {
        if let Some(limits) = self.tenants.get(tenant) {
            limits.tokens.charge(tokens, now, cal);
        }
    }

    /// A tenant's token limits (none for an unknown tenant).
    pub fn token_limits(&self, tenant: &str) -> TokenLimits {
        self.tenants
            .get(tenant)
            .map(|l| l.tokens.limits())
            .unwrap_or_default()
    }

    /// The shared store, when there is one.
    pub fn store(&self) -> Option<&Arc<RedisStore>> {
        self.store.as_ref()
    }
}

/// A token refusal as a [`LimitError`].
pub fn refused_tokens(r: TokensRefused) -> LimitError {
    match r {
        TokensRefused::PerMinute(r) => LimitError::Tokens(r),
        TokensRefused::Quota(q) => LimitError::Quota(q),
    }
}

/// Which of OpenAI's header families a state fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateOf {
    Requests,
    Tokens,
}

/// OpenAI's rate headers (`x-ratelimit-limit-requests`, `…-remaining-…`, `…-reset-…`, or the same for tokens) for
/// `state`, replacing any the vendor sent (they describe the relay's vendor account, not this client's limit).
pub fn rate_headers(of: RateOf, state: &RateState, headers: &mut http::HeaderMap) {
    let names = match of {
        RateOf::Requests => [
            "x-ratelimit-limit-requests",
            "x-ratelimit-remaining-requests",
            "x-ratelimit-reset-requests",
        ],
        RateOf::Tokens => [
            "x-ratelimit-limit-tokens",
            "x-ratelimit-remaining-tokens",
            "x-ratelimit-reset-tokens",
        ],
    };
    let values = [
        state.limit.to_string(),
        state.remaining.to_string(),
        rate::reset_header(state.reset),
    ];
    for (name, value) in names.into_iter().zip(values) {
        if let Ok(v) = http::HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    }
}

/// Both families' headers of an admitted request.
pub fn admitted_headers(admitted: &Admitted, headers: &mut http::HeaderMap) {
    if let Some(s) = &admitted.requests {
        rate_headers(RateOf::Requests, s, headers);
    }
    if let Some(s) = &admitted.tokens {
        rate_headers(RateOf::Tokens, s, headers);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Limiter {
        /// [`Limiter::admit_total`] and [`Limiter::enter`]'s permit, for a request of no size.
        pub(crate) async fn acquire(&self, tenant: &str) -> Result<StreamPermit, LimitError> {
            let total = self.admit_total()?;
            let (permit, _) = self
                .enter(
                    tenant,
                    total,
                    Want::default(),
                    Instant::now(),
                    Calendar::now(),
                )
                .await?;
            Ok(permit)
        }
    }

    #[tokio::test]
    async fn tenant_limit_then_total_limit_and_release_on_drop() {
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        let limiter = Limiter::new(3, 2, [&a, &b]);
        let a1 = limiter.acquire("a").await.unwrap();
        let _a2 = limiter.acquire("a").await.unwrap();
        assert_eq!(limiter.acquire("a").await.unwrap_err(), LimitError::Tenant);
        let _b1 = limiter.acquire("b").await.unwrap();
        assert_eq!(limiter.acquire("b").await.unwrap_err(), LimitError::Total);
        drop(a1);
        assert!(limiter.acquire("b").await.is_ok());
        assert_eq!(
            limiter.acquire("nobody").await.unwrap_err(),
            LimitError::Tenant
        );
    }

    fn streams(n: u32) -> Limits {
        Limits {
            max_streams: Some(n),
            ..Limits::default()
        }
    }

    /// A reload that lowers a tenant's streams below those open lets them finish and admits no new one until the
    /// tenant is within the new limit; one that raises it admits more at once.
    #[tokio::test]
    async fn a_reload_resizes_a_tenants_streams_with_streams_open() {
        let a: Arc<str> = Arc::from("a");
        let limiter = Limiter::with_limits(100, 10, [(&a, streams(3))]);
        let open: Vec<_> = futures_util::future::join_all((0..3).map(|_| limiter.acquire("a")))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        let lowered = limiter.reloaded(10, [(&a, streams(1))]);
        assert_eq!(lowered.acquire("a").await.unwrap_err(), LimitError::Tenant);
        let mut open = open.into_iter();
        drop(open.next());
        drop(open.next());
        assert_eq!(
            lowered.acquire("a").await.unwrap_err(),
            LimitError::Tenant,
            "one stream still open: the new limit"
        );
        drop(open.next());
        let one = lowered.acquire("a").await.unwrap();
        assert_eq!(lowered.acquire("a").await.unwrap_err(), LimitError::Tenant);
        let raised = lowered.reloaded(10, [(&a, streams(3))]);
        let _two = raised.acquire("a").await.unwrap();
        let _three = raised.acquire("a").await.unwrap();
        assert_eq!(raised.acquire("a").await.unwrap_err(), LimitError::Tenant);
        drop(one);
        assert!(raised.acquire("a").await.is_ok());
    }

    /// Lowered then raised again before the open streams ended: the debt is paid by the raise, not twice.
    #[tokio::test]
    async fn a_raise_pays_the_debt_a_lowering_left() {
        let a: Arc<str> = Arc::from("a");
        let limiter = Limiter::with_limits(100, 10, [(&a, streams(4))]);
        let mut open = Vec::new();
        for _ in 0..4 {
            open.push(limiter.acquire("a").await.unwrap());
        }
        let lowered = limiter.reloaded(10, [(&a, streams(1))]);
        let back = lowered.reloaded(10, [(&a, streams(4))]);
        assert_eq!(back.acquire("a").await.unwrap_err(), LimitError::Tenant);
        open.clear();
        let mut again = Vec::new();
        for _ in 0..4 {
            again.push(back.acquire("a").await.unwrap());
        }
        assert_eq!(back.acquire("a").await.unwrap_err(), LimitError::Tenant);
    }

    /// A reload keeps what a tenant used: a raised rate does not start a fresh burst, and a new tenant is served.
    #[tokio::test]
    async fn a_reload_carries_the_requests_used_over() {
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        let rpm = |n| Limits {
            requests_per_minute: Some(n),
            ..Limits::default()
        };
        let limiter = Limiter::with_limits(100, 10, [(&a, rpm(2))]);
        drop(limiter.acquire("a").await.unwrap());
        drop(limiter.acquire("a").await.unwrap());
        assert!(matches!(
            limiter.acquire("a").await.unwrap_err(),
            LimitError::Requests(_)
        ));
        let reloaded = limiter.reloaded(10, [(&a, rpm(3)), (&b, rpm(3))]);
        assert!(matches!(
            reloaded.acquire("a").await.unwrap_err(),
            LimitError::Requests(_)
        ));
        assert!(reloaded.acquire("b").await.is_ok());
        let removed = reloaded.reloaded(10, [(&b, rpm(3))]);
        assert_eq!(removed.acquire("a").await.unwrap_err(), LimitError::Tenant);
    }
}
