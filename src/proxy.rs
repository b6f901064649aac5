//! The Pingora service: one request's journey through the proxy.
//!
//! Every widget request is answered from `request_filter`: route, calling site, tenant, CORS,
//! then the route's handler talks to the upstream through [`UpstreamClient`] and writes the
//! answer itself (streams need async writes between upstream reads, which Pingora's body
//! filters cannot do). `logging` writes the access line and records the request's
//! [`Metrics`]. [`RequestCtx`] carries what one request learned along the way.

use crate::config::{Config, StreamFormat, Tenant};
use crate::dialect::Dialect;
use crate::errors::{sanitize_retry_after, ApiError};
use crate::leads::LeadDesk;
use crate::metrics::{Metrics, UpstreamErrorKind};
use crate::origin::calling_site;
use crate::relay::{Framing, Relay};
use crate::request::parse_process_message;
use crate::respond::{self, Written};
use crate::routes::Route;
use crate::runs::ActiveRuns;
use crate::tenant::TenantDirectory;
use crate::turn::Turn;
use crate::upstream::{UpstreamClient, UpstreamError, UpstreamRequest, UpstreamResponse};
use async_trait::async_trait;
use bytes::BytesMut;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result};
use pingora_proxy::{ProxyHttp, Session};
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Everything the request handlers share; built once at start-up.
pub struct AppState {
    pub config: Config,
    pub tenants: TenantDirectory,
    pub upstream: Arc<UpstreamClient>,
    pub runs: Arc<ActiveRuns>,
    pub leads: Arc<LeadDesk>,
    pub metrics: Arc<Metrics>,
}

impl AppState {
    /// Everything the proxy needs at run time; opens the lead journal.
    pub fn new(config: Config) -> std::result::Result<Arc<Self>, String> {
        let tenants = TenantDirectory::build(&config.tenants)?;
        let upstream = UpstreamClient::new(config.upstream.clone());
        let metrics = Arc::new(Metrics::new());
        let leads =
            LeadDesk::open_with_metrics(&config.leads, config.smtp.as_ref(), Arc::clone(&metrics))?;
        Ok(Arc::new(AppState {
            config,
            tenants,
            upstream,
            runs: ActiveRuns::new(),
            leads,
            metrics,
        }))
    }
}

/// The proxy service.
pub struct ChatbotProxy {
    state: Arc<AppState>,
}

impl ChatbotProxy {
    pub fn new(state: Arc<AppState>) -> Self {
        ChatbotProxy { state }
    }
}

/// What one request learned on its way through the proxy.
pub struct RequestCtx {
    started: Instant,
    route: Option<Route>,
    tenant: Option<Arc<Tenant>>,
    /// The calling site's origin, once whitelisted: echoed in `Access-Control-Allow-Origin`.
    cors_origin: Option<String>,
    written: Written,
    /// How a stream ended, for the access log.
    outcome: &'static str,
}

impl RequestCtx {
    fn cors(&self) -> Option<&str> {
        self.cors_origin.as_deref()
    }
}

#[async_trait]
impl ProxyHttp for ChatbotProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            route: None,
            tenant: None,
            cors_origin: None,
            written: Written::default(),
            outcome: "-",
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let written = self.handle(session, ctx).await;
        ctx.written = written;
        Ok(true)
    }

    async fn upstream_peer(&self, _: &mut Session, _: &mut RequestCtx) -> Result<Box<HttpPeer>> {
        // Every request is answered in `request_filter`; reaching here is a bug.
        Error::e_explain(
            ErrorType::InternalError,
            "no route proxies through upstream_peer",
        )
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        let route = ctx.route.map_or("-", Route::name);
        let tenant = ctx.tenant.as_ref().map_or("-", |t| t.name.as_str());
        let duration = ctx.started.elapsed();
        if log::log_enabled!(log::Level::Info) {
            let client = session
                .client_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|| "-".into());
            log::info!(
                "access client={} method={} route={} tenant={} status={} duration_ms={} bytes={} outcome={}",
                client,
                session.req_header().method,
                route,
                tenant,
                ctx.written.status,
                duration.as_millis(),
                ctx.written.bytes,
                ctx.outcome,
            );
        }
        let metrics = &self.state.metrics;
        metrics.request(route, tenant, ctx.written.status, duration);
        if ctx.outcome != "-" {
            metrics.stream_outcome(tenant, ctx.outcome);
        }
    }
}

