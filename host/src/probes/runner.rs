//! One access probe: the provider plugin plans the steps, the host performs the HTTP (with
//! timeouts and a bounded concurrency), the plugin judges each observation, and the host
//! derives the overall verdict.
//!
//! Overall rules (the per-step rules live in the plugin):
//! - `ready` only when every step passed; otherwise the class of the first failing step
//!   (later steps are not sent: after a failed cheap check the chat step would spend the
//!   user's quota for nothing);
//! - a step may pass with a class other than `ready`: that is a warning (the plugin's
//!   `models_unavailable` and `model_unlisted`: a relay without a models list, or whose list
//!   lacks the model, still gets the chat, and the chat decides). A `ready` result lists its
//!   warnings;
//! - `warming_up` is retried for `probes.warmup_retry_ms`, because relays answer `503 no
//!   available accounts` for a while after an account import. A retry runs the free steps (no
//!   body, e.g. the models list) every `probes.warmup_backoff_ms` (or the upstream's retry
//!   hint), but sends a step with a body (the chat completion, which costs tokens) only at
//!   doubling intervals and once more when the window ends. Still warming up then, the verdict
//!   is `relay_unavailable` with the upstream's message: the relay has no usable account;
//! - with a `direct_base_url`, both targets run; a relay that fails for a reason that is not
//!   transient while the same key direct to the upstream is ready is a
//!   `host_compatibility_gap`. Transient failures keep their own class and retry hint: rate
//!   limits, timeouts, network errors, an unavailable relay, and 5xx answers that say they are
//!   temporary (503, 504, or a retry hint). A bare 500/502 from a relay whose upstream answers
//!   directly is what a relay routing a provider to an API it does not serve gives (seed 003's
//!   `502 upstream_error`), so it counts as a gap.
//!
//! Every request follows the outbound rules ([`crate::outbound`]): the step URL is the target's
//! base URL joined with the step path, and a plan with a path that breaks the rules fails the
//! probe (`invalid_probe_step`) before any of its requests is sent; the API key goes only to
//! the target's origin, in its auth header; redirects do not leave that origin; and a target
//! outside the caller's [`Reach`] is `target_not_allowed` before anything connects.
//!
//! The API key is redacted from every detail and preview before they leave this module, and
//! `x-wharf-*` plan headers never go upstream.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use super::crypto::redact;
use crate::config::ProbesConfig;
use crate::error::{ErrorCode, WharfError, WharfResult};
use crate::outbound::{
    AddressRefused, BaseUrl, ClientOptions, Credential, OutboundClient, Reach, Refused, refusal,
};
use crate::packs::{InflightGuard, Packs};
use crate::runtime::bindings::adapter::wharf::plugin::types::PluginError;
// Whatever contract version the provider was built against, it answers in the current types.
use crate::runtime::bindings::Provider as LlmProvider;
use crate::runtime::bindings::provider::exports::wharf::plugin::provider as wit;
use crate::runtime::call::ProviderSession;
use crate::runtime::{CallState, LoadedComponent};
use crate::store::now_rfc3339;

/// Longest response body the host reads per step; a judge needs the head, not megabytes.
const BODY_CAP_BYTES: usize = 256 * 1024;
/// Characters of a refused step path shown in the error.
const SHOWN_PATH_CHARS: usize = 200;
/// Characters of a response body kept as a step preview.
const PREVIEW_CHARS: usize = 160;
/// Plan headers with this prefix talk to `judge`, never to the upstream.
const PRIVATE_HEADER_PREFIX: &str = "x-wharf-";
/// The plan header naming the probed model (see the plugin's plan module).
const MODEL_HEADER: &str = "x-wharf-probe-model";

pub const READY: &str = "ready";
pub const WARMING_UP: &str = "warming_up";
/// A relay still `warming_up` when the warm-up window ends.
pub const RELAY_UNAVAILABLE: &str = "relay_unavailable";
pub const HOST_COMPATIBILITY_GAP: &str = "host_compatibility_gap";

/// What to probe (`POST /v1/probes`). `api_key` is a secret: this type has no `Debug` and no
/// `Serialize`, so it cannot reach a log line or an answer by accident.
#[derive(Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProbeRequest {
    /// Provider id from an active provider pack, e.g. `kimi`.
    pub provider: String,
    /// The relay or upstream API root, e.g. `http://127.0.0.1:3000` or `https://api.moonshot.cn/v1`.
    pub base_url: String,
    /// Used for this probe only; never stored, logged or returned.
    pub api_key: String,
    /// Model to probe (aliases resolve); default the provider's smoke-test model.
    pub model: Option<String>,
    /// Ask for a streamed chat completion.
    pub stream: Option<bool>,
    /// The upstream itself: both run, and a relay failing where direct is ready is a
    /// `host_compatibility_gap`.
    pub direct_base_url: Option<String>,
}

