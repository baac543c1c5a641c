//! CPU accounting and quota: measures the time a guest spends being polled and, over quota, delays its
//! next poll.
//!
//! Guests yield at every epoch tick (`epoch_deadline_async_yield_and_update`), so the wrapper regains
//! control at least once per tick; a guest at `cpu_millis = 500` then runs about one tick, sleeps about one
//! tick. Time spent in host calls made from the guest counts too, as a cgroup would count it.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// CPU time used by one instance (shared by all stores of an HTTP proxy instance) and its quota.
#[derive(Debug)]
pub(crate) struct CpuAccount {
    used_nanos: AtomicU64,
    start: Instant,
    /// Cores: 0.5 for `cpu_millis = 500`.
    quota: Option<f64>,
    /// How far ahead of its quota a guest may run before it is paused (absorbs the tick granularity).
    burst: Duration,
}

impl CpuAccount {
    pub(crate) fn new(cpu_millis: Option<u64>, tick: Duration) -> Self {
        Self {
            used_nanos: AtomicU64::new(0),
            start: Instant::now(),
            quota: cpu_millis.map(|m| (m.max(1) as f64) / 1000.0),
            burst: tick * 2,
        }
    }

    pub(crate) fn used(&self) -> Duration {
        Duration::from_nanos(self.used_nanos.load(Ordering::Relaxed))
    }

    /// When the guest may run again, if it is over quota now.
    fn resume_at(&self, now: Instant) -> Option<Instant> {
        let quota = self.quota?;
        let allowed = now.duration_since(self.start).mul_f64(quota) + self.burst;
        let used = self.used();
        (used > allowed).then(|| self.start + used.saturating_sub(self.burst).div_f64(quota))
    }
}

/// Runs `inner`, charging its poll time to `account` and pausing it while over quota.
pub(crate) struct Metered<'a, F> {
    inner: Pin<Box<F>>,
    account: &'a CpuAccount,
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<'a, F> Metered<'a, F> {
    pub(crate) fn new(inner: F, account: &'a CpuAccount) -> Self {
        Self {
            inner: Box::pin(inner),
            account,
            pause: None,
        }
    }
}

impl<F: Future> Future for Metered<'_, F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        if let Some(pause) = self.pause.as_mut() {
            if pause.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.pause = None;
        }
        let now = Instant::now();
        if let Some(at) = self.account.resume_at(now) {
            let mut pause = Box::pin(tokio::time::sleep_until(at.into()));
            // A sleep that is already due would complete now; only pause when it is pending.
            if pause.as_mut().poll(cx).is_pending() {
                self.pause = Some(pause);
                return Poll::Pending;
            }
        }
        let result = self.inner.as_mut().poll(cx);
        let spent = now.elapsed().as_nanos() as u64;
        self.account.used_nanos.fetch_add(spent, Ordering::Relaxed);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_quota_pauses_until_back_under() {
        let acct = CpuAccount::new(Some(500), Duration::from_millis(10));
        let start = acct.start;
        assert_eq!(acct.resume_at(start), None);
        acct.used_nanos.store(
            Duration::from_millis(120).as_nanos() as u64,
            Ordering::Relaxed,
        );
        // After 100 ms wall at half a core, 50 ms (+20 ms burst) are allowed: 120 ms used is over.
        let at = acct.resume_at(start + Duration::from_millis(100)).unwrap();
        assert_eq!(at, start + Duration::from_millis(200));
        assert_eq!(acct.resume_at(start + Duration::from_millis(200)), None);
        let unlimited = CpuAccount::new(None, Duration::from_millis(10));
        unlimited.used_nanos.store(u64::MAX / 2, Ordering::Relaxed);
        assert_eq!(unlimited.resume_at(Instant::now()), None);
    }
}
