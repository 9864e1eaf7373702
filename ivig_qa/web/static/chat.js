/*
 * The chat page's own script (Gradio loads it through `head`, from /static/chat.js; no inline code).
 *
 *  - Brings the START of each new answer into view (Gradio's autoscroll follows the bottom),
 *    and an urgent-care alert always.
 *  - Keeps the finished turns and the typed question in this tab's sessionStorage and gives
 *    them back after a reload or a server restart (Gradio reloads the page when its server
 *    returns). A question that could not be sent stays in the box with a visible "Retry".
 *    Nothing is stored on the server.
 *  - Accessibility Gradio lacks: the question box's name, answers announced as plain text
 *    (not the sources list, not markup), notes announced, focus for the "clear" question.
 */
(function () {
  "use strict";

  var KEY = "ivig-qa.conversation";
  var DRAFT = "ivig-qa.draft";
  var PENDING = "ivig-qa.pending";
  var NOT_SENT = "The assistant cannot be reached right now, so your question was not sent. It is kept in the box below.";
  var NOT_SENT_BEFORE = "Your last question was not answered: the connection to the assistant was lost. It is kept in the box below; press Retry to send it.";
  var STILL_DOWN = "The assistant still cannot be reached. Your question is kept; please try again in a moment.";
  var store = openStorage();

  function openStorage() {
    try {
      var s = window.sessionStorage;
      s.setItem("ivig-qa.probe", "1");
      s.removeItem("ivig-qa.probe");
      return s;
    } catch (e) {
      return null; // storage switched off: the chat still works, it just cannot restore
    }
  }

  function get(key) {
    return store ? store.getItem(key) || "" : "";
  }

  function put(key, value) {
    if (!store) return;
    try {
      if (value) store.setItem(key, value);
      else store.removeItem(key);
    } catch (e) {
      /* full or blocked: nothing to do */
    }
  }

  function $(selector) {
    return document.querySelector(selector);
  }

  // Gradio renders the app after this script has run: wait for the pieces we need.
  function whenReady(fn) {
    var tries = 0;
    (function look() {
      var box = $("#ivig-question textarea");
      var restore = $("#ivig-restore textarea");
      var chat = $("#ivig-chat");
      if (box && restore && chat && $("#ivig-saved")) {
        window.setTimeout(function () {
          fn(box, restore, chat);
        }, 50);
      } else if (++tries < 1200) {
        window.setTimeout(look, 50);
      }
    })();
  }

  // Set a Gradio textbox's value the way typing would (its Svelte binding listens to "input").
  function setValue(textarea, value) {
    textarea.value = value;
    textarea.dispatchEvent(new Event("input", { bubbles: true }));
  }

  // --- announcements ---------------------------------------------------------------------------
  var live = document.createElement("div");
  live.className = "ivig-sr";
  live.setAttribute("aria-live", "polite");
  live.setAttribute("aria-atomic", "true");

  function announce(text) {
    live.textContent = "";
    window.setTimeout(function () {
      live.textContent = text;
    }, 60);
  }

  function plainAnswer(turn) {
    return String(turn.answer || "")
      .replace(/\*\*/g, "")
      .replace(/\s*\[\d+\]/g, "")
      .replace(/^\s*[-*•]\s+/gm, "")
      .replace(/\s*\n\s*/g, "\n")
      .trim();
  }

  // --- visibility ------------------------------------------------------------------------------
  // The part of the window where something can be seen: inside every scrolling ancestor and
  // above a disclaimer stuck to the bottom.
  function visibleTop(el, room) {
    var r = el.getBoundingClientRect();
    var top = 0;
    var bottom = window.innerHeight;
    for (var a = el.parentElement; a; a = a.parentElement) {
      var style = window.getComputedStyle(a);
      if (/(auto|scroll|hidden)/.test(style.overflowY) && a.scrollHeight > a.clientHeight) {
        var ar = a.getBoundingClientRect();
        top = Math.max(top, ar.top);
        bottom = Math.min(bottom, ar.bottom);
      }
    }
    var note = $("#ivig-disclaimer");
    if (note && window.getComputedStyle(note).position === "sticky") {
      bottom = Math.min(bottom, note.getBoundingClientRect().top);
    }
    return r.top >= top - 1 && r.top + Math.min(room, r.height) <= bottom + 1;
  }

  function main(box, restoreBox, chat) {
    document.body.appendChild(live);
    var lastBots = 0;
    var lastSaved = null;
    var turnCount = 0;
    var userScrolled = false;
    var pinned = null; // the row kept at the top of the view while an answer streams in
    var urgentSeen = null;

    // --- accessibility fixes on Gradio's markup ---------------------------------------------------
    box.setAttribute("aria-label", "Your question");
    box.setAttribute("enterkeyhint", "send");
    function tidy() {
      var log = chat.querySelector("[role=log]");
      if (log && log.getAttribute("aria-live") !== "off") log.setAttribute("aria-live", "off");
      // Gradio labels each message with its raw Markdown/HTML; the text itself reads better.
      chat.querySelectorAll("[data-testid=bot][aria-label], [data-testid=user][aria-label]").forEach(function (m) {
        m.removeAttribute("aria-label");
      });
      // "Read … in context" opens a new tab: its name says so (the visible text stays in it).
      chat.querySelectorAll("a[href^='/sources/']:not([aria-label])").forEach(function (a) {
        a.setAttribute("aria-label", (a.textContent || "").trim() + ", opens a new tab");
      });
      // Gradio's example buttons sit in a role="list" without list items.
      chat.querySelectorAll(".examples[role=list]").forEach(function (list) {
        list.setAttribute("role", "group");
        list.setAttribute("aria-label", "Example questions");
      });
      var ask = $("#ivig-confirm-text p");
      if (ask) {
        ask.id = "ivig-confirm-question";
        ["#ivig-clear", "#ivig-keep"].forEach(function (s) {
          var b = $(s);
          if (b) b.setAttribute("aria-describedby", "ivig-confirm-question");
        });
      }
    }

    // --- bringing new answers into view -----------------------------------------------------------
    function lastBot() {
      var bots = chat.querySelectorAll(".message-row.bot-row");
      return bots.length ? bots[bots.length - 1] : null;
    }

    function onMessages() {
      tidy();
      var bots = chat.querySelectorAll(".message-row.bot-row");
      if (bots.length > lastBots) {
        var bot = bots[bots.length - 1];
        var question = bot.previousElementSibling;
        while (question && !question.classList.contains("user-row")) question = question.previousElementSibling;
        userScrolled = false;
        // The question heads the view while its answer streams in below it; a question too
        // long for that would push the answer's first lines out of sight: the answer leads then.
        pinned = question || bot;
        pin();
        if (!visibleTop(bot, 80)) {
          pinned = bot;
          pin();
        }
        window.setTimeout(function () {
          put(DRAFT, box.value); // the box is emptied once the question is taken
        }, 0);
      }
      lastBots = bots.length;
      var urgent = bots.length ? bots[bots.length - 1].querySelector(".ivig-urgent") : null;
      if (urgent && urgent !== urgentSeen) {
        urgentSeen = urgent;
        // Always in view, whatever the reader did meanwhile: it is the one thing not to miss.
        if (!visibleTop(urgent, urgent.offsetHeight)) {
          userScrolled = false;
          pinned = bots[bots.length - 1];
        }
      }
      pin();
    }

    function pin() {
      if (pinned && !userScrolled && pinned.isConnected) pinned.scrollIntoView({ block: "start" });
    }

    function readerScrolls() {
      userScrolled = true;
      pinned = null;
    }
    ["wheel", "touchmove"].forEach(function (name) {
      chat.addEventListener(name, readerScrolls, { passive: true });
    });
    chat.addEventListener("keydown", function (ev) {
      if (/^(PageUp|PageDown|ArrowUp|ArrowDown|Home|End| )$/.test(ev.key)) readerScrolls();
    });

    // --- keeping the conversation in the tab ------------------------------------------------------
    function onSaved() {
      var holder = $("#ivig-saved .ivig-saved");
      if (!holder) return;
      var json = holder.getAttribute("data-conversation") || "";
      if (json === lastSaved) return;
      lastSaved = json;
      put(KEY, json);
      var turns = [];
      try {
        turns = json ? JSON.parse(json).turns || [] : [];
      } catch (e) {
        turns = [];
      }
      var last = turns[turns.length - 1];
      if (turns.length > turnCount && last) {
        if (get(PENDING) === last.question) put(PENDING, "");
        hideRetry();
        announce(plainAnswer(last));
        var bot = lastBot();
        if (bot && !userScrolled && !visibleTop(bot, 60)) bot.scrollIntoView({ block: "start" });
        pinned = null;
      }
      turnCount = turns.length;
    }

    // --- questions that could not be sent ---------------------------------------------------------
    function retryBar() {
      var bar = $("#ivig-retry");
      if (bar) return bar;
      var question = $("#ivig-question");
      if (question && question.parentElement && question.parentElement.classList.contains("form")) {
        question = question.parentElement; // Gradio's grey frame around the box: the bar goes above it
      }
      if (!question || !question.parentElement) return null;
      bar = document.createElement("div");
      bar.id = "ivig-retry";
      bar.className = "ivig-retry";
      bar.setAttribute("role", "alert");
      var text = document.createElement("p");
      var button = document.createElement("button");
      button.type = "button";
      button.className = "ivig-retry-button";
      button.textContent = "Retry";
      button.addEventListener("click", retry);
      bar.appendChild(text);
      bar.appendChild(button);
      question.parentElement.insertBefore(bar, question);
      return bar;
    }

    function showRetry(message) {
      var bar = retryBar();
      var text = bar && bar.querySelector("p");
      if (text && text.textContent !== message) text.textContent = message; // unchanged: no mutation
    }

    function hideRetry() {
      var bar = $("#ivig-retry");
      if (bar) bar.parentElement.removeChild(bar);
    }

    function reachable() {
      return window.fetch("/api/health", { cache: "no-store", credentials: "same-origin" }).then(
        function () {
          return true; // any answer, even "still starting", means the server is there
        },
        function () {
          return false;
        }
      );
    }

    function retry() {
      var question = get(PENDING) || box.value.trim();
      reachable().then(function (up) {
        if (!up) {
          showRetry(STILL_DOWN);
          return;
        }
        if (!box.value.trim() && question) setValue(box, question);
        hideRetry();
        var send = $("#ivig-question .submit-button");
        window.setTimeout(function () {
          if (send) send.click();
        }, 30);
      });
    }

    function sending() {
      var question = box.value.trim();
      if (!question) return;
      put(PENDING, question);
      reachable().then(function (up) {
        if (!up && get(PENDING) === question) showRetry(NOT_SENT);
      });
    }

    box.addEventListener("input", function () {
      put(DRAFT, box.value);
    });
    box.addEventListener("keydown", function (ev) {
      if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) sending();
    }, true);
    document.addEventListener("click", function (ev) {
      var target = ev.target && ev.target.closest ? ev.target : null;
      if (!target) return;
      if (target.closest("#ivig-question .submit-button")) sending();
      var step = target.closest("#ivig-new, #ivig-keep, #ivig-clear");
      if (step) focusWhenShown(step.id === "ivig-new" ? "#ivig-keep" : step.id === "ivig-keep" ? "#ivig-new" : "#ivig-question textarea");
    }, true);

    // Gradio's own toast when its connection drops.
    function onToasts() {
      var lost = Array.prototype.some.call(document.querySelectorAll("[data-testid=toast-body], .toast-body"), function (t) {
        return /connection/i.test(t.textContent || "");
      });
      if (lost && get(PENDING)) showRetry(NOT_SENT);
    }

    function focusWhenShown(selector) {
      var tries = 0;
      (function look() {
        var el = $(selector);
        if (el && el.offsetParent !== null) el.focus();
        else if (++tries < 40) window.setTimeout(look, 50);
      })();
    }

    function onNote() {
      var note = $("#ivig-note");
      var text = note ? (note.textContent || "").trim() : "";
      if (text && text !== onNote.last) announce(text);
      onNote.last = text;
    }

    new MutationObserver(onMessages).observe(chat, { childList: true, subtree: true, attributes: true, attributeFilter: ["aria-label", "aria-live", "role"] });
    new MutationObserver(onSaved).observe($("#ivig-saved"), { childList: true, subtree: true, attributes: true });
    var note = $("#ivig-note");
    if (note) new MutationObserver(onNote).observe(note, { childList: true, subtree: true, characterData: true });
    new MutationObserver(onToasts).observe(document.body, { childList: true, subtree: true });

    // --- after a reload: the conversation, the typed question, and what was not sent --------------
    tidy();
    var saved = get(KEY);
    if (saved) {
      try {
        turnCount = (JSON.parse(saved).turns || []).length; // the restore's echo is not news
      } catch (e) {
        turnCount = 0;
      }
      setValue(restoreBox, saved);
    }
    var pending = get(PENDING);
    var draft = get(DRAFT) || pending;
    if (draft && !box.value) setValue(box, draft);
    if (pending) showRetry(NOT_SENT_BEFORE);
    onMessages();
  }

  whenReady(main);
})();