/// What the active provider pack makes of a model name.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ModelResolution {
    pub provider: String,
    pub name: String,
    /// The canonical model id; null when unknown.
    pub model: Option<String>,
    /// For an unknown name, the nearest known ids (at most three).
    pub suggestions: Vec<String>,
    pub pack: String,
    pub pack_version: String,
    pub generation: u64,
}

/// One performed step.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StepResult {
    /// `relay` (the base URL) or `direct` (the direct upstream URL).
    pub via: String,
    pub name: String,
    pub method: String,
    pub path: String,
    /// HTTP status; null when no response arrived.
    pub status: Option<u16>,
    pub latency_ms: f64,
    pub passed: bool,
    pub class: String,
    pub retriable: bool,
    pub detail: String,
    /// The start of the response body, with the API key redacted.
    pub preview: String,
}

/// The outcome of one probe.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProbeResult {
    pub id: String,
    /// The target this scheduled probe belongs to; null for one-off probes.
    pub target_id: Option<String>,
    pub provider: String,
    pub base_url: String,
    pub direct_base_url: Option<String>,
    /// The model the plan probed (canonical id when the catalog knows the name).
    pub model: Option<String>,
    /// `ready`, `upstream_auth`, `upstream_rate_limited`, `upstream_quota`,
    /// `relay_unavailable`, `model_missing`, `invalid_response`, `host_compatibility_gap`,
    /// `network_error`, `timeout`, or the plugin's catch-alls `upstream_error` /
    /// `upstream_rejected`.
    pub verdict: String,
    pub retriable: bool,
    pub retry_after_ms: Option<u64>,
    pub detail: String,
    /// Runs of the plan through the relay (more than one after `warming_up` retries).
    pub attempts: u32,
    /// Steps that passed with a warning, e.g. `list_models (models_unavailable): HTTP 404 ...`:
    /// the verdict stands, but the relay did not answer as an upstream would.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// The pack generation that planned and judged this probe.
    pub pack: String,
    pub pack_version: String,
    pub generation: u64,
    pub started_at: String,
    pub duration_ms: f64,
    /// Every step of the last attempt, relay first, then direct.
    pub steps: Vec<StepResult>,
}

impl ProbeResult {
    pub fn ready(&self) -> bool {
        self.verdict == READY
    }
}

/// The outcome of the plan against one base URL.
struct Run {
    class: String,
    passed: bool,
    retriable: bool,
    retry_after_ms: Option<u64>,
    detail: String,
    attempts: u32,
    model: Option<String>,
    steps: Vec<StepResult>,
    warnings: Vec<String>,
    /// Whether this run sent a step with a body (a chat completion costs the user tokens).
    spent: bool,
    /// The HTTP status of the failing step, if it answered.
    failed_status: Option<u16>,
}

/// Whether a failed run may clear by itself (see the module doc): such a relay failure is never
/// a `host_compatibility_gap`.
fn transient(run: &Run) -> bool {
    if run.class == RELAY_UNAVAILABLE {
        return true;
    }
    run.retriable
        && match run.failed_status {
            Some(status) if status >= 500 => {
                matches!(status, 503 | 504) || run.retry_after_ms.is_some()
            }
            _ => true,
        }
}

/// Performs probes. Cheap to share; holds the HTTP client and the concurrency bound.
pub struct ProbeRunner {
    packs: Arc<Packs>,
    outbound: OutboundClient,
    limit: Arc<Semaphore>,
    config: ProbesConfig,
}

/// The generation a probe runs on, held for the whole probe.
struct Bound {
    _guard: InflightGuard,
    component: Arc<LoadedComponent>,
    provider: String,
    auth_scheme: String,
}

impl ProbeRunner {
    pub fn new(packs: Arc<Packs>, config: ProbesConfig) -> anyhow::Result<Self> {
        let outbound = OutboundClient::new(&ClientOptions {
            connect_timeout: Duration::from_millis(config.max_step_timeout_ms.clamp(1, 10_000)),
            pool_max_idle_per_host: config.max_concurrency.max(1),
            user_agent: concat!("wharf-probe/", env!("CARGO_PKG_VERSION")).into(),
        })?;
        let limit = Arc::new(Semaphore::new(config.max_concurrency.max(1)));
        Ok(Self {
            packs,
            outbound,
            limit,
            config,
        })
    }

