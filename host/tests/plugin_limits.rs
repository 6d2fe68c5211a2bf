//! Assembly tests: deadlines, memory caps, traps and the circuit breaker,
//! with a real misbehaving component.

mod common;

use std::time::{Duration, Instant};

use common::Harness;
use serde_json::json;
use wharf::error::ErrorCode;

#[tokio::test(flavor = "multi_thread")]
async fn infinite_loop_ends_at_its_deadline_and_the_host_keeps_serving() {
    let h = Harness::start(|_| {}).await;
    h.drop_test_pack("test-pack", "0.1.0", "[limits]\ntimeout_ms = 300\n");
    h.wait_active("test-pack", "0.1.0").await;
    let sandbox = h.sandbox().await;

    let started = Instant::now();
    let err = h.invoke(&sandbox, "spin", json!({})).await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.code, ErrorCode::PluginTimeout, "{err:?}");
    assert!(err.message.contains("300 ms"), "{}", err.message);
    assert!(
        took < Duration::from_secs(10),
        "the loop was not stopped: {took:?}"
    );
    assert_eq!(
        h.invoke(&sandbox, "echo", json!("alive"))
            .await
            .unwrap()
            .output,
        json!("alive")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn host_time_in_sandbox_calls_does_not_count_against_the_deadline() {
    let h = Harness::start(|_| {}).await;
    h.drop_test_pack("test-pack", "0.1.0", "[limits]\ntimeout_ms = 200\n");
    h.wait_active("test-pack", "0.1.0").await;
    let sandbox = h.sandbox().await;
    // 600 ms of `sleep` inside the sandbox is the host's time, not the plugin's.
    h.invoke(&sandbox, "sleep", json!({"ms": 600}))
        .await
        .expect("host time is not plugin time");
}

#[tokio::test(flavor = "multi_thread")]
async fn unbounded_allocation_is_stopped_by_the_memory_cap() {
    let h = Harness::start(|_| {}).await;
    h.drop_test_pack("test-pack", "0.1.0", "[limits]\nmemory_mib = 16\n");
    h.wait_active("test-pack", "0.1.0").await;
    let sandbox = h.sandbox().await;
    let err = h.invoke(&sandbox, "hog", json!({})).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::PluginTrap, "{err:?}");
    assert!(
        err.message.contains("memory cap of 16 MiB"),
        "{}",
        err.message
    );
    assert_eq!(
        h.invoke(&sandbox, "echo", json!(2)).await.unwrap().output,
        json!(2)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn repeated_traps_open_the_circuit_for_a_cool_down() {
    let h = Harness::start(|config| {
        config.runtime.circuit_trap_threshold = 3;
        config.runtime.circuit_cooldown_ms = 400;
    })
    .await;
    h.drop_test_pack("test-pack", "0.1.0", "");
    h.wait_active("test-pack", "0.1.0").await;
    let sandbox = h.sandbox().await;
    for _ in 0..3 {
        let err = h.invoke(&sandbox, "trap", json!({})).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::PluginTrap);
        assert!(
            err.message.contains("panicked"),
            "the panic message should reach the caller: {}",
            err.message
        );
    }
    let err = h.invoke(&sandbox, "noop", json!({})).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::PluginUnavailable, "{err:?}");
    assert!(err.retriable());
    tokio::time::sleep(Duration::from_millis(450)).await;
    h.invoke(&sandbox, "noop", json!({}))
        .await
        .expect("half-open after the cool-down");
}

#[tokio::test(flavor = "multi_thread")]
async fn plugin_logs_are_kept_per_pack_and_bad_input_is_a_validation_error() {
    let h = Harness::start(|_| {}).await;
    h.drop_test_pack("test-pack", "0.1.0", "");
    h.wait_active("test-pack", "0.1.0").await;
    let sandbox = h.sandbox().await;
    h.invoke(&sandbox, "log", json!({"message": "hello from the plugin"}))
        .await
        .unwrap();
    let lines = h.packs().logs().for_pack("test-pack").recent();
    assert!(
        lines.iter().any(|l| l.message == "hello from the plugin"
            && l.level == "info"
            && l.generation == 1),
        "{lines:?}"
    );

    let err = h
        .invoke(&sandbox, "log", json!({"message": 42}))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::ValidationError, "{err:?}");
    let err = h.invoke(&sandbox, "nope", json!({})).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::CapabilityNotSupported);
}
