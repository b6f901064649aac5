//! The HTTP side of the stub: [`StubApp`] implements Pingora's
//! [`HttpServerApp`], reads each request (body capped at 1 MiB), logs it,
//! checks the key and the route, calls the endpoint handler and writes the
//! reply: JSON with `Content-Length`, or an event stream written event by
//! event as HTTP chunks (pauses, split writes, hangs and cuts included).
//! Connections are kept alive after every normally completed response.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use log::debug;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use serde_json::Value;

use super::state::{request_id, LoggedRequest, Store};
use super::wire::{Reply, StreamJob};
use super::{conversations, threads};

/// Largest request body accepted (larger: 413).
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// How long `sk-stub-hang` and `[stub:hang_after=N]` stay silent.
pub const HANG: Duration = Duration::from_secs(120);
/// Pause between the two halves of a `[stub:chunking=split]` event, so they
/// reach the client as separate reads.
const SPLIT_GAP: Duration = Duration::from_millis(1);

/// The stub OpenAI upstream as a Pingora HTTP application.
#[derive(Debug, Default)]
pub struct StubApp {
    store: Arc<Store>,
    /// Event streams being written right now (served by `GET /__stub/stats`).
    open_streams: Arc<AtomicUsize>,
    /// Pause between two events when the message sets no `[stub:slow=MS]`.
    default_pace: Duration,
}

/// Counts a stream as open until dropped, however the stream ends.
struct OpenStream(Arc<AtomicUsize>);

impl OpenStream {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        OpenStream(count.clone())
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl StubApp {
    /// A stub with empty state.
    pub fn new() -> StubApp {
        StubApp::default()
    }

    /// A stub that pauses `pace` between two events unless a message says otherwise (the
    /// demo uses it so a reply is seen arriving word by word).
    pub fn with_pace(pace: Duration) -> StubApp {
        StubApp {
            default_pace: pace,
            ..StubApp::default()
        }
    }
}

/// What happens to the connection after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    /// The response completed: the connection may serve another request.
    KeepAlive,
    /// Close the connection (errors, cuts, hangs).
    Close,
}

#[async_trait]
impl HttpServerApp for StubApp {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        match session.read_request().await {
            Ok(true) => {}
            // Client went away (normal on a reused connection) or sent garbage.
            _ => return None,
        }
        match self.serve(&mut session, shutdown).await {
            Flow::KeepAlive => {
                let settings = HttpPersistentSettings::for_session(&session);
                match session.finish().await {
                    Ok(Some(stream)) => {
                        Some(ReusedHttpStream::from_reusable_stream(stream, settings))
                    }
                    _ => None,
                }
            }
            Flow::Close => {
                session.shutdown().await;
                None
            }
        }
    }
}

/// Reading the request body failed.
enum BodyError {
    /// More than [`MAX_BODY_BYTES`]; what was read so far.
    TooLarge(Vec<u8>),
    /// The connection broke.
    Io,
}

async fn read_body(session: &mut ServerSession) -> Result<Vec<u8>, BodyError> {
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_BODY_BYTES {
                    let room = MAX_BODY_BYTES - body.len();
                    body.extend_from_slice(&chunk[..room]);
                    return Err(BodyError::TooLarge(body));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(_) => return Err(BodyError::Io),
        }
    }
}

