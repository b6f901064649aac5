//! The Pingora service: one request's journey through the proxy.
//!
//! [`ChatbotProxy::serve`] answers one request on a browser connection whose header
//! [`crate::downstream`]'s request loop has read: route, calling site, tenant, CORS, then the
//! route's handler talks to the upstream through an [`UpstreamCall`] and writes the answer
//! itself; `logging` writes the access line and records the request's metrics. [`RequestCtx`]
//! carries what one request learned along the way.
//!
//! Every answer is ours, so Pingora's `HttpProxy` (its cache, modules, subrequests and
//! upstream phases) is not on the path: it cost about a tenth of a create-thread's CPU.

use crate::app::AppState;
use crate::config::{StreamFormat, Tenant};
use crate::dialect::created::Created;
use crate::dialect::Dialect;
use crate::errors::ApiError;
use crate::origin::calling_site;
use crate::relay::{Framing, Relay};
use crate::request::parse_process_message;
use crate::respond::{self, Written};
use crate::routes::Route;
use crate::shutdown::InFlightGuard;
use crate::turn::{StreamOutcome, Turn};
use crate::upstream::{UpstreamError, NOT_JSON};
use crate::upstream_call::CallFailure;
use bytes::BytesMut;
use pingora::protocols::http::ServerSession;
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The proxy service.
pub struct ChatbotProxy {
    state: Arc<AppState>,
}

impl ChatbotProxy {
    pub fn new(state: Arc<AppState>) -> Self {
        crate::embed::prepare();
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
    /// How a stream ended, for the access log; `None` for any other answer.
    outcome: Option<StreamOutcome>,
    /// The visitor's address: the socket peer, or behind a trusted proxy the address it
    /// forwarded ([`crate::client_addr`]). Limits are counted per address.
    client_ip: Option<std::net::IpAddr>,
    /// Counts the request in flight until the context is dropped, after `logging`.
    _in_flight: InFlightGuard,
}

impl RequestCtx {
    fn cors(&self) -> Option<&str> {
        self.cors_origin.as_deref()
    }
}

impl ChatbotProxy {
    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            route: None,
            tenant: None,
            cors_origin: None,
            written: Written::default(),
            outcome: None,
            client_ip: None,
            _in_flight: self.state.in_flight.enter(),
        }
    }

    /// The access log line and the request's metrics. `method` is the request's, `-` for one
    /// whose header could not be read.
    fn logging(&self, session: &ServerSession, method: &str, ctx: &RequestCtx) {
        let route = ctx.route.map_or("-", Route::name);
        let tenant = ctx.tenant.as_ref().map_or("-", |t| t.name.as_str());
        let duration = ctx.started.elapsed();
        let outcome = ctx.outcome.map_or("-", StreamOutcome::as_str);
        if log::log_enabled!(log::Level::Info) {
            let peer = session.client_addr().and_then(|a| a.as_inet()).copied();
            let client = match (peer, session.client_addr()) {
                (None, Some(other)) => other.to_string(),
                _ => crate::client_addr::for_log(ctx.client_ip, peer),
            };
            log::info!(
                "access client={} method={} route={} tenant={} status={} duration_ms={} bytes={} outcome={}",
                client,
                method,
                route,
                tenant,
                ctx.written.status,
                duration.as_millis(),
                ctx.written.bytes,
                outcome,
            );
        }
        let metrics = &self.state.metrics;
        metrics.request(route, tenant, ctx.written.status, duration);
        if let Some(outcome) = ctx.outcome {
            metrics.stream_outcome(tenant, outcome);
        }
    }
}

impl crate::downstream::Handler for ChatbotProxy {
    async fn serve(&self, session: &mut ServerSession) {
        let mut ctx = self.new_ctx();
        ctx.written = self.handle(session, &mut ctx).await;
        self.logging(session, session.req_header().method.as_str(), &ctx);
    }

    async fn refuse(&self, session: &mut ServerSession, err: &ApiError) {
        let mut ctx = self.new_ctx();
        ctx.written = respond::refusal(session, err).await;
        self.logging(session, "-", &ctx);
    }
}

