//! Limits: today, streams open at once, in all and per tenant (request and token rates arrive here later).
//!
//! A [`StreamPermit`] is taken after authentication and before the request body is read or any upstream call is
//! made. [`crate::stack`] hands it to the stream's end-of-stream callback, so it is released when the stream ends,
//! however it ends: a slot is never held by a client that went away nor released while bytes still flow. Over the
//! total limit the answer is 503 (the relay is full), over a tenant's limit 429 (that tenant is), both with
//! `Retry-After`.
//!
//! In-memory for one replica. The shared store (Redis) for limits across replicas plugs in here, behind the same
//! `acquire`.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Which limit was hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("the relay is at its limit of concurrent streams")]
    Total,
    #[error("this tenant is at its limit of concurrent streams")]
    Tenant,
}

/// Slots held by one stream.
#[derive(Debug)]
pub struct StreamPermit {
    _total: OwnedSemaphorePermit,
    _tenant: OwnedSemaphorePermit,
}

/// The limits of one relay process; clones share the same slots (one per worker thread).
#[derive(Clone)]
pub struct Limiter {
    total: Arc<Semaphore>,
    tenants: HashMap<Arc<str>, Arc<Semaphore>>,
}

impl Limiter {
    /// `tenants`: every configured tenant (each gets `per_tenant` slots).
    pub fn new<'a>(
        total: u32,
        per_tenant: u32,
        tenants: impl IntoIterator<Item = &'a Arc<str>>,
    ) -> Self {
        let tenants = tenants
            .into_iter()
            .map(|t| (t.clone(), Arc::new(Semaphore::new(per_tenant as usize))))
            .collect();
        Self {
            total: Arc::new(Semaphore::new(total as usize)),
            tenants,
        }
    }

    /// Takes one slot of each limit, or says which is full. Never waits.
    pub fn acquire(&self, tenant: &str) -> Result<StreamPermit, LimitError> {
        let tenant = self.tenants.get(tenant).ok_or(LimitError::Tenant)?;
        let tenant = tenant
            .clone()
            .try_acquire_owned()
            .map_err(|_| LimitError::Tenant)?;
        let total = self
            .total
            .clone()
            .try_acquire_owned()
            .map_err(|_| LimitError::Total)?;
        Ok(StreamPermit {
            _total: total,
            _tenant: tenant,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_limit_then_total_limit_and_release_on_drop() {
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        let limiter = Limiter::new(3, 2, [&a, &b]);
        let a1 = limiter.acquire("a").unwrap();
        let _a2 = limiter.acquire("a").unwrap();
        assert_eq!(limiter.acquire("a").unwrap_err(), LimitError::Tenant);
        let _b1 = limiter.acquire("b").unwrap();
        assert_eq!(limiter.acquire("b").unwrap_err(), LimitError::Total);
        drop(a1);
        assert!(limiter.acquire("b").is_ok());
        assert_eq!(limiter.acquire("nobody").unwrap_err(), LimitError::Tenant);
    }
}
