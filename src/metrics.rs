//! Prometheus metrics: the registry, the handles the proxy records into, and the small
//! Pingora app that serves `GET /metrics` on a listener of its own (`[server]
//! metrics_listen`), never on the public port.
//!
//! Every label value comes from a bounded set: routes from the route table, tenants from the
//! configuration (`-` when the calling site is unknown or not whitelisted), statuses are
//! numbers, outcomes, kinds and results are the proxy's own constants. Nothing a browser
//! sends (a thread id, an origin, a message) ever becomes a label.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::{Method, Response};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::turn::StreamOutcome;
use crate::upstream::UpstreamError;

/// The exposition's content type (OpenMetrics text, what `prometheus-client` encodes).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Request duration buckets, in seconds: 1 ms to 60 s (longer streams land in `+Inf`).
const DURATION_BUCKETS: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    tenant: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    tenant: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LeadLabels {
    tenant: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    tenant: String,
    r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantLabels {
    tenant: String,
}

/// Time-to-first-token buckets, in seconds: 50 ms to 60 s.
const FIRST_TOKEN_BUCKETS: [f64; 13] = [
    0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// Why the proxy itself declined a lead delivery attempt, as the `reason` label of
/// `lead_delivery_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryRefusal {
    /// The SMTP password would have gone over an unencrypted connection.
    PlaintextAuth,
}

impl DeliveryRefusal {
    pub const ALL: [DeliveryRefusal; 1] = [DeliveryRefusal::PlaintextAuth];

    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryRefusal::PlaintextAuth => "plaintext_auth",
        }
    }
}

/// Why an upstream exchange failed, as the `kind` label of `upstream_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    /// Connecting, the response header or a chunk of the body took too long.
    Timeout,
    /// The upstream could not be resolved or connected to.
    Unreachable,
    /// The connection broke, or the upstream sent something unreadable.
    Broken,
    /// The upstream answered with a 4xx status.
    Status4xx,
    /// The upstream answered with a 5xx status.
    Status5xx,
}

impl UpstreamErrorKind {
    pub const ALL: [UpstreamErrorKind; 5] = [
        UpstreamErrorKind::Timeout,
        UpstreamErrorKind::Unreachable,
        UpstreamErrorKind::Broken,
        UpstreamErrorKind::Status4xx,
        UpstreamErrorKind::Status5xx,
    ];

    /// The kind of a failed exchange.
    pub fn of(e: &UpstreamError) -> Self {
        match e {
            UpstreamError::Timeout(_) => UpstreamErrorKind::Timeout,
            UpstreamError::Unreachable(_) => UpstreamErrorKind::Unreachable,
            UpstreamError::Broken(_) | UpstreamError::TooLarge => UpstreamErrorKind::Broken,
        }
    }

    /// The kind of an error status; `None` for any other status.
    pub fn of_status(status: u16) -> Option<Self> {
        match status {
            400..=499 => Some(UpstreamErrorKind::Status4xx),
            500..=599 => Some(UpstreamErrorKind::Status5xx),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamErrorKind::Timeout => "timeout",
            UpstreamErrorKind::Unreachable => "unreachable",
            UpstreamErrorKind::Broken => "broken",
            UpstreamErrorKind::Status4xx => "status_4xx",
            UpstreamErrorKind::Status5xx => "status_5xx",
        }
    }
}

/// What became of one lead-tool call, as the `result` label of `leads_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeadResult {
    /// Journaled and e-mailed while the assistant waited.
    Sent,
    /// Journaled; delivery goes on in the background.
    Queued,
    /// Journaling failed: kept in memory until delivered.
    NotSaved,
    /// The arguments were refused (missing field, bad address...).
    Invalid,
    /// A per-conversation or per-address cap was reached.
    Capped,
}

impl LeadResult {
    pub fn as_str(self) -> &'static str {
        match self {
            LeadResult::Sent => "sent",
            LeadResult::Queued => "queued",
            LeadResult::NotSaved => "not_saved",
            LeadResult::Invalid => "invalid",
            LeadResult::Capped => "capped",
        }
    }
}