impl ChatbotProxy {
    /// The visitor's address (see [`crate::client_addr`]); `None` for a peer that is not an
    /// IP socket.
    fn client_ip(&self, session: &ServerSession) -> Option<std::net::IpAddr> {
        let peer = session.client_addr()?.as_inet()?.ip();
        let header = |name: &str| session.get_header(name).and_then(|v| v.to_str().ok());
        Some(crate::client_addr::client_ip(
            peer,
            header("forwarded"),
            header("x-forwarded-for"),
            &self.state.config.limits.trusted_proxies,
        ))
    }

    /// Route the request and answer it.
    async fn handle(&self, session: &mut ServerSession, ctx: &mut RequestCtx) -> Written {
        let req = session.req_header();
        let method = req.method.clone();
        let route = Route::resolve(req.uri.path(), &self.state.config.server.prefix);
        ctx.route = route;
        if route == Some(Route::WidgetJs) {
            return crate::embed::serve_script(session).await;
        }
        if route == Some(Route::Health) {
            if !Route::Health.allows(method.as_str()) {
                let err = ApiError::method_not_allowed(Route::Health.allowed_methods());
                return respond::error(session, &err, None).await;
            }
            return respond::json(session, 200, br#"{"status":"ok"}"#.to_vec(), None, &[]).await;
        }

        ctx.client_ip = self.client_ip(session);
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
            let origin = ctx.cors().unwrap_or_default();
            if tenant.turnstile_secret.is_some() {
                let headers = crate::turnstile::PREFLIGHT_HEADERS;
                return respond::preflight_allowing(session, origin, headers).await;
            }
            return respond::preflight(session, origin).await;
        }
        if !route.allows(method.as_str()) {
            let err = ApiError::method_not_allowed(route.allowed_methods());
            return respond::error(session, &err, ctx.cors()).await;
        }

        if route == Route::WidgetConfig {
            return crate::embed::serve_config(session, &tenant, ctx.cors()).await;
        }
        // Request limits: refused before the body is read or anything goes upstream. A
        // process-message holds a stream slot until its answer has ended.
        let _stream_slot =
            match crate::limits::admit(&self.state, route, &tenant, ctx.client_ip).await {
                Ok(slot) => slot,
                Err(err) => return respond::error(session, &err, ctx.cors()).await,
            };
        let result = match route {
            Route::CreateThread => self.create_thread(session, ctx, &tenant).await,
            Route::ProcessMessage => self.process_message(session, ctx, &tenant).await,
            Route::Health | Route::WidgetJs | Route::WidgetConfig => {
                unreachable!("answered above")
            }
        };
        match result {
            Ok(written) => written,
            Err(err) => respond::error(session, &err, ctx.cors()).await,
        }
    }

    /// `create-thread`: a new conversation upstream, answered with its handle (see
    /// [`crate::conversation`]) as `id` and `thread_id`.
    async fn create_thread(
        &self,
        session: &mut ServerSession,
        ctx: &RequestCtx,
        tenant: &Tenant,
    ) -> Result<Written, ApiError> {
        crate::budget::check(&self.state, tenant).await?;
        // bot check (Turnstile): nothing goes upstream for a request that fails it.
        let token = session.get_header(crate::turnstile::TOKEN_HEADER);
        let (check, ip) = (&self.state.bot_check, ctx.client_ip);
        let token = token.map(|v| v.as_bytes());
        check.admit(tenant, token, ip, ctx.cors()).await?;
        let dialect = Dialect::of(tenant);
        let call = self.state.upstream_call(tenant);
        let purpose = "creating a conversation";
        let created = call
            .body(purpose, &dialect.create_conversation(tenant))
            .await;
        let body = or_api_error(created, dialect, false).await?;
        let no_id = || ApiError::upstream_error("the new conversation has no valid id");
        let now_ms = self.state.store.clock().now_unix_ms();
        let issue = |id: &str| self.state.conversations.issue(&tenant.name, id, now_ms);
        // The object as the upstream wrote it, its id replaced by the handle; the general
        // path (a parsed value) only for text the fast one leaves to it.
        let body = match Created::parse(&body) {
            Some(created) => {
                let id = created.str("id");
                let id = id
                    .filter(|id| dialect.id_rule().accepts(id))
                    .ok_or_else(no_id)?;
                created.with_handle(&issue(id))
            }
            None => {
                let Ok(mut thread) = serde_json::from_slice::<Value>(&body) else {
                    let failure = call.failed(purpose, UpstreamError::Broken(NOT_JSON.into()));
                    return Err(failure.into_api_error(dialect, false).await);
                };
                let id = thread
                    .get("id")
                    .and_then(Value::as_str)
                    .filter(|id| dialect.id_rule().accepts(id))
                    .ok_or_else(no_id)?;
                let handle = issue(id);
                thread["id"] = Value::String(handle.clone());
                thread["thread_id"] = Value::String(handle);
                thread.to_string().into_bytes()
            }
        };
        Ok(respond::json(session, 200, body, ctx.cors(), &[]).await)
    }

