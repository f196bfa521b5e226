//! Latency summaries: every bench reports count, rate and percentiles the
//! same way, in milliseconds.

use std::time::Duration;

use serde::Serialize;

/// Latencies collected by a bench.
#[derive(Debug, Default, Clone)]
pub struct Latencies {
    samples: Vec<Duration>,
}

/// What a bench prints about its latencies.
#[derive(Debug, Serialize, PartialEq)]
pub struct Summary {
    /// Samples.
    pub count: usize,
    /// Samples per second of `elapsed`.
    pub per_second: f64,
    /// Median, in milliseconds.
    pub p50_ms: f64,
    /// 99th percentile, in milliseconds.
    pub p99_ms: f64,
    /// Largest, in milliseconds.
    pub max_ms: f64,
}

impl Latencies {
    /// No samples yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one sample.
    pub fn push(&mut self, latency: Duration) {
        self.samples.push(latency);
    }

    /// Adds every sample of `other`.
    pub fn extend(&mut self, other: Latencies) {
        self.samples.extend(other.samples);
    }

    /// The summary over `elapsed` wall time.
    pub fn summary(&self, elapsed: Duration) -> Summary {
        let mut sorted = self.samples.clone();
        sorted.sort_unstable();
        let quantile = |q: f64| -> f64 {
            if sorted.is_empty() {
                return 0.0;
            }
            // Nearest rank.
            let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
            sorted.get(rank - 1).map_or(0.0, milliseconds)
        };
        let seconds = elapsed.as_secs_f64();
        Summary {
            count: sorted.len(),
            per_second: if seconds > 0.0 {
                sorted.len() as f64 / seconds
            } else {
                0.0
            },
            p50_ms: quantile(0.50),
            p99_ms: quantile(0.99),
            max_ms: sorted.last().map_or(0.0, milliseconds),
        }
    }
}

fn milliseconds(duration: &Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::Latencies;

    #[test]
    fn percentiles_are_nearest_rank_in_milliseconds() {
        let mut latencies = Latencies::new();
        for millis in 1..=100 {
            latencies.push(Duration::from_millis(millis));
        }
        let summary = latencies.summary(Duration::from_secs(2));
        assert_eq!(summary.count, 100);
        assert_eq!(summary.per_second, 50.0);
        assert_eq!(summary.p50_ms, 50.0);
        assert_eq!(summary.p99_ms, 99.0);
        assert_eq!(summary.max_ms, 100.0);
    }

    #[test]
    fn no_samples_summarise_to_zeros() {
        let summary = Latencies::new().summary(Duration::ZERO);
        assert_eq!(summary.count, 0);
        assert_eq!(summary.p99_ms, 0.0);
    }
}
