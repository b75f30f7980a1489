//! Bounded work for unauthenticated clients: every TLS client may ask for a fresh token
//! ([`super::fresh`]), and each costs an SNP report (a blocking ioctl) and an attestation round trip. Without a
//! bound, a flood gets the attestation service to throttle the guest, and the rotation of the proxy's own
//! identity then fails until clients refuse its expired token.
//!
//! [`FreshLimiter`] bounds that work three ways, answering `429 Too Many Requests` (with `Retry-After`) beyond:
//! at most `concurrent` fresh tokens in flight, at most `rate` per second on average (a token bucket of `burst`),
//! and at most `per_connection` on one connection. Rotation never goes through it, so a flood cannot starve
//! rotation; the report itself is taken off the async workers (`TokenIssuer::token` uses `spawn_blocking`).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Limits on fresh tokens.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FreshLimits {
    /// Fresh tokens being made at once (beyond: 429).
    pub concurrent: usize,
    /// Average fresh tokens per second over all connections.
    pub rate: f64,
    /// Fresh tokens allowed in a burst above the average.
    pub burst: f64,
    /// Fresh tokens on one connection (a client needs one per connection).
    pub per_connection: u32,
}

impl Default for FreshLimits {
    /// Two at once, 10 per second (burst 20), 4 per connection: well below MAA's per-tenant throttling, and far
    /// above what clients need (one token per new connection with `--strict-freshness`).
    fn default() -> Self {
        Self {
            concurrent: 2,
            rate: 10.0,
            burst: 20.0,
            per_connection: 4,
        }
    }
}

/// Why a fresh token was not made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Too many being made now, or over the rate.
    Busy {
        /// Seconds after which a retry may succeed.
        retry_after: u64,
    },
    /// This connection asked too often.
    Connection,
}

/// The shared limiter of a server.
#[derive(Debug)]
pub struct FreshLimiter {
    limits: FreshLimits,
    inflight: std::sync::Arc<Semaphore>,
    bucket: Mutex<(f64, Instant)>,
}

impl FreshLimiter {
    /// A limiter with these limits (a full bucket).
    pub fn new(limits: FreshLimits) -> Self {
        Self {
            limits,
            inflight: std::sync::Arc::new(Semaphore::new(limits.concurrent.max(1))),
            bucket: Mutex::new((limits.burst.max(1.0), Instant::now())),
        }
    }

    /// The limits.
    pub fn limits(&self) -> FreshLimits {
        self.limits
    }

    /// A permit for one fresh token, the `used`-th of its connection (0-based); held while the token is made.
    pub fn acquire(&self, used: u32) -> Result<OwnedSemaphorePermit, Refusal> {
        if used >= self.limits.per_connection {
            return Err(Refusal::Connection);
        }
        let permit = self
            .inflight
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::Busy { retry_after: 1 })?;
        let mut b = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let refill = now.duration_since(b.1).as_secs_f64() * self.limits.rate;
        b.0 = (b.0 + refill).min(self.limits.burst.max(1.0));
        b.1 = now;
        if b.0 < 1.0 {
            let wait = Duration::from_secs_f64((1.0 - b.0) / self.limits.rate.max(1e-3));
            return Err(Refusal::Busy {
                retry_after: wait.as_secs().max(1),
            });
        }
        b.0 -= 1.0;
        Ok(permit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrency_rate_and_per_connection_are_bounded() {
        let l = FreshLimiter::new(FreshLimits {
            concurrent: 2,
            rate: 1.0,
            burst: 3.0,
            per_connection: 2,
        });
        assert_eq!(l.acquire(2).unwrap_err(), Refusal::Connection);
        let a = l.acquire(0).unwrap();
        let b = l.acquire(0).unwrap();
        assert!(matches!(l.acquire(0), Err(Refusal::Busy { .. })), "a third at once");
        drop((a, b));
        // The bucket held 3: one more, then empty until it refills.
        drop(l.acquire(1).unwrap());
        assert!(matches!(l.acquire(0), Err(Refusal::Busy { retry_after: 1 })));
    }
}
