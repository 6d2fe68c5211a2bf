//! Helpers shared by the benchmarks (included by each with `mod support;`).

use std::time::Duration;

/// The `p` quantile (0..=1) of `samples`, nearest rank; sorts `samples`.
pub fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let index = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[index]
}
