//! Which widget route a request path names.
//!
//! Pure: the path (without query) and the configured prefix in, a [`Route`] out. Kept apart
//! from the proxy so the table is read in one place and unit-tested.

/// The routes the proxy serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `GET /healthz`, answered without an origin check.
    Health,
    /// `{prefix}/create-thread`: create a conversation upstream.
    CreateThread,
    /// `{prefix}/process-message`: add a message and stream the answer.
    ProcessMessage,
    /// `GET /widget.js`: the proxy's own embeddable widget, a public file outside the prefix
    /// (see [`crate::embed`]).
    WidgetJs,
    /// `{prefix}/widget-config`: the public settings of the calling site's widget.
    WidgetConfig,
}

impl Route {
    /// Find the route for `path` (query string already removed) under `prefix`
    /// (`""` or `/something` without trailing slash). A trailing `/` is tolerated.
    pub fn resolve(path: &str, prefix: &str) -> Option<Route> {
        if path == "/healthz" {
            return Some(Route::Health);
        }
        if path == "/widget.js" {
            return Some(Route::WidgetJs);
        }
        let rest = path.strip_prefix(prefix)?;
        match rest.strip_suffix('/').unwrap_or(rest) {
            "/create-thread" => Some(Route::CreateThread),
            "/process-message" => Some(Route::ProcessMessage),
            "/widget-config" => Some(Route::WidgetConfig),
            _ => None,
        }
    }

    /// Short name for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Route::Health => "healthz",
            Route::CreateThread => "create-thread",
            Route::ProcessMessage => "process-message",
            Route::WidgetJs => "widget.js",
            Route::WidgetConfig => "widget-config",
        }
    }

    /// The methods this route answers (besides the CORS preflight `OPTIONS`).
    pub fn allows(self, method: &str) -> bool {
        match self {
            Route::Health | Route::WidgetJs => method == "GET" || method == "HEAD",
            Route::CreateThread => method == "GET" || method == "POST",
            Route::ProcessMessage => method == "POST",
            Route::WidgetConfig => method == "GET",
        }
    }

    /// The `Allow` list, for 405 answers.
    pub fn allowed_methods(self) -> &'static str {
        match self {
            Route::Health | Route::WidgetJs => "GET, HEAD",
            Route::CreateThread => "GET, POST, OPTIONS",
            Route::ProcessMessage => "POST, OPTIONS",
            Route::WidgetConfig => "GET, OPTIONS",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widget_routes_live_under_the_prefix() {
        assert_eq!(
            Route::resolve("/open-ai/create-thread", "/open-ai"),
            Some(Route::CreateThread)
        );
        assert_eq!(
            Route::resolve("/open-ai/process-message/", "/open-ai"),
            Some(Route::ProcessMessage)
        );
        assert_eq!(Route::resolve("/create-thread", "/open-ai"), None);
        assert_eq!(Route::resolve("/open-aix/create-thread", "/open-ai"), None);
        assert_eq!(Route::resolve("/open-ai/create-thread/x", "/open-ai"), None);
    }

    #[test]
    fn an_empty_prefix_serves_at_the_root() {
        assert_eq!(
            Route::resolve("/create-thread", ""),
            Some(Route::CreateThread)
        );
    }

    #[test]
    fn health_is_outside_the_prefix() {
        assert_eq!(Route::resolve("/healthz", "/open-ai"), Some(Route::Health));
    }

    #[test]
    fn the_widget_script_is_served_on_any_prefix_and_its_config_under_it() {
        for prefix in ["/open-ai", "", "/x/y"] {
            assert_eq!(Route::resolve("/widget.js", prefix), Some(Route::WidgetJs));
        }
        assert_eq!(Route::resolve("/open-ai/widget.js", "/open-ai"), None);
        assert_eq!(
            Route::resolve("/open-ai/widget-config", "/open-ai"),
            Some(Route::WidgetConfig)
        );
        assert_eq!(Route::resolve("/widget-config", "/open-ai"), None);
        assert!(Route::WidgetConfig.allows("GET"));
        assert!(!Route::WidgetConfig.allows("POST"));
        assert!(Route::WidgetJs.allows("HEAD"));
    }

    #[test]
    fn methods_per_route() {
        assert!(Route::CreateThread.allows("GET"));
        assert!(Route::CreateThread.allows("POST"));
        assert!(!Route::ProcessMessage.allows("GET"));
        assert!(!Route::Health.allows("POST"));
    }
}