    pub fn packs(&self) -> &Arc<Packs> {
        &self.packs
    }

    /// Runs one probe on the pack generation active now; a swap during the probe does not
    /// affect it (its generation stays alive until it ends). Its targets must be within
    /// `reach`.
    pub async fn run(&self, request: &ProbeRequest, reach: Reach) -> WharfResult<ProbeResult> {
        let targets = validate(request)?;
        self.check_reach(&targets, reach).await?;
        let started_at = now_rfc3339();
        let started = Instant::now();
        let bound = self.bind(&request.provider)?;
        let pack = bound._guard.pack().clone();
        let credential = Credential::for_scheme(&bound.auth_scheme, &request.api_key)
            .map_err(|err| WharfError::validation(format!("`api_key`: {err}")))?;
        // Both plans are made and checked before either target gets a request.
        let (relay, direct) = match targets.direct {
            Some(direct_url) => {
                let (relay, direct) = tokio::join!(
                    self.prepare(&bound, request, targets.relay, Via::Relay),
                    self.prepare(&bound, request, direct_url, Via::Direct)
                );
                (relay?, Some(direct?))
            }
            None => (
                self.prepare(&bound, request, targets.relay, Via::Relay)
                    .await?,
                None,
            ),
        };
        let relay = self.run_target(&bound, request, relay, reach, &credential);
        let (relay, direct) = match direct {
            Some(direct) => {
                let direct = self.run_target(&bound, request, direct, reach, &credential);
                let (relay, direct) = tokio::join!(relay, direct);
                (relay?, Some(direct?))
            }
            None => (relay.await?, None),
        };
        let (class, retriable, retry_after_ms, detail) = match &direct {
            // A transient failure says nothing about compatibility: it keeps its class and hint.
            Some(direct) if !relay.passed && !transient(&relay) && direct.passed => (
                HOST_COMPATIBILITY_GAP.to_string(),
                false,
                None,
                format!(
                    "the relay fails ({}: {}) while the same key direct to the upstream is ready: the relay host is not compatible",
                    relay.class, relay.detail
                ),
            ),
            _ => (
                relay.class.clone(),
                relay.retriable,
                relay.retry_after_ms,
                relay.detail.clone(),
            ),
        };
        let mut steps = relay.steps;
        let mut warnings = relay.warnings;
        if let Some(direct) = direct {
            steps.extend(direct.steps);
            warnings.extend(direct.warnings.into_iter().map(|w| format!("direct {w}")));
        }
        Ok(ProbeResult {
            id: crate::store::keys::new_id("prb"),
            target_id: None,
            provider: request.provider.clone(),
            base_url: request.base_url.clone(),
            direct_base_url: request.direct_base_url.clone(),
            model: relay.model,
            verdict: class,
            retriable,
            retry_after_ms,
            detail: redact(&detail, &request.api_key),
            attempts: relay.attempts,
            warnings: warnings
                .iter()
                .map(|w| redact(w, &request.api_key))
                .collect(),
            pack: pack.id.clone(),
            pack_version: pack.version.to_string(),
            generation: pack.generation,
            started_at,
            duration_ms: started.elapsed().as_secs_f64() * 1000.0,
            steps,
        })
    }

    /// Resolves a model name (aliases, case, separators) with the provider's active pack.
    pub async fn resolve_model(&self, provider: &str, name: &str) -> WharfResult<ModelResolution> {
        let bound = self.bind(provider)?;
        let pack = bound._guard.pack().clone();
        let component = bound.component.clone();
        let (p, n) = (provider.to_string(), name.to_string());
        let owner = crate::runtime::call::current_owner();
        let answer = tokio::task::spawn_blocking(move || {
            component.provider_call(owner.as_deref(), |store, plugin| {
                plugin
                    .wharf_plugin_provider()
                    .call_resolve_model(store, &p, &n)
            })
        })
        .await
        .map_err(|err| WharfError::internal(format!("resolve-model task failed: {err}")))??
        .map_err(|err| plan_error(provider, err))?;
        let (model, suggestions) = match answer {
            wit::ModelResolution::Found(id) => (Some(id), Vec::new()),
            wit::ModelResolution::Unknown(near) => (None, near),
        };
        Ok(ModelResolution {
            provider: provider.to_string(),
            name: name.to_string(),
            model,
            suggestions,
            pack: pack.id.clone(),
            pack_version: pack.version.to_string(),
            generation: pack.generation,
        })
    }