impl ChatbotProxy {
    /// Route the request and answer it.
    async fn handle(&self, session: &mut Session, ctx: &mut RequestCtx) -> Written {
        let req = session.req_header();
        let method = req.method.clone();
        let route = Route::resolve(req.uri.path(), &self.state.config.server.prefix);
        ctx.route = route;
        if route == Some(Route::Health) {
            if !Route::Health.allows(method.as_str()) {
                let err = ApiError::method_not_allowed(Route::Health.allowed_methods());
                return respond::error(session, &err, None).await;
            }
            return respond::json(session, 200, br#"{"status":"ok"}"#.to_vec(), None, &[]).await;
        }

        // Who is calling? Nothing goes upstream for a site that is not whitelisted.
        let site = calling_site(
            session.get_header("origin").map(|v| v.as_bytes()),
            session.get_header("referer").map(|v| v.as_bytes()),
        );
        let tenant = site
            .as_ref()
            .ok()
            .and_then(|site| self.state.tenants.find(&site.host))
            .cloned();
        if let (Ok(site), Some(tenant)) = (&site, &tenant) {
            ctx.tenant = Some(tenant.clone());
            ctx.cors_origin = Some(site.origin.clone());
        }
        let Some(route) = route else {
            return respond::error(session, &ApiError::not_found(), ctx.cors()).await;
        };
        let tenant = match (site, tenant) {
            (Ok(_), Some(tenant)) => tenant,
            (Err(why), _) => {
                return respond::error(session, &ApiError::origin_not_allowed(why), None).await
            }
            (Ok(site), None) => {
                let why = format!("{} is not whitelisted", site.host);
                return respond::error(session, &ApiError::origin_not_allowed(why), None).await;
            }
        };

        if method == http::Method::OPTIONS {
            return respond::preflight(session, ctx.cors().unwrap_or_default()).await;
        }
        if !route.allows(method.as_str()) {
            let err = ApiError::method_not_allowed(route.allowed_methods());
            return respond::error(session, &err, ctx.cors()).await;
        }

        let result = match route {
            Route::CreateThread => self.create_thread(session, ctx, &tenant).await,
            Route::ProcessMessage => self.process_message(session, ctx, &tenant).await,
            Route::Health => unreachable!("answered above"),
        };
        match result {
            Ok(written) => written,
            Err(err) => respond::error(session, &err, ctx.cors()).await,
        }
    }

    /// `create-thread`: a new conversation upstream, answered with `thread_id` beside `id`.
    async fn create_thread(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        tenant: &Tenant,
    ) -> Result<Written, ApiError> {
        let dialect = Dialect::of(tenant);
        let response = self
            .call(&dialect.create_conversation(tenant), tenant, false)
            .await?;
        let mut thread = response.json().await.map_err(|e| self.failed(e))?;
        let id = thread
            .get("id")
            .and_then(Value::as_str)
            .filter(|id| dialect.id_rule().accepts(id))
            .map(str::to_string)
            .ok_or_else(|| ApiError::upstream_error("the new conversation has no valid id"))?;
        thread["thread_id"] = Value::String(id);
        let body = thread.to_string().into_bytes();
        Ok(respond::json(session, 200, body, ctx.cors(), &[]).await)
    }

    /// `process-message`: add the message, start a streamed answer, relay it.
    async fn process_message(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        tenant: &Tenant,
    ) -> Result<Written, ApiError> {
        let dialect = Dialect::of(tenant);
        let limits = &self.state.config.limits;
        let deadline = self.state.config.server.timeouts.request_body;
        let body = read_body(session, limits.max_body_bytes, deadline).await?;
        let turn = parse_process_message(&body, limits.max_message_chars, dialect.id_rule())?;
        let _busy = self
            .state
            .runs
            .try_start(&tenant.name, &turn.thread_id)
            .ok_or_else(ApiError::run_active)?;

        if let Some(prepare) = dialect.prepare_turn(&turn.thread_id, &turn.message) {
            let prepared = self.call(&prepare, tenant, true).await?;
            prepared.read_all().await.map_err(|e| self.failed(e))?;
        }
        let start = dialect.start_turn(tenant, &turn.thread_id, &turn.message);
        let upstream = self.call(&start, tenant, true).await?;

        let framing = match tenant.stream_format {
            StreamFormat::OpenAi => Framing::Raw,
            StreamFormat::WidgetV1 => Framing::WidgetV1(dialect),
        };
        let site = ctx.cors_origin.clone().unwrap_or_default();
        let Some(mut relay) = Relay::start(session, ctx.cors(), framing).await else {
            ctx.outcome = "client_gone";
            return Ok(Written {
                status: 200,
                bytes: 0,
            });
        };
        if tenant.redact_run_objects {
            relay.redact_run_objects();
        }
        let _streaming = self.state.metrics.stream_started();
        let turn = Turn {
            state: &self.state,
            tenant,
            dialect,
            conversation: &turn.thread_id,
            site: &site,
        };
        ctx.outcome = turn.stream(&mut relay, upstream).await;
        Ok(Written {
            status: 200,
            bytes: relay.bytes_sent,
        })
    }

    /// Send one upstream request and check its status; a failure becomes the widget's error.
    async fn call(
        &self,
        req: &UpstreamRequest,
        tenant: &Tenant,
        thread_scoped: bool,
    ) -> Result<UpstreamResponse, ApiError> {
        let response = self
            .state
            .upstream
            .send(req, &tenant.api_key)
            .await
            .map_err(|e| self.failed(e))?;
        if response.is_success() {
            return Ok(response);
        }
        let status = response.status;
        self.state.metrics.upstream_status(status);
        let retry_after = response.retry_after.clone();
        // The body only tells us which error it is; it is never passed on.
        let body = response.json().await.unwrap_or(Value::Null);
        log::warn!(
            "upstream answered {status} to {} {} for tenant {}",
            req.method,
            req.path,
            tenant.name
        );
        let busy = Dialect::of(tenant).is_busy_error(&body);
        Err(map_upstream_status(
            status,
            retry_after,
            busy,
            thread_scoped,
        ))
    }

    /// A failed exchange, counted, as the widget's error.
    fn failed(&self, e: UpstreamError) -> ApiError {
        self.state.metrics.upstream_error(UpstreamErrorKind::of(&e));
        upstream_failure(e)
    }
}

/// Read the request body, refusing more than `limit` bytes or taking longer than `deadline` in
/// total (a body trickled a byte at a time must not hold the connection for days).
async fn read_body(
    session: &mut Session,
    limit: usize,
    deadline: Duration,
) -> Result<bytes::Bytes, ApiError> {
    let declared = session
        .get_header("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::body_too_large(limit));
    }
    let read_all = async {
        let mut body = BytesMut::new();
        while let Some(chunk) = session
            .read_request_body()
            .await
            .map_err(|_| ApiError::invalid_request("The request body could not be read."))?
        {
            if body.len() + chunk.len() > limit {
                return Err(ApiError::body_too_large(limit));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    };
    match tokio::time::timeout(deadline, read_all).await {
        Ok(body) => body,
        Err(_) => {
            // The rest of the body may still be on its way: never reuse this connection.
            session.set_keepalive(None);
            Err(ApiError::new(
                408,
                "request_timeout",
                "The request body was not received in time.",
            ))
        }
    }
}

/// A failed exchange (no usable answer) as the widget's error.
fn upstream_failure(e: UpstreamError) -> ApiError {
    log::warn!("{e}");
    match e {
        UpstreamError::Timeout(_) => ApiError::upstream_timeout(),
        UpstreamError::Unreachable(_) => ApiError::upstream_unreachable(),
        UpstreamError::Broken(_) | UpstreamError::TooLarge => {
            ApiError::upstream_error("its answer could not be read")
        }
    }
}

/// An upstream error status as the widget's error.
/// `busy`: the body says the conversation is busy with another answer.
fn map_upstream_status(
    status: u16,
    retry_after: Option<String>,
    busy: bool,
    thread_scoped: bool,
) -> ApiError {
    match status {
        401 | 403 => ApiError::upstream_auth_failed(),
        404 if thread_scoped => ApiError::thread_not_found(),
        409 => ApiError::run_active(),
        400 if busy => ApiError::run_active(),
        429 => ApiError::rate_limited(retry_after.as_deref().and_then(sanitize_retry_after)),
        s => ApiError::upstream_error(format!("it answered with status {s}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_statuses_map_to_widget_errors() {
        let code = |status, busy, scoped| map_upstream_status(status, None, busy, scoped).code;
        assert_eq!(code(401, false, false), "upstream_auth_failed");
        assert_eq!(code(403, false, true), "upstream_auth_failed");
        assert_eq!(map_upstream_status(403, None, false, true).status, 502);
        assert_eq!(code(404, false, true), "thread_not_found");
        assert_eq!(map_upstream_status(404, None, false, false).status, 502);
        let limited = map_upstream_status(429, Some("7".into()), false, true);
        assert_eq!(
            (limited.status, limited.retry_after.as_deref()),
            (429, Some("7"))
        );
        let smuggled = map_upstream_status(429, Some("7\r\nX: y".into()), false, true);
        assert_eq!(smuggled.retry_after, None);
        assert_eq!(code(500, false, true), "upstream_error");
        assert_eq!(code(400, true, true), "run_active");
        assert_eq!(map_upstream_status(400, None, false, true).status, 502);
    }

    #[test]
    fn failed_exchanges_map_to_gateway_errors() {
        assert_eq!(upstream_failure(UpstreamError::Timeout("x")).status, 504);
        assert_eq!(
            upstream_failure(UpstreamError::Unreachable("refused".into())).code,
            "upstream_unreachable"
        );
        assert_eq!(upstream_failure(UpstreamError::TooLarge).status, 502);
    }
}
