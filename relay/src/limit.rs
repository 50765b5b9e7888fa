//! Limits: streams open at once, in all and per tenant, each tenant's requests per minute ([`rate`]) and its tokens
//! per minute, per day and per month ([`tokens`]).
//!
//! [`Limiter::enter`] runs after authentication and before the request body is read or any upstream call is made:
//! it takes a [`StreamPermit`] (one slot of each concurrency limit), then checks the tenant's tokens and counts its
//! request rate. [`crate::stack`] hands it to the stream's end-of-stream callback, so it is released when the stream ends,
//! however it ends: a slot is never held by a client that went away nor released while bytes still flow. Over the
//! total limit the answer is 503 (the relay is full), over a tenant's limit 429 (that tenant is), both with
//! `Retry-After`.
//!
//! The rates come after the stream slot (a request refused for its slot is not counted): the tenant's tokens first
//! (any left? nothing is charged), then its request rate (charged). Over either the answer is 429 naming the limit, with `Retry-After` from the rate or window, and the
//! response of an admitted request carries OpenAI's `x-ratelimit-*-requests` and `x-ratelimit-*-tokens` headers.
//! The tokens a stream used are charged when it ends ([`Limiter::charge_tokens`], or the store's charge).
//!
//! The relay-wide stream slots are this process's. A tenant's stream slots, tokens and request rate are too, unless
//! `[store]` names Redis ([`store`]): then every replica counts them together, in one call at a stream's start (a
//! stream's tenant slot is a lease there) and one at its end.

pub mod rate;
pub mod store;
pub mod tokens;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use rate::Gcra;
pub use rate::{RateRefused, RateState};
use store::{Lease, RedisStore};
use tokens::TokenBudget;
pub use tokens::{Calendar, QuotaRefused, TokenLimits, TokensRefused};

/// One tenant's limits as configured; each `None` is no limit (`max_streams`: the relay's per-tenant default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub requests_per_minute: Option<u32>,
    pub tokens: TokenLimits,
    pub max_streams: Option<u32>,
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

/// Slots held by one stream (held for their drop, which gives them back).
#[derive(Debug)]
pub struct StreamPermit {
    #[expect(
        dead_code,
        reason = "held, never read: dropping it gives the slot back"
    )]
    total: OwnedSemaphorePermit,
    tenant: TenantSlot,
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
}

/// Where a stream's tenant slot is held (held for its drop, which gives the slot back).
#[derive(Debug)]
#[expect(
    dead_code,
    reason = "the slots are held, never read: dropping them gives them back"
)]
enum TenantSlot {
    Local(OwnedSemaphorePermit),
    Lease(Lease),
    /// The store did not answer and `on_store_error = "allow"`.
    Unlimited,
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
    max_streams: u32,
    requests: Option<Gcra>,
    tokens: TokenBudget,
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
            .map(|(t, l)| {
                let streams = l.max_streams.unwrap_or(per_tenant);
                let limits = TenantLimits {
                    streams: Arc::new(Semaphore::new(streams as usize)),
                    max_streams: streams,
                    requests: l.requests_per_minute.map(|n| Gcra::new(n, MINUTE)),
                    tokens: TokenBudget::new(l.tokens),
                };
                (t.clone(), Arc::new(limits))
            })
            .collect();
        Self {
            total: Arc::new(Semaphore::new(total as usize)),
            tenants,
            store: None,
        }
    }

    /// Counts request rates in `store` (shared by replicas) instead of this process.
    pub fn with_store(mut self, store: Option<Arc<RedisStore>>) -> Self {
        self.store = store;
        self
    }

    /// A stream's start: one slot of each concurrency limit, then the tenant's tokens (is any left? nothing is
    /// charged), then its request rate (counted). Never waits for a slot. The permit and what the response headers
    /// say, or which limit refused.
    ///
    /// The relay-wide slots are this process's. The tenant's limits are the store's when there is one (the slot a
    /// lease, see [`store`]), so that replicas share them, and the store decides all of them in one call; when it
    /// cannot answer, `on_store_error` decides: `allow` goes on without the tenant's limits (no headers), `deny` is
    /// [`LimitError::StoreUnavailable`].
    pub async fn enter(
        &self,
        tenant: &str,
        now: Instant,
        cal: Calendar,
    ) -> Result<(StreamPermit, Admitted), LimitError> {
        let (name, limits) = self
            .tenants
            .get_key_value(tenant)
            .ok_or(LimitError::Tenant)?;
        let total = self
            .total
            .clone()
            .try_acquire_owned()
            .map_err(|_| LimitError::Total)?;
        let permit = |tenant| StreamPermit { total, tenant };
        let Some(store) = &self.store else {
            let slot = limits
                .streams
                .clone()
                .try_acquire_owned()
                .map_err(|_| LimitError::Tenant)?;
            let tokens = limits.tokens.check(now, cal).map_err(refused_tokens)?;
            let requests = match &limits.requests {
                Some(rate) => Some(rate.admit(now).map_err(LimitError::Requests)?),
                None => None,
            };
            return Ok((
                permit(TenantSlot::Local(slot)),
                Admitted { requests, tokens },
            ));
        };
        let rpm = limits.requests.as_ref().map(Gcra::limit);
        let entered = store
            .enter(name, limits.max_streams, rpm, limits.tokens.limits(), cal)
            .await;
        match entered {
            Ok(Ok((lease, admitted))) => Ok((permit(TenantSlot::Lease(lease)), admitted)),
            Ok(Err(refused)) => Err(refused),
            Err(e) => {
                store.unavailable(&e)?;
                Ok((permit(TenantSlot::Unlimited), Admitted::default()))
            }
        }
    }

    /// Charges the `tokens` a stream of `tenant` used, in this process (with a store, the store's charge does it).
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

    /// [`Limiter::enter`]'s permit alone.
    pub async fn acquire(&self, tenant: &str) -> Result<StreamPermit, LimitError> {
        let (permit, _) = self.enter(tenant, Instant::now(), Calendar::now()).await?;
        Ok(permit)
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
}