    /// Provider ids served by the active packs.
    pub fn providers(&self) -> Vec<String> {
        self.packs.snapshot().providers.keys().cloned().collect()
    }

    /// The request is well-formed, its targets are within `reach`, and an active pack serves
    /// its provider.
    pub async fn check(&self, request: &ProbeRequest, reach: Reach) -> WharfResult<()> {
        let targets = validate(request)?;
        self.check_reach(&targets, reach).await?;
        self.bind(&request.provider).map(drop)
    }

    /// Refuses targets outside `reach` before anything connects (the resolver of each
    /// connection checks again, so a name that changes its answer is refused all the same).
    async fn check_reach(&self, targets: &Targets, reach: Reach) -> WharfResult<()> {
        self.outbound
            .check_target(&targets.relay, reach)
            .await
            .map_err(|refused| not_allowed(Via::Relay, &refused))?;
        if let Some(direct) = &targets.direct {
            self.outbound
                .check_target(direct, reach)
                .await
                .map_err(|refused| not_allowed(Via::Direct, &refused))?;
        }
        Ok(())
    }

    fn bind(&self, provider: &str) -> WharfResult<Bound> {
        let snapshot = self.packs.snapshot();
        let Some(route) = snapshot.providers.get(provider).cloned() else {
            let known: Vec<&str> = snapshot.providers.keys().map(String::as_str).collect();
            let message = if known.is_empty() {
                format!("no active pack provides provider {provider:?}; no provider pack is loaded")
            } else {
                format!(
                    "no active pack provides provider {provider:?}; nearest: {}",
                    nearest(provider, &known, 3).join(", ")
                )
            };
            return Err(WharfError::new(ErrorCode::NotFound, message));
        };
        drop(snapshot);
        let component = route.component();
        Ok(Bound {
            component: component.runtime.clone(),
            auth_scheme: component
                .provider_auth
                .get(provider)
                .cloned()
                .unwrap_or_else(|| "bearer".into()),
            provider: provider.to_string(),
            _guard: InflightGuard::new(route.pack.clone()),
        })
    }

    /// The plan for one target, each step with its URL. A step path that breaks the outbound
    /// rules fails here, before any request.
    async fn prepare(
        &self,
        bound: &Bound,
        request: &ProbeRequest,
        base: BaseUrl,
        via: Via,
    ) -> WharfResult<Prepared> {
        // The plugin sees the base URL as the caller wrote it.
        let written = match via {
            Via::Relay => request.base_url.clone(),
            Via::Direct => request.direct_base_url.clone().unwrap_or_default(),
        };
        let target = wit::ProbeTarget {
            base_url: written,
            model: request.model.clone(),
            stream: request.stream,
        };
        // One instance serves the plan and every judgement of this target's run.
        let mut session: Slot = None;
        let plan = self.plan(bound, &mut session, target).await?;
        let steps = plan
            .into_iter()
            .map(|step| match base.join(&step.path) {
                Ok(url) => Ok((step, url)),
                Err(rule) => Err(WharfError::new(
                    ErrorCode::InvalidProbeStep,
                    format!(
                        "provider {}: probe step `{}` has the path {:?}: {rule}; no request was sent",
                        bound.provider,
                        step.name,
                        // The plugin chose it: shown only in part.
                        step.path.chars().take(SHOWN_PATH_CHARS).collect::<String>()
                    ),
                )),
            })
            .collect::<WharfResult<Vec<_>>>()?;
        Ok(Prepared {
            via,
            base,
            session,
            steps,
        })
    }

