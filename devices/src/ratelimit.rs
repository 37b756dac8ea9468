//! A tiny rate limiter for log lines a guest can trigger at will.

use std::time::{Duration, Instant};

/// Allows `burst` events per `period`; counts the ones it suppresses.
#[derive(Debug)]
pub struct RateLimiter {
    period: Duration,
    burst: u32,
    window_start: Option<Instant>,
    in_window: u32,
    suppressed: u64,
}

impl RateLimiter {
    pub const fn new(burst: u32, period: Duration) -> Self {
        Self { period, burst, window_start: None, in_window: 0, suppressed: 0 }
    }

    /// `Some(n)` when the event may be reported, `n` being how many were suppressed since
    /// the last reported one; `None` when it must be dropped.
    pub fn check(&mut self, now: Instant) -> Option<u64> {
        let fresh = self.window_start.is_none_or(|s| now.duration_since(s) >= self.period);
        if fresh {
            self.window_start = Some(now);
            self.in_window = 0;
        }
        if self.in_window < self.burst {
            self.in_window += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

/// `warn!` at most `burst` times per second from this call site's limiter.
#[macro_export]
macro_rules! warn_ratelimited {
    ($limiter:expr, $($arg:tt)+) => {{
        let limiter: &std::sync::Mutex<$crate::ratelimit::RateLimiter> = $limiter;
        let verdict = limiter
            .lock()
            .map(|mut l| l.check(std::time::Instant::now()))
            .unwrap_or(None);
        if let Some(suppressed) = verdict {
            if suppressed > 0 {
                log::warn!("({} similar messages suppressed)", suppressed);
            }
            log::warn!($($arg)+);
        }
    }};
}

/// `warn!` for a line the guest can trigger at will: at most 5 a second from each call site
/// (each use has its own limiter), with a count of what was suppressed.
#[macro_export]
macro_rules! warn_guest {
    ($($arg:tt)+) => {{
        static LIMITER: std::sync::Mutex<$crate::ratelimit::RateLimiter> =
            std::sync::Mutex::new($crate::ratelimit::RateLimiter::new(5, std::time::Duration::from_secs(1)));
        $crate::warn_ratelimited!(&LIMITER, $($arg)+);
    }};
}

/// `log::info!` for events a guest can trigger at will, rate-limited like [`warn_guest!`] (5
/// per second per call site; the count of suppressed lines is logged with the next one).
#[macro_export]
macro_rules! info_guest {
    ($($arg:tt)+) => {{
        static LIMITER: std::sync::Mutex<$crate::ratelimit::RateLimiter> =
            std::sync::Mutex::new($crate::ratelimit::RateLimiter::new(5, std::time::Duration::from_secs(1)));
        let verdict = LIMITER.lock().map(|mut l| l.check(std::time::Instant::now())).unwrap_or(None);
        if let Some(suppressed) = verdict {
            if suppressed > 0 {
                log::info!("({} similar messages suppressed)", suppressed);
            }
            log::info!($($arg)+);
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_suppresses_then_reports_the_count() {
        let mut r = RateLimiter::new(2, Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(r.check(t0), Some(0));
        assert_eq!(r.check(t0), Some(0));
        assert_eq!(r.check(t0), None);
        assert_eq!(r.check(t0 + Duration::from_millis(500)), None);
        assert_eq!(r.check(t0 + Duration::from_secs(1)), Some(2));
    }
}
