//! A per-component circuit breaker: after repeated traps or timeouts, calls
//! are refused for a cool-down instead of burning a sandbox and a deadline each.

use std::time::{Duration, Instant};

use parking_lot::Mutex;

pub struct Circuit {
    threshold: u32,
    cooldown: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    consecutive_faults: u32,
    open_until: Option<Instant>,
}

impl Circuit {
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            cooldown,
            state: Mutex::new(State::default()),
        }
    }

    /// `Err(remaining)` while the circuit is open.
    pub fn check(&self) -> Result<(), Duration> {
        let mut state = self.state.lock();
        match state.open_until {
            Some(until) if Instant::now() < until => Err(until - Instant::now()),
            Some(_) => {
                // Half-open: let calls through; one more fault reopens at once.
                state.open_until = None;
                state.consecutive_faults = self.threshold - 1;
                Ok(())
            }
            None => Ok(()),
        }
    }

    pub fn record_success(&self) {
        self.state.lock().consecutive_faults = 0;
    }

    /// Returns true when this fault opened the circuit.
    pub fn record_fault(&self) -> bool {
        let mut state = self.state.lock();
        state.consecutive_faults += 1;
        if state.consecutive_faults >= self.threshold && state.open_until.is_none() {
            state.open_until = Some(Instant::now() + self.cooldown);
            return true;
        }
        false
    }

    pub fn is_open(&self) -> bool {
        self.state
            .lock()
            .open_until
            .is_some_and(|until| Instant::now() < until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_and_half_opens_after_cooldown() {
        let circuit = Circuit::new(3, Duration::from_millis(50));
        assert!(!circuit.record_fault());
        circuit.record_success();
        assert!(!circuit.record_fault());
        assert!(!circuit.record_fault());
        assert!(circuit.record_fault(), "third consecutive fault opens");
        assert!(circuit.check().is_err());
        std::thread::sleep(Duration::from_millis(60));
        assert!(circuit.check().is_ok(), "half-open after cool-down");
        assert!(circuit.record_fault(), "a fault while half-open reopens");
    }
}