    /// The plan against one target, with `warming_up` retried inside the warm-up window.
    async fn run_target(
        &self,
        bound: &Bound,
        request: &ProbeRequest,
        prepared: Prepared,
        reach: Reach,
        credential: &Credential,
    ) -> WharfResult<Run> {
        let Prepared {
            via,
            base,
            mut session,
            steps: plan,
        } = prepared;
        let model = plan
            .iter()
            .flat_map(|(step, _)| step.headers.iter())
            .find(|(name, _)| name.eq_ignore_ascii_case(MODEL_HEADER))
            .map(|(_, value)| value.clone())
            .or_else(|| request.model.clone());
        let target = Target {
            base: &base,
            reach,
            credential,
            api_key: &request.api_key,
            via,
        };
        let window = Duration::from_millis(self.config.warmup_retry_ms);
        let window_ends = Instant::now() + window;
        let backoff = Duration::from_millis(self.config.warmup_backoff_ms.max(10));
        let mut run = self
            .run_plan(bound, &mut session, &plan, &target, true)
            .await?
            .expect("a run allowed to spend reaches a verdict");
        let mut attempts = 1;
        let mut chats = u32::from(run.spent);
        let mut spend_gap = backoff;
        let mut next_spend = Instant::now() + spend_gap;
        while run.class == WARMING_UP {
            let now = Instant::now();
            if now >= window_ends {
                break;
            }
            let pause = run
                .retry_after_ms
                .map_or(backoff, Duration::from_millis)
                .min(window_ends - now)
                .max(Duration::from_millis(10));
            tokio::time::sleep(pause).await;
            let now = Instant::now();
            // The attempt at the window's end spends whatever the schedule says: it decides.
            let spend = now >= next_spend || now >= window_ends;
            attempts += 1;
            // `None`: the free checks passed and the paid step was held back, so the last
            // full answer still stands.
            if let Some(next) = self
                .run_plan(bound, &mut session, &plan, &target, spend)
                .await?
            {
                if next.spent {
                    chats += 1;
                    spend_gap *= 2;
                    next_spend = now + spend_gap;
                }
                run = next;
            }
        }
        if run.class == WARMING_UP {
            run = Run {
                class: RELAY_UNAVAILABLE.into(),
                passed: false,
                retriable: true,
                detail: format!(
                    "still no usable upstream account after the {} ms warm-up window ({attempts} attempts, {chats} of them with a chat completion): {}",
                    window.as_millis(),
                    run.detail
                ),
                ..run
            };
        }
        run.attempts = attempts;
        run.model = model;
        Ok(run)
    }

    async fn plan(
        &self,
        bound: &Bound,
        session: &mut Slot,
        target: wit::ProbeTarget,
    ) -> WharfResult<Vec<wit::ProbeStep>> {
        let provider = bound.provider.clone();
        let planned = session_call(session, &bound.component, move |store, p| {
            p.wharf_plugin_provider()
                .call_probe_plan(store, &provider, &target)
        })
        .await?;
        let plan = planned.map_err(|err| plan_error(&bound.provider, err))?;
        if plan.is_empty() {
            return Err(WharfError::new(
                ErrorCode::PluginError,
                format!("provider {}: probe-plan returned no step", bound.provider),
            ));
        }
        Ok(plan)
    }

    /// One run of the plan. Without `spend`, it stops before the first step with a body (the
    /// paid chat completion) and answers `None` if every step before it passed.
    async fn run_plan(
        &self,
        bound: &Bound,
        session: &mut Slot,
        plan: &[(wit::ProbeStep, reqwest::Url)],
        target: &Target<'_>,
        spend: bool,
    ) -> WharfResult<Option<Run>> {
        let api_key = target.api_key;
        let mut steps = Vec::with_capacity(plan.len());
        let mut warnings = Vec::new();
        let mut spent = false;
        for (step, url) in plan {
            let paid = step.body.is_some();
            if paid && !spend {
                return Ok(None);
            }
            spent |= paid;
            let (observation, preview, latency) = self.perform(step, url, target).await?;
            let status = observation.status;
            let provider = bound.provider.clone();
            let judged = step.clone();
            let verdict = session_call(session, &bound.component, move |store, p| {
                p.wharf_plugin_provider()
                    .call_judge(store, &provider, &judged, &observation)
            })
            .await?;
            let detail = redact(&verdict.detail, api_key);
            steps.push(StepResult {
                via: target.via.as_str().to_string(),
                name: step.name.clone(),
                method: step.method.clone(),
                path: step.path.clone(),
                status,
                latency_ms: latency.as_secs_f64() * 1000.0,
                passed: verdict.passed,
                class: verdict.class.clone(),
                retriable: verdict.retriable,
                detail: detail.clone(),
                preview,
            });
            if !verdict.passed {
                return Ok(Some(Run {
                    class: verdict.class,
                    passed: false,
                    retriable: verdict.retriable,
                    retry_after_ms: verdict.retry_after_ms,
                    detail: format!("{}: {detail}", step.name),
                    attempts: 0,
                    model: None,
                    steps,
                    warnings,
                    spent,
                    failed_status: status,
                }));
            }
            if verdict.class != READY {
                warnings.push(format!("{} ({}): {detail}", step.name, verdict.class));
            }
        }
        let detail = if warnings.is_empty() {
            format!("all {} steps passed", steps.len())
        } else {
            format!(
                "all {} steps passed, with {} warning(s): {}",
                steps.len(),
                warnings.len(),
                warnings.join("; ")
            )
        };
        Ok(Some(Run {
            class: READY.into(),
            passed: true,
            retriable: false,
            retry_after_ms: None,
            detail,
            attempts: 0,
            model: None,
            steps,
            warnings,
            spent,
            failed_status: None,
        }))
    }

