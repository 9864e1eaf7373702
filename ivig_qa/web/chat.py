"""The Gradio chat: streamed answers with their sources, examples, feedback and the disclaimer."""

from __future__ import annotations

import html
import logging
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

import gradio as gr

from ivig_qa.feedback import FeedbackIn, FeedbackStore
from ivig_qa.policy.wording import DISCLAIMER
from ivig_qa.settings import Settings
from ivig_qa.types import Answer, Citation, Message, Status

if TYPE_CHECKING:
    from fastapi import FastAPI

    from ivig_qa.assistant import Assistant

log = logging.getLogger(__name__)

CSS_FILE = Path(__file__).with_name("static") / "chat.css"
STARTING_TEXT = "The assistant is still starting (opening its sources). Please try again in a few seconds."
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~])")


class Limiter(Protocol):
    """The app's rate limiter: ``take(client)`` is 0.0 when allowed, else the seconds to wait."""

    def take(self, client: str) -> float: ...


# --- escaping ---------------------------------------------------------------------------------
# Everything shown that comes from a person or a source passes through ``md_text`` or
# ``md_answer`` first, so HTML typed into a question is displayed, never run.
def md_text(text: str) -> str:
    """Literal text inside Markdown: HTML escaped, Markdown punctuation backslash-escaped."""
    return html.escape(_MD_SPECIAL.sub(r"\\\1", text), quote=False)


def md_answer(text: str) -> str:
    """The answer's own Markdown (bold titles, bullets, ``[n]``) with any HTML in it escaped."""
    return html.escape(text, quote=False).replace("`", "&#96;")


def source_url(citation: Citation) -> str:
    """The page that shows the quoted span highlighted in its source."""
    return f"/sources/{quote(citation.doc_id, safe='')}?start={citation.start}&end={citation.end}#quote"


def render_answer(answer: Answer) -> str:
    """An answer as chat Markdown: urgent banner, text, then each source with its quote and link."""
    parts: list[str] = []
    if answer.status == Status.URGENT_CARE:
        parts.append(
            # The blank line ends the HTML block, so the answer below is still read as Markdown.
            '<div class="ivig-urgent" role="alert"><strong>Urgent — get medical help now.</strong></div>\n\n'
        )
    parts.append(md_answer(answer.answer))
    if answer.citations:
        parts.append("\n\n**Sources**\n")
        for c in answer.citations:
            quote_text = " ".join(c.quote.split())
            title, quoted = md_text(c.title), md_text(quote_text)
            page = f", page {c.page}" if c.page else ""
            parts.append(f"\n{c.n}. **{title}**{page} — “{quoted}” [Read in context]({source_url(c)})")
    return "".join(parts)


# --- per-tab state --------------------------------------------------------------------------------
@dataclass
class ChatSession:
    """One browser tab's conversation: what is shown, what the assistant sees, answer ids."""

    shown: list[dict[str, str]] = field(default_factory=list)
    history: list[Message] = field(default_factory=list)
    answer_ids: dict[int, str] = field(default_factory=dict)
    questions: dict[str, str] = field(default_factory=dict)

    def add_exchange(self, question: str) -> None:
        self.shown += [{"role": "user", "content": md_text(question)}, {"role": "assistant", "content": ""}]

    def set_reply(self, text: str) -> None:
        self.shown[-1] = {"role": "assistant", "content": text}

    def finish(self, question: str, answer: Answer) -> None:
        self.set_reply(render_answer(answer))
        self.answer_ids[len(self.shown) - 1] = answer.answer_id
        if answer.status == Status.INVALID_INPUT:
            return  # a refused message (too long, unreadable) never becomes context for later turns
        self.questions[answer.answer_id] = question
        self.history += [
            Message(role="user", content=question),
            Message(role="assistant", content=answer.answer),
        ]


