//! Assembly tests: deadlines, memory caps, traps and the circuit breaker,
//! with a real misbehaving component.

mod common;

use std::time::{Duration, Instant};

use common::Harness;
use serde_json::json;
use wharf::error::ErrorCode;
use wharf::runtime::logs::LogViewer;
use wharf::sandbox::service::SandboxBinding;

/// After a stopped call, the next call on the same component answers.
async fn assert_still_serving(h: &Harness, sandbox: &SandboxBinding) {
    assert_eq!(
        h.invoke(sandbox, "echo", json!("alive"))
            .await
            .unwrap()
            .output,
        json!("alive")
    );
}

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
    assert_still_serving(&h, &sandbox).await;
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
    let log = h.packs().logs().for_pack("test-pack");
    let lines = log.recent(LogViewer::Owner("tester"));
    assert!(
        lines.iter().any(|l| l.message == "hello from the plugin"
            && l.level == "info"
            && l.generation == 1
            && l.owner.as_deref() == Some("tester")),
        "{lines:?}"
    );
    // The line is the sandbox owner's: another owner does not see it, an admin does.
    assert!(log.recent(LogViewer::Owner("someone-else")).is_empty());
    assert!(
        log.recent(LogViewer::Admin)
            .iter()
            .any(|l| l.message == "hello from the plugin")
    );

    let err = h
        .invoke(&sandbox, "log", json!({"message": 42}))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::ValidationError, "{err:?}");
    let err = h.invoke(&sandbox, "nope", json!({})).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::CapabilityNotSupported);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_adapter_looping_on_exec_ends_at_the_wall_clock_bound_and_its_generation_drains() {
    let h = Harness::start(|config| config.runtime.call_wall_timeout_ms = 1_500).await;
    h.drop_test_pack("test-pack", "0.1.0", "");
    h.wait_active("test-pack", "0.1.0").await;
    let sandbox = h.sandbox().await;

    // Nearly all of its time is in host calls (`exec`), which the plugin's own 5 s deadline
    // does not count: only the wall-clock bound can end it. A bound on the test itself
    // turns "never ends" into a failure.
    let err = tokio::time::timeout(
        Duration::from_secs(60),
        h.invoke(&sandbox, "loop_exec", json!({})),
    )
    .await
    .expect("the looping call never ended")
    .unwrap_err();
    assert_eq!(err.code, ErrorCode::PluginTimeout, "{err:?}");
    assert_eq!(err.code.status().as_u16(), 504);
    assert!(
        err.message.contains("wall-clock bound of 1500 ms"),
        "{}",
        err.message
    );
    let pack = h.packs().snapshot().active["test-pack"].clone();
    assert_eq!(pack.inflight(), 0, "the generation can drain");
    assert_still_serving(&h, &sandbox).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn running_out_of_pooled_instances_is_retriable_and_never_opens_the_circuit() {
    let h = Harness::start(|config| {
        config.runtime.max_instances = 1;
        config.runtime.circuit_trap_threshold = 2;
    })
    .await;
    h.drop_test_pack("test-pack", "0.1.0", "");
    h.wait_active("test-pack", "0.1.0").await;
    let sandbox = h.sandbox().await;

    // One call holds the only instance while it waits on a sandbox `sleep`.
    // It and the probing calls below race for the instance at first: each
    // side tries again until the holder has it.
    let holder = {
        let (packs, sandbox) = (h.packs().clone(), sandbox.clone());
        tokio::spawn(async move {
            loop {
                let held = wharf::capabilities::invoke(
                    &packs,
                    sandbox.clone(),
                    "test",
                    "sleep",
                    json!({"ms": 3000}),
                )
                .await;
                match held {
                    Err(err) if err.code == ErrorCode::PluginUnavailable => {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    other => break other,
                }
            }
        })
    };
    let started = Instant::now();
    let first = loop {
        match h.invoke(&sandbox, "noop", json!({})).await {
            // The holder has not taken its instance yet.
            Ok(_) => {
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "the pool never ran out"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(err) => break err,
        }
    };
    let mut refused = vec![first];
    for _ in 0..4 {
        refused.push(h.invoke(&sandbox, "noop", json!({})).await.unwrap_err());
    }
    for err in &refused {
        assert_eq!(err.code, ErrorCode::PluginUnavailable, "{err:?}");
        assert!(err.retriable(), "{err:?}");
        assert!(err.message.contains("instance"), "{}", err.message);
    }
    holder
        .await
        .unwrap()
        .expect("the holder's call is unaffected");
    let capabilities = wharf::capabilities::list(h.packs());
    assert!(
        !capabilities[0].circuit_open,
        "five refusals for a full pool opened the circuit"
    );
    h.invoke(&sandbox, "noop", json!({}))
        .await
        .expect("an instance is free again");
}
