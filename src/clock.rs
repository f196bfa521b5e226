//! The one time source. Everything that needs "now" (the server, the agent,
//! push mode, token expiry, rotation grace) reads a [`Clock`]; the pure core
//! takes `now` as a value. [`SystemClock`] is the real clock, the only code
//! allowed to call `SystemTime::now` (clippy's `disallowed-methods` keeps it
//! so); [`TestClock`] is moved by tests instead of sleeping.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

/// A future returned by [`Clock::sleep`].
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// The time source (a seam so that tests can move time).
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current time.
    fn now(&self) -> SystemTime;

    /// Completes once `duration` of this clock's time, counted from this
    /// call, has passed.
    fn sleep(&self, duration: Duration) -> Sleep;
}

/// The system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl SystemClock {
    /// The system clock as a shared [`Clock`].
    pub fn shared() -> Arc<dyn Clock> {
        Arc::new(SystemClock)
    }

    /// The system time now: the one place that reads it.
    #[allow(clippy::disallowed_methods)]
    pub fn now(self) -> SystemTime {
        SystemTime::now()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemClock::now(*self)
    }

    fn sleep(&self, duration: Duration) -> Sleep {
        Box::pin(tokio::time::sleep(duration))
    }
}

/// A clock that stands still until a test moves it; sleepers wake when it
/// passes their deadline.
#[derive(Debug)]
pub struct TestClock {
    now: watch::Sender<SystemTime>,
}

impl TestClock {
    /// A clock standing at `start`.
    pub fn new(start: SystemTime) -> Arc<Self> {
        Arc::new(Self {
            now: watch::Sender::new(start),
        })
    }

    /// A clock standing at the system time of this moment.
    pub fn starting_now() -> Arc<Self> {
        Self::new(SystemClock.now())
    }

    /// Moves the clock forward by `duration` and wakes the sleepers whose
    /// deadline has passed.
    pub fn advance(&self, duration: Duration) {
        self.now.send_modify(|now| *now += duration);
    }
}

impl Clock for TestClock {
    fn now(&self) -> SystemTime {
        *self.now.borrow()
    }

    fn sleep(&self, duration: Duration) -> Sleep {
        let deadline = self.now() + duration;
        let mut changes = self.now.subscribe();
        Box::pin(async move {
            while *changes.borrow_and_update() < deadline {
                if changes.changed().await.is_err() {
                    return;
                }
            }
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_test_clock_moves_only_when_advanced_and_wakes_sleepers() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let clock = TestClock::new(start);
        assert_eq!(clock.now(), start);
        let sleeper = tokio::spawn(clock.sleep(Duration::from_secs(10)));
        clock.advance(Duration::from_secs(5));
        tokio::task::yield_now().await;
        assert!(!sleeper.is_finished());
        clock.advance(Duration::from_secs(5));
        sleeper.await.unwrap();
        assert_eq!(clock.now(), start + Duration::from_secs(10));
    }
}