    /// Sends one step to its URL. A transport failure is an observation too; only a target
    /// that the connection's resolver refuses (its name now points elsewhere) fails the probe.
    async fn perform(
        &self,
        step: &wit::ProbeStep,
        url: &reqwest::Url,
        target: &Target<'_>,
    ) -> WharfResult<(wit::Observation, String, Duration)> {
        let timeout = Duration::from_millis(
            u64::from(step.timeout_ms).clamp(1, self.config.max_step_timeout_ms.max(1)),
        );
        let method =
            reqwest::Method::from_bytes(step.method.as_bytes()).unwrap_or(reqwest::Method::GET);
        // Private headers are for `judge` only; the outbound rules drop credential and routing
        // headers and add the target's credential.
        let headers = step
            .headers
            .iter()
            .filter(|(name, _)| !name.to_ascii_lowercase().starts_with(PRIVATE_HEADER_PREFIX))
            .map(|(name, value)| (name.as_str(), value.as_str()));
        let mut request = self
            .outbound
            .request(
                target.base,
                target.reach,
                method,
                url,
                headers,
                Some(target.credential),
            )
            .map_err(|refused| match refused {
                Refused::Address(refused) => not_allowed(target.via, &refused),
                Refused::OtherOrigin { .. } => {
                    WharfError::internal(format!("probe step `{}`: {refused}", step.name))
                }
            })?;
        if let Some(body) = &step.body {
            request = request.body(body.clone());
        }
        let _permit = self
            .limit
            .acquire()
            .await
            .expect("probe semaphore is never closed");
        let started = Instant::now();
        let exchange = async {
            let response = request.send().await?;
            let status = response.status().as_u16();
            let headers: Vec<(String, String)> = response
                .headers()
                .iter()
                .filter_map(|(k, v)| {
                    v.to_str()
                        .ok()
                        .map(|v| (k.as_str().to_string(), v.to_string()))
                })
                .collect();
            let (body, broken) = read_body(response, step.stream).await;
            Ok::<_, reqwest::Error>((status, headers, body, broken))
        };
        let outcome = tokio::time::timeout(timeout, exchange).await;
        let latency = started.elapsed();
        let latency_ms = latency.as_millis() as u64;
        let observation = match outcome {
            Err(_) => transport_failure("timeout", latency_ms),
            Ok(Err(err)) => {
                if let Some(refused) = refusal(&err) {
                    return Err(not_allowed(target.via, &refused));
                }
                transport_failure(
                    if err.is_timeout() {
                        "timeout"
                    } else {
                        "network_error"
                    },
                    latency_ms,
                )
            }
            Ok(Ok((status, headers, body, broken))) => wit::Observation {
                status: Some(status),
                headers,
                body,
                latency_ms,
                transport_error: broken.then(|| "network_error".to_string()),
            },
        };
        let preview = preview(&observation, target.api_key);
        Ok((observation, preview, latency))
    }
}

/// Which of a probe's targets a step goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// `base_url`.
    Relay,
    /// `direct_base_url`.
    Direct,
}

impl Via {
    fn as_str(self) -> &'static str {
        match self {
            Via::Relay => "relay",
            Via::Direct => "direct",
        }
    }

    fn field(self) -> &'static str {
        match self {
            Via::Relay => "base_url",
            Via::Direct => "direct_base_url",
        }
    }
}

/// The validated base URLs of a probe.
#[derive(Debug)]
struct Targets {
    relay: BaseUrl,
    direct: Option<BaseUrl>,
}

/// One target's plan, checked, with the provider instance that made it.
struct Prepared {
    via: Via,
    base: BaseUrl,
    session: Slot,
    steps: Vec<(wit::ProbeStep, reqwest::Url)>,
}

/// Where and how one target's steps are sent.
struct Target<'a> {
    base: &'a BaseUrl,
    reach: Reach,
    credential: &'a Credential,
    /// For redaction only: the credential carries it to the target.
    api_key: &'a str,
    via: Via,
}

fn not_allowed(via: Via, refused: &AddressRefused) -> WharfError {
    WharfError::new(
        ErrorCode::TargetNotAllowed,
        format!(
            "`{}`: {refused}; probing loopback, private, link-local and other non-public addresses needs an admin key, or `[probes] allow_private_targets = true` on the server",
            via.field()
        ),
    )
}

/// The provider instance of one run, created on first use and dropped after a fault.
type Slot = Option<ProviderSession>;

