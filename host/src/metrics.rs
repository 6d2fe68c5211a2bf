//! Prometheus metrics, served at `/metrics`.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    /// Plugin calls by pack, component and outcome (`ok`, or an error code).
    pub plugin_calls: IntCounterVec,
    pub plugin_call_seconds: HistogramVec,
    /// Traps and timeouts by pack, component and kind (`trap`, `timeout`, `memory`).
    pub plugin_traps: IntCounterVec,
    /// The active generation number of each pack id.
    pub pack_generation: IntGaugeVec,
    /// Pack load attempts by result (`loaded`, `quarantined`).
    pub pack_loads: IntCounterVec,
    /// HTTP requests by method, matched route and status.
    pub http_requests: IntCounterVec,
    pub http_request_seconds: HistogramVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let metric = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(metric.clone()))
                .expect("unique metric");
            metric
        };
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: Vec<f64>| {
            let metric = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
                .expect("valid metric");
            registry
                .register(Box::new(metric.clone()))
                .expect("unique metric");
            metric
        };
        let call_buckets = vec![
            0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0,
        ];
        let pack_generation = IntGaugeVec::new(
            Opts::new("wharf_pack_generation", "Active generation of each pack"),
            &["pack"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(pack_generation.clone()))
            .expect("unique metric");
        Self {
            plugin_calls: counter(
                "wharf_plugin_calls_total",
                "Plugin calls by outcome",
                &["pack", "component", "outcome"],
            ),
            plugin_call_seconds: histogram(
                "wharf_plugin_call_duration_seconds",
                "Plugin call latency, instantiate included",
                &["pack", "component"],
                call_buckets.clone(),
            ),
            plugin_traps: counter(
                "wharf_plugin_traps_total",
                "Plugin traps and timeouts",
                &["pack", "component", "kind"],
            ),
            pack_generation,
            pack_loads: counter(
                "wharf_pack_loads_total",
                "Pack load attempts by result",
                &["result"],
            ),
            http_requests: counter(
                "wharf_http_requests_total",
                "HTTP requests",
                &["method", "route", "status"],
            ),
            http_request_seconds: histogram(
                "wharf_http_request_duration_seconds",
                "HTTP latency",
                &["method", "route"],
                call_buckets,
            ),
            registry,
        }
    }

    /// Adds a collector owned by another module (probes, sandboxes, ...).
    pub fn register(&self, collector: Box<dyn prometheus::core::Collector>) {
        self.registry.register(collector).expect("unique metric");
    }

    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding");
        String::from_utf8(out).expect("prometheus text is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