/// The routes of the stub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route<'a> {
    Threads,
    Thread(&'a str),
    Messages(&'a str),
    Runs(&'a str),
    Run(&'a str, &'a str),
    SubmitToolOutputs(&'a str, &'a str),
    CancelRun(&'a str, &'a str),
    Conversations,
    Conversation(&'a str),
    ConversationItems(&'a str),
    Responses,
}

impl Route<'_> {
    fn is_assistants(&self) -> bool {
        !matches!(
            self,
            Route::Conversations
                | Route::Conversation(_)
                | Route::ConversationItems(_)
                | Route::Responses
        )
    }
}

const GET: &[&str] = &["GET"];
const POST: &[&str] = &["POST"];
const GET_POST: &[&str] = &["GET", "POST"];

/// Match `/v1/...` path segments; gives the route and its allowed methods.
fn route<'a>(segs: &[&'a str]) -> Option<(Route<'a>, &'static [&'static str])> {
    let rest = match segs {
        ["v1", rest @ ..] => rest,
        _ => return None,
    };
    Some(match rest {
        ["threads"] => (Route::Threads, POST),
        ["threads", t] => (Route::Thread(t), GET),
        ["threads", t, "messages"] => (Route::Messages(t), GET_POST),
        ["threads", t, "runs"] => (Route::Runs(t), POST),
        ["threads", t, "runs", r] => (Route::Run(t, r), GET),
        ["threads", t, "runs", r, "submit_tool_outputs"] => (Route::SubmitToolOutputs(t, r), POST),
        ["threads", t, "runs", r, "cancel"] => (Route::CancelRun(t, r), POST),
        ["conversations"] => (Route::Conversations, POST),
        ["conversations", c] => (Route::Conversation(c), GET),
        ["conversations", c, "items"] => (Route::ConversationItems(c), GET),
        ["responses"] => (Route::Responses, POST),
        _ => return None,
    })
}

/// The key of an `Authorization: Bearer <key>` header.
fn bearer_key(headers: &BTreeMap<String, String>) -> Option<&str> {
    let value = headers.get("authorization")?;
    let (scheme, key) = value.trim().split_once(' ')?;
    let key = key.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !key.is_empty()).then_some(key)
}

/// The reply forced by a missing key or a special key, if any.
fn auth_reply(headers: &BTreeMap<String, String>) -> Option<Reply> {
    let Some(key) = bearer_key(headers) else {
        return Some(Reply::invalid(
            401,
            "You didn't provide an API key. You need to provide your API key in an \
             Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            None,
            None,
        ));
    };
    Some(match key {
        "sk-stub-401" => Reply::invalid(
            401,
            "Incorrect API key provided.",
            None,
            Some("invalid_api_key"),
        ),
        "sk-stub-403" => Reply::invalid(
            403,
            "This API key is not allowed to use this resource.",
            None,
            Some("forbidden"),
        ),
        "sk-stub-429" => Reply::error(
            429,
            "Rate limit reached for requests. Please try again in 7s.",
            "requests",
            None,
            Some("rate_limit_exceeded"),
        )
        .with_header("retry-after", "7"),
        "sk-stub-500" => Reply::error(
            500,
            "The server had an error while processing your request. Sorry about that!",
            "server_error",
            None,
            None,
        ),
        "sk-stub-hang" => Reply::Hang,
        _ => return None,
    })
}

/// `OpenAI-Beta` carries `assistants=v2` (possibly among other values).
fn beta_ok(headers: &BTreeMap<String, String>) -> bool {
    headers
        .get("openai-beta")
        .is_some_and(|v| v.split(',').any(|p| p.trim() == "assistants=v2"))
}

/// The request body as a JSON object (`{}` when empty).
fn json_body(body: &[u8]) -> Result<Value, Reply> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Default::default()));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(Reply::invalid(
            400,
            "Invalid body: the request body must be a JSON object.",
            None,
            None,
        )),
        Err(_) => Err(Reply::invalid(
            400,
            "We could not parse the JSON body of your request. (HINT: The OpenAI API \
             expects a JSON payload, but what was sent was not valid JSON.)",
            None,
            None,
        )),
    }
}

/// Why a pause ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wake {
    Elapsed,
    ClientGone,
    Shutdown,
}

