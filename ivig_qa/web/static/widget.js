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
 * the page with textContent, never as HTML.
 */
(function () {
  "use strict";

  var script = document.currentScript;
  if (!script) return;

  var DEFAULT_TITLE = "IVIG questions";
  var cfg = readConfig(script);
  if (!cfg) return;

  var STYLE = [
    ":host { all: initial; }",
    ".w { all: initial; display: block; box-sizing: border-box; font: 15px/1.5 system-ui, -apple-system, 'Segoe UI', Roboto, Arial, sans-serif; color: #1d2330; }",
    ".w *, .w *::before, .w *::after { box-sizing: border-box; }",
    ".w.inline { height: 100%; }",
    ".launcher { position: fixed; right: 20px; bottom: 20px; z-index: 2147483000; display: inline-flex; align-items: center; gap: 8px;",
    "  font: 600 15px/1 system-ui, -apple-system, 'Segoe UI', Roboto, Arial, sans-serif; text-transform: none; letter-spacing: normal;",
    "  color: #fff; background: #155e75; border: 0; border-radius: 999px; padding: 13px 18px; cursor: pointer; box-shadow: 0 4px 14px rgba(0,0,0,.25); }",
    ".launcher:focus-visible, button:focus-visible, textarea:focus-visible, a:focus-visible { outline: 3px solid #f59e0b; outline-offset: 2px; }",
    ".panel { display: flex; flex-direction: column; background: #fff; overflow: hidden; }",
    ".w.floating .panel { position: fixed; right: 20px; bottom: 84px; z-index: 2147483000; width: 390px; max-width: calc(100vw - 40px);",
    "  height: 620px; max-height: calc(100vh - 110px); border-radius: 14px; box-shadow: 0 10px 40px rgba(0,0,0,.3); border: 1px solid #d5dbe3; }",
    ".w.inline .panel { height: 100%; }",
    ".panel[hidden] { display: none; }",
    ".head { display: flex; align-items: center; justify-content: space-between; gap: 8px; padding: 10px 14px; background: #155e75; color: #fff; }",
    ".head h2 { margin: 0; font-family: inherit; font-size: 16px; font-weight: 600; line-height: 1.3; color: #fff; }",
    ".close { font-family: inherit; font-size: 22px; font-weight: 400; line-height: 1; background: transparent; color: #fff; border: 0; padding: 2px 6px; cursor: pointer; text-transform: none; }",
    ".log { position: relative; flex: 1 1 auto; overflow-y: auto; padding: 12px 14px; background: #f6f8fa; }",
    ".intro { margin: 0 0 10px; color: #3a4255; font-size: 14px; }",
    ".examples { display: flex; flex-wrap: wrap; gap: 6px; margin: 0 0 8px; }",
    ".examples button { font-family: inherit; font-size: 13px; font-weight: 400; line-height: 1.3; text-transform: none; color: #155e75; background: #fff; border: 1px solid #9cc3cf;",
    "  border-radius: 999px; padding: 6px 10px; cursor: pointer; text-align: left; }",
    ".msg { margin: 0 0 12px; padding: 9px 12px; border-radius: 12px; max-width: 100%; overflow-wrap: anywhere; white-space: pre-wrap; }",
    ".msg.user { background: #155e75; color: #fff; margin-left: 36px; }",
    ".msg.bot { background: #fff; border: 1px solid #dde3ea; margin-right: 12px; white-space: normal; }",
    ".msg.bot.pending { white-space: pre-wrap; color: #3a4255; }",
    ".msg.error { background: #fff1f2; border: 1px solid #fda4af; color: #881337; white-space: normal; }",
    ".msg p { margin: 0 0 8px; }",
    ".msg ul { margin: 0 0 8px; padding-left: 20px; }",
    ".msg li { margin: 0 0 4px; }",
    ".msg .doc { font-weight: 600; margin: 8px 0 4px; }",
    ".urgent { background: #b3001b; color: #fff; font-weight: 700; border-radius: 8px; padding: 9px 11px; margin: 0 0 10px; }",
    ".msg.bot.is-urgent { border: 2px solid #b3001b; }",
    ".sources { margin: 10px 0 0; padding: 8px 0 0; border-top: 1px solid #e5e9ef; }",
    ".sources h3 { margin: 0 0 6px; font-family: inherit; font-size: 13px; font-weight: 600; line-height: 1.3; color: #3a4255; text-transform: uppercase; letter-spacing: .04em; }",
    ".sources ol { margin: 0; padding-left: 20px; }",
    ".sources li { margin: 0 0 8px; font-size: 14px; }",
    ".sources .title { font-weight: 600; }",
    ".sources blockquote { margin: 3px 0; padding: 2px 0 2px 8px; border-left: 3px solid #9cc3cf; color: #3a4255; font-style: italic; }",
    ".sources a { color: #0e7490; }",
    ".rate { display: flex; gap: 6px; align-items: center; margin-top: 6px; font-size: 13px; color: #5a6478; }",
    ".rate button { font-family: inherit; font-size: 14px; line-height: 1; background: #fff; color: #1d2330; border: 1px solid #cfd6df; border-radius: 6px; padding: 4px 8px; cursor: pointer; text-transform: none; }",
    ".disclaimer { margin: 0; padding: 7px 12px; font-size: 12px; line-height: 1.4; background: #fff7e0; color: #3d2f00; border-top: 1px solid #e0b84a; }",
    "form { display: flex; gap: 8px; padding: 10px 12px; border-top: 1px solid #e5e9ef; background: #fff; }",
    "textarea { flex: 1 1 auto; resize: none; min-height: 42px; max-height: 120px; font-family: inherit; font-size: 15px; line-height: 1.4; color: #1d2330;",
    "  border: 1px solid #b8c2cf; border-radius: 8px; padding: 9px 10px; background: #fff; }",
    ".send { font-family: inherit; font-size: 15px; font-weight: 600; line-height: 1; text-transform: none; color: #fff; background: #155e75; border: 0; border-radius: 8px; padding: 0 16px; cursor: pointer; }",
    ".send:disabled { background: #8aa7b1; cursor: wait; }",
    "@media (max-width: 480px) {",
    "  .w.floating .panel { right: 0; bottom: 0; width: 100vw; max-width: 100vw; height: 100%; max-height: 100%; border-radius: 0; }",
    "  .launcher { right: 12px; bottom: 12px; }",
    "}",
  ].join("\n");

  var state = {
    history: [],
    busy: false,
    maxHistory: 20,
    maxChars: 4000,
    disclaimer: "",
  };

  var ui = buildUi();
  loadConfig();

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

  function loadConfig() {
    request("/api/config", { method: "GET", headers: cfg.apiKey ? { "X-API-Key": cfg.apiKey } : {} })
      .then(function (r) {
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.json();
      })
      .then(function (c) {
        if (typeof c.disclaimer === "string") setDisclaimer(c.disclaimer);
        if (typeof c.max_history_turns === "number") state.maxHistory = c.max_history_turns;
        if (typeof c.max_question_chars === "number") {
          state.maxChars = c.max_question_chars;
          ui.input.maxLength = c.max_question_chars;
        }
        if (Array.isArray(c.examples)) showExamples(c.examples);
      })
      .catch(function () {
        ui.intro.textContent = "The assistant cannot be reached right now. Please try again later.";
      });
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
    var title = el("h2", { text: cfg.title });
    var head = el("div", { className: "head" }, [title]);
    var log = el("div", { className: "log", role: "log", "aria-live": "polite", "aria-label": "Conversation" });
    var intro = el("p", { className: "intro", text: "Ask about IVIG. Answers are quoted from published sources, with links." });
    var examples = el("div", { className: "examples" });
    log.appendChild(intro);
    log.appendChild(examples);
    var disclaimer = el("p", { className: "disclaimer", role: "note", text: "Loading…" });
    var input = el("textarea", { rows: "1", placeholder: "Type your question…", "aria-label": "Your question", maxlength: "4000" });
    var send = el("button", { className: "send", type: "submit", text: "Ask" });
    var form = el("form", {}, [input, send]);
    var panel = el("div", { className: "panel", id: panelId, role: "region", "aria-label": cfg.title }, [head, log, disclaimer, form]);
    var launcher = null;

    if (!cfg.inline) {
      var close = el("button", { className: "close", type: "button", "aria-label": "Close", text: "×" });
      head.appendChild(close);
      launcher = el("button", { className: "launcher", type: "button", "aria-controls": panelId, "aria-expanded": "false" }, [
        chatIcon(),
        el("span", { text: cfg.title }),
      ]);
      panel.hidden = !cfg.open;
      launcher.addEventListener("click", function () {
        setOpen(panel.hidden);
      });
      close.addEventListener("click", function () {
        setOpen(false);
        launcher.focus();
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
      if (ev.key === "Enter" && !ev.shiftKey) {
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

    function setOpen(open) {
      panel.hidden = !open;
      launcher.setAttribute("aria-expanded", String(open));
      if (open) input.focus();
    }

    return { host: host, log: log, intro: intro, examples: examples, disclaimer: disclaimer, input: input, send: send };
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

  function setDisclaimer(text) {
    state.disclaimer = text;
    ui.disclaimer.textContent = text;
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

  function scrollDown() {
    ui.log.scrollTop = ui.log.scrollHeight;
  }

  // --- asking --------------------------------------------------------------------------------
  function submit(raw) {
    var question = (raw || "").trim();
    if (!question || state.busy) return;
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
    scrollDown();
    ask(question, bubble)
      .catch(function () {
        showError(bubble, "The assistant could not be reached. Please try again.");
      })
      .then(function () {
        state.busy = false;
        ui.send.disabled = false;
        bubble.removeAttribute("aria-busy");
        // Answers are read from the top: show the question and the start of its answer.
        ui.log.scrollTop = Math.max(0, asked.offsetTop - 8);
      });
  }

  function ask(question, bubble) {
    var body = JSON.stringify({ question: question, history: state.history.slice(-state.maxHistory) });
    return request("/api/ask/stream", { method: "POST", headers: headers(false), body: body }).then(function (response) {
      if (!response.ok) return failed(response, bubble);
      var text = "";
      var finished = false;
      return readEvents(response.body, function (event, data) {
        if (event === "delta" && data && typeof data.text === "string") {
          text += data.text;
          bubble.textContent = text;
          scrollDown();
        } else if (event === "answer" && data) {
          finished = true;
          renderAnswer(bubble, data);
          state.history.push({ role: "user", content: question });
          state.history.push({ role: "assistant", content: String(data.answer || "") });
        } else if (event === "error") {
          finished = true;
          showError(bubble, (data && data.message) || "Something went wrong. Please try again.");
        }
      }).then(function () {
        if (!finished) showError(bubble, "The answer was interrupted. Please try again.");
      });
    });
  }

  function failed(response, bubble) {
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
        showError(bubble, message);
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

  function sourceHref(c) {
    var start = Number(c.start) | 0;
    var end = Number(c.end) | 0;
    return cfg.api + "/sources/" + encodeURIComponent(String(c.doc_id)) + "?start=" + start + "&end=" + end + "#quote";
  }

  function renderAnswer(bubble, answer) {
    bubble.textContent = "";
    bubble.className = "msg bot";
    if (answer.status === "urgent_care") {
      bubble.classList.add("is-urgent");
      bubble.appendChild(el("div", { className: "urgent", role: "alert", text: "Urgent — get medical help now." }));
    }
    bubble.appendChild(renderMarkdown(answer.answer || ""));
    var citations = Array.isArray(answer.citations) ? answer.citations : [];
    if (citations.length) {
      var ol = el("ol");
      citations.forEach(function (c) {
        var link = el("a", { href: sourceHref(c), target: "_blank", rel: "noopener noreferrer", text: "Read in context" });
        ol.appendChild(
          el("li", { value: String(Number(c.n) | 0) }, [
            el("span", { className: "title", text: String(c.title || c.doc_id || "") + (c.page ? ", page " + (Number(c.page) | 0) : "") }),
            el("blockquote", { text: String(c.quote || "").replace(/\s+/g, " ").trim() }),
            link,
          ])
        );
      });
      bubble.appendChild(el("div", { className: "sources" }, [el("h3", { text: "Sources" }), ol]));
    }
    if (typeof answer.disclaimer === "string" && answer.disclaimer) setDisclaimer(answer.disclaimer);
    if (answer.answer_id) bubble.appendChild(rating(String(answer.answer_id)));
  }

  function rating(answerId) {
    var box = el("div", { className: "rate" }, [el("span", { text: "Was this helpful?" })]);
    [
      ["up", "Yes", "Yes, this was helpful"],
      ["down", "No", "No, this was not helpful"],
    ].forEach(function (r) {
      var b = el("button", { type: "button", "aria-label": r[2], title: r[2], text: r[1] });
      b.addEventListener("click", function () {
        request("/api/feedback", { method: "POST", headers: headers(true), body: JSON.stringify({ answer_id: answerId, rating: r[0] }) })
          .then(function (resp) {
            box.textContent = resp.ok ? "Thank you for the feedback." : "Feedback could not be sent.";
          })
          .catch(function () {
            box.textContent = "Feedback could not be sent.";
          });
      });
      box.appendChild(b);
    });
    return box;
  }

  function showError(bubble, message) {
    bubble.className = "msg error";
    bubble.textContent = message;
  }

  function addError(message) {
    ui.log.appendChild(el("div", { className: "msg error", role: "alert", text: message }));
    scrollDown();
  }
})();
