//! Usage accounting, at the end of each answer (stage 8, beside the record), streamed or not: the tokens an answer
//! was charged settle the reservation its request made against the tenant's token limits ([`crate::limit`]), and
//! its totals are added to the usage of its tenant, route and model for the UTC day. What an answer is charged is
//! the vendor's usage, or an estimate when it ended without one ([`crate::usage::charged`]); the rows say how many
//! tokens were estimated. Read back on the admin listener (`GET /admin/usage`, [`crate::admin`]).
//!
//! Without `[store]` both live in this process (the [`Ledger`]; usage is lost when it exits). With it, one store
//! call does both ([`crate::limit::store::RedisStore::charge`]), so every replica's streams add up in one place and
//! any replica's admin endpoint reports them all. That call runs in its own task after the stream has ended: it
//! never holds up the stream's last bytes. When it fails, the store error is counted and the stream's usage is in
//! the log line (with its tenant, route, model and tokens), so nothing is lost silently.
//!
//! The model is the request's `model` (client input): at most [`MAX_KEYS`] tenant/route/model/day keys are kept in
//! the process; past that, new models are counted under `(other)`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::limit::store::StoreError;
use crate::limit::{Calendar, Limiter, StreamPermit};
use crate::usage::Totals;

/// Most tenant/route/model/day keys the in-process ledger keeps.
pub const MAX_KEYS: usize = 100_000;
/// Days the in-process ledger keeps.
pub const KEEP_DAYS: u64 = 400;
/// The model of streams past [`MAX_KEYS`], and of requests that named none.
pub const OTHER: &str = "(other)";
pub const UNNAMED: &str = "(none)";

/// (day, tenant, route, model).
type Key = (u64, Arc<str>, Arc<str>, Box<str>);

/// Usage in this process, by day, tenant, route and model.
#[derive(Debug, Default)]
pub struct Ledger {
    days: Mutex<BTreeMap<Key, Totals>>,
}

impl Ledger {
    fn days(&self) -> std::sync::MutexGuard<'_, BTreeMap<Key, Totals>> {
        self.days
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn add(&self, day: u64, tenant: &Arc<str>, route: &Arc<str>, model: &str, t: &Totals) {
        let mut days = self.days();
        // Old days go first; then a new key past the cap is counted as `(other)`.
        let oldest = day.saturating_sub(KEEP_DAYS);
        while days.first_key_value().is_some_and(|(k, _)| k.0 < oldest) {
            days.pop_first();
        }
        let mut key = (day, tenant.clone(), route.clone(), Box::<str>::from(model));
        if days.len() >= MAX_KEYS && !days.contains_key(&key) {
            key.3 = OTHER.into();
        }
        days.entry(key).or_default().add(t);
    }

    /// Rows of `tenants` from day `from` to day `to`, summed over the days.
    pub fn rows(&self, tenants: &[Arc<str>], from: u64, to: u64) -> Vec<Row> {
        let days = self.days();
        let kept = days
            .iter()
            .filter(|((day, tenant, ..), _)| (from..=to).contains(day) && tenants.contains(tenant));
        summed(kept.map(|((_, tenant, route, model), t)| (tenant.clone(), &**route, &**model, *t)))
    }
}

/// Rows by tenant, route and model, each the sum of its parts (one per day), in key order.
fn summed<'a>(parts: impl Iterator<Item = (Arc<str>, &'a str, &'a str, Totals)>) -> Vec<Row> {
    let mut sum: BTreeMap<(Arc<str>, &str, &str), Totals> = BTreeMap::new();
    for (tenant, route, model, t) in parts {
        sum.entry((tenant, route, model)).or_default().add(&t);
    }
    sum.into_iter()
        .map(|((tenant, route, model), totals)| Row {
            tenant: tenant.to_string(),
            route: route.to_owned(),
            model: model.to_owned(),
            totals,
        })
        .collect()
}

/// One tenant, route and model's usage over a report's days.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Row {
    pub tenant: String,
    pub route: String,
    pub model: String,
    #[serde(flatten)]
    pub totals: Totals,
}

/// Charges and records streams; reads usage back. One per relay, shared by its workers and the admin listener.
pub struct Account {
    limiter: Limiter,
    ledger: Arc<Ledger>,
    tenants: Vec<Arc<str>>,
}

/// What one ended answer is charged and recorded as.
#[derive(Debug)]
pub struct StreamUsage {
    pub tenant: Arc<str>,
    pub route: Arc<str>,
    pub model: Option<String>,
    pub totals: Totals,
}

impl Account {
    pub fn new(limiter: Limiter, tenants: Vec<Arc<str>>) -> Self {
        Self {
            limiter,
            ledger: Arc::default(),
            tenants,
        }
    }

