"""The chat and the portal widget in a real browser (Debian's Chromium driven by Playwright).

One real server (API + Gradio chat + widget pages) on a free localhost port; each test
asks real questions and checks what a person sees: the answer, its sources, the
disclaimer, the urgent-care banner in view, HTML typed by a user shown as text, a phone
screen, 200 % zoom, an outage and a restart, a portal that is not allowed, the keyboard,
and axe-core's WCAG 2 A/AA rules. Screenshots of each state go to test-artifacts/.
"""

from __future__ import annotations

import http.server
import logging
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ivig_qa.assistant import Assistant
from ivig_qa.feedback import FeedbackStore
from ivig_qa.policy.wording import DISCLAIMER
from ivig_qa.settings import Settings
from ivig_qa.testing import BackgroundServer, free_port
from ivig_qa.web.app import create_app

CHROMIUM = Path("/usr/bin/chromium")
AXE = Path(__file__).resolve().parent.parent / ".npm" / "node_modules" / "axe-core" / "axe.min.js"
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian's chromium is not installed (/usr/bin/chromium)"
)
sync_api = pytest.importorskip("playwright.sync_api")

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
QUESTION = "How often is IVIG given?"
URGENT = "I have chest pain and trouble breathing during my infusion"
PAYLOAD = 'How often is IVIG given? <img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'
DISCLAIMER_START = DISCLAIMER[:60]
LINK_NAME = re.compile(r"^Read “.+” in context, opens a new tab$")
AXE_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa"]
TIMEOUT_MS = 60_000

# Where the element's top part is, relative to what can be seen of it: inside every
# scrolling ancestor, inside the window, and above the chat's sticky disclaimer.
IN_VIEW_JS = """(el) => {
  const r = el.getBoundingClientRect();
  let top = 0, bottom = window.innerHeight;
  for (let a = el.parentElement; a; a = a.parentElement) {
    if (/(auto|scroll|hidden)/.test(getComputedStyle(a).overflowY)) {
      const ar = a.getBoundingClientRect(); top = Math.max(top, ar.top); bottom = Math.min(bottom, ar.bottom);
    }
  }
  const note = document.querySelector('#ivig-disclaimer');
  if (note && getComputedStyle(note).position === 'sticky') bottom = Math.min(bottom, note.getBoundingClientRect().top);
  return r.top >= top - 1 && r.bottom <= bottom + 1;
}"""
TURNS_JS = "() => (JSON.parse(sessionStorage.getItem('ivig-qa.conversation') || '{}').turns || []).length"


