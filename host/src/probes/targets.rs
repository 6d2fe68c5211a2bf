//! How a scheduled target's state follows its probe results (stored by
//! [`crate::store::probe_targets`]).

use super::runner::READY;

/// The state a target moves to after a result: a `ready` result makes it `ready`; a failure
/// moves a target that is not `ready` (or has no verdict yet) to that failure at once, and a
/// `ready` one only at the `threshold`-th failure in a row.
pub fn next_state(
    current: Option<&str>,
    result: &str,
    failures_in_a_row: u32,
    threshold: u32,
) -> String {
    let holds_ready = current == Some(READY) && result != READY && failures_in_a_row < threshold;
    if holds_ready { READY } else { result }.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ready_target_fails_only_at_the_threshold_and_recovers_at_once() {
        assert_eq!(
            next_state(None, "timeout", 1, 3),
            "timeout",
            "first result sets it"
        );
        assert_eq!(next_state(Some("ready"), "timeout", 1, 3), "ready");
        assert_eq!(next_state(Some("ready"), "upstream_error", 2, 3), "ready");
        assert_eq!(
            next_state(Some("ready"), "upstream_error", 3, 3),
            "upstream_error"
        );
        assert_eq!(
            next_state(Some("upstream_error"), "timeout", 4, 3),
            "timeout"
        );
        assert_eq!(next_state(Some("upstream_error"), "ready", 0, 3), "ready");
        assert_eq!(next_state(Some("ready"), "timeout", 1, 1), "timeout");
    }
}
