"""The chat and the portal widget in a real browser (Debian's Chromium driven by Playwright).

One real server (API + Gradio chat + widget pages) on a free localhost port; each test
asks real questions and checks what a person sees: the answer, its sources, the
disclaimer, the urgent-care banner, HTML typed by a user shown as text, a phone screen.
Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ivig_qa.assistant import Assistant
from ivig_qa.feedback import FeedbackStore
from ivig_qa.policy.wording import DISCLAIMER
from ivig_qa.web.app import BackgroundServer, create_app
from ivig_qa.settings import Settings

CHROMIUM = Path("/usr/bin/chromium")
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
DESKTOP = {"width": 1100, "height": 850}
PHONE = {"width": 390, "height": 844}
QUESTION = "How often is IVIG given?"
URGENT = "I have chest pain and trouble breathing during my infusion"
PAYLOAD = 'How often is IVIG given? <img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'
DISCLAIMER_START = DISCLAIMER[:60]
TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def ui_settings(session_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    db = tmp_path_factory.mktemp("browser") / "feedback.sqlite3"
    return session_settings.model_copy(update={"feedback_db": db, "rate_limit_per_minute": 10_000})


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


@pytest.fixture
def desktop(browser) -> Iterator[object]:
    context = browser.new_context(viewport=DESKTOP)
    yield context.new_page()
    context.close()


@pytest.fixture
def phone(browser) -> Iterator[object]:
    context = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
    yield context.new_page()
    context.close()


# --- helpers -----------------------------------------------------------------------------------
def chat_ask(page, url: str, question: str) -> None:
    page.goto(f"{url}/")
    box = page.locator("#ivig-question textarea")
    box.wait_for(timeout=TIMEOUT_MS)
    box.fill(question)
    box.press("Enter")


def last_bot_message(page):
    return page.locator('#ivig-chat [data-testid="bot"]').last


def wait_until_settled(locator, seconds: float = 30.0) -> str:
    """The streamed message's text once it stops changing (works for every answer status)."""
    deadline = time.monotonic() + seconds
    previous, stable = None, 0
    while time.monotonic() < deadline:
        text = locator.inner_text() if locator.count() else ""
        stable = stable + 1 if text and text == previous else 0
        if stable >= 3:
            return text
        previous = text
        time.sleep(0.3)
    raise AssertionError("the chat answer never finished")


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


def is_red(css_color: str) -> bool:
    r, g, b = (int(v) for v in re.findall(r"\d+", css_color)[:3])
    return r >= 150 and g <= 60 and b <= 60


# --- the Gradio chat ------------------------------------------------------------------------------
def test_chat_answers_with_sources_and_the_disclaimer(
    desktop, site: str, artifacts_dir: Path, ui_settings: Settings
) -> None:
    page = desktop
    chat_ask(page, site, QUESTION)
    page.get_by_text("Read in context").first.wait_for(timeout=TIMEOUT_MS)
    message = last_bot_message(page)
    text = wait_until_settled(message)
    assert "[1]" in text and "Sources" in text
    links = message.get_by_role("link", name="Read in context")
    assert links.count() >= 1
    disclaimer = page.locator("#ivig-disclaimer")
    assert DISCLAIMER_START in disclaimer.inner_text()
    assert in_viewport(page, disclaimer)
    # For the docs: a taller window, scrolled to the question, shows answer and sources.
    page.set_viewport_size({"width": 1100, "height": 1300})
    page.locator('#ivig-chat [data-testid="user"]').last.evaluate("e => e.scrollIntoView({block: 'start'})")
    page.wait_for_timeout(300)
    assert in_viewport(page, disclaimer)
    page.screenshot(path=str(artifacts_dir / "chat.png"))

    # Thumbs up is stored against the answer id, without the question (log_questions is off).
    before = FeedbackStore(ui_settings.feedback_db).count()
    page.get_by_role("button", name="Like", exact=True).last.click()
    for _ in range(50):
        if FeedbackStore(ui_settings.feedback_db).count() > before:
            break
        time.sleep(0.1)
    stored = FeedbackStore(ui_settings.feedback_db).recent(1)[0]
    assert (
        stored.rating == "up" and re.fullmatch(r"[0-9a-f]{32}", stored.answer_id) and stored.question is None
    )

    # "Read in context" opens the source with the quoted span highlighted.
    href = links.first.get_attribute("href")
    assert href.startswith("/sources/")
    page.goto(f"{site}{href}")
    mark = page.locator("mark#quote")
    assert mark.is_visible() and mark.inner_text().strip() in text


def test_chat_shows_html_in_a_question_as_text(desktop, site: str) -> None:
    page = desktop
    chat_ask(page, site, PAYLOAD)
    user = page.locator('#ivig-chat [data-testid="user"]').last
    user.wait_for(timeout=TIMEOUT_MS)
    wait_until_settled(last_bot_message(page))
    assert '<img src=x onerror="window.__pwned=1">' in user.inner_text()
    assert "<script>window.__pwned=2</script>" in user.inner_text()
    assert page.locator('#ivig-chat img[src="x"]').count() == 0
    assert page.evaluate("typeof window.__pwned") == "undefined"