/// Runs `f` on the run's provider instance, on a blocking thread (plugin calls block).
async fn session_call<R: Send + 'static>(
    slot: &mut Slot,
    component: &Arc<LoadedComponent>,
    f: impl FnOnce(&mut wasmtime::Store<CallState>, &LlmProvider) -> wasmtime::Result<R>
    + Send
    + 'static,
) -> WharfResult<R> {
    let taken = slot.take();
    let component = component.clone();
    let owner = crate::runtime::call::current_owner();
    let (kept, result) = tokio::task::spawn_blocking(move || {
        let mut session = match taken {
            Some(session) => session,
            None => match component.provider_session(owner.as_deref()) {
                Ok(session) => session,
                Err(err) => return (None, Err(err)),
            },
        };
        let result = session.call(f);
        (result.is_ok().then_some(session), result)
    })
    .await
    .map_err(|err| WharfError::internal(format!("plugin call task failed: {err}")))?;
    *slot = kept;
    result
}

fn transport_failure(kind: &str, latency_ms: u64) -> wit::Observation {
    wit::Observation {
        status: None,
        headers: Vec::new(),
        body: String::new(),
        latency_ms,
        transport_error: Some(kind.to_string()),
    }
}

fn preview(observation: &wit::Observation, api_key: &str) -> String {
    if let Some(kind) = &observation.transport_error
        && observation.status.is_none()
    {
        return format!("<{kind}>");
    }
    // Redact before cutting, so a key straddling the cut cannot leave a prefix behind.
    let head: String = observation
        .body
        .chars()
        .take(PREVIEW_CHARS + api_key.len())
        .collect();
    let clean = redact(&head, api_key);
    let mut out: String = clean.chars().take(PREVIEW_CHARS).collect();
    if observation.body.chars().nth(PREVIEW_CHARS).is_some() {
        out.push('…');
    }
    out
}

