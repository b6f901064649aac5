//! One exchange with the upstream on a tenant's behalf, and what its failure becomes.
//!
//! Every handler talks to the upstream through [`UpstreamCall`]: the request goes out with
//! the tenant's key, and a failure (no usable answer, or an error status) is counted in the
//! metrics and logged here, once, naming the tenant and what the call was for. A handler that
//! answers the widget with an error turns the failure into one with
//! [`CallFailure::into_api_error`]; a stream already under way ends it its own way.

use crate::config::Tenant;
use crate::dialect::Dialect;
use crate::errors::{sanitize_retry_after, ApiError};
use crate::metrics::{Metrics, UpstreamErrorKind};
use crate::upstream::{UpstreamClient, UpstreamError, UpstreamRequest, UpstreamResponse};
use bytes::Bytes;
use serde_json::Value;
use std::sync::Arc;

/// The upstream, as one tenant's handlers talk to it.
pub struct UpstreamCall<'a> {
    client: &'a Arc<UpstreamClient>,
    metrics: &'a Metrics,
    tenant: &'a Tenant,
}

/// Why a call gave no usable answer; already counted and logged.
pub enum CallFailure {
    /// No answer, or one that could not be read.
    Exchange(UpstreamError),
    /// An answer with an error status; its body is still unread.
    Status(Box<UpstreamResponse>),
}

impl<'a> UpstreamCall<'a> {
    pub fn new(client: &'a Arc<UpstreamClient>, metrics: &'a Metrics, tenant: &'a Tenant) -> Self {
        UpstreamCall {
            client,
            metrics,
            tenant,
        }
    }

    /// Send `req`: a success answer, or the failure. `purpose` names the call in the log,
    /// e.g. `"starting an answer"`.
    pub async fn send(
        &self,
        purpose: &str,
        req: &UpstreamRequest,
    ) -> Result<UpstreamResponse, CallFailure> {
        let response = self
            .client
            .send(req, &self.tenant.api_key)
            .await
            .map_err(|e| self.failed(purpose, e))?;
        if response.is_success() {
            return Ok(response);
        }
        self.metrics.upstream_status(response.status);
        log::warn!(
            "tenant {}: {purpose}: upstream answered {} to {} {}",
            self.tenant.name,
            response.status,
            req.method,
            req.path
        );
        Err(CallFailure::Status(Box::new(response)))
    }

    /// [`send`](Self::send), then the answer's body as JSON.
    pub async fn json(&self, purpose: &str, req: &UpstreamRequest) -> Result<Value, CallFailure> {
        let response = self.send(purpose, req).await?;
        response.json().await.map_err(|e| self.failed(purpose, e))
    }

    /// [`send`](Self::send), then the answer's body, whole.
    pub async fn body(&self, purpose: &str, req: &UpstreamRequest) -> Result<Bytes, CallFailure> {
        let response = self.send(purpose, req).await?;
        response
            .read_all()
            .await
            .map_err(|e| self.failed(purpose, e))
    }

    /// [`send`](Self::send), then the answer's body read to its end and set aside.
    pub async fn read_all(&self, purpose: &str, req: &UpstreamRequest) -> Result<(), CallFailure> {
        let response = self.send(purpose, req).await?;
        match response.read_all().await {
            Ok(_) => Ok(()),
            Err(e) => Err(self.failed(purpose, e)),
        }
    }

    /// A failed exchange (no usable answer, or a stream that broke), counted and logged.
    pub fn failed(&self, purpose: &str, e: UpstreamError) -> CallFailure {
        self.metrics.upstream_error(UpstreamErrorKind::of(&e));
        log::warn!("tenant {}: {purpose}: {e}", self.tenant.name);
        CallFailure::Exchange(e)
    }
}

impl CallFailure {
    /// The widget's error for this failure. An error status's body is read only to tell a
    /// busy conversation from other refusals (`dialect` knows how); it is never passed on.
    /// `thread_scoped`: the call named a conversation, so a 404 means it does not exist.
    pub async fn into_api_error(self, dialect: Dialect, thread_scoped: bool) -> ApiError {
        match self {
            CallFailure::Exchange(e) => upstream_failure(e),
            CallFailure::Status(response) => {
                let status = response.status;
                let retry_after = response.retry_after.clone();
                let body = response.json().await.unwrap_or(Value::Null);
                let busy = dialect.is_busy_error(&body);
                map_upstream_status(status, retry_after, busy, thread_scoped)
            }
        }
    }
}

/// A failed exchange (no usable answer) as the widget's error.
fn upstream_failure(e: UpstreamError) -> ApiError {
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