    /// `process-message`: add the message, start a streamed answer, relay it.
    async fn process_message(
        &self,
        session: &mut ServerSession,
        ctx: &mut RequestCtx,
        tenant: &Tenant,
    ) -> Result<Written, ApiError> {
        crate::budget::check(&self.state, tenant).await?;
        let dialect = Dialect::of(tenant);
        let limits = &self.state.config.limits;
        let deadline = self.state.config.server.timeouts.request_body;
        let body = read_body(session, limits.max_body_bytes, deadline).await?;
        let turn = parse_process_message(&body, limits.max_message_chars, dialect.id_rule())?;
        // The handle names the conversation: nothing goes upstream for one that is not genuine,
        // is busy, or has taken its messages.
        let now_ms = self.state.store.clock().now_unix_ms();
        let conversations = &self.state.conversations;
        let conversation = conversations.open(&tenant.name, &turn.thread_id, now_ms)?;
        let lock = conversations
            .admit(&self.state.store, &tenant.name, &conversation)
            .await?;
        let safety_identifier = crate::handle::safety_identifier(&turn.thread_id);
        let id = conversation.id;

        let call = self.state.upstream_call(tenant);
        if let Some(prepare) = dialect.prepare_turn(id, &turn.message) {
            let prepared = call.read_all("adding the message", &prepare).await;
            or_api_error(prepared, dialect, true).await?;
        }
        let start = dialect.start_turn(tenant, id, &turn.message, &safety_identifier);
        let started = call.send("starting an answer", &start).await;
        let upstream = or_api_error(started, dialect, true).await?;

        let framing = match tenant.stream_format {
            StreamFormat::OpenAi => Framing::Raw,
            StreamFormat::WidgetV1 => Framing::WidgetV1(dialect),
        };
        let site = ctx.cors_origin.clone().unwrap_or_default();
        let Some(mut relay) = Relay::start(session, ctx.cors(), framing).await else {
            let abandoned = crate::cancel::Abandoned {
                upstream_client: &self.state.upstream,
                metrics: &self.state.metrics,
                tenant,
                dialect,
                conversation: &turn.thread_id,
                why: StreamOutcome::ClientGone.as_str(),
            };
            abandoned.abandon(None, Some(upstream));
            ctx.outcome = Some(StreamOutcome::ClientGone);
            return Ok(Written {
                status: 200,
                bytes: 0,
            });
        };
        if tenant.redact_run_objects {
            relay.redact_run_objects();
        }
        relay.hold_until_end(lock);
        let _streaming = self.state.metrics.stream_started();
        let turn = Turn {
            state: &self.state,
            tenant,
            dialect,
            conversation: id,
            site: &site,
            client_ip: ctx.client_ip,
            safety_identifier: &safety_identifier,
        };
        ctx.outcome = Some(turn.stream(&mut relay, upstream).await);
        if let Some(at) = relay.first_text {
            let elapsed = at.saturating_duration_since(ctx.started);
            self.state
                .metrics
                .time_to_first_token(&tenant.name, elapsed);
        }
        Ok(Written {
            status: 200,
            bytes: relay.bytes_sent,
        })
    }
}

/// Read the request body, refusing more than `limit` bytes or taking longer than `deadline` in
/// total (a body trickled a byte at a time must not hold the connection for days).
async fn read_body(
    session: &mut ServerSession,
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

/// A call's result, its failure as the widget's error (see [`CallFailure::into_api_error`]).
async fn or_api_error<T>(
    result: std::result::Result<T, CallFailure>,
    dialect: Dialect,
    thread_scoped: bool,
) -> std::result::Result<T, ApiError> {
    match result {
        Ok(value) => Ok(value),
        // Boxed: reading the error body is a large future, needed only on this path (see
        // `Turn::stream` on future sizes).
        Err(failure) => Err(Box::pin(failure.into_api_error(dialect, thread_scoped)).await),
    }
}