    /// The account after a reload: the same usage ledger, charged through the reloaded `limiter`, reporting
    /// `tenants`.
    pub fn reloaded(&self, limiter: Limiter, tenants: Vec<Arc<str>>) -> Self {
        Self {
            limiter,
            ledger: self.ledger.clone(),
            tenants,
        }
    }

    /// An answer ended: its `permit`'s token reservation is settled to the tokens it was charged and its totals
    /// are added (in the store's own task when there is a store, which gives the stream's lease back in the same
    /// call). The permit's slots are given back here.
    pub fn stream_ended(&self, usage: StreamUsage, mut permit: StreamPermit) {
        let cal = Calendar::now();
        let used = usage.totals.prompt_tokens + usage.totals.completion_tokens;
        let model = usage.model.as_deref().unwrap_or(UNNAMED).to_owned();
        let Some(store) = self.limiter.store().cloned() else {
            permit.settle(used);
            let ledger = &self.ledger;
            ledger.add(
                cal.day(),
                &usage.tenant,
                &usage.route,
                &model,
                &usage.totals,
            );
            return;
        };
        let lease = permit.take_lease();
        drop(permit);
        let per_minute = self.limiter.token_limits(&usage.tenant).per_minute;
        let charge = async move {
            let StreamUsage {
                tenant,
                route,
                totals,
                ..
            } = usage;
            let result = store
                .charge(
                    &tenant,
                    (lease, per_minute),
                    used,
                    (&route, &model),
                    &totals,
                    cal,
                )
                .await;
            if let Err(e) = result {
                store.failed(&e);
                tracing::warn!(
                    error = %e,
                    tenant = %tenant,
                    route = %route,
                    model = %model,
                    prompt_tokens = totals.prompt_tokens,
                    completion_tokens = totals.completion_tokens,
                    estimated_tokens = totals.estimated_tokens,
                    "answer usage not recorded in the store"
                );
            }
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(charge);
        }
    }

    /// Every configured tenant.
    pub fn tenants(&self) -> &[Arc<str>] {
        &self.tenants
    }

    /// Usage of `tenants` from day `from` to day `to` (inclusive), summed over the days, by tenant, route and model.
    pub async fn usage(
        &self,
        tenants: &[Arc<str>],
        from: u64,
        to: u64,
    ) -> Result<Vec<Row>, StoreError> {
        let Some(store) = self.limiter.store() else {
            return Ok(self.ledger.rows(tenants, from, to));
        };
        let parts = store.usage(tenants, from..=to).await?;
        Ok(summed(parts.iter().map(|(tenant, route, model, t)| {
            (tenant.clone(), route.as_str(), model.as_str(), *t)
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ledger_sums_days_per_key_and_caps_its_keys() {
        let ledger = Ledger::default();
        let (a, b, r): (Arc<str>, Arc<str>, Arc<str>) = ("a".into(), "b".into(), "/v1".into());
        let reported = crate::usage::charged(
            Some(crate::usage::Tokens {
                prompt: 9,
                completion: 3,
            }),
            true,
            0,
            0,
        );
        let one = Totals::stream(reported, 100, 5);
        ledger.add(10, &a, &r, "m", &one);
        ledger.add(11, &a, &r, "m", &one);
        let estimated = crate::usage::charged(None, false, 4, 2);
        ledger.add(11, &b, &r, "m", &Totals::stream(estimated, 7, 1));
        let rows = ledger.rows(std::slice::from_ref(&a), 10, 11);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].totals.streams, 2);
        assert_eq!(rows[0].totals.prompt_tokens, 18);
        assert_eq!(
            ledger.rows(std::slice::from_ref(&a), 11, 11)[0]
                .totals
                .streams,
            1
        );
        let b_rows = ledger.rows(std::slice::from_ref(&b), 0, 100);
        assert_eq!(b_rows[0].totals.streams_without_usage, 1);
        assert_eq!(b_rows[0].totals.estimated_tokens, 6);
        // Days older than KEEP_DAYS go when a later day is added.
        ledger.add(10 + KEEP_DAYS + 1, &a, &r, "m", &one);
        assert!(ledger.rows(std::slice::from_ref(&a), 10, 10).is_empty());
        // Past the cap, new models are `(other)`.
        for i in 0..MAX_KEYS {
            ledger.add(500, &a, &r, &format!("m{i}"), &one);
        }
        ledger.add(500, &a, &r, "late", &one);
        let rows = ledger.rows(&[a], 500, 500);
        assert!(rows.iter().any(|r| r.model == OTHER));
        assert!(!rows.iter().any(|r| r.model == "late"));
    }
}
