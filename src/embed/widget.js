/*! chatbot-proxy widget (Apache-2.0). Embed with one tag:
 *   <script src="https://PROXY/widget.js" async></script>
 * Options, as data- attributes of that tag: data-title, data-greeting, data-color,
 * data-text-color, data-position ("bottom-right" | "bottom-left"), data-open, data-prefix
 * (the proxy's route prefix, default "/open-ai"). Plain JavaScript, no dependencies, no
 * requests anywhere but the proxy (and Cloudflare's Turnstile script, only when the site
 * requires the bot check).
 */
(function () {
  "use strict";

  var script = document.currentScript;
  if (!script || !script.src || window.__chatbotProxyWidget) {
    return;
  }
  window.__chatbotProxyWidget = true;

  // Replaced by the proxy with the stylesheet (src/embed/widget.css) as a string literal.
  var STYLESHEET = "__WIDGET_CSS__";
  var TURNSTILE_SCRIPT = "https://challenges.cloudflare.com/turnstile/v0/api.js?render=explicit";
  var MAX_STORED_MESSAGES = 60;
  var RETRY_DELAY_MS = 700;

  var opts = script.dataset;
  var api = new URL(script.src).origin + routePrefix(opts.prefix);
  var storeKey = "chatbot-proxy:" + api;
  var title = (opts.title || "Chat").slice(0, 80);
  var greeting = opts.greeting || "";

  function routePrefix(value) {
    if (value === undefined) {
      return "/open-ai";
    }
    var p = value.trim().replace(/\/+$/, "");
    if (p && p.charAt(0) !== "/") {
      p = "/" + p;
    }
    return /^(\/[A-Za-z0-9._~-]+)*$/.test(p) ? p : "/open-ai";
  }

  // ---- conversation state, kept in sessionStorage (this tab, this site) -------------------

  var state = loadState();

  function loadState() {
    try {
      var saved = JSON.parse(window.sessionStorage.getItem(storeKey) || "null");
      if (saved && Array.isArray(saved.messages)) {
        return {
          handle: typeof saved.handle === "string" ? saved.handle : null,
          messages: saved.messages.filter(function (m) {
            return m && (m.role === "user" || m.role === "assistant") && typeof m.text === "string";
          }),
          open: saved.open === true,
        };
      }
    } catch (e) {
      // storage unavailable or garbled: start afresh
    }
    return { handle: null, messages: [], open: false };
  }

  function saveState() {
    state.messages = state.messages.slice(-MAX_STORED_MESSAGES);
    try {
      window.sessionStorage.setItem(storeKey, JSON.stringify(state));
    } catch (e) {
      // private mode or full: the conversation lasts as long as the page
    }
  }

  // ---- DOM helpers --------------------------------------------------------------------------

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) {
      node.className = className;
    }
    if (text !== undefined) {
      node.textContent = text;
    }
    return node;
  }

  function icon() {
    var ns = "http://www.w3.org/2000/svg";
    var svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("aria-hidden", "true");
    svg.setAttribute("focusable", "false");
    var path = document.createElementNS(ns, "path");
    path.setAttribute(
      "d",
      "M4 3h16a2 2 0 0 1 2 2v11a2 2 0 0 1-2 2H9l-5 4v-4a2 2 0 0 1-2-2V5a2 2 0 0 1 2-2zm3 6.5a1.5 1.5 0 1 0 0 .01zm5 0a1.5 1.5 0 1 0 0 .01zm5 0a1.5 1.5 0 1 0 0 .01z"
    );
    svg.appendChild(path);
    return svg;
  }

  // ---- safe Markdown: DOM nodes only, never HTML from the model -----------------------------

  var SAFE_PROTOCOLS = { "http:": true, "https:": true, "mailto:": true };

  /** The URL if it is absolute and its scheme is a safe one, else null. */
  function safeUrl(href) {
    try {
      var url = new URL(href);
      return SAFE_PROTOCOLS[url.protocol] ? url.href : null;
    } catch (e) {
      return null;
    }
  }

  function link(parent, href, label) {
    var url = safeUrl(href);
    if (!url) {
      inline(label, parent, false);
      return;
    }
    var a = el("a");
    a.href = url;
    a.rel = "noopener noreferrer";
    a.target = "_blank";
    inline(label, a, false);
    parent.appendChild(a);
  }

  var LINK = /^\[([^\[\]\n]+)\]\(\s*<?([^()<>\s]+)>?\s*\)/;
  var BARE_URL = /^(?:https?:\/\/|mailto:)[^\s<>()\[\]]*[^\s<>()\[\].,;:!?'"*_]/;

  var WORD = /[A-Za-z0-9]/;

  /**
   * Where the emphasis `marker` opened at `from` closes, or -1: not right after the opening
   * or a space, not before a space; `_` never inside a word (snake_case stays text).
   */
  function closing(text, marker, from) {
    if (from >= text.length || text.charAt(from) === " ") {
      return -1;
    }
    // A bounded search: a line of a thousand asterisks must not freeze the page.
    var tries = 0;
    for (var at = text.indexOf(marker, from + 1); at > 0 && tries < 40; at = text.indexOf(marker, at + 1)) {
      tries += 1;
      var after = text.charAt(at + marker.length);
      if (text.charAt(at - 1) === " " || after === marker.charAt(0)) {
        continue;
      }
      if (marker.charAt(0) === "_" && WORD.test(after)) {
        continue;
      }
      return at;
    }
    return -1;
  }

  /** Inline Markdown of `text` into `parent`: **bold**, *em*, `code`, [links](url), URLs. */
  function inline(text, parent, allowLinks) {
    var buf = "";
    var i = 0;
    function flush() {
      if (buf) {
        parent.appendChild(document.createTextNode(buf));
        buf = "";
      }
    }
    function wrap(tag, inner) {
      flush();
      var node = el(tag);
      inline(inner, node, allowLinks);
      parent.appendChild(node);
    }
    while (i < text.length) {
      var c = text.charAt(i);
      var prev = i > 0 ? text.charAt(i - 1) : " ";
      var m;
      if (c === "\\" && /[\\`*_\[\]()#+\-.!>]/.test(text.charAt(i + 1))) {
        buf += text.charAt(i + 1);
        i += 2;
        continue;
      }
      if (c === "`") {
        var end = text.indexOf("`", i + 1);
        if (end > i + 1) {
          flush();
          parent.appendChild(el("code", "", text.slice(i + 1, end)));
          i = end + 1;
          continue;
        }
      }
      if ((c === "*" || c === "_") && !(c === "_" && WORD.test(prev))) {
        var marker = text.charAt(i + 1) === c ? c + c : c;
        var close = closing(text, marker, i + marker.length);
        if (close > 0) {
          wrap(marker.length === 2 ? "strong" : "em", text.slice(i + marker.length, close));
          i = close + marker.length;
          continue;
        }
      }
      if (allowLinks && c === "[" && (m = LINK.exec(text.slice(i)))) {
        flush();
        link(parent, m[2], m[1]);
        i += m[0].length;
        continue;
      }
      if (allowLinks && (c === "h" || c === "m") && !WORD.test(prev) && (m = BARE_URL.exec(text.slice(i)))) {
        flush();
        link(parent, m[0], m[0]);
        i += m[0].length;
        continue;
      }
      buf += c;
      i += 1;
    }
    flush();
  }

  /** Block Markdown: paragraphs, line breaks, lists, headings (as bold lines), code fences. */
  function renderMarkdown(text, target) {
    var frag = document.createDocumentFragment();
    var lines = text.replace(/\r\n?/g, "\n").split("\n");
    var para = null;
    var list = null;
    for (var i = 0; i < lines.length; i++) {
      var line = lines[i];
      var m;
      if (/^\s*```/.test(line)) {
        var code = [];
        for (i += 1; i < lines.length && !/^\s*```/.test(lines[i]); i++) {
          code.push(lines[i]);
        }
        var pre = el("pre");
        pre.appendChild(el("code", "", code.join("\n")));
        frag.appendChild(pre);
        para = list = null;
      } else if (!line.trim()) {
        para = list = null;
      } else if ((m = /^\s*([-*+]|\d{1,3}[.)])\s+(.*)$/.exec(line))) {
        var ordered = /\d/.test(m[1]);
        if (!list || (list.tagName === "OL") !== ordered) {
          list = el(ordered ? "ol" : "ul");
          frag.appendChild(list);
        }
        var item = el("li");
        inline(m[2], item, true);
        list.appendChild(item);
        para = null;
      } else if ((m = /^\s*#{1,6}\s+(.*)$/.exec(line))) {
        var heading = el("p");
        var strong = el("strong");
        inline(m[1], strong, true);
        heading.appendChild(strong);
        frag.appendChild(heading);
        para = list = null;
      } else {
        if (list && /^\s{2,}/.test(line)) {
          // a continuation line of the last list item
          list.lastChild.appendChild(el("br"));
          inline(line.trim(), list.lastChild, true);
          continue;
        }
        if (para) {
          para.appendChild(el("br"));
        } else {
          para = el("p");
          frag.appendChild(para);
        }
        list = null;
        inline(line, para, true);
      }
    }
    target.textContent = "";
    target.appendChild(frag);
  }

  // ---- server-sent events -------------------------------------------------------------------

  /**
   * An event-stream parser fed with text as it arrives: an event may be split across reads,
   * several may come in one read; LF, CRLF and CR line ends.
   */
  function SseParser(onEvent) {
    this.buf = "";
    this.name = "";
    this.data = [];
    this.onEvent = onEvent;
  }
  SseParser.prototype.push = function (text) {
    this.buf += text;
    var lineEnd = /\r\n|\n|\r/g;
    var from = 0;
    var m;
    while ((m = lineEnd.exec(this.buf))) {
      if (m[0] === "\r" && m.index === this.buf.length - 1) {
        break; // a CR at the end of a read may be the first half of a CRLF
      }
      this.line(this.buf.slice(from, m.index));
      from = lineEnd.lastIndex;
    }
    this.buf = this.buf.slice(from);
  };
  SseParser.prototype.line = function (line) {
    if (line === "") {
      if (this.data.length) {
        this.onEvent(this.name || "message", this.data.join("\n"));
      }
      this.name = "";
      this.data = [];
      return;
    }
    if (line.charAt(0) === ":") {
      return;
    }
    var colon = line.indexOf(":");
    var field = colon < 0 ? line : line.slice(0, colon);
    var value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.charAt(0) === " ") {
      value = value.slice(1);
    }
    if (field === "event") {
      this.name = value;
    } else if (field === "data") {
      this.data.push(value);
    }
  };
  SseParser.prototype.end = function () {
    if (this.buf) {
      this.line(this.buf.replace(/\r$/, ""));
      this.buf = "";
    }
    this.line("");
  };

  // ---- what goes wrong, in plain words ------------------------------------------------------

  var MESSAGES = {
    rate_limited: "Too many messages right now. Please wait a moment, then try again.",
    budget_exhausted: "The assistant has reached its limit for today. Please try again tomorrow.",
    bot_check_failed: "We could not confirm that you are not a robot. Please complete the check and try again.",
    bot_check_unavailable: "The robot check is not available right now. Please try again in a moment.",
    origin_not_allowed: "This chat is not available on this website.",
    run_active: "The assistant is still answering your previous message. Please wait for it to finish.",
    message_too_long: "Your message is too long. Please shorten it and try again.",
    empty_message: "Please type a message first.",
    upstream: "The assistant is not available right now. Please try again in a moment.",
    stream: "The answer was interrupted. Please try again.",
    run_ended: "The assistant could not finish its answer. Please try again.",
    incomplete: "The answer was cut short.",
    network: "The assistant cannot be reached. Please check your connection and try again.",
    expired: "This conversation has ended. Please start a new conversation.",
    unknown: "Something went wrong. Please try again.",
  };

  function Problem(kind, status, transient, retryAfter) {
    this.kind = kind;
    this.status = status || 0;
    this.transient = !!transient;
    this.retryAfter = retryAfter || null;
  }
  Problem.prototype.text = function () {
    var text = MESSAGES[this.kind] || MESSAGES.unknown;
    var secs = this.retryAfter && /^\d+$/.test(this.retryAfter) ? parseInt(this.retryAfter, 10) : 0;
    if (this.kind === "rate_limited" && secs > 0 && secs <= 3600) {
      text = "Too many messages right now. Please try again in " +
        (secs < 90 ? secs + " seconds." : Math.ceil(secs / 60) + " minutes.");
    }
    return text;
  };

  /** The proxy's `{"error":{"code","message"}}` answer as a Problem. */
  function problemOf(res) {
    return res.text().then(
      function (body) {
        var code = "";
        try {
          code = String((JSON.parse(body).error || {}).code || "");
        } catch (e) {
          // not JSON: judged by the status alone
        }
        var retry = res.headers.get("Retry-After");
        if (MESSAGES[code]) {
          return new Problem(code, res.status, false, retry);
        }
        if (code === "conversation_not_found" || code === "thread_not_found") {
          return new Problem("expired", res.status, false);
        }
        if (res.status === 429) {
          return new Problem("rate_limited", res.status, false, retry);
        }
        if (res.status >= 500) {
          return new Problem("upstream", res.status, true);
        }
        return new Problem("unknown", res.status, false);
      },
      function () {
        return new Problem(res.status >= 500 ? "upstream" : "unknown", res.status, res.status >= 500);
      }
    );
  }

  function sleep(ms) {
    return new Promise(function (resolve) {
      setTimeout(resolve, ms);
    });
  }

  // ---- the proxy's answers ------------------------------------------------------------------

  var siteConfig = fetch(api + "/widget-config", { credentials: "omit", cache: "no-store" })
    .then(function (res) {
      return res.ok ? res.json() : {};
    })
    .catch(function () {
      return {};
    })
    .then(function (config) {
      var key = config && config.turnstile_site_key;
      return { siteKey: typeof key === "string" && key ? key : null };
    });

  /** A new conversation handle; retried once after a network error or a 5xx. */
  function createThread() {
    return siteConfig.then(function (config) {
      var attempt = function (n) {
        var tokened = config.siteKey ? turnstileToken(config.siteKey) : Promise.resolve(null);
        return tokened.then(function (token) {
          var headers = {};
          if (token) {
            headers["CF-Turnstile-Response"] = token;
          }
          return fetch(api + "/create-thread", {
            method: "POST",
            headers: headers,
            credentials: "omit",
            cache: "no-store",
          }).then(
            function (res) {
              if (!res.ok) {
                return problemOf(res).then(function (p) {
                  throw p;
                });
              }
              return res.json().then(function (body) {
                var handle = body && (body.id || body.thread_id);
                if (typeof handle !== "string" || !handle) {
                  throw new Problem("upstream", res.status, true);
                }
                return handle;
              });
            },
            function () {
              throw new Problem("network", 0, true);
            }
          );
        }).catch(function (p) {
          if (n === 0 && p instanceof Problem && p.transient) {
            return sleep(RETRY_DELAY_MS).then(function () {
              return attempt(1);
            });
          }
          throw p;
        });
      };
      return attempt(0);
    });
  }

  // ---- Turnstile (only for sites whose tenant requires the bot check) ----------------------

  var check = { api: null, id: null, token: null, waiting: [], box: null };

  function turnstileApi() {
    if (window.turnstile) {
      return Promise.resolve(window.turnstile);
    }
    if (!check.api) {
      check.api = new Promise(function (resolve, reject) {
        var s = document.createElement("script");
        s.src = TURNSTILE_SCRIPT;
        s.async = true;
        s.onload = function () {
          return window.turnstile ? resolve(window.turnstile) : reject(new Error("no turnstile"));
        };
        s.onerror = function () {
          check.api = null;
          reject(new Error("turnstile did not load"));
        };
        document.head.appendChild(s);
      });
    }
    return check.api;
  }

  function tokenArrived(token) {
    var waiting = check.waiting;
    check.waiting = [];
    if (waiting.length) {
      waiting.forEach(function (w) {
        w.resolve(token);
      });
    } else {
      check.token = token;
    }
    setStatus("");
  }

  function checkFailed() {
    var waiting = check.waiting;
    check.waiting = [];
    waiting.forEach(function (w) {
      w.reject(new Problem("bot_check_failed", 0, false));
    });
  }

  /** Renders the challenge (once) in the panel; tokens arrive through tokenArrived. */
  function renderChallenge(siteKey) {
    return turnstileApi().then(function (t) {
      if (check.id !== null) {
        return t;
      }
      // The challenge lives in the page's own DOM (slotted into the panel): Turnstile's
      // iframe does not need to know about the shadow root.
      check.box = el("div");
      check.box.slot = "turnstile";
      host.appendChild(check.box);
      check.id = t.render(check.box, {
        sitekey: siteKey,
        callback: tokenArrived,
        "expired-callback": function () {
          check.token = null;
          t.reset(check.id);
        },
        "error-callback": checkFailed,
      });
      return t;
    });
  }

  /** A fresh Turnstile token (each is good for one create-thread). */
  function turnstileToken(siteKey) {
    if (check.token) {
      var token = check.token;
      check.token = null;
      refreshChallenge();
      return Promise.resolve(token);
    }
    return renderChallenge(siteKey).then(
      function () {
        if (check.token) {
          return turnstileToken(siteKey);
        }
        setStatus("Please complete the check below to start the conversation.");
        return new Promise(function (resolve, reject) {
          check.waiting.push({
            resolve: function (t) {
              refreshChallenge();
              resolve(t);
            },
            reject: reject,
          });
        });
      },
      function () {
        throw new Problem("bot_check_unavailable", 0, false);
      }
    );
  }

  /** A used token is spent: ask Turnstile for the next one. */
  function refreshChallenge() {
    if (window.turnstile && check.id !== null) {
      try {
        window.turnstile.reset(check.id);
      } catch (e) {
        // the next render will try again
      }
    }
  }

  // ---- the widget ---------------------------------------------------------------------------

  var host = el("div");
  host.id = "chatbot-proxy-widget";
  var root = host.attachShadow({ mode: "open" });
  var style = el("style", "", STYLESHEET);
  var frame = el("div", opts.position === "bottom-left" ? "cbp cbp-left" : "cbp");
  setColour(frame, "--cbp-accent", opts.color);
  setColour(frame, "--cbp-accent-text", opts.textColor);

  var launcher = el("button", "cbp-launcher");
  launcher.type = "button";
  launcher.setAttribute("aria-label", "Open chat: " + title);
  launcher.setAttribute("aria-expanded", "false");
  launcher.setAttribute("aria-controls", "cbp-panel");
  launcher.appendChild(icon());

  var panel = el("section", "cbp-panel");
  panel.id = "cbp-panel";
  panel.setAttribute("role", "dialog");
  panel.setAttribute("aria-label", title);
  panel.hidden = true;

  var head = el("div", "cbp-head");
  var heading = el("h2", "cbp-title", title);
  var restart = el("button", "cbp-new", "New conversation");
  restart.type = "button";
  var close = el("button", "cbp-close", "\u00d7");
  close.type = "button";
  close.setAttribute("aria-label", "Close chat");
  head.appendChild(heading);
  head.appendChild(restart);
  head.appendChild(close);

  var log = el("div", "cbp-log");
  log.setAttribute("role", "log");
  log.setAttribute("aria-live", "polite");
  log.setAttribute("aria-label", "Conversation");
  log.tabIndex = 0;

  var status = el("div", "cbp-status");
  status.setAttribute("role", "status");
  var checkSlot = el("slot", "cbp-check");
  checkSlot.name = "turnstile";

  var form = el("form", "cbp-form");
  var label = el("label", "cbp-sr", "Message");
  label.htmlFor = "cbp-input";
  var input = el("textarea", "cbp-input");
  input.id = "cbp-input";
  input.rows = 1;
  input.maxLength = 4000;
  input.placeholder = "Type your message\u2026";
  var send = el("button", "cbp-send", "Send");
  send.type = "submit";
  form.appendChild(label);
  form.appendChild(input);
  form.appendChild(send);

  panel.appendChild(head);
  panel.appendChild(log);
  panel.appendChild(status);
  panel.appendChild(checkSlot);
  panel.appendChild(form);
  frame.appendChild(launcher);
  frame.appendChild(panel);
  root.appendChild(style);
  root.appendChild(frame);

  function setColour(node, property, value) {
    var ok = false;
    try {
      ok = !!value && window.CSS.supports("color", value);
    } catch (e) {
      ok = false;
    }
    if (ok) {
      node.style.setProperty(property, value);
    }
  }

  function setStatus(text) {
    status.textContent = text;
  }

  function scrollDown() {
    log.scrollTop = log.scrollHeight;
  }

  function addBubble(role, text) {
    var bubble = el("div", "cbp-msg cbp-" + role);
    if (role === "assistant") {
      renderMarkdown(text, bubble);
    } else {
      bubble.textContent = text;
    }
    log.appendChild(bubble);
    scrollDown();
    return bubble;
  }

  function showProblem(p) {
    var problem = p instanceof Problem ? p : new Problem("unknown");
    var bubble = addBubble("error", problem.text());
    bubble.setAttribute("data-kind", problem.kind);
  }

  function renderHistory() {
    log.textContent = "";
    if (greeting) {
      addBubble("assistant", greeting).classList.add("cbp-greeting");
    }
    state.messages.forEach(function (m) {
      addBubble(m.role, m.text);
    });
  }

  function setOpen(open, moveFocus) {
    panel.hidden = !open;
    launcher.setAttribute("aria-expanded", open ? "true" : "false");
    launcher.setAttribute("aria-label", (open ? "Close chat: " : "Open chat: ") + title);
    state.open = open;
    saveState();
    if (open) {
      scrollDown();
      if (moveFocus) {
        input.focus();
      }
      siteConfig.then(function (config) {
        if (config.siteKey && !state.handle) {
          renderChallenge(config.siteKey).catch(function () {});
        }
      });
    } else if (moveFocus) {
      launcher.focus();
    }
  }

  var busy = false;
  var inFlight = null;

  function setBusy(on) {
    busy = on;
    input.disabled = on;
    send.disabled = on;
    log.setAttribute("aria-busy", on ? "true" : "false");
  }

  /** Streams the answer to `text` into a new assistant bubble. */
  function streamAnswer(handle, text, abort) {
    return fetch(api + "/process-message", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ threadId: handle, message: text }),
      credentials: "omit",
      cache: "no-store",
      signal: abort.signal,
    }).then(
      function (res) {
        if (!res.ok) {
          return problemOf(res).then(function (p) {
            throw p;
          });
        }
        return readAnswer(res, abort);
      },
      function () {
        throw new Problem(abort.signal.aborted ? "aborted" : "network", 0, false);
      }
    );
  }

  function readAnswer(res, abort) {
    var bubble = addBubble("assistant", "");
    bubble.classList.add("cbp-typing");
    var parts = { order: [], text: {} };
    var problem = null;
    var finished = false;
    var scheduled = false;

    function full() {
      return parts.order
        .map(function (id) {
          return parts.text[id];
        })
        .filter(Boolean)
        .join("\n\n");
    }
    function paint() {
      scheduled = false;
      var text = full();
      if (text) {
        bubble.classList.remove("cbp-typing");
      }
      renderMarkdown(text, bubble);
      scrollDown();
    }
    function later() {
      if (!scheduled) {
        scheduled = true;
        setTimeout(paint, 30);
      }
    }
    function put(id, text, append) {
      id = String(id || "answer");
      if (!(id in parts.text)) {
        parts.order.push(id);
        parts.text[id] = "";
      }
      parts.text[id] = append ? parts.text[id] + text : text;
      later();
    }
    function onEvent(name, data) {
      if (data === "[DONE]") {
        finished = true;
        return;
      }
      var d;
      try {
        d = JSON.parse(data);
      } catch (e) {
        return;
      }
      var type = name !== "message" ? name : d && d.type;
      switch (type) {
        // Assistants API
        case "thread.message.delta":
          (d.delta && d.delta.content || []).forEach(function (c) {
            if (c && c.type === "text" && c.text && typeof c.text.value === "string") {
              put(d.id, c.text.value, true);
            }
          });
          break;
        case "thread.message.completed":
          var whole = (d.content || [])
            .filter(function (c) {
              return c && c.type === "text" && c.text;
            })
            .map(function (c) {
              return c.text.value;
            })
            .join("");
          put(d.id, whole, false);
          break;
        case "thread.run.completed":
        case "done":
          finished = true;
          break;
        case "thread.run.failed":
        case "thread.run.cancelled":
        case "thread.run.expired":
          problem = problem || new Problem("run_ended");
          break;
        case "thread.run.incomplete":
          problem = problem || new Problem("incomplete");
          break;
        // Responses API
        case "response.output_text.delta":
          if (typeof d.delta === "string") {
            put(d.item_id, d.delta, true);
          }
          break;
        case "response.output_text.done":
          if (typeof d.text === "string") {
            put(d.item_id, d.text, false);
          }
          break;
        case "response.completed":
          finished = true;
          break;
        case "response.failed":
          problem = problem || new Problem("run_ended");
          break;
        case "response.incomplete":
          problem = problem || new Problem("incomplete");
          break;
        case "error":
          problem = problem || new Problem("stream");
          break;
        default:
        // Events this widget does not need are ignored, as the API asks.
      }
    }

    var parser = new SseParser(onEvent);
    var reader = res.body.getReader();
    var decoder = new TextDecoder();
    function pump() {
      return reader.read().then(function (r) {
        if (r.done) {
          parser.push(decoder.decode());
          parser.end();
          return;
        }
        parser.push(decoder.decode(r.value, { stream: true }));
        return pump();
      });
    }
    return pump().then(
      function () {
        paint();
        var text = full();
        bubble.classList.remove("cbp-typing");
        if (text) {
          state.messages.push({ role: "assistant", text: text });
          saveState();
        } else {
          bubble.remove();
        }
        if (problem) {
          throw problem;
        }
        if (!finished) {
          throw new Problem("stream");
        }
      },
      function () {
        paint();
        bubble.classList.remove("cbp-typing");
        if (!full()) {
          bubble.remove();
        }
        throw new Problem(abort.signal.aborted ? "aborted" : "stream");
      }
    );
  }

  function submit(text) {
    if (busy || !text.trim()) {
      return;
    }
    var hadFocus = root.activeElement === input;
    setBusy(true);
    input.value = "";
    addBubble("user", text);
    state.messages.push({ role: "user", text: text });
    saveState();
    var abort = new AbortController();
    inFlight = abort;
    var retried = false;
    function go() {
      var handle = state.handle
        ? Promise.resolve(state.handle)
        : createThread().then(function (h) {
            state.handle = h;
            saveState();
            return h;
          });
      return handle.then(function (h) {
        return streamAnswer(h, text, abort).catch(function (p) {
          // The conversation expired on the proxy's side: continue in a new one, once.
          if (p instanceof Problem && p.kind === "expired" && !retried) {
            retried = true;
            state.handle = null;
            return go();
          }
          throw p;
        });
      });
    }
    go()
      .catch(function (p) {
        if (inFlight === abort && !(p instanceof Problem && p.kind === "aborted")) {
          showProblem(p);
        }
      })
      .then(function () {
        if (inFlight !== abort) {
          return;
        }
        inFlight = null;
        setStatus("");
        setBusy(false);
        if (hadFocus || !panel.hidden) {
          input.focus();
        }
      });
  }

  function newConversation() {
    if (inFlight) {
      inFlight.abort();
      inFlight = null;
    }
    setBusy(false);
    setStatus("");
    state.handle = null;
    state.messages = [];
    saveState();
    renderHistory();
    input.value = "";
    input.focus();
  }

  launcher.addEventListener("click", function () {
    setOpen(panel.hidden, true);
  });
  close.addEventListener("click", function () {
    setOpen(false, true);
  });
  restart.addEventListener("click", newConversation);
  form.addEventListener("submit", function (event) {
    event.preventDefault();
    submit(input.value);
  });
  input.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      submit(input.value);
    }
  });
  frame.addEventListener("keydown", function (event) {
    if (event.key === "Escape" && !panel.hidden) {
      event.preventDefault();
      setOpen(false, true);
    }
  });

  function mount() {
    document.body.appendChild(host);
    renderHistory();
    var openOnLoad = opts.open !== undefined && opts.open !== "false";
    if (state.open || openOnLoad) {
      setOpen(true, false);
    }
  }
  if (document.body) {
    mount();
  } else {
    document.addEventListener("DOMContentLoaded", mount);
  }
})();