/// Reads at most [`BODY_CAP_BYTES`]. For streams, the `data:` payloads one per line (as the WIT
/// `observation.body` documents), stopping at `[DONE]`. The flag is true when the body broke off.
async fn read_body(response: reqwest::Response, stream: bool) -> (String, bool) {
    let mut bytes = Vec::new();
    let mut chunks = response.bytes_stream();
    let mut broken = false;
    while let Some(chunk) = chunks.next().await {
        match chunk {
            Ok(chunk) => {
                bytes.extend_from_slice(&chunk);
                if bytes.len() >= BODY_CAP_BYTES {
                    bytes.truncate(BODY_CAP_BYTES);
                    break;
                }
                if stream && contains_done(&bytes) {
                    break;
                }
            }
            Err(_) => {
                broken = true;
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&bytes).into_owned();
    if !stream {
        return (text, broken);
    }
    let trimmed = text.trim_start();
    // An upstream that ignored `stream: true` answers plain JSON: hand it over as is.
    if trimmed.starts_with('{') {
        return (text, broken);
    }
    let payloads: Vec<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("data:"))
        .map(str::trim)
        .filter(|payload| !payload.is_empty())
        .collect();
    (payloads.join("\n"), broken)
}

fn contains_done(bytes: &[u8]) -> bool {
    bytes.windows(6).any(|w| w == b"[DONE]")
}

fn validate(request: &ProbeRequest) -> WharfResult<Targets> {
    if request.provider.trim().is_empty() {
        return Err(WharfError::validation("`provider` is required"));
    }
    let relay = base_url(Via::Relay, &request.base_url)?;
    let direct = request
        .direct_base_url
        .as_deref()
        .map(|direct| base_url(Via::Direct, direct))
        .transpose()?;
    let key = request.api_key.as_str();
    if key.trim().len() < 4 {
        return Err(WharfError::validation(
            "`api_key` must have at least 4 characters",
        ));
    }
    if key.chars().any(|c| c.is_control() || c == ' ') {
        // Said without echoing it: the value is a secret.
        return Err(WharfError::validation(
            "`api_key` contains whitespace or control characters",
        ));
    }
    if request
        .model
        .as_deref()
        .is_some_and(|m| m.trim().is_empty())
    {
        return Err(WharfError::validation(
            "`model` is empty; omit it to probe the provider's smoke-test model",
        ));
    }
    Ok(Targets { relay, direct })
}

fn base_url(via: Via, value: &str) -> WharfResult<BaseUrl> {
    BaseUrl::parse(value).map_err(|err| WharfError::validation(format!("`{}` {err}", via.field())))
}

fn plan_error(provider: &str, err: PluginError) -> WharfError {
    let code = match err.code.as_str() {
        "unknown_provider" => ErrorCode::NotFound,
        "invalid_input" | "validation_error" => ErrorCode::ValidationError,
        "capability_not_supported" => ErrorCode::CapabilityNotSupported,
        _ => ErrorCode::PluginError,
    };
    WharfError::new(
        code,
        format!("provider {provider}: {} ({})", err.message, err.code),
    )
    .with_retriable(err.retriable)
}

/// The `n` names closest to `wanted` by edit distance (case-insensitive), best first.
pub fn nearest<'a>(wanted: &str, known: &[&'a str], n: usize) -> Vec<&'a str> {
    let wanted = wanted.to_lowercase();
    let mut scored: Vec<(usize, usize, &str)> = known
        .iter()
        .map(|name| {
            let lower = name.to_lowercase();
            // A name containing the input (or the reverse) ranks first whatever its length.
            let related = lower.contains(&wanted) || wanted.contains(&lower);
            (usize::from(!related), levenshtein(&wanted, &lower), *name)
        })
        .collect();
    scored.sort();
    scored
        .into_iter()
        .take(n)
        .map(|(_, _, name)| name)
        .collect()
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_names_rank_by_distance() {
        let known = [
            "deepseek",
            "glm",
            "kimi",
            "minimax",
            "openai-compatible",
            "qwen",
            "stepfun",
        ];
        assert_eq!(nearest("kimmi", &known, 3)[0], "kimi");
        assert_eq!(nearest("deepseak", &known, 1), ["deepseek"]);
        assert_eq!(nearest("openai", &known, 1), ["openai-compatible"]);
    }

    #[test]
    fn preview_redacts_and_shortens() {
        let key = "sk-live-0123456789abcdef";
        let body = format!("{{\"error\":\"bad key {key}\"}}{}", "x".repeat(400));
        let obs = wit::Observation {
            status: Some(401),
            headers: vec![],
            body,
            latency_ms: 1,
            transport_error: None,
        };
        let p = preview(&obs, key);
        assert!(
            !p.contains(key) && p.contains("[redacted]") && p.ends_with('…'),
            "{p}"
        );
        assert!(p.chars().count() <= PREVIEW_CHARS + 1);
    }

    fn failed(class: &str, retriable: bool, status: Option<u16>, hint: Option<u64>) -> Run {
        Run {
            class: class.into(),
            passed: false,
            retriable,
            retry_after_ms: hint,
            detail: String::new(),
            attempts: 1,
            model: None,
            steps: Vec::new(),
            warnings: Vec::new(),
            spent: true,
            failed_status: status,
        }
    }

    #[test]
    fn only_failures_that_do_not_clear_by_themselves_can_be_a_gap() {
        let transient_ones = [
            failed("upstream_rate_limited", true, Some(429), Some(7000)),
            failed("upstream_rate_limited", true, Some(429), None),
            failed("timeout", true, None, None),
            failed("network_error", true, None, None),
            failed(RELAY_UNAVAILABLE, true, Some(502), None),
            failed("upstream_error", true, Some(503), None),
            failed("upstream_error", true, Some(504), None),
            failed("upstream_error", true, Some(500), Some(2000)),
        ];
        for run in &transient_ones {
            assert!(transient(run), "{} {:?}", run.class, run.failed_status);
        }
        let lasting = [
            failed("upstream_error", true, Some(502), None),
            failed("upstream_error", true, Some(500), None),
            failed("upstream_auth", false, Some(401), None),
            failed("model_missing", false, Some(404), None),
            failed("invalid_response", false, Some(200), None),
        ];
        for run in &lasting {
            assert!(!transient(run), "{} {:?}", run.class, run.failed_status);
        }
    }

    #[test]
    fn requests_are_validated_without_echoing_the_key() {
        let base = ProbeRequest {
            provider: "kimi".into(),
            base_url: "http://127.0.0.1:1".into(),
            api_key: "sk-abc def".into(),
            model: None,
            stream: None,
            direct_base_url: None,
        };
        let err = validate(&base).unwrap_err();
        assert!(!err.message.contains("sk-abc"), "{}", err.message);
        let bad_url = ProbeRequest {
            base_url: "ftp://x".into(),
            api_key: "sk-abcdef".into(),
            ..base.clone()
        };
        assert_eq!(
            validate(&bad_url).unwrap_err().code,
            ErrorCode::ValidationError
        );
        let creds = ProbeRequest {
            base_url: "http://u:p@host/v1".into(),
            api_key: "sk-abcdef".into(),
            ..base
        };
        assert!(validate(&creds).is_err());
    }
}