@pytest.fixture(scope="module")
def ui_settings(session_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    db = tmp_path_factory.mktemp("browser") / "feedback.sqlite3"
    return session_settings.updated(**{"feedback_db": db, "rate_limit_per_minute": 10_000})


@pytest.fixture(scope="module")
def site(assistant: Assistant, ui_settings: Settings) -> Iterator[str]:
    with BackgroundServer(create_app(ui_settings, assistant=assistant)) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def new_page(browser, viewport: dict[str, int], **options: object):
    phone = viewport["width"] < 600
    context = browser.new_context(viewport=viewport, is_mobile=phone, has_touch=phone, **options)
    return context, context.new_page()


@pytest.fixture
def desktop(browser) -> Iterator[object]:
    context, page = new_page(browser, DESKTOP)
    yield page
    context.close()


@pytest.fixture
def phone(browser) -> Iterator[object]:
    context, page = new_page(browser, PHONE)
    yield page
    context.close()


# --- helpers -----------------------------------------------------------------------------------
def open_chat(page, url: str):
    page.goto(f"{url}/")
    box = page.locator("#ivig-question textarea")
    box.wait_for(timeout=TIMEOUT_MS)
    page.wait_for_function(
        "() => document.querySelector('#ivig-question textarea').getAttribute('aria-label')"
    )
    return box


def chat_ask(page, question: str) -> None:
    """Ask in the open chat and wait until the answer is finished (and kept in the tab)."""
    before = page.evaluate(TURNS_JS)
    box = page.locator("#ivig-question textarea")
    box.fill(question)
    box.press("Enter")
    page.wait_for_function(f"() => ({TURNS_JS})() > {before}", timeout=TIMEOUT_MS)


def last_bot_message(page):
    return page.locator('#ivig-chat [data-testid="bot"]').last


def in_view(locator) -> bool:
    return bool(locator.evaluate(IN_VIEW_JS))


def in_viewport(page, locator) -> bool:
    box = locator.bounding_box()
    size = page.viewport_size
    return box is not None and box["y"] >= 0 and box["y"] + box["height"] <= size["height"] + 1


def widget(page, selector: str):
    """Playwright's CSS locators pierce the widget's open shadow root."""
    return page.locator(f"ivig-qa-widget {selector}")


def widget_ask(page, question: str) -> None:
    widget(page, "textarea").fill(question)
    widget(page, ".send").click()
    page.wait_for_function(
        "() => { const h = document.querySelector('ivig-qa-widget');"
        " return h && h.shadowRoot.querySelector('.msg.bot:not(.pending), .msg.error') !== null"
        " && !h.shadowRoot.querySelector('[aria-busy]'); }",
        timeout=TIMEOUT_MS,
    )


def widget_focus(page) -> str:
    """What has the keyboard focus inside the widget ('' when the focus is elsewhere)."""
    return page.evaluate(
        "() => { const h = document.querySelector('ivig-qa-widget'); const a = h && h.shadowRoot.activeElement;"
        " return document.activeElement === h && a ? (a.className || a.tagName.toLowerCase()) : ''; }"
    )


def is_red(css_color: str) -> bool:
    r, g, b = (int(v) for v in re.findall(r"\d+", css_color)[:3])
    return r >= 150 and g <= 60 and b <= 60


def contrast(fg: str, bg: str) -> float:
    """WCAG contrast ratio of two ``rgb(a)()`` colours (the foreground's alpha over the background)."""

    def parse(c: str) -> list[float]:
        v = [float(x) for x in re.findall(r"[\d.]+", c)]
        return v + [1.0] * (4 - len(v))

    f, b = parse(fg), parse(bg)
    mixed = [f[i] * f[3] + b[i] * (1 - f[3]) for i in range(3)]

    def luminance(rgb: list[float]) -> float:
        lin = [(x / 255) / 12.92 if x / 255 <= 0.03928 else ((x / 255 + 0.055) / 1.055) ** 2.4 for x in rgb]
        return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]

    hi, lo = sorted((luminance(mixed), luminance(b[:3])), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def axe_violations(page) -> list[str]:
    """axe-core's serious and critical WCAG 2 A/AA findings on the page (open shadow roots included)."""
    page.add_script_tag(path=str(AXE))
    result = page.evaluate(
        "(tags) => axe.run(document, {runOnly: {type: 'tag', values: tags}, resultTypes: ['violations']})",
        AXE_TAGS,
    )
    return [
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]


# --- the Gradio chat ------------------------------------------------------------------------------
def test_chat_answers_with_each_source_named_once_and_read_in_context(
    desktop, site: str, artifacts_dir: Path, ui_settings: Settings
) -> None:
    page = desktop
    box = open_chat(page, site)
    # The question box is named for what it is, not "Textbox Ask"; its hint is readable.
    assert page.get_by_role("textbox", name="Your question", exact=True).count() == 1
    hint = box.evaluate("e => getComputedStyle(e, '::placeholder').color")
    assert contrast(hint, box.evaluate("e => getComputedStyle(e).backgroundColor")) >= 4.5
    chat_ask(page, QUESTION)
    message = last_bot_message(page)
    text = message.inner_text()
    assert "[1]" in text and "Sources" in text
    # Each quote is shown once: in the answer, not again in the sources list.
    sources = message.locator("li:has(a)")
    assert sources.count() >= 1
    links = message.get_by_role("link", name=LINK_NAME)
    names = [links.nth(i).evaluate("e => e.textContent") for i in range(links.count())]
    assert names and len(set(names)) == len(names)  # one descriptive link per source
    for i in range(sources.count()):
        item = sources.nth(i).inner_text()
        assert "“" not in item.split("in context")[-1]  # no quote after the link
    assert "Patient" in message.locator(".ivig-kind").first.inner_text()  # the kind of source
    # The message is not labelled with its raw Markdown/HTML; the log does not read it all out.
    assert message.get_attribute("aria-label") is None
    assert page.locator("#ivig-chat [role=log]").get_attribute("aria-live") == "off"
    # The announcement is cleared, then set 60 ms later (so a screen reader reads it again): wait.
    page.wait_for_function("() => document.querySelector('[aria-live=polite].ivig-sr')?.textContent.trim()")
    spoken = page.locator("[aria-live=polite].ivig-sr").inner_text()
    assert (
        spoken.startswith("Here is what the sources say") and "Sources" not in spoken and "[1]" not in spoken
    )
    disclaimer = page.locator("#ivig-disclaimer")
    assert DISCLAIMER_START in disclaimer.inner_text()
    assert in_viewport(page, disclaimer)
    assert page.evaluate("document.scrollingElement.scrollHeight") <= DESKTOP["height"] + 1  # one screen
    # For the docs: a taller window shows the answer and its sources list.
    page.set_viewport_size({"width": 1280, "height": 1250})
    page.locator('#ivig-chat [data-testid="user"]').last.evaluate("e => e.scrollIntoView({block: 'start'})")
    page.wait_for_timeout(300)
    page.screenshot(path=str(artifacts_dir / "chat.png"))

    # Thumbs up is stored against the answer id, without the question (log_questions is off),
    # and the reader is thanked.
    before = FeedbackStore(ui_settings.server.feedback_db).count()
    page.get_by_role("button", name="Like", exact=True).last.click()
    page.locator("#ivig-note").get_by_text("Thank you").wait_for(timeout=TIMEOUT_MS)
    assert FeedbackStore(ui_settings.server.feedback_db).count() == before + 1
    stored = FeedbackStore(ui_settings.server.feedback_db).recent(1)[0]
    assert (
        stored.rating == "up" and re.fullmatch(r"[0-9a-f]{32}", stored.answer_id) and stored.question is None
    )
    # A reason can be given too (Gradio's flag button), stored once with the answer id.
    page.locator("#ivig-chat .message-buttons").last.get_by_role(
        "button", name="Feedback", exact=True
    ).click()
    page.get_by_role("button", name="Hard to understand").click()
    page.locator("#ivig-note").get_by_text("we noted").wait_for(timeout=TIMEOUT_MS)
    reasons = [r for r in FeedbackStore(ui_settings.server.feedback_db).recent(5) if r.comment]
    assert [(r.rating, r.comment, r.answer_id) for r in reasons] == [
        ("down", "Hard to understand", stored.answer_id)
    ]

    # "Read in context" opens the source in a new tab, every quoted span highlighted, landing
    # with room above the first one; "Back to the answer" closes the tab again.
    with page.context.expect_page() as opened:
        links.first.click()
    source = opened.value
    source.wait_for_load_state()
    mark = source.locator("mark#quote")
    assert mark.is_visible() and mark.inner_text().strip() in text
    top = mark.bounding_box()["y"]
    assert in_viewport(source, mark)
    assert top >= 0.2 * DESKTOP["height"] or source.evaluate("scrollY") == 0  # not at the top edge
    source.screenshot(path=str(artifacts_dir / "source.png"))
    with source.expect_event("close", timeout=10_000):
        source.get_by_role("link", name="Back to the answer").click()


def test_chat_shows_html_in_a_question_as_text(desktop, site: str) -> None:
    page = desktop
    open_chat(page, site)
    chat_ask(page, PAYLOAD)
    user = page.locator('#ivig-chat [data-testid="user"]').last
    assert '<img src=x onerror="window.__pwned=1">' in user.inner_text()
    assert "<script>window.__pwned=2</script>" in user.inner_text()
    assert page.locator('#ivig-chat img[src="x"]').count() == 0
    assert page.evaluate("typeof window.__pwned") == "undefined"


@pytest.mark.parametrize("viewport", [PHONE, DESKTOP], ids=["phone", "desktop"])
def test_chat_brings_an_urgent_answer_into_view(browser, site: str, artifacts_dir: Path, viewport) -> None:
    context, page = new_page(browser, viewport)
    try:
        open_chat(page, site)
        chat_ask(page, QUESTION)
        name = f"chat-urgent-{'phone' if viewport is PHONE else 'desktop'}"
        for scrolled_up in (False, True):
            if scrolled_up:  # the reader went back to the top of the conversation
                page.locator("#ivig-chat .bubble-wrap").hover()
                page.mouse.wheel(0, -5000)
                page.wait_for_function(
                    "() => document.querySelector('#ivig-chat .bubble-wrap').scrollTop === 0"
                )
            count = page.locator("#ivig-chat .ivig-urgent").count()
            page.locator("#ivig-question textarea").fill(URGENT)
            page.locator("#ivig-question textarea").press("Enter")
            alert = page.locator("#ivig-chat .ivig-urgent").nth(count)
            alert.wait_for(timeout=TIMEOUT_MS)
            assert in_view(alert), "the urgent alert arrived out of sight"
            assert "Urgent" in alert.inner_text() and alert.get_attribute("role") == "alert"
            assert is_red(alert.evaluate("e => getComputedStyle(e).backgroundColor"))
            page.wait_for_function(f"() => ({TURNS_JS})() >= {count + 2}", timeout=TIMEOUT_MS)
            assert in_view(alert), "the urgent alert went out of sight as the answer finished"
            page.screenshot(
                path=str(artifacts_dir / f"{name}{'-after-scrolling-up' if scrolled_up else ''}.png")
            )
    finally:
        context.close()


def test_chat_works_on_a_phone(phone, site: str, artifacts_dir: Path) -> None:
    page = phone
    box = open_chat(page, site)
    # Before the first question, the landing view says which sources the answers come from.
    landing = page.locator("#ivig-chat").get_by_text("IVIG for Infantile Spasms")
    landing.wait_for(timeout=TIMEOUT_MS)
    assert in_viewport(page, landing)
    page.screenshot(path=str(artifacts_dir / "chat-phone-landing.png"))
    assert box.evaluate("e => parseFloat(getComputedStyle(e).fontSize)") >= 16  # iOS does not zoom
    chat_ask(page, QUESTION)
    assert page.evaluate("document.scrollingElement.scrollWidth") <= PHONE["width"]
    assert in_viewport(page, page.locator("#ivig-disclaimer"))
    assert in_viewport(page, box)
    # Every visible control is at least 44 × 44 px.
    small = page.evaluate(
        "() => [...document.querySelectorAll('#ivig-chat button, #ivig-question button, #ivig-new, #ivig-chat .prose a')]"
        ".filter(e => e.getClientRects().length && getComputedStyle(e).visibility !== 'hidden')"
        ".map(e => [e.getAttribute('aria-label') || e.textContent.trim(), e.getBoundingClientRect()])"
        ".filter(([, r]) => r.width < 43.5 || r.height < 43.5).map(([n, r]) => `${n}: ${r.width}x${r.height}`)"
    )
    assert small == []
    page.screenshot(path=str(artifacts_dir / "chat-phone.png"))

    # "New conversation" asks first (and its buttons cover no message); keeping changes nothing.
    assert page.get_by_role("button", name="Clear", exact=True).count() == 0  # Gradio's own is hidden
    page.get_by_role("button", name="New conversation").click()
    keep = page.get_by_role("button", name="Keep it")
    keep.wait_for(timeout=TIMEOUT_MS)
    page.wait_for_function("() => document.activeElement && document.activeElement.id === 'ivig-keep'")
    page.screenshot(path=str(artifacts_dir / "chat-phone-clear-asks.png"))
    keep.click()
    page.wait_for_timeout(300)
    assert page.locator("#ivig-chat .bot-row").count() == 1
    page.get_by_role("button", name="New conversation").click()
    page.get_by_role("button", name="Clear the conversation").click()
    page.wait_for_function("() => document.querySelectorAll('#ivig-chat .bot-row').length === 0")
    page.wait_for_function(f"() => ({TURNS_JS})() === 0")


@pytest.mark.parametrize("zoom", [2, 4], ids=["200%", "400%"])
def test_chat_reflows_when_zoomed_in(browser, site: str, artifacts_dir: Path, zoom: int) -> None:
    """1280 × 900 zoomed in: the conversation keeps at least half the window and the page scrolls down."""
    width, height = 1280 // zoom, 900 // zoom
    context, page = new_page(browser, {"width": width, "height": height}, device_scale_factor=zoom)
    try:
        open_chat(page, site)
        chat_ask(page, QUESTION)
        chat = page.locator("#ivig-chat").bounding_box()
        assert chat["height"] >= height / 2
        assert page.evaluate("document.scrollingElement.scrollHeight") > height  # the page scrolls...
        assert page.evaluate("document.scrollingElement.scrollWidth") <= width  # ...down, not sideways
        # What the reader sees of the conversation once scrolled to it: at least half the window.
        page.locator("#ivig-chat").evaluate("e => e.scrollIntoView({block: 'start'})")
        shown = page.locator("#ivig-chat").evaluate(
            "e => { const r = e.getBoundingClientRect(); return Math.min(r.bottom, innerHeight) - Math.max(r.top, 0); }"
        )
        assert shown >= height / 2
        assert in_view(page.locator('#ivig-chat [data-testid="user"]').last)
        page.screenshot(path=str(artifacts_dir / f"chat-zoom-{zoom * 100}.png"))
    finally:
        context.close()


def test_chat_keeps_the_conversation_and_the_question_through_a_server_restart(
    browser, assistant: Assistant, ui_settings: Settings, artifacts_dir: Path
) -> None:
    port = free_port()
    server = BackgroundServer(create_app(ui_settings, assistant=assistant), port=port)
    url = server.start()
    context, page = new_page(browser, DESKTOP)
    try:
        open_chat(page, url)
        chat_ask(page, QUESTION)
        server.stop()  # the server goes away mid-conversation
        box = page.locator("#ivig-question textarea")
        box.fill("Can children get IVIG?")
        box.press("Enter")
        retry = page.locator("#ivig-retry")
        retry.wait_for(timeout=TIMEOUT_MS)
        assert "not sent" in retry.inner_text() and box.input_value() == "Can children get IVIG?"
        page.screenshot(path=str(artifacts_dir / "chat-outage.png"))

        server = BackgroundServer(create_app(ui_settings, assistant=assistant), port=port)
        with page.expect_navigation(timeout=TIMEOUT_MS):  # Gradio reloads the page when it is back
            server.start()
        box = page.locator("#ivig-question textarea")
        page.locator("#ivig-chat .bot-row a").first.wait_for(timeout=TIMEOUT_MS)  # restored
        assert page.locator('#ivig-chat [data-testid="user"]').first.inner_text().strip() == QUESTION
        assert box.input_value() == "Can children get IVIG?"
        page.locator("#ivig-retry").get_by_role("button", name="Retry").wait_for(timeout=TIMEOUT_MS)
        page.screenshot(path=str(artifacts_dir / "chat-after-restart.png"))
        page.locator("#ivig-retry").get_by_role("button", name="Retry").click()
        page.wait_for_function(f"() => ({TURNS_JS})() === 2", timeout=TIMEOUT_MS)
        assert page.locator("#ivig-chat .bot-row").count() == 2 and page.locator("#ivig-retry").count() == 0
        assert "children" in page.locator('#ivig-chat [data-testid="user"]').last.inner_text()
        page.screenshot(path=str(artifacts_dir / "chat-retried.png"))
    finally:
        context.close()
        server.stop()


# --- accessibility (axe-core) -----------------------------------------------------------------------
@pytest.mark.skipif(not AXE.exists(), reason="axe-core is not installed (make test installs it into .npm/)")
@pytest.mark.parametrize("where", ["chat", "demo-widget-open", "embed", "source"])
def test_pages_have_no_serious_wcag_violations(browser, site: str, where: str) -> None:
    context, page = new_page(browser, DESKTOP, bypass_csp=True)  # axe is injected as a script
    try:
        if where == "chat":
            open_chat(page, site)
            chat_ask(page, URGENT)
            page.get_by_role("button", name="New conversation").click()
            page.get_by_role("button", name="Keep it").wait_for(timeout=TIMEOUT_MS)
        elif where == "demo-widget-open":
            page.goto(f"{site}/demo")
            widget(page, ".launcher").click()
            widget_ask(page, QUESTION)
        elif where == "embed":
            page.goto(f"{site}/embed")
            widget(page, ".examples button").first.wait_for(timeout=TIMEOUT_MS)
        else:
            page.goto(f"{site}/sources/ivig-lupus?span=1:2155-2223&span=2:2224-2300#quote")
        assert axe_violations(page) == []
    finally:
        context.close()


# --- the widget on the demo portal ------------------------------------------------------------------
def test_widget_on_the_demo_portal_answers_with_sources(desktop, site: str, artifacts_dir: Path) -> None:
    page = desktop
    page.goto(f"{site}/demo")
    widget(page, ".launcher").click()
    disclaimer = widget(page, ".disclaimer")
    assert DISCLAIMER_START in disclaimer.inner_text()  # built into widget.js: no request needed
    assert widget(page, ".covered li").count() >= 4  # the sources it answers from
    widget_ask(page, QUESTION)
    answer = widget(page, ".msg.bot").last
    assert "[1]" in answer.inner_text()
    sources = answer.locator(".sources li")
    assert sources.count() >= 1
    assert sources.locator("blockquote").count() == 0  # the quotes are in the answer, once
    link = sources.first.get_by_role("link", name=LINK_NAME)
    href = link.get_attribute("href")
    assert href.startswith(f"{site}/sources/") and "span=" in href
    assert sources.first.locator(".k").inner_text()  # kind and publisher
    assert disclaimer.is_visible() and in_viewport(page, disclaimer)
    # The portal's own CSS (uppercase serif buttons) does not reach into the widget.
    send = widget(page, ".send")
    assert send.evaluate("e => getComputedStyle(e).textTransform") == "none"
    assert "Georgia" not in send.evaluate("e => getComputedStyle(e).fontFamily")
    widget(page, ".log").evaluate("log => { log.scrollTop = log.querySelector('.sources').offsetTop - 200; }")
    page.screenshot(path=str(artifacts_dir / "widget.png"))
    # A "no" is thanked and can say why.
    answer.get_by_role("button", name="No, this was not helpful").click()
    answer.get_by_text("Thank you for the feedback").wait_for(timeout=TIMEOUT_MS)
    answer.get_by_role("button", name="Hard to understand").click()
    answer.get_by_text("we noted").wait_for(timeout=TIMEOUT_MS)

    # The iframe version shows the same assistant and disclaimer, and the floating chat
    # button does not cover the iframe's Ask button wherever the iframe is scrolled to.
    widget(page, ".close").click()
    frame = page.frame_locator("iframe")
    frame.locator("ivig-qa-widget .disclaimer").get_by_text(DISCLAIMER_START).wait_for(timeout=TIMEOUT_MS)
    assert frame.locator("ivig-qa-widget .examples button").count() >= 1
    launcher = widget(page, ".launcher")
    for block in ("end", "center"):
        page.locator("iframe").evaluate(f"e => e.scrollIntoView({{block: '{block}'}})")
        a, b = launcher.bounding_box(), frame.locator("ivig-qa-widget .send").bounding_box()
        overlap = a["x"] < b["x"] + b["width"] and b["x"] < a["x"] + a["width"]
        overlap = overlap and a["y"] < b["y"] + b["height"] and b["y"] < a["y"] + a["height"]
        assert not overlap, f"the launcher covers the iframe's Ask button (iframe scrolled to {block})"


def test_widget_shows_html_in_a_question_as_text(desktop, site: str) -> None:
    page = desktop
    page.goto(f"{site}/embed")
    widget_ask(page, PAYLOAD)
    assert widget(page, ".msg.user").last.text_content() == PAYLOAD
    assert widget(page, "img").count() == 0
    assert page.evaluate("typeof window.__pwned") == "undefined"


def test_widget_marks_urgent_care_with_a_red_banner_in_view(desktop, site: str) -> None:
    page = desktop
    page.goto(f"{site}/embed")
    widget_ask(page, QUESTION)
    widget_ask(page, URGENT)
    banner = widget(page, ".urgent")
    assert banner.is_visible() and "Urgent" in banner.inner_text()
    assert is_red(banner.evaluate("e => getComputedStyle(e).backgroundColor"))
    assert in_view(banner)
    # The live region speaks the answer's text, not its sources list.
    spoken = widget(page, "[aria-live=polite]")
    spoken.get_by_text("Act now", exact=False).wait_for(state="attached", timeout=TIMEOUT_MS)
    assert "Sources" not in spoken.text_content() and "Read" not in spoken.text_content()


def test_widget_works_on_a_phone_with_the_keyboard(phone, site: str, artifacts_dir: Path) -> None:
    page = phone
    page.goto(f"{site}/demo")
    launcher = widget(page, ".launcher")
    launcher.click()
    widget_ask(page, QUESTION)
    panel = widget(page, ".panel")
    assert panel.bounding_box()["width"] == pytest.approx(PHONE["width"], abs=1)
    assert panel.get_attribute("aria-modal") == "true"
    assert widget(page, ".msg.bot .sources li").count() >= 1
    assert in_viewport(page, widget(page, ".disclaimer"))
    assert in_viewport(page, widget(page, "textarea"))
    assert widget(page, "textarea").evaluate("e => parseFloat(getComputedStyle(e).fontSize)") >= 16
    small = widget(page, ".panel").evaluate(
        "p => [...p.querySelectorAll('button, a[href]')].filter(e => e.getClientRects().length)"
        ".map(e => [e.textContent.trim(), e.getBoundingClientRect()])"
        ".filter(([, r]) => r.width < 43.5 || r.height < 43.5).map(([n, r]) => `${n}: ${r.width}x${r.height}`)"
    )
    assert small == []
    page.screenshot(path=str(artifacts_dir / "widget-phone.png"))
    # The full-screen panel keeps the keyboard focus: Tab and Shift+Tab cycle inside it.
    widget(page, "textarea").focus()
    for key in ["Tab"] * 12 + ["Shift+Tab"] * 12:
        page.keyboard.press(key)
        assert widget_focus(page), f"{key} moved the focus out of the open panel"
    # Escape closes it and gives the focus back to the launcher.
    page.keyboard.press("Escape")
    assert panel.is_hidden()
    assert widget_focus(page) == "launcher" and launcher.get_attribute("aria-expanded") == "false"


class _Portal(http.server.BaseHTTPRequestHandler):
    """A portal page on another origin that embeds the widget (the page is set per test)."""

    page = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.end_headers()
        self.wfile.write(self.page)

    def log_message(self, *_args: object) -> None:
        pass


def test_widget_on_a_site_that_is_not_allowed_says_so(
    desktop, site: str, artifacts_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ivig_qa.web.cors")
    _Portal.page = (
        '<!doctype html><html lang="en"><head><title>Another portal</title></head><body>'
        f'<h1>Another portal</h1><script src="{site}/widget.js" data-api="{site}" data-open="true"></script>'
        "</body></html>"
    ).encode()
    portal = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), _Portal)
    threading.Thread(target=portal.serve_forever, daemon=True).start()
    origin = f"http://localhost:{portal.server_address[1]}"  # not in cors_origins (empty)
    try:
        page = desktop
        page.goto(f"{origin}/")
        notice = widget(page, ".notice")
        notice.get_by_text("This site is not allowed to use the assistant").wait_for(timeout=TIMEOUT_MS)
        assert notice.is_visible() and notice.get_attribute("role") == "alert"
        assert DISCLAIMER_START in widget(page, ".disclaimer").inner_text()
        assert widget(page, "textarea").is_disabled()
        page.screenshot(path=str(artifacts_dir / "widget-not-allowed.png"))
        assert origin in caplog.text and "cors_origins" in caplog.text
    finally:
        portal.shutdown()
        portal.server_close()
