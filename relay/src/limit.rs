//! Limits: streams open at once, in all and per tenant, and each tenant's requests per minute ([`rate`]; token
//! rates and quotas arrive here later).
//!
//! A [`StreamPermit`] is taken after authentication and before the request body is read or any upstream call is
//! made. [`crate::stack`] hands it to the stream's end-of-stream callback, so it is released when the stream ends,
//! however it ends: a slot is never held by a client that went away nor released while bytes still flow. Over the
//! total limit the answer is 503 (the relay is full), over a tenant's limit 429 (that tenant is), both with
//! `Retry-After`.
//!
//! The request rate is charged after a stream slot was taken (a request refused for its slot is not counted) and
//! before the body is read; over it the answer is 429 with `Retry-After` from the rate, and the response of an
//! admitted request carries OpenAI's `x-ratelimit-*-requests` headers.
//!
//! The relay-wide stream slots are this process's. A tenant's stream slots and request rate are too, unless
//! `[store]` names Redis ([`store`]): then every replica counts them together (a stream's tenant slot is a
//! lease there).

pub mod rate;
pub mod store;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use rate::Gcra;
pub use rate::{RateRefused, RateState};
use store::{Lease, RedisStore};

/// Which limit was hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("the relay is at its limit of concurrent streams")]
    Total,
    #[error("this tenant is at its limit of concurrent streams")]
    Tenant,
    #[error("this tenant's limit of {} requests per minute is reached", .0.state.limit)]
    Requests(RateRefused),
    #[error("the limit store is unavailable")]
    StoreUnavailable,
}

/// Slots held by one stream.
#[derive(Debug)]
pub struct StreamPermit {
    _total: OwnedSemaphorePermit,
    _tenant: TenantSlot,
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
}

const MINUTE: Duration = Duration::from_secs(60);

impl Limiter {
    /// `tenants`: every configured tenant (each gets `per_tenant` slots), no request rate.
    pub fn new<'a>(
        total: u32,
        per_tenant: u32,
        tenants: impl IntoIterator<Item = &'a Arc<str>>,
    ) -> Self {
        Self::with_rates(
            total,
            per_tenant,
            tenants.into_iter().map(|t| (t, None, None)),
        )
    }

    /// As [`Limiter::new`], each tenant with its requests per minute (`None`: no limit) and its own concurrent
    /// streams (`None`: `per_tenant`).
    pub fn with_rates<'a>(
        total: u32,
        per_tenant: u32,
        tenants: impl IntoIterator<Item = (&'a Arc<str>, Option<u32>, Option<u32>)>,
    ) -> Self {
        let tenants = tenants
            .into_iter()
            .map(|(t, rpm, streams)| {
                let streams = streams.unwrap_or(per_tenant);
                let limits = TenantLimits {
                    streams: Arc::new(Semaphore::new(streams as usize)),
                    max_streams: streams,
                    requests: rpm.map(|n| Gcra::new(n, MINUTE)),
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

    /// Counts one request against the tenant's rate at `now`: its state for the response headers (`None`: the
    /// tenant has no rate limit), or the refusal.
    ///
    /// With a store, the store counts; when it cannot answer, `on_store_error` decides: `allow` goes on without
    /// a rate (no headers), `deny` is [`LimitError::StoreUnavailable`].
    pub async fn charge_request(
        &self,
        tenant: &str,
        now: Instant,
    ) -> Result<Option<RateState>, LimitError> {
        let limits = self.tenants.get(tenant).ok_or(LimitError::Tenant)?;
        let Some(rate) = &limits.requests else {
            return Ok(None);
        };
        let Some(store) = &self.store else {
            return rate.admit(now).map(Some).map_err(LimitError::Requests);
        };
        match store.admit_request(tenant, rate.limit(), MINUTE).await {
            Ok(answer) => answer.map(Some).map_err(LimitError::Requests),
            Err(e) => store.unavailable(&e).map(|()| None),
        }
    }

    /// Takes one slot of each limit, or says which is full. Never waits for a slot. The relay-wide slots are
    /// this process's; the tenant's are the store's when there is one (a lease, see [`store`]), so that replicas
    /// share them; when the store cannot answer, `on_store_error` decides (`allow`: no tenant slot is taken).
    pub async fn acquire(&self, tenant: &str) -> Result<StreamPermit, LimitError> {
        let (name, limits) = self
            .tenants
            .get_key_value(tenant)
            .ok_or(LimitError::Tenant)?;
        let total = self
            .total
            .clone()
            .try_acquire_owned()
            .map_err(|_| LimitError::Total)?;
        let tenant = match &self.store {
            None => limits
                .streams
                .clone()
                .try_acquire_owned()
                .map(TenantSlot::Local)
                .map_err(|_| LimitError::Tenant)?,
            Some(store) => match store.acquire_stream(name, limits.max_streams).await {
                Ok(Some(lease)) => TenantSlot::Lease(lease),
                Ok(None) => return Err(LimitError::Tenant),
                Err(e) => {
                    store.unavailable(&e)?;
                    TenantSlot::Unlimited
                }
            },
        };
        Ok(StreamPermit {
            _total: total,
            _tenant: tenant,
        })
    }
}

/// OpenAI's request-rate headers for `state`, replacing any the vendor sent (they describe the relay's vendor
/// account, not this client's limit).
pub fn rate_headers(state: &RateState, headers: &mut http::HeaderMap) {
    let values = [
        ("x-ratelimit-limit-requests", state.limit.to_string()),
        (
            "x-ratelimit-remaining-requests",
            state.remaining.to_string(),
        ),
        (
            "x-ratelimit-reset-requests",
            rate::reset_header(state.reset),
        ),
    ];
    for (name, value) in values {
        if let Ok(v) = http::HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
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