def test_chat_marks_urgent_care_with_a_red_banner(desktop, site: str, artifacts_dir: Path) -> None:
    page = desktop
    chat_ask(page, site, URGENT)
    banner = page.locator("#ivig-chat .ivig-urgent")
    banner.wait_for(timeout=TIMEOUT_MS)
    assert "Urgent" in banner.inner_text()
    assert is_red(banner.evaluate("e => getComputedStyle(e).backgroundColor"))
    page.screenshot(path=str(artifacts_dir / "chat-urgent.png"))


def test_chat_works_on_a_phone(phone, site: str, artifacts_dir: Path) -> None:
    page = phone
    chat_ask(page, site, QUESTION)
    page.get_by_text("Read in context").first.wait_for(timeout=TIMEOUT_MS)
    wait_until_settled(last_bot_message(page))
    assert page.evaluate("document.scrollingElement.scrollWidth") <= PHONE["width"]
    assert in_viewport(page, page.locator("#ivig-disclaimer"))
    assert in_viewport(page, page.locator("#ivig-question textarea"))
    page.screenshot(path=str(artifacts_dir / "chat-phone.png"))


# --- the widget on the demo portal ------------------------------------------------------------------
def test_widget_on_the_demo_portal_answers_with_sources(desktop, site: str, artifacts_dir: Path) -> None:
    page = desktop
    page.set_viewport_size({"width": 1200, "height": 900})
    page.goto(f"{site}/demo")
    widget(page, ".launcher").click()
    disclaimer = widget(page, ".disclaimer")
    disclaimer.get_by_text(DISCLAIMER_START).wait_for(timeout=TIMEOUT_MS)  # from /api/config
    widget_ask(page, QUESTION)
    answer = widget(page, ".msg.bot").last
    assert "[1]" in answer.inner_text()
    sources = answer.locator(".sources li")
    assert sources.count() >= 1
    assert sources.first.locator(".title").inner_text()
    assert sources.first.locator("blockquote").inner_text()
    href = sources.first.get_by_role("link", name="Read in context").get_attribute("href")
    assert href.startswith(f"{site}/sources/") and "start=" in href
    assert disclaimer.is_visible() and in_viewport(page, disclaimer)
    # The portal's own CSS (uppercase serif buttons) does not reach into the widget.
    send = widget(page, ".send")
    assert send.evaluate("e => getComputedStyle(e).textTransform") == "none"
    assert "Georgia" not in send.evaluate("e => getComputedStyle(e).fontFamily")
    # For the docs: the end of the answer and the start of its sources, above the disclaimer.
    widget(page, ".log").evaluate("log => { log.scrollTop = log.querySelector('.sources').offsetTop - 200; }")
    page.screenshot(path=str(artifacts_dir / "widget.png"))
    answer.get_by_role("button", name="Yes, this was helpful").click()
    answer.get_by_text("Thank you for the feedback.").wait_for(timeout=TIMEOUT_MS)

    # The iframe version on the same page shows the same assistant and disclaimer.
    frame = page.frame_locator("iframe")
    frame.locator("ivig-qa-widget .disclaimer").get_by_text(DISCLAIMER_START).wait_for(timeout=TIMEOUT_MS)
    assert frame.locator("ivig-qa-widget .examples button").count() >= 1


def test_widget_shows_html_in_a_question_as_text(desktop, site: str) -> None:
    page = desktop
    page.goto(f"{site}/embed")
    widget_ask(page, PAYLOAD)
    assert widget(page, ".msg.user").last.text_content() == PAYLOAD
    assert widget(page, "img").count() == 0
    assert page.evaluate("typeof window.__pwned") == "undefined"


def test_widget_marks_urgent_care_with_a_red_banner(desktop, site: str) -> None:
    page = desktop
    page.goto(f"{site}/embed")
    widget_ask(page, URGENT)
    banner = widget(page, ".urgent")
    assert banner.is_visible() and "Urgent" in banner.inner_text()
    assert is_red(banner.evaluate("e => getComputedStyle(e).backgroundColor"))


def test_widget_works_on_a_phone(phone, site: str, artifacts_dir: Path) -> None:
    page = phone
    page.goto(f"{site}/demo")
    widget(page, ".launcher").click()
    widget_ask(page, QUESTION)
    panel = widget(page, ".panel")
    assert panel.bounding_box()["width"] == pytest.approx(PHONE["width"], abs=1)
    assert widget(page, ".msg.bot .sources li").count() >= 1
    assert in_viewport(page, widget(page, ".disclaimer"))
    assert in_viewport(page, widget(page, "textarea"))
    page.screenshot(path=str(artifacts_dir / "widget-phone.png"))
