/*
 * ivig-qa portal widget.
 *
 *   <script src="https://ASSISTANT-HOST/widget.js" data-api="https://ASSISTANT-HOST"
 *           data-title="IVIG questions" async></script>
 *
 * Optional attributes: data-api-key (sent as X-API-Key), data-mode="inline" (fill the
 * parent instead of a launcher button; used by /embed), data-open="true".
 *
 * Self-contained: no third-party code, no cookies or storage, styles in a Shadow DOM so
 * the host page's CSS cannot reach in. Everything from the server or the user is put on
 * the page with textContent, never as HTML. The disclaimer, examples, limits and the list
 * of sources are built into this file when the assistant serves it, so the widget shows
 * them even when the assistant cannot be asked (down, or this site not allowed).
 */
(function () {
  "use strict";

  var script = document.currentScript;
  if (!script) return;

  var SERVED = /*IVIG_SERVED_CONFIG*/null;
  var DEFAULT_TITLE = "IVIG questions";
  var URGENT = "Urgent — get medical help now.";
  var REASONS = ["Did not answer my question", "Hard to understand", "Seems wrong or unsafe", "Something else"];
  var cfg = readConfig(script);
  if (!cfg) return;

  var FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, Arial, sans-serif";
  var STYLE = [
    ":host { all: initial; }",
    ".w { all: initial; display: block; box-sizing: border-box; font: 16px/1.5 " + FONT + "; color: #1d2330; }",
    ".w *, .w *::before, .w *::after { box-sizing: border-box; }",
    ".w.inline { height: 100%; }",
    ".sr { position: absolute; width: 1px; height: 1px; margin: -1px; padding: 0; overflow: hidden; clip: rect(0,0,0,0); white-space: nowrap; border: 0; }",
    "button { font-family: inherit; text-transform: none; letter-spacing: normal; min-height: 44px; min-width: 44px; cursor: pointer; }",
    ".launcher { position: fixed; right: 20px; bottom: 20px; z-index: 2147483000; display: inline-flex; align-items: center; gap: 8px;",
    "  font: 600 16px/1 " + FONT + "; color: #fff; background: #155e75; border: 0; border-radius: 999px; padding: 13px 18px; box-shadow: 0 4px 14px rgba(0,0,0,.25); }",
    ".launcher:focus-visible, button:focus-visible, textarea:focus-visible, a:focus-visible, .log:focus-visible { outline: 3px solid #b45309; outline-offset: 2px; }",
    ".panel { display: flex; flex-direction: column; background: #fff; overflow: hidden; }",
    ".w.floating .panel { position: fixed; right: 20px; bottom: 84px; z-index: 2147483001; width: 400px; max-width: calc(100vw - 40px);",
    "  height: 640px; max-height: calc(100vh - 110px); border-radius: 14px; box-shadow: 0 10px 40px rgba(0,0,0,.3); border: 1px solid #d5dbe3; }",
    ".w.inline .panel { height: 100%; }",
    ".panel[hidden] { display: none; }",
    ".head { display: flex; align-items: center; justify-content: space-between; gap: 8px; padding: 4px 6px 4px 14px; min-height: 52px; background: #155e75; color: #fff; }",
    ".head h2 { margin: 0; font-family: inherit; font-size: 17px; font-weight: 600; line-height: 1.3; color: #fff; }",
    ".close { font-size: 26px; font-weight: 400; line-height: 1; background: transparent; color: #fff; border: 0; border-radius: 8px; padding: 0 10px; }",
    ".log { position: relative; flex: 1 1 auto; overflow-y: auto; padding: 12px 14px; background: #f6f8fa; }",
    ".intro { margin: 0 0 6px; color: #2f3747; font-size: 15px; }",
    ".covered { margin: 0 0 12px; padding-left: 20px; font-size: 14px; color: #2f3747; }",
    ".covered li { margin: 0 0 3px; }",
    ".covered .k { color: #4a5365; }",
    ".notice { margin: 0 0 12px; padding: 10px 12px; border-radius: 8px; background: #fff1f2; border: 1px solid #e11d48; color: #881337; }",
    ".notice p { margin: 0 0 6px; }",
    ".notice p:last-child { margin: 0; }",
    ".notice strong { font-weight: 700; }",
    ".examples { display: flex; flex-wrap: wrap; gap: 8px; margin: 0 0 8px; }",
    ".examples button { font-size: 15px; font-weight: 400; line-height: 1.3; color: #0f4f63; background: #fff; border: 1px solid #5f9fb3;",
    "  border-radius: 22px; padding: 8px 14px; text-align: left; }",
    ".msg { margin: 0 0 12px; padding: 9px 12px; border-radius: 12px; max-width: 100%; overflow-wrap: anywhere; white-space: pre-wrap; scroll-margin-top: 8px; }",
    ".msg.user { background: #155e75; color: #fff; margin-left: 36px; }",
    ".msg.bot { background: #fff; border: 1px solid #dde3ea; margin-right: 12px; white-space: normal; }",
    ".msg.bot.pending { white-space: pre-wrap; color: #2f3747; }",
    ".msg.error { background: #fff1f2; border: 1px solid #e11d48; color: #881337; white-space: normal; }",
    ".msg.error button { margin-top: 8px; font-size: 15px; font-weight: 600; color: #fff; background: #9f1239; border: 0; border-radius: 8px; padding: 0 16px; }",
    ".msg p { margin: 0 0 8px; }",
    ".msg ul { margin: 0 0 8px; padding-left: 20px; }",
    ".msg li { margin: 0 0 4px; }",
    ".msg .doc { font-weight: 600; margin: 8px 0 4px; }",
    ".urgent { background: #b3001b; color: #fff; font-weight: 700; border-radius: 8px; padding: 9px 11px; margin: 0 0 10px; scroll-margin-top: 8px; }",
    ".msg.bot.is-urgent { border: 2px solid #b3001b; }",
    ".sources { margin: 10px 0 0; padding: 8px 0 0; border-top: 1px solid #e5e9ef; }",
    ".sources h3 { margin: 0 0 6px; font-family: inherit; font-size: 14px; font-weight: 700; line-height: 1.3; color: #2f3747; text-transform: uppercase; letter-spacing: .04em; }",
    ".sources ul { margin: 0; padding: 0; list-style: none; }",
    ".sources li { margin: 0 0 8px; font-size: 15px; }",
    ".sources .n { font-weight: 600; color: #2f3747; margin-right: 4px; }",
    ".sources a { display: inline-flex; align-items: center; min-height: 44px; color: #0b5d73; font-weight: 600; }",
    ".sources .k { display: block; font-size: 14px; color: #4a5365; }",
    ".rate { display: flex; flex-wrap: wrap; gap: 6px; align-items: center; margin-top: 6px; font-size: 15px; color: #2f3747; }",
    ".rate button { font-size: 15px; line-height: 1; background: #fff; color: #1d2330; border: 1px solid #8b96a6; border-radius: 8px; padding: 0 12px; }",
    ".rate p { margin: 0; flex-basis: 100%; }",
    ".disclaimer { margin: 0; padding: 7px 12px; font-size: 13px; line-height: 1.4; background: #fff7e0; color: #3d2f00; border-top: 1px solid #e0b84a; }",
    "form { display: flex; gap: 8px; padding: 10px 12px; border-top: 1px solid #e5e9ef; background: #fff; }",
    "textarea { flex: 1 1 auto; resize: none; min-height: 44px; max-height: 120px; font-family: inherit; font-size: 16px; line-height: 1.4; color: #1d2330;",
    "  border: 1px solid #7b8798; border-radius: 8px; padding: 10px; background: #fff; }",
    "textarea::placeholder { color: #5a6478; opacity: 1; }",
    "textarea:disabled { background: #eef1f4; }",
    ".send { font-size: 16px; font-weight: 600; line-height: 1; color: #fff; background: #155e75; border: 0; border-radius: 8px; padding: 0 18px; }",
    ".send:disabled { background: #5a7f8b; cursor: not-allowed; }",
    "@media (max-width: 480px) {",
    "  .w.floating .panel { right: 0; bottom: 0; width: 100vw; max-width: 100vw; height: 100%; max-height: 100%; border-radius: 0; border: 0; }",
    "  .launcher { right: 12px; bottom: 12px; }",
    "}",
  ].join("\n");

  var state = {
    history: [],
    busy: false,
    blocked: false,
    maxHistory: 20,
    maxChars: 4000,
    sources: {},
  };

  var ui = buildUi();
  applyConfig(SERVED);
  probe();

  // --- configuration -------------------------------------------------------------------
  function readConfig(el) {
    var data = el.dataset || {};
    var base;
    try {
      base = new URL(data.api || el.src, window.location.href);
    } catch (e) {
      return null;
    }
    if (base.protocol !== "https:" && base.protocol !== "http:") return null;
    var path = data.api ? base.pathname.replace(/\/+$/, "") : "";
    return {
      api: base.origin + path,
      title: data.title || DEFAULT_TITLE,
      apiKey: data.apiKey || "",
      inline: data.mode === "inline",
      open: data.open === "true",
    };
  }

  function applyConfig(c) {
    if (!c) return;
    if (typeof c.disclaimer === "string" && c.disclaimer) ui.disclaimer.textContent = c.disclaimer;
    if (typeof c.max_history_turns === "number") state.maxHistory = c.max_history_turns;
    if (typeof c.max_question_chars === "number") {
      state.maxChars = c.max_question_chars;
      ui.input.maxLength = c.max_question_chars;
    }
    if (Array.isArray(c.sources) && c.sources.length) showSources(c.sources);
    if (Array.isArray(c.examples) && !state.blocked) showExamples(c.examples);
  }

  function headers(json) {
    var h = { Accept: json ? "application/json" : "text/event-stream" };
    h["Content-Type"] = "application/json";
    if (cfg.apiKey) h["X-API-Key"] = cfg.apiKey;
    return h;
  }

  function request(path, init) {
    var options = Object.assign({ credentials: "omit", mode: "cors", cache: "no-store", referrerPolicy: "no-referrer" }, init);
    return fetch(cfg.api + path, options);
  }

  // Can this page talk to the assistant? A refused cross-origin request and a server that is
  // down look the same to a page (a TypeError); a no-cors request tells them apart, because
  // it reaches a running server whatever its CORS answer.
  function probe() {
    return request("/api/config", { method: "GET", headers: cfg.apiKey ? { "X-API-Key": cfg.apiKey } : {} })
      .then(function (r) {
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.json();
      })
      .then(function (c) {
        clearNotice();
        if (!SERVED) applyConfig(c);
        return true;
      })
      .catch(function () {
        return diagnose();
      });
  }

  function diagnose() {
    return fetch(cfg.api + "/api/health", { mode: "no-cors", credentials: "omit", cache: "no-store", referrerPolicy: "no-referrer" }).then(
      function () {
        blocked();
        return false;
      },
      function () {
        unreachable();
        return false;
      }
    );
  }

  function blocked() {
    state.blocked = true;
    showNotice(
      [
        ["This site is not allowed to use the assistant.", true],
        ["The assistant only answers on sites its operator has approved, and this one (" + window.location.origin + ") is not on its list."],
      ],
      null
    );
    ui.examples.textContent = "";
    ui.input.disabled = true;
    ui.send.disabled = true;
    ui.input.placeholder = "Not available on this site";
    if (window.console && console.warn) {
      console.warn("ivig-qa widget: " + cfg.api + " refuses requests from " + window.location.origin + "; add this origin to the assistant's cors_origins.");
    }
  }

  function unreachable() {
    showNotice([["The assistant cannot be reached right now.", true], ["Please try again in a moment."]], "Try again");
  }

  // --- DOM helpers -----------------------------------------------------------------------
  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    if (attrs) {
      Object.keys(attrs).forEach(function (k) {
        if (k === "text") node.textContent = attrs[k];
        else if (k === "className") node.className = attrs[k];
        else node.setAttribute(k, attrs[k]);
      });
    }
    (children || []).forEach(function (c) {
      if (c) node.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    });
    return node;
  }

  function applyStyle(root) {
    try {
      var sheet = new CSSStyleSheet();
      sheet.replaceSync(STYLE);
      root.adoptedStyleSheets = [sheet];
    } catch (e) {
      root.appendChild(el("style", { text: STYLE }));
    }
  }

  function buildUi() {
    var host = document.createElement("ivig-qa-widget");
    var root = host.attachShadow({ mode: "open" });
    applyStyle(root);
    var wrap = el("div", { className: "w " + (cfg.inline ? "inline" : "floating") });
    var panelId = "ivig-qa-panel";
    var titleId = "ivig-qa-title";
    var title = el("h2", { id: titleId, text: cfg.title });
    var head = el("div", { className: "head" }, [title]);
    var log = el("div", { className: "log", role: "region", "aria-label": "Conversation", tabindex: "0" });
    var intro = el("p", { className: "intro", text: "Ask about IVIG. Answers are quoted word for word from published sources, with links." });
    var covered = el("ul", { className: "covered", "aria-label": "Sources the answers come from" });
    covered.hidden = true;
    var notice = el("div", { className: "notice", role: "alert" });
    notice.hidden = true;
    var examples = el("div", { className: "examples" });
    log.appendChild(notice); // first: why the assistant cannot answer here, before anything else
    log.appendChild(intro);
    log.appendChild(covered);
    log.appendChild(examples);
    var live = el("div", { className: "sr", "aria-live": "polite", "aria-atomic": "true" });
    var disclaimer = el("p", { className: "disclaimer", role: "note" }); // its text is built in (SERVED)
    var input = el("textarea", { rows: "1", placeholder: "Type your question…", "aria-label": "Your question", maxlength: "4000", enterkeyhint: "send" });
    var send = el("button", { className: "send", type: "submit", text: "Ask" });
    var form = el("form", {}, [input, send]);
    var panel = el("div", { className: "panel", id: panelId }, [head, log, live, disclaimer, form]);
    var launcher = null;

    if (cfg.inline) {
      panel.setAttribute("role", "region");
      panel.setAttribute("aria-labelledby", titleId);
    } else {
      panel.setAttribute("role", "dialog");
      panel.setAttribute("aria-labelledby", titleId);
      var close = el("button", { className: "close", type: "button", "aria-label": "Close", text: "×" });
      head.appendChild(close);
      launcher = el("button", { className: "launcher", type: "button", "aria-controls": panelId, "aria-expanded": "false" }, [
        chatIcon(),
        el("span", { text: cfg.title }),
      ]);
      launcher.addEventListener("click", function () {
        setOpen(panel.hidden);
      });
      close.addEventListener("click", function () {
        setOpen(false);
      });
      panel.addEventListener("keydown", function (ev) {
        if (ev.key === "Escape") {
          ev.preventDefault();
          setOpen(false);
        } else if (ev.key === "Tab" && fullScreen()) {
          trapTab(ev);
        }
      });
      wrap.appendChild(launcher);
    }
    wrap.appendChild(panel);
    root.appendChild(wrap);

    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      submit(input.value);
    });
    input.addEventListener("keydown", function (ev) {
      if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
        ev.preventDefault();
        submit(input.value);
      }
    });

    if (cfg.inline && script.parentNode) {
      host.style.display = "block";
      host.style.height = "100%";
      script.parentNode.insertBefore(host, script.nextSibling);
    } else {
      document.body.appendChild(host);
    }

    // The panel covers the whole screen on phones: then it is a modal dialog, and Tab stays in it.
    var phone = window.matchMedia ? window.matchMedia("(max-width: 480px)") : null;
    function fullScreen() {
      return !cfg.inline && !panel.hidden && !!phone && phone.matches;
    }

    function focusables() {
      return Array.prototype.filter.call(panel.querySelectorAll("button, textarea, a[href], [tabindex='0']"), function (e) {
        return !e.disabled && e.getClientRects().length > 0;
      });
    }

    function trapTab(ev) {
      var items = focusables();
      if (!items.length) return;
      var first = items[0];
      var last = items[items.length - 1];
      var current = root.activeElement;
      if (ev.shiftKey && (current === first || items.indexOf(current) < 0)) {
        ev.preventDefault();
        last.focus();
      } else if (!ev.shiftKey && (current === last || items.indexOf(current) < 0)) {
        ev.preventDefault();
        first.focus();
      }
    }

    function setOpen(open) {
      panel.hidden = !open;
      launcher.setAttribute("aria-expanded", String(open));
      panel.setAttribute("aria-modal", String(fullScreen()));
      if (open) {
        if (!input.disabled) input.focus();
        else panel.querySelector(".close").focus();
      } else {
        launcher.focus();
      }
    }

    if (launcher) {
      panel.hidden = !cfg.open; // open on arrival without taking the focus from the page
      launcher.setAttribute("aria-expanded", String(cfg.open));
    }

    return {
      host: host,
      log: log,
      intro: intro,
      covered: covered,
      notice: notice,
      examples: examples,
      live: live,
      disclaimer: disclaimer,
      input: input,
      send: send,
    };
  }

  function chatIcon() {
    // A speech bubble drawn as SVG (no emoji font or image request needed).
    var ns = "http://www.w3.org/2000/svg";
    var svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("width", "20");
    svg.setAttribute("height", "20");
    svg.setAttribute("aria-hidden", "true");
    var path = document.createElementNS(ns, "path");
    path.setAttribute("fill", "currentColor");
    path.setAttribute("d", "M4 3h16a2 2 0 0 1 2 2v11a2 2 0 0 1-2 2H9l-5 4v-4H4a2 2 0 0 1-2-2V5a2 2 0 0 1 2-2z");
    svg.appendChild(path);
    return svg;
  }

  function described(info) {
    var kind = String(info.kind || "");
    kind = kind.charAt(0).toUpperCase() + kind.slice(1);
    return [kind, String(info.publisher || "")].filter(Boolean).join(" · ");
  }

  function showSources(list) {
    ui.covered.textContent = "";
    list.forEach(function (s) {
      if (!s || typeof s.title !== "string") return;
      state.sources[String(s.doc_id)] = s;
      var k = described(s);
      ui.covered.appendChild(el("li", {}, [s.title, k ? el("span", { className: "k", text: " — " + k }) : null]));
    });
    ui.covered.hidden = !ui.covered.childNodes.length;
    if (!ui.covered.hidden) ui.intro.textContent = "Ask about IVIG. Answers are quoted word for word from these sources, with links:";
  }

  function showExamples(list) {
    ui.examples.textContent = "";
    list.slice(0, 6).forEach(function (q) {
      if (typeof q !== "string") return;
      var b = el("button", { type: "button", text: q });
      b.addEventListener("click", function () {
        submit(q);
      });
      ui.examples.appendChild(b);
    });
  }

  function showNotice(lines, action) {
    ui.notice.textContent = "";
    lines.forEach(function (line) {
      ui.notice.appendChild(el("p", {}, [line[1] ? el("strong", { text: line[0] }) : line[0]]));
    });
    if (action) {
      var again = el("button", { type: "button", className: "send", text: action });
      again.addEventListener("click", function () {
        probe();
      });
      ui.notice.appendChild(again);
    }
    ui.notice.hidden = false;
  }

  function clearNotice() {
    if (state.blocked) return;
    ui.notice.hidden = true;
    ui.notice.textContent = "";
  }

  function announce(text) {
    ui.live.textContent = "";
    window.setTimeout(function () {
      ui.live.textContent = text;
    }, 60);
  }

  // The question heads the view while its answer comes in below it (answers are read from the top).
  function showStart(asked, bubble) {
    ui.log.scrollTop = Math.max(0, asked.offsetTop - 8);
    if (bubble.offsetTop + 60 > ui.log.scrollTop + ui.log.clientHeight) ui.log.scrollTop = Math.max(0, bubble.offsetTop - 8);
  }

  // --- asking --------------------------------------------------------------------------------
  function submit(raw) {
    var question = (raw || "").trim();
    if (!question || state.busy || state.blocked) return;
    if (question.length > state.maxChars) {
      addError("Your question is too long (the limit is " + state.maxChars + " characters).");
      return;
    }
    state.busy = true;
    ui.send.disabled = true;
    ui.input.value = "";
    ui.examples.textContent = "";
    var asked = el("div", { className: "msg user", text: question });
    ui.log.appendChild(asked);
    var bubble = el("div", { className: "msg bot pending", "aria-busy": "true", text: "…" });
    ui.log.appendChild(bubble);
    showStart(asked, bubble);
    ask(question, asked, bubble)
      .catch(function () {
        // Not sent, or cut off: the question goes back into the box, with a way to send it again.
        return diagnose().then(function () {
          if (state.blocked) showError(bubble, "This site is not allowed to use the assistant.", null);
          else offerRetry(question, asked, bubble, "The assistant could not be reached, so your question was not answered.");
        });
      })
      .then(function () {
        state.busy = false;
        ui.send.disabled = state.blocked;
        bubble.removeAttribute("aria-busy");
        showStart(asked, bubble);
      });
  }

  function offerRetry(question, asked, bubble, message) {
    if (!ui.input.value.trim()) ui.input.value = question;
    showError(bubble, message + " Your question is kept in the box below.", function () {
      asked.parentNode && asked.parentNode.removeChild(asked);
      bubble.parentNode && bubble.parentNode.removeChild(bubble);
      if (ui.input.value.trim() === question) ui.input.value = "";
      submit(question);
    });
  }

  function ask(question, asked, bubble) {
    var body = JSON.stringify({ question: question, history: state.history.slice(-state.maxHistory) });
    return request("/api/ask/stream", { method: "POST", headers: headers(false), body: body }).then(function (response) {
      if (!response.ok) return failed(response, question, asked, bubble);
      clearNotice();
      // Text before a "lead" event, the lead (the LLM engine's quotes, shown at once) and the
      // text after it (the summary being written, which reads above the lead).
      var text = "";
      var lead = null;
      var summary = "";
      var finished = false;
      return readEvents(response.body, function (event, data) {
        if (event === "lead" && data && typeof data.text === "string") {
          lead = data.text;
          bubble.textContent = streamed(text, summary, lead);
        } else if (event === "delta" && data && typeof data.text === "string") {
          if (lead === null) text += data.text;
          else summary += data.text;
          bubble.textContent = streamed(text, summary, lead);
        } else if (event === "answer" && data) {
          finished = true;
          renderAnswer(bubble, data);
          state.history.push({ role: "user", content: question });
          state.history.push({ role: "assistant", content: String(data.answer || "") });
        } else if (event === "error") {
          finished = true;
          showError(bubble, (data && data.message) || "Something went wrong. Please try again.", null);
        }
      }).then(function () {
        if (!finished) offerRetry(question, asked, bubble, "The answer was interrupted.");
      });
    });
  }

  function streamed(before, summary, lead) {
    if (lead === null) return before;
    summary = summary.trim();
    return before + (summary ? summary + "\n\n" : "") + lead;
  }

  function failed(response, question, asked, bubble) {
    return response
      .json()
      .catch(function () {
        return {};
      })
      .then(function (err) {
        var message = (err && typeof err.message === "string" && err.message) || "The assistant could not answer (HTTP " + response.status + ").";
        if (response.status === 429) {
          var wait = response.headers.get("Retry-After");
          message = "You have asked many questions in a short time." + (wait ? " Please wait " + wait + " s and try again." : "");
        }
        if (response.status === 429 || response.status >= 500) offerRetry(question, asked, bubble, message);
        else showError(bubble, message, null);
      });
  }

  // Server-sent events over fetch: blocks separated by a blank line, "event:" and "data:" fields.
  function readEvents(stream, onEvent) {
    var reader = stream.getReader();
    var decoder = new TextDecoder();
    var buffer = "";

    function dispatch(block) {
      var event = "message";
      var data = [];
      block.split("\n").forEach(function (line) {
        if (!line || line.charAt(0) === ":") return;
        var i = line.indexOf(":");
        var name = i < 0 ? line : line.slice(0, i);
        var value = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
        if (name === "event") event = value;
        else if (name === "data") data.push(value);
      });
      if (!data.length) return;
      var parsed = null;
      try {
        parsed = JSON.parse(data.join("\n"));
      } catch (e) {
        return;
      }
      onEvent(event, parsed);
    }

    function feed(chunk, last) {
      buffer += chunk;
      var hold = "";
      if (!last && buffer.slice(-1) === "\r") {
        hold = "\r";
        buffer = buffer.slice(0, -1);
      }
      buffer = buffer.replace(/\r\n?/g, "\n");
      var parts = buffer.split("\n\n");
      buffer = (last ? "" : parts.pop()) + hold;
      parts.forEach(dispatch);
      if (last && buffer.trim()) dispatch(buffer);
    }

    function pump() {
      return reader.read().then(function (r) {
        if (r.done) {
          feed(decoder.decode(), true);
          return;
        }
        feed(decoder.decode(r.value, { stream: true }), false);
        return pump();
      });
    }
    return pump();
  }

  // --- rendering (textContent only) ---------------------------------------------------------
  function inline(text) {
    // "**bold**" segments of the answer's Markdown become <strong>; the rest stays text.
    var frag = document.createDocumentFragment();
    String(text)
      .split("**")
      .forEach(function (part, i) {
        if (!part) return;
        frag.appendChild(i % 2 ? el("strong", { text: part }) : document.createTextNode(part));
      });
    return frag;
  }

  function renderMarkdown(text) {
    var frag = document.createDocumentFragment();
    var list = null;
    String(text)
      .split("\n")
      .forEach(function (line) {
        var t = line.trim();
        if (!t) {
          list = null;
          return;
        }
        var bullet = /^[-*•]\s+/.exec(t);
        if (bullet) {
          if (!list) {
            list = el("ul");
            frag.appendChild(list);
          }
          var li = el("li");
          li.appendChild(inline(t.slice(bullet[0].length)));
          list.appendChild(li);
          return;
        }
        list = null;
        var doc = /^\*\*(.+)\*\*$/.exec(t);
        if (doc) {
          frag.appendChild(el("p", { className: "doc", text: doc[1] }));
          return;
        }
        var p = el("p");
        p.appendChild(inline(t));
        frag.appendChild(p);
      });
    return frag;
  }

  function plain(text) {
    return String(text)
      .replace(/\*\*/g, "")
      .replace(/\s*\[\d+\]/g, "")
      .replace(/^\s*[-*•]\s+/gm, "")
      .trim();
  }

  // The source page with every span this answer quotes from it highlighted and numbered.
  function sourceHref(docId, cited) {
    var spans = cited.map(function (c) {
      return "span=" + (Number(c.n) | 0) + ":" + (Number(c.start) | 0) + "-" + (Number(c.end) | 0);
    });
    return cfg.api + "/sources/" + encodeURIComponent(docId) + "?" + spans.join("&") + "#quote";
  }

  function sourcesList(citations) {
    var groups = [];
    var byDoc = {};
    citations
      .slice()
      .sort(function (a, b) {
        return (Number(a.n) | 0) - (Number(b.n) | 0);
      })
      .forEach(function (c) {
        var id = String(c.doc_id || "");
        if (!byDoc[id]) {
          byDoc[id] = [];
          groups.push(id);
        }
        byDoc[id].push(c);
      });
    var ul = el("ul");
    groups.forEach(function (id) {
      var cited = byDoc[id];
      var known = state.sources[id] || {};
      var first = cited[0];
      var info = { title: known.title || first.title || id, kind: first.kind || known.kind, publisher: first.publisher || known.publisher };
      var markers = cited
        .map(function (c) {
          return "[" + (Number(c.n) | 0) + "]";
        })
        .join(" ");
      // The quotes are in the answer above; the list names each source and links to it in context.
      var text = "Read “" + info.title + "” in context";
      var link = el("a", { href: sourceHref(id, cited), target: "_blank", rel: "noopener noreferrer", "aria-label": text + ", opens a new tab", text: text });
      var k = described(info);
      ul.appendChild(el("li", {}, [el("span", { className: "n", text: markers }), link, k ? el("span", { className: "k", text: k }) : null]));
    });
    return el("div", { className: "sources" }, [el("h3", { text: "Sources" }), ul]);
  }

  function renderAnswer(bubble, answer) {
    bubble.textContent = "";
    bubble.className = "msg bot";
    if (answer.status === "urgent_care") {
      bubble.classList.add("is-urgent");
      bubble.appendChild(el("div", { className: "urgent", role: "alert", text: URGENT }));
    }
    bubble.appendChild(renderMarkdown(answer.answer || ""));
    var citations = Array.isArray(answer.citations) ? answer.citations : [];
    if (citations.length) bubble.appendChild(sourcesList(citations));
    if (typeof answer.disclaimer === "string" && answer.disclaimer) ui.disclaimer.textContent = answer.disclaimer;
    if (answer.answer_id) bubble.appendChild(rating(String(answer.answer_id)));
    announce(plain(answer.answer || ""));
  }

  function sendFeedback(answerId, rating, comment) {
    var body = { answer_id: answerId, rating: rating };
    if (comment) body.comment = comment;
    return request("/api/feedback", { method: "POST", headers: headers(true), body: JSON.stringify(body) }).then(
      function (resp) {
        return resp.ok;
      },
      function () {
        return false;
      }
    );
  }

  function rating(answerId) {
    var box = el("div", { className: "rate", role: "group", "aria-label": "Rate this answer" }, [el("span", { text: "Was this helpful?" })]);
    function say(text) {
      box.textContent = "";
      box.appendChild(el("p", { role: "status", text: text }));
    }
    [
      ["up", "Yes", "Yes, this was helpful"],
      ["down", "No", "No, this was not helpful"],
    ].forEach(function (r) {
      var b = el("button", { type: "button", "aria-label": r[2], title: r[2], text: r[1] });
      b.addEventListener("click", function () {
        sendFeedback(answerId, r[0]).then(function (ok) {
          if (!ok) return say("Feedback could not be sent.");
          if (r[0] === "up") return say("Thank you for the feedback.");
          say("Thank you for the feedback. What was wrong? (optional)");
          REASONS.forEach(function (reason) {
            var why = el("button", { type: "button", text: reason });
            why.addEventListener("click", function () {
              sendFeedback(answerId, "down", reason).then(function (sent) {
                say(sent ? "Thank you — we noted “" + reason + "”." : "Feedback could not be sent.");
              });
            });
            box.appendChild(why);
          });
          box.querySelector("button").focus();
        });
      });
      box.appendChild(b);
    });
    return box;
  }

  function showError(bubble, message, retry) {
    bubble.className = "msg error";
    bubble.textContent = "";
    bubble.appendChild(el("p", { role: "alert", text: message }));
    if (retry) {
      var again = el("button", { type: "button", text: "Retry" });
      again.addEventListener("click", retry);
      bubble.appendChild(again);
    }
  }

  function addError(message) {
    ui.log.appendChild(el("div", { className: "msg error", role: "alert", text: message }));
    ui.log.scrollTop = ui.log.scrollHeight;
  }
})();