/// The registry and every metric handle; one per process, shared by all requests.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    streams_active: Gauge,
    stream_outcomes: Family<OutcomeLabels, Counter>,
    upstream_errors: Family<KindLabels, Counter>,
    leads: Family<LeadLabels, Counter>,
    leads_pending: Gauge,
    lead_delivery_refused: Family<ReasonLabels, Counter>,
    store_errors: Counter,
    tokens: Family<TokenLabels, Counter>,
    time_to_first_token: Family<TenantLabels, Histogram, fn() -> Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Every metric, registered under the `chatbot_proxy_` prefix.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("chatbot_proxy");
        let requests = Family::<RequestLabels, Counter>::default();
        let request_duration: Family<RouteLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(|| Histogram::new(DURATION_BUCKETS));
        let streams_active = Gauge::default();
        let stream_outcomes = Family::<OutcomeLabels, Counter>::default();
        let upstream_errors = Family::<KindLabels, Counter>::default();
        // Every kind from the start, at 0, so that rates work before the first error.
        for kind in UpstreamErrorKind::ALL {
            let _ = upstream_errors.get_or_create(&KindLabels {
                kind: kind.as_str(),
            });
        }
        let leads = Family::<LeadLabels, Counter>::default();
        let leads_pending = Gauge::default();
        let lead_delivery_refused = Family::<ReasonLabels, Counter>::default();
        for reason in DeliveryRefusal::ALL {
            let _ = lead_delivery_refused.get_or_create(&ReasonLabels {
                reason: reason.as_str(),
            });
        }
        registry.register(
            "requests",
            "Widget requests answered, by route, tenant and status",
            requests.clone(),
        );
        registry.register_with_unit(
            "request_duration",
            "Time from a request's arrival to the end of its answer (streams included)",
            Unit::Seconds,
            request_duration.clone(),
        );
        registry.register(
            "streams_active",
            "process-message answers being streamed right now",
            streams_active.clone(),
        );
        registry.register(
            "stream_outcomes",
            "How process-message streams ended, by tenant and outcome",
            stream_outcomes.clone(),
        );
        registry.register(
            "upstream_errors",
            "Failed exchanges with the upstream API, by kind",
            upstream_errors.clone(),
        );
        registry.register(
            "leads",
            "Lead-tool calls, by tenant and result",
            leads.clone(),
        );
        registry.register(
            "leads_pending",
            "Leads journaled but not yet delivered",
            leads_pending.clone(),
        );
        registry.register(
            "lead_delivery_refused",
            "Lead delivery attempts the proxy declined to make, by reason (the lead stays queued)",
            lead_delivery_refused.clone(),
        );
        let store_errors = Counter::default();
        registry.register(
            "store_errors",
            "Failed calls to Redis, served by the in-process store instead (outage probes included)",
            store_errors.clone(),
        );
        let tokens = Family::<TokenLabels, Counter>::default();
        registry.register(
            "tokens",
            "Tokens the upstream reported using for answers, by tenant and type (input, output)",
            tokens.clone(),
        );
        let time_to_first_token: Family<TenantLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(|| Histogram::new(FIRST_TOKEN_BUCKETS));
        registry.register_with_unit(
            "time_to_first_token",
            "Time from a process-message request's arrival to the first text of its answer written to the browser",
            Unit::Seconds,
            time_to_first_token.clone(),
        );
        Metrics {
            registry,
            tokens,
            time_to_first_token,
            requests,
            request_duration,
            streams_active,
            stream_outcomes,
            upstream_errors,
            leads,
            leads_pending,
            lead_delivery_refused,
            store_errors,
        }
    }

    /// `store_errors_total`, for [`Store::with_redis`](crate::store::Store::with_redis).
    pub fn store_errors(&self) -> Counter {
        self.store_errors.clone()
    }

    /// One answered request: `route` and `tenant` as in the access log (`-` when unknown).
    pub fn request(&self, route: &'static str, tenant: &str, status: u16, duration: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                route,
                tenant: tenant.to_string(),
                status,
            })
            .inc();
        self.request_duration
            .get_or_create(&RouteLabels { route })
            .observe(duration.as_secs_f64());
    }

    /// A process-message stream starts; it counts as active until the guard is dropped.
    pub fn stream_started(&self) -> ActiveStream<'_> {
        self.streams_active.inc();
        ActiveStream(&self.streams_active)
    }

    /// How a process-message stream ended (the access log's `outcome`).
    pub fn stream_outcome(&self, tenant: &str, outcome: StreamOutcome) {
        self.stream_outcomes
            .get_or_create(&OutcomeLabels {
                tenant: tenant.to_string(),
                outcome: outcome.as_str(),
            })
            .inc();
    }

    /// Tokens the upstream reported for one of `tenant`'s answers.
    pub fn tokens(&self, tenant: &str, input: u64, output: u64) {
        for (kind, count) in [("input", input), ("output", output)] {
            self.tokens
                .get_or_create(&TokenLabels {
                    tenant: tenant.to_string(),
                    r#type: kind,
                })
                .inc_by(count);
        }
    }

    /// The first text of one of `tenant`'s answers reached the browser `elapsed` after the
    /// request arrived.
    pub fn time_to_first_token(&self, tenant: &str, elapsed: Duration) {
        self.time_to_first_token
            .get_or_create(&TenantLabels {
                tenant: tenant.to_string(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// A failed upstream exchange.
    pub fn upstream_error(&self, kind: UpstreamErrorKind) {
        self.upstream_errors
            .get_or_create(&KindLabels {
                kind: kind.as_str(),
            })
            .inc();
    }

    /// An upstream answer that was not a success; counted when its status is 4xx or 5xx.
    pub fn upstream_status(&self, status: u16) {
        if let Some(kind) = UpstreamErrorKind::of_status(status) {
            self.upstream_error(kind);
        }
    }

    /// One lead-tool call of `tenant`.
    pub fn lead(&self, tenant: &str, result: LeadResult) {
        self.leads
            .get_or_create(&LeadLabels {
                tenant: tenant.to_string(),
                result: result.as_str(),
            })
            .inc();
    }

    /// A lead delivery attempt the proxy declined to make.
    pub fn lead_delivery_refused(&self, reason: DeliveryRefusal) {
        self.lead_delivery_refused
            .get_or_create(&ReasonLabels {
                reason: reason.as_str(),
            })
            .inc();
    }

    /// The exposition in the OpenMetrics text format, with `leads_pending` as given.
    pub fn encode(&self, leads_pending: usize) -> String {
        self.leads_pending
            .set(i64::try_from(leads_pending).unwrap_or(i64::MAX));
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

/// A stream counted in `streams_active`; dropping it ends the stream (however it ends).
pub struct ActiveStream<'a>(&'a Gauge);

impl Drop for ActiveStream<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Where the metrics endpoint reads `leads_pending` from (the lead desk, in the proxy).
pub trait PendingLeads: Send + Sync {
    /// Leads journaled but not yet delivered.
    fn pending_leads(&self) -> usize;
}

/// The app behind `metrics_listen`: `GET /metrics` answers the exposition, any other path
/// is `404`, any other method on `/metrics` is `405`.
pub struct MetricsEndpoint {
    metrics: Arc<Metrics>,
    pending: Arc<dyn PendingLeads>,
}

impl MetricsEndpoint {
    pub fn new(metrics: Arc<Metrics>, pending: Arc<dyn PendingLeads>) -> Self {
        MetricsEndpoint { metrics, pending }
    }
}

#[async_trait]
impl ServeHttp for MetricsEndpoint {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let (status, content_type, body) = if req.uri.path() != "/metrics" {
            (404, "text/plain; charset=utf-8", b"not found\n".to_vec())
        } else if req.method != Method::GET {
            (405, "text/plain; charset=utf-8", b"use GET\n".to_vec())
        } else {
            let text = self.metrics.encode(self.pending.pending_leads());
            (200, CONTENT_TYPE, text.into_bytes())
        };
        let mut response = Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, content_type)
            .header(http::header::CONTENT_LENGTH, body.len());
        if status == 405 {
            response = response.header(http::header::ALLOW, "GET");
        }
        response.body(body).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<&str> {
        text.lines().collect()
    }

    #[test]
    fn a_fresh_registry_has_the_gauges_and_every_error_kind_at_zero() {
        let text = Metrics::new().encode(0);
        for series in [
            "# TYPE chatbot_proxy_streams_active gauge",
            "chatbot_proxy_streams_active 0",
            "# TYPE chatbot_proxy_leads_pending gauge",
            "chatbot_proxy_leads_pending 0",
            "# TYPE chatbot_proxy_upstream_errors counter",
            r#"chatbot_proxy_upstream_errors_total{kind="timeout"} 0"#,
            r#"chatbot_proxy_upstream_errors_total{kind="unreachable"} 0"#,
            r#"chatbot_proxy_upstream_errors_total{kind="broken"} 0"#,
            r#"chatbot_proxy_upstream_errors_total{kind="status_4xx"} 0"#,
            r#"chatbot_proxy_upstream_errors_total{kind="status_5xx"} 0"#,
            "# TYPE chatbot_proxy_lead_delivery_refused counter",
            r#"chatbot_proxy_lead_delivery_refused_total{reason="plaintext_auth"} 0"#,
        ] {
            assert!(lines(&text).contains(&series), "{series} missing:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn recorded_values_are_encoded_with_their_labels() {
        let metrics = Metrics::new();
        metrics.request("create-thread", "acme", 200, Duration::from_millis(3));
        metrics.request("create-thread", "acme", 200, Duration::from_millis(40));
        metrics.request("-", "-", 403, Duration::from_micros(200));
        metrics.stream_outcome("acme", StreamOutcome::Completed);
        metrics.upstream_error(UpstreamErrorKind::of(&UpstreamError::Timeout("connecting")));
        metrics.upstream_error(UpstreamErrorKind::of(&UpstreamError::TooLarge));
        metrics.upstream_status(429);
        metrics.upstream_status(503);
        metrics.upstream_status(302);
        metrics.lead("acme", LeadResult::Queued);
        metrics.lead("acme", LeadResult::Capped);
        metrics.lead("acme", LeadResult::Capped);
        metrics.lead_delivery_refused(DeliveryRefusal::PlaintextAuth);
        let text = metrics.encode(7);
        let lines = lines(&text);
        for series in [
            "# TYPE chatbot_proxy_requests counter",
            "# TYPE chatbot_proxy_request_duration_seconds histogram",
            "# UNIT chatbot_proxy_request_duration_seconds seconds",
            "# TYPE chatbot_proxy_stream_outcomes counter",
            "# TYPE chatbot_proxy_leads counter",
            r#"chatbot_proxy_requests_total{route="create-thread",tenant="acme",status="200"} 2"#,
            r#"chatbot_proxy_requests_total{route="-",tenant="-",status="403"} 1"#,
            r#"chatbot_proxy_request_duration_seconds_count{route="create-thread"} 2"#,
            r#"chatbot_proxy_request_duration_seconds_bucket{le="0.001",route="create-thread"} 0"#,
            r#"chatbot_proxy_request_duration_seconds_bucket{le="0.005",route="create-thread"} 1"#,
            r#"chatbot_proxy_request_duration_seconds_bucket{le="0.05",route="create-thread"} 2"#,
            r#"chatbot_proxy_request_duration_seconds_bucket{le="+Inf",route="create-thread"} 2"#,
            r#"chatbot_proxy_request_duration_seconds_bucket{le="0.001",route="-"} 1"#,
            r#"chatbot_proxy_stream_outcomes_total{tenant="acme",outcome="completed"} 1"#,
            r#"chatbot_proxy_upstream_errors_total{kind="timeout"} 1"#,
            r#"chatbot_proxy_upstream_errors_total{kind="broken"} 1"#,
            r#"chatbot_proxy_upstream_errors_total{kind="status_4xx"} 1"#,
            r#"chatbot_proxy_upstream_errors_total{kind="status_5xx"} 1"#,
            r#"chatbot_proxy_upstream_errors_total{kind="unreachable"} 0"#,
            r#"chatbot_proxy_leads_total{tenant="acme",result="queued"} 1"#,
            r#"chatbot_proxy_leads_total{tenant="acme",result="capped"} 2"#,
            "chatbot_proxy_leads_pending 7",
            r#"chatbot_proxy_lead_delivery_refused_total{reason="plaintext_auth"} 1"#,
        ] {
            assert!(lines.contains(&series), "{series} missing:\n{text}");
        }
        assert_eq!(
            lines
                .iter()
                .filter(|l| l.starts_with("chatbot_proxy_upstream_errors_total"))
                .count(),
            5,
            "a 3xx is not an error kind:\n{text}"
        );
    }

    #[test]
    fn tokens_and_time_to_first_token_are_encoded_per_tenant() {
        let metrics = Metrics::new();
        metrics.tokens("acme", 22, 8);
        metrics.tokens("acme", 20, 3);
        metrics.time_to_first_token("acme", Duration::from_millis(300));
        let text = metrics.encode(0);
        let lines = lines(&text);
        for series in [
            "# TYPE chatbot_proxy_tokens counter",
            r#"chatbot_proxy_tokens_total{tenant="acme",type="input"} 42"#,
            r#"chatbot_proxy_tokens_total{tenant="acme",type="output"} 11"#,
            "# TYPE chatbot_proxy_time_to_first_token_seconds histogram",
            r#"chatbot_proxy_time_to_first_token_seconds_count{tenant="acme"} 1"#,
            r#"chatbot_proxy_time_to_first_token_seconds_bucket{le="0.25",tenant="acme"} 0"#,
            r#"chatbot_proxy_time_to_first_token_seconds_bucket{le="0.5",tenant="acme"} 1"#,
        ] {
            assert!(lines.contains(&series), "{series} missing:\n{text}");
        }
    }

    #[test]
    fn the_stream_gauge_follows_its_guards() {
        let metrics = Metrics::new();
        let first = metrics.stream_started();
        let second = metrics.stream_started();
        assert!(metrics
            .encode(0)
            .lines()
            .any(|l| l == "chatbot_proxy_streams_active 2"));
        drop(first);
        assert!(metrics
            .encode(0)
            .lines()
            .any(|l| l == "chatbot_proxy_streams_active 1"));
        drop(second);
        assert!(metrics
            .encode(0)
            .lines()
            .any(|l| l == "chatbot_proxy_streams_active 0"));
    }

    #[test]
    fn label_values_are_the_fixed_names() {
        let names: Vec<&str> = UpstreamErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "timeout",
                "unreachable",
                "broken",
                "status_4xx",
                "status_5xx"
            ]
        );
        assert_eq!(
            UpstreamErrorKind::of(&UpstreamError::Unreachable("refused".into())),
            UpstreamErrorKind::Unreachable
        );
        assert_eq!(
            UpstreamErrorKind::of(&UpstreamError::Broken("reset".into())),
            UpstreamErrorKind::Broken
        );
        assert_eq!(UpstreamErrorKind::of_status(200), None);
        assert_eq!(
            UpstreamErrorKind::of_status(404),
            Some(UpstreamErrorKind::Status4xx)
        );
        let results = [
            LeadResult::Sent,
            LeadResult::Queued,
            LeadResult::NotSaved,
            LeadResult::Invalid,
            LeadResult::Capped,
        ];
        let names: Vec<&str> = results.iter().map(|r| r.as_str()).collect();
        assert_eq!(names, ["sent", "queued", "not_saved", "invalid", "capped"]);
    }
}