@dataclass
class ChatHandlers:
    """The chat's event handlers, bound to the assistant, settings, limiter and feedback store."""

    get_assistant: Callable[[], Assistant | None]
    settings: Settings
    limiter: Limiter
    feedback: FeedbackStore
    on_answer: Callable[[Answer], None] | None = None  # the server's hook (feedback facts, metrics)

    def respond(
        self, question: str, session: ChatSession, request: gr.Request
    ) -> Iterator[tuple[list[dict[str, str]], ChatSession, str]]:
        """Stream one answer into the chat; the final message adds its sources."""
        question = (question or "").strip()
        if not question:
            yield session.shown, session, ""
            return
        session.add_exchange(question[: self.settings.policy.max_question_chars])  # shown; checked below
        refusal = self._refusal(request)
        if refusal:
            session.set_reply(refusal)
            yield session.shown, session, question
            return
        assistant = self.get_assistant()
        if assistant is None:
            session.set_reply(STARTING_TEXT)
            yield session.shown, session, question
            return
        if self.settings.server.log_questions:
            log.info("chat question: %r", question)
        yield session.shown, session, ""
        text = ""
        history = session.history[-self.settings.policy.max_history_turns :]
        for piece in assistant.stream(question, history):
            if isinstance(piece, Answer):
                session.finish(question, piece)
                if self.on_answer is not None:
                    self.on_answer(piece)
                log.info("chat answer %s status=%s", piece.answer_id, piece.status.value)
            else:
                text += piece
                session.set_reply(md_answer(text))
            yield session.shown, session, ""

    def _refusal(self, request: gr.Request | None) -> str | None:
        """The rate limit applies to the chat as to the API (same buckets, keyed by client IP)."""
        client = request.client.host if request is not None and request.client else "unknown"
        wait = self.limiter.take(client)
        if wait > 0:
            seconds = math.ceil(wait)
            return f"You have asked many questions in a short time. Please wait {seconds} s and try again."
        return None

    def rate(self, session: ChatSession, data: gr.LikeData) -> None:
        """Thumbs up/down on an answer, stored with its answer id (question only if allowed)."""
        index = data.index if isinstance(data.index, int) else data.index[0]
        answer_id = session.answer_ids.get(index)
        if answer_id is None or data.liked is None:
            return
        rating = "up" if data.liked is True else "down"
        comment = data.liked if isinstance(data.liked, str) else None
        self.feedback.add(
            FeedbackIn(
                answer_id=answer_id, rating=rating, comment=comment, question=session.questions.get(answer_id)
            )
        )

    @staticmethod
    def pick_example(data: gr.SelectData) -> str:
        value: Any = data.value
        return value.get("text", "") if isinstance(value, dict) else str(value)


# --- layout ---------------------------------------------------------------------------------------
def _header_html(settings: Settings) -> str:
    return (
        f'<div class="ivig-header"><h1>{html.escape(settings.server.app_title)}</h1>'
        "<p>Answers come only from a few published sources about IVIG. Every sentence is quoted "
        "word for word, with a link to read it in its source.</p></div>"
    )


def _disclaimer_html() -> str:
    text = html.escape(DISCLAIMER)
    return f'<div class="ivig-disclaimer-text" role="note"><strong>Please note:</strong> {text}</div>'


def build_chat_app(
    get_assistant: Callable[[], Assistant | None],
    settings: Settings,
    *,
    limiter: Limiter,
    feedback: FeedbackStore,
    on_answer: Callable[[Answer], None] | None = None,
) -> gr.Blocks:
    """The chat as a Gradio Blocks app, using the server's assistant, rate limiter and feedback store.

    ``get_assistant`` returns ``None`` while the server is still opening the index, so the
    chat can be mounted before start-up finishes.
    """
    handlers = ChatHandlers(
        get_assistant=get_assistant,
        settings=settings,
        limiter=limiter,
        feedback=feedback,
        on_answer=on_answer,
    )
    with gr.Blocks(title=settings.server.app_title, fill_height=True, analytics_enabled=False) as app:
        session = gr.State(ChatSession())
        gr.HTML(_header_html(settings), elem_id="ivig-header", js_on_load=None)
        chatbot = gr.Chatbot(
            elem_id="ivig-chat",
            label="Conversation",
            show_label=False,
            scale=1,
            height=None,
            min_height=240,
            layout="bubble",
            examples=[{"text": q} for q in settings.server.example_questions],
            placeholder="Ask a question about IVIG, or pick an example.",
            feedback_options=("Like", "Dislike"),
            buttons=["copy"],
            sanitize_html=True,
            allow_tags=False,
            latex_delimiters=[],
            autoscroll=True,
        )
        box = gr.Textbox(
            elem_id="ivig-question",
            show_label=False,
            placeholder="Type your question…",
            max_lines=4,
            max_length=settings.policy.max_question_chars,
            submit_btn="Ask",
            autofocus=True,
        )
        gr.HTML(_disclaimer_html(), elem_id="ivig-disclaimer", js_on_load=None)

        # Private: the JSON API under /api (with its key and limits) is the programmatic way in.
        outputs = [chatbot, session, box]
        slots = settings.server.max_concurrent_answers
        box.submit(
            handlers.respond,
            [box, session],
            outputs,
            api_name="chat",
            api_visibility="private",
            concurrency_limit=slots,
        )
        chatbot.example_select(handlers.pick_example, None, box, api_visibility="private").then(
            handlers.respond, [box, session], outputs, api_visibility="private", concurrency_limit=slots
        )
        chatbot.like(handlers.rate, [session], None, api_visibility="private")
        chatbot.clear(ChatSession, None, session, api_visibility="private")  # a fresh conversation
    return app


def chat_css() -> str:
    return CSS_FILE.read_text("utf-8")


def mount_chat(app: FastAPI, blocks: gr.Blocks) -> None:
    """Mount the chat at ``/`` of the API server (call it after adding the API routes: ``/`` catches all).

    Gradio 6 takes CSS and theme at mount/launch time, not in the Blocks constructor.
    """
    gr.mount_gradio_app(
        app,
        blocks,
        path="/",
        head=f"<style>{chat_css()}</style>",  # as is: Gradio would scope ``css`` inside the app
        footer_links=[],
        run_history=False,
        show_error=False,
        ssr_mode=False,
        mcp_server=False,
    )


__all__ = ["ChatSession", "build_chat_app", "md_answer", "md_text", "mount_chat", "render_answer"]
