//! A real browser for the widget tests: Debian's headless `chromium`, driven over the Chrome
//! DevTools Protocol by `chromiumoxide`, plus a tiny page server for the sites that embed a
//! widget.
//!
//! Host names resolve to loopback inside the browser (`--host-resolver-rules`), so a page can
//! be served as `http://shop.example.com:PORT/` (tenant A's site: its `Origin` is
//! whitelisted) and talk to the proxy on another loopback port. The browser runs with the
//! flags this machine's closed network needs (no background networking, no component
//! updates) and a fresh profile that is deleted when the [`Browser`] is dropped.
//!
//! Chromium must be installed (`scripts/setup` installs it): a browser test fails, never
//! skips, without it.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chromiumoxide::browser::{Browser as CdpBrowser, BrowserConfig};
use chromiumoxide::page::ScreenshotParams;
use chromiumoxide::Page;
use futures::StreamExt;
use serde::de::DeserializeOwned;

/// Where Debian installs chromium.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// A headless chromium for one test; killed (and its profile deleted) when dropped.
pub struct Browser {
    browser: CdpBrowser,
    events: tokio::task::JoinHandle<()>,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromium. `width` x 800 is the window (use 360 for a phone).
    pub async fn launch_with_width(width: u32) -> Browser {
        assert!(
            Path::new(CHROMIUM).exists(),
            "{CHROMIUM} is missing: run ./scripts/setup (it installs Debian's chromium)"
        );
        // A start that hangs (seen once in a loaded full run: no DevTools address within 30
        // s) is the browser's, not the widget's: try a fresh profile up to three times.
        let mut attempt = 1;
        let (browser, mut handler, profile) = loop {
            let profile = tempfile::tempdir().unwrap();
            match CdpBrowser::launch(config(profile.path(), width)).await {
                Ok((browser, handler)) => break (browser, handler, profile),
                Err(e) if attempt < 3 => {
                    eprintln!("chromium did not start (attempt {attempt}): {e}; trying again");
                    attempt += 1;
                }
                Err(e) => panic!("chromium did not start in 3 attempts: {e}"),
            }
        };
        // The protocol's event loop: must run for any command to complete. Unknown or
        // malformed events are not fatal.
        let events = tokio::spawn(async move { while handler.next().await.is_some() {} });
        Browser {
            browser,
            events,
            _profile: profile,
        }
    }

    /// Starts chromium with a desktop-sized window.
    pub async fn launch() -> Browser {
        Self::launch_with_width(1280).await
    }

    /// A new tab showing `url` (loaded).
    pub async fn open(&self, url: &str) -> Page {
        let page = self
            .browser
            .new_page(url)
            .await
            .unwrap_or_else(|e| panic!("opening {url}: {e}"));
        page.wait_for_navigation()
            .await
            .unwrap_or_else(|e| panic!("loading {url}: {e}"));
        page
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.events.abort();
        // chromiumoxide kills the child process when its Browser is dropped.
    }
}

/// The browser's settings: headless, `width` x 800, a fresh `profile`, and the flags this
/// machine's closed network needs.
fn config(profile: &Path, width: u32) -> BrowserConfig {
    BrowserConfig::builder()
        .chrome_executable(CHROMIUM)
        .no_sandbox()
        .user_data_dir(profile)
        .window_size(width, 800)
        .viewport(None)
        .launch_timeout(Duration::from_secs(30))
        .request_timeout(Duration::from_secs(30))
        // Keys without the leading `--` (chromiumoxide adds it and merges repeated keys).
        .args([
            "disable-gpu",
            "disable-quic",
            "no-first-run",
            "disable-background-networking",
            "disable-component-update",
            "disable-sync",
            "disable-dev-shm-usage",
        ])
        // Every host name is this machine: pages on made-up sites, the proxy anywhere.
        .arg(("host-resolver-rules", "MAP * 127.0.0.1"))
        // The test sites are plain http on loopback: no local-network prompts.
        .arg((
            "disable-features",
            "LocalNetworkAccessChecks,PrivateNetworkAccessRespectPreflightResults",
        ))
        .disable_https_first()
        .build()
        .expect("a browser configuration")
}

/// Evaluates `expression` in `page` and returns its (JSON) value.
pub async fn eval<T: DeserializeOwned>(page: &Page, expression: &str) -> T {
    page.evaluate(expression)
        .await
        .unwrap_or_else(|e| panic!("evaluating `{expression}`: {e}"))
        .into_value()
        .unwrap_or_else(|e| panic!("the value of `{expression}`: {e}"))
}

/// Polls `expression` until it is truthy (a JavaScript boolean `true`); panics after
/// `timeout` naming what was awaited.
pub async fn wait_until(page: &Page, expression: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let value: serde_json::Value = eval(page, &format!("Boolean({expression})")).await;
        if value == serde_json::Value::Bool(true) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "waited {timeout:?} in the browser for `{expression}`"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Saves a PNG of `page` as `NAME.png` under the test output directory
/// (`target/browser-screenshots/`), and returns its path.
pub async fn screenshot(page: &Page, name: &str) -> PathBuf {
    let dir = screenshot_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.png"));
    let png = page
        .screenshot(ScreenshotParams::builder().full_page(true).build())
        .await
        .unwrap_or_else(|e| panic!("screenshot {name}: {e}"));
    std::fs::write(&path, png).unwrap();
    path
}

/// The test output directory's screenshot folder.
pub fn screenshot_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target dir")
        .join("browser-screenshots")
}

/// Path -> (content type, body).
type Files = Arc<Mutex<HashMap<String, (String, Vec<u8>)>>>;

/// A tiny static HTTP/1.1 server for the pages that embed a widget (and for the scripts they
/// load). Serves whatever was [`PageServer::put`]; any host name maps here in the browser.
pub struct PageServer {
    port: u16,
    files: Files,
}

impl PageServer {
    pub fn start() -> PageServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let files: Files = Arc::default();
        let served = Arc::clone(&files);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let served = Arc::clone(&served);
                std::thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    loop {
                        let mut request_line = String::new();
                        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                            return;
                        }
                        let mut line = String::new();
                        while reader.read_line(&mut line).unwrap_or(0) > 2 {
                            line.clear();
                        }
                        let path = request_line.split(' ').nth(1).unwrap_or("/");
                        let path = path.split('?').next().unwrap_or("/").to_string();
                        let found = served.lock().unwrap().get(&path).cloned();
                        let (status, kind, body) = match found {
                            Some((kind, body)) => ("200 OK", kind, body),
                            None => ("404 Not Found", "text/plain".into(), b"not found".to_vec()),
                        };
                        let head = format!(
                            "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\
                             Cache-Control: no-store\r\n\r\n",
                            body.len()
                        );
                        if stream.write_all(head.as_bytes()).is_err()
                            || stream.write_all(&body).is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        PageServer { port, files }
    }

    /// Serves `body` at `path` with `content_type`.
    pub fn put(&self, path: &str, content_type: &str, body: impl Into<Vec<u8>>) {
        self.files
            .lock()
            .unwrap()
            .insert(path.to_string(), (content_type.to_string(), body.into()));
    }

    /// Serves an HTML page at `path`.
    pub fn put_html(&self, path: &str, html: &str) {
        self.put(path, "text/html; charset=utf-8", html);
    }

    /// The URL of `path` on the site `host` (any name: the browser maps it here).
    pub fn url(&self, host: &str, path: &str) -> String {
        format!("http://{host}:{}{path}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}