/// Resolves when the server starts shutting down (never if it cannot tell).
async fn shutdown_signal(mut watch: ShutdownWatch) {
    loop {
        if *watch.borrow_and_update() {
            return;
        }
        if watch.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Resolves when the client closes the connection (or sends bytes it
/// should not send while waiting for the response).
async fn client_gone(session: &mut ServerSession) {
    loop {
        match session.read_body_or_idle(true).await {
            Err(_) => return,
            Ok(Some(_)) => continue,
            Ok(None) => std::future::pending::<()>().await,
        }
    }
}

/// Wait `dur`, ending early when the client leaves or the server shuts down.
async fn pause(session: &mut ServerSession, shutdown: &ShutdownWatch, dur: Duration) -> Wake {
    if *shutdown.borrow() {
        return Wake::Shutdown;
    }
    tokio::select! {
        _ = tokio::time::sleep(dur) => Wake::Elapsed,
        _ = client_gone(session) => Wake::ClientGone,
        _ = shutdown_signal(shutdown.clone()) => Wake::Shutdown,
    }
}

/// A response header with the headers every stub response carries.
fn header(status: u16) -> Option<ResponseHeader> {
    let mut h = ResponseHeader::build(status, Some(8)).ok()?;
    h.insert_header("openai-organization", "org-stub").ok()?;
    h.insert_header("x-request-id", request_id()).ok()?;
    Some(h)
}

impl StubApp {
    async fn serve(&self, session: &mut ServerSession, shutdown: &ShutdownWatch) -> Flow {
        let req = session.req_header();
        let method = req.method.as_str().to_string();
        let path = req.uri.path().to_string();
        let query = req.uri.query().map(str::to_string);
        let mut headers: BTreeMap<String, String> = BTreeMap::new();
        for (name, value) in req.headers.iter() {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            headers
                .entry(name.as_str().to_ascii_lowercase())
                .and_modify(|v| {
                    v.push_str(", ");
                    v.push_str(&value);
                })
                .or_insert(value);
        }
        if headers
            .get("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
        {
            let _ = session.write_continue_response().await;
        }
        let (body, too_large) = match read_body(session).await {
            Ok(body) => (body, false),
            Err(BodyError::TooLarge(partial)) => (partial, true),
            Err(BodyError::Io) => return Flow::Close,
        };
        if !path.starts_with("/__stub/") {
            let logged_path = match &query {
                Some(q) => format!("{path}?{q}"),
                None => path.clone(),
            };
            self.store.log_request(LoggedRequest {
                method: method.clone(),
                path: logged_path,
                headers: headers.clone(),
                body: String::from_utf8_lossy(&body).into_owned(),
            });
        }
        let reply = if too_large {
            session.set_keepalive(None);
            Reply::invalid(
                413,
                format!("Request body too large: the stub accepts at most {MAX_BODY_BYTES} bytes."),
                None,
                Some("body_too_large"),
            )
        } else {
            self.dispatch(&method, &path, query.as_deref(), &headers, &body)
        };
        debug!("stub: {method} {path}");
        self.write_reply(session, reply, shutdown).await
    }

    /// Decide the reply (synchronous: all state work happens here).
    fn dispatch(
        &self,
        method: &str,
        path: &str,
        query: Option<&str>,
        headers: &BTreeMap<String, String>,
        body: &[u8],
    ) -> Reply {
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        if segs.first() == Some(&"__stub") {
            return self.introspection(method, &segs[1..]);
        }
        if let Some(reply) = auth_reply(headers) {
            return reply;
        }
        let Some((route, allowed)) = route(&segs) else {
            return Reply::invalid(404, format!("Invalid URL ({method} {path})"), None, None);
        };
        if !allowed.contains(&method) {
            return Reply::invalid(
                405,
                format!("Method {method} is not allowed for {path}."),
                None,
                Some("method_not_allowed"),
            )
            .with_header("allow", allowed.join(", "));
        }
        if route.is_assistants() && !beta_ok(headers) {
            return Reply::invalid(
                400,
                "You must provide the 'OpenAI-Beta' header to access the Assistants API. \
                 Please try again by setting the header 'OpenAI-Beta: assistants=v2'.",
                None,
                Some("invalid_beta"),
            );
        }
        let json = if method == "POST" {
            match json_body(body) {
                Ok(v) => v,
                Err(reply) => return reply,
            }
        } else {
            Value::Null
        };
        let store = &self.store;
        match (route, method) {
            (Route::Threads, _) => threads::create_thread(store, &json),
            (Route::Thread(t), _) => threads::get_thread(store, t),
            (Route::Messages(t), "POST") => threads::add_message(store, t, &json),
            (Route::Messages(t), _) => threads::list_messages(store, t, query),
            (Route::Runs(t), _) => threads::create_run(store, t, &json),
            (Route::Run(t, r), _) => threads::get_run(store, t, r),
            (Route::SubmitToolOutputs(t, r), _) => threads::submit_tool_outputs(store, t, r, &json),
            (Route::CancelRun(t, r), _) => threads::cancel_run(store, t, r),
            (Route::Conversations, _) => conversations::create_conversation(store, &json),
            (Route::Conversation(c), _) => conversations::get_conversation(store, c),
            (Route::ConversationItems(c), _) => conversations::list_items(store, c, query),
            (Route::Responses, _) => conversations::create_response(store, &json),
        }
    }

    /// `/__stub/...`: health and the request log (no key needed, not logged).
    fn introspection(&self, method: &str, segs: &[&str]) -> Reply {
        match (segs, method) {
            (["health"], "GET") => Reply::json(200, &serde_json::json!({"status": "ok"})),
            (["requests"], "GET") => {
                let log: Vec<LoggedRequest> = self.store.lock().log.iter().cloned().collect();
                Reply::json(200, &log)
            }
            (["requests"], "DELETE") => {
                self.store.lock().log.clear();
                Reply::NoContent
            }
            (["stats"], "GET") => Reply::json(
                200,
                &serde_json::json!({"open_streams": self.open_streams.load(Ordering::SeqCst)}),
            ),
            (["health"], _) | (["requests"], _) | (["stats"], _) => Reply::invalid(
                405,
                format!("Method {method} is not allowed here."),
                None,
                Some("method_not_allowed"),
            ),
            _ => Reply::invalid(404, "Unknown stub introspection URL.", None, None),
        }
    }

    async fn write_reply(
        &self,
        session: &mut ServerSession,
        reply: Reply,
        shutdown: &ShutdownWatch,
    ) -> Flow {
        match reply {
            Reply::Json {
                status,
                body,
                headers,
            } => {
                let Some(mut h) = header(status) else {
                    return Flow::Close;
                };
                let _ = h.insert_header("content-type", "application/json");
                let _ = h.insert_header("content-length", body.len().to_string());
                for (name, value) in headers {
                    let _ = h.insert_header(name, value);
                }
                if session.write_response_header(Box::new(h)).await.is_err() {
                    return Flow::Close;
                }
                match session.write_response_body(Bytes::from(body), true).await {
                    Ok(()) => Flow::KeepAlive,
                    Err(_) => Flow::Close,
                }
            }
            Reply::NoContent => {
                let Some(h) = header(204) else {
                    return Flow::Close;
                };
                if session.write_response_header(Box::new(h)).await.is_err() {
                    return Flow::Close;
                }
                match session.write_response_body(Bytes::new(), true).await {
                    Ok(()) => Flow::KeepAlive,
                    Err(_) => Flow::Close,
                }
            }
            Reply::Hang => {
                pause(session, shutdown, HANG).await;
                Flow::Close
            }
            Reply::Stream(job) => {
                let _open = OpenStream::new(&self.open_streams);
                write_stream(session, job, shutdown, self.default_pace).await
            }
        }
    }
}

/// Write a planned event stream chunk by chunk.
async fn write_stream(
    session: &mut ServerSession,
    mut job: StreamJob,
    shutdown: &ShutdownWatch,
    default_pace: Duration,
) -> Flow {
    let Some(mut h) = header(200) else {
        return Flow::Close;
    };
    let _ = h.insert_header("content-type", "text/event-stream; charset=utf-8");
    let _ = h.insert_header("cache-control", "no-cache");
    let _ = h.insert_header("transfer-encoding", "chunked");
    if session.write_response_header(Box::new(h)).await.is_err() {
        return Flow::Close;
    }
    let pacing = job.pacing;
    let slow = match pacing.slow_ms {
        0 => default_pace,
        ms => Duration::from_millis(ms),
    };
    // Once the server shuts down, the rest is written without pauses.
    let mut hurry = false;
    let events = std::mem::take(&mut job.plan.events);
    let total = events.len();
    for (i, event) in events.iter().enumerate() {
        if pacing.hang_after == Some(i) {
            // Silence; the connection is then closed without the last chunk.
            pause(session, shutdown, HANG).await;
            return Flow::Close;
        }
        if i > 0 && !slow.is_zero() && !hurry {
            match pause(session, shutdown, slow).await {
                Wake::Elapsed => {}
                Wake::Shutdown => hurry = true,
                Wake::ClientGone => return Flow::Close,
            }
        }
        if i == job.plan.commit_at {
            job.finalizer.fire();
        }
        let frames = event.frames(pacing.crlf, pacing.split);
        let n = frames.len();
        for (k, frame) in frames.into_iter().enumerate() {
            if session.write_response_body(frame, false).await.is_err() {
                return Flow::Close;
            }
            if k + 1 < n {
                tokio::time::sleep(SPLIT_GAP).await;
            }
        }
    }
    if pacing.hang_after == Some(total) {
        pause(session, shutdown, HANG).await;
        return Flow::Close;
    }
    job.finalizer.fire();
    match job.plan.ending {
        super::wire::Ending::Cut => Flow::Close,
        super::wire::Ending::Finish => {
            match session.write_response_body(Bytes::new(), true).await {
                Ok(()) => Flow::KeepAlive,
                Err(_) => Flow::Close,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn status(reply: &Reply) -> u16 {
        match reply {
            Reply::Json { status, .. } => *status,
            Reply::NoContent => 204,
            Reply::Stream(_) => 200,
            Reply::Hang => 0,
        }
    }

    #[test]
    fn routes_and_methods() {
        assert_eq!(route(&["v1", "threads"]), Some((Route::Threads, POST)));
        assert_eq!(
            route(&["v1", "threads", "t", "runs", "r", "submit_tool_outputs"]),
            Some((Route::SubmitToolOutputs("t", "r"), POST))
        );
        assert_eq!(route(&["v2", "threads"]), None);
        assert_eq!(route(&["v1", "nothing"]), None);
    }

    #[test]
    fn auth_and_special_keys() {
        assert_eq!(status(&auth_reply(&headers(&[])).unwrap()), 401);
        assert_eq!(
            status(&auth_reply(&headers(&[("authorization", "Basic x")])).unwrap()),
            401
        );
        assert!(auth_reply(&headers(&[("authorization", "Bearer sk-good")])).is_none());
        for (key, code) in [
            ("sk-stub-401", 401),
            ("sk-stub-403", 403),
            ("sk-stub-429", 429),
            ("sk-stub-500", 500),
        ] {
            let auth = format!("Bearer {key}");
            let r = auth_reply(&headers(&[("authorization", &auth)])).unwrap();
            assert_eq!(status(&r), code);
            if code == 429 {
                let Reply::Json { headers, .. } = &r else {
                    panic!()
                };
                assert!(headers.contains(&("retry-after", "7".to_string())));
            }
        }
        assert!(matches!(
            auth_reply(&headers(&[("authorization", "Bearer sk-stub-hang")])),
            Some(Reply::Hang)
        ));
    }

    #[test]
    fn dispatch_errors() {
        let app = StubApp::new();
        let auth = [
            ("authorization", "Bearer sk-x"),
            ("openai-beta", "assistants=v2"),
        ];
        let h = headers(&auth);
        assert_eq!(status(&app.dispatch("GET", "/v1/nope", None, &h, b"")), 404);
        assert_eq!(
            status(&app.dispatch("GET", "/v1/threads", None, &h, b"")),
            405
        );
        assert_eq!(
            status(&app.dispatch("POST", "/v1/threads", None, &h, b"{nope")),
            400
        );
        assert_eq!(
            status(&app.dispatch("POST", "/v1/threads", None, &h, b"[1]")),
            400
        );
        assert_eq!(
            status(&app.dispatch("POST", "/v1/threads", None, &h, b"")),
            200
        );
        let no_beta = headers(&auth[..1]);
        assert_eq!(
            status(&app.dispatch("POST", "/v1/threads", None, &no_beta, b"")),
            400
        );
        // Conversations need no beta header.
        assert_eq!(
            status(&app.dispatch("POST", "/v1/conversations", None, &no_beta, b"{}")),
            200
        );
        assert_eq!(
            status(&app.dispatch("GET", "/__stub/health", None, &headers(&[]), b"")),
            200
        );
        assert_eq!(
            status(&app.dispatch("DELETE", "/__stub/requests", None, &headers(&[]), b"")),
            204
        );
    }
}
