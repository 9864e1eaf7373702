"""The Gradio chat: streamed answers with their sources, examples, feedback, restore and the disclaimer.

The conversation also lives in the browser: after each answer the chat hands its finished
turns (as JSON, in a hidden element) to ``/static/chat.js``, which keeps them in the tab's
``sessionStorage`` and gives them back after a reload or a server restart. Nothing of a
conversation is stored on the server.
"""

from __future__ import annotations

import html
import logging
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import gradio as gr
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ivig_qa.feedback import FeedbackIn, FeedbackStore, FeedbackUnavailableError
from ivig_qa.policy.wording import DISCLAIMER
from ivig_qa.settings import Settings
from ivig_qa.types import Answer, Message, Status
from ivig_qa.web.catalog import catalog
from ivig_qa.web.chat_render import Streamed, landing_markdown, md_answer, md_text, render_reply

if TYPE_CHECKING:
    from fastapi import FastAPI

    from ivig_qa.assistant import Assistant

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).with_name("static")
CSS_FILE = STATIC_DIR / "chat.css"
STARTING_TEXT = "The assistant is still starting (opening its sources). Please try again in a few seconds."
# Gradio draws "Like"/"Dislike" as thumbs; the other options are the reasons under its flag button.
REASONS = ("Did not answer my question", "Hard to understand", "Seems wrong or unsafe", "Something else")
THANKS = "Thank you — your rating was saved."
NOT_SAVED = "Sorry — your rating could not be saved just now. Please try again in a minute."
THANKS_DOWN = (
    f"{THANKS} To tell us what was wrong, choose a reason with the “Feedback” (flag) button under the answer."
)
MAX_SAVED_TURNS = 100


class Limiter(Protocol):
    """The app's rate limiter: ``take(client)`` is 0.0 when allowed, else the seconds to wait."""

    def take(self, client: str) -> float: ...


# --- the conversation as the browser keeps it ------------------------------------------------------
class SavedCitation(BaseModel):
    """What the sources list needs of a citation (the quote itself is in the answer text)."""

    model_config = ConfigDict(extra="ignore")
    n: int = Field(ge=0, le=999)
    doc_id: str = Field(max_length=200)
    title: str = Field(max_length=500)
    start: int = Field(ge=0)
    end: int = Field(ge=0)
    page: int | None = Field(None, ge=1)


class Turn(BaseModel):
    """One finished exchange: the question and the answer as it was shown."""

    model_config = ConfigDict(extra="ignore")
    question: str = Field(max_length=8000)
    status: Status
    answer: str = Field(max_length=40_000)
    answer_id: str = Field("", max_length=64, pattern=r"^[A-Za-z0-9_-]*$")
    citations: list[SavedCitation] = Field(default_factory=list, max_length=60)
    feedback: str | None = Field(None, max_length=100)

    @classmethod
    def of(cls, question: str, answer: Answer) -> Turn:
        cited = [SavedCitation.model_validate(c, from_attributes=True) for c in answer.citations]
        return cls(
            question=question,
            status=answer.status,
            answer=answer.answer,
            answer_id=answer.answer_id,
            citations=cited,
        )


class Conversation(BaseModel):
    turns: list[Turn] = Field(default_factory=list, max_length=MAX_SAVED_TURNS)


# --- per-tab state --------------------------------------------------------------------------------
@dataclass
class ChatSession:
    """One browser tab's conversation: what is shown, the finished turns, answer ids by message."""

    shown: list[dict[str, str]] = field(default_factory=list)
    turns: list[Turn] = field(default_factory=list)
    answer_ids: dict[int, str] = field(default_factory=dict)

    def history(self) -> list[Message]:
        """What the assistant sees of the conversation (for follow-up questions)."""
        return [
            m
            for t in self.turns
            if t.status != Status.INVALID_INPUT  # a refused message never becomes context for later turns
            for m in (Message(role="user", content=t.question), Message(role="assistant", content=t.answer))
        ]

    def add_exchange(self, question: str) -> None:
        self.shown += [{"role": "user", "content": md_text(question)}, {"role": "assistant", "content": ""}]

    def set_reply(self, text: str) -> None:
        self.shown[-1] = {"role": "assistant", "content": text}

    def add_turn(self, turn: Turn, rendered: str) -> None:
        self.set_reply(rendered)
        self.answer_ids[len(self.shown) - 1] = turn.answer_id
        self.turns.append(turn)

    def turn_of(self, answer_id: str) -> Turn | None:
        return next((t for t in self.turns if t.answer_id == answer_id), None)

    def saved(self) -> str:
        """The finished turns as JSON, for the browser to keep ("" when there are none)."""
        return Conversation(turns=self.turns[-MAX_SAVED_TURNS:]).model_dump_json() if self.turns else ""


@dataclass
class ChatHandlers:
    """The chat's event handlers, bound to the assistant, sources, settings, limiter and feedback store."""

    get_assistant: Callable[[], Assistant | None]
    get_sources: Callable[[], Mapping[str, Any]]
    settings: Settings
    limiter: Limiter
    feedback: FeedbackStore
    on_answer: Callable[[Answer], None] | None = None  # the server's hook (feedback facts, metrics)

    def metadata_of(self, doc_id: str) -> Mapping[str, Any] | None:
        view = self.get_sources().get(doc_id)
        return getattr(view, "metadata", None)

    def render(self, turn: Turn) -> str:
        return render_reply(turn.status, turn.answer, turn.citations, self.metadata_of)

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
        streamed = Streamed()
        history = session.history()[-self.settings.policy.max_history_turns :]
        for piece in assistant.stream(question, history):
            if isinstance(piece, Answer):
                turn = Turn.of(question[: self.settings.policy.max_question_chars], piece)
                session.add_turn(turn, self.render(turn))
                if self.on_answer is not None:
                    self.on_answer(piece)
                log.info("chat answer %s status=%s", piece.answer_id, piece.status.value)
            else:
                streamed.add(piece)
                session.set_reply(md_answer(streamed.text))
            yield session.shown, session, ""

    def _refusal(self, request: gr.Request | None) -> str | None:
        """The rate limit applies to the chat as to the API (same buckets, keyed by client IP)."""
        client = request.client.host if request is not None and request.client else "unknown"
        wait = self.limiter.take(client)
        if wait > 0:
            seconds = math.ceil(wait)
            return f"You have asked many questions in a short time. Please wait {seconds} s and try again."
        return None

    def restore(self, saved: str, session: ChatSession) -> tuple[Any, ChatSession, str]:
        """Rebuild a conversation the browser kept (after a reload or a server restart).

        Only into an empty session, so a restore arriving late never overwrites new turns;
        what comes back is validated and re-rendered here, never shown as the browser sent it.
        """
        if session.turns or not saved:
            return gr.skip(), session, gr.skip()
        try:
            turns = Conversation.model_validate_json(saved).turns
        except ValidationError:
            log.warning("ignored a saved conversation that does not validate")
            return gr.skip(), session, saved_html(session)
        fresh = ChatSession()
        for turn in turns:
            fresh.add_exchange(turn.question)
            fresh.add_turn(turn, self.render(turn))
        value = gr.Chatbot(value=fresh.shown, feedback_value=[t.feedback for t in turns])
        return value, fresh, saved_html(fresh)

    def rate(self, session: ChatSession, data: gr.LikeData) -> tuple[str, ChatSession]:
        """Thumbs up/down or a reason on an answer, stored with its answer id (question only if allowed)."""
        index = data.index if isinstance(data.index, int) else data.index[0]
        answer_id = session.answer_ids.get(index)
        liked = data.liked
        if answer_id is None or liked is None:
            return gr.skip(), session
        if liked is True or liked == "Like":
            rating, comment, note = "up", None, THANKS
        elif liked is False or liked == "Dislike":
            rating, comment, note = "down", None, THANKS_DOWN
        elif isinstance(liked, str) and liked in REASONS:
            rating, comment, note = "down", liked, f"Thank you — we noted “{liked}”."
        else:  # a thumb taken back: nothing to store
            return gr.skip(), session
        turn = session.turn_of(answer_id)
        value = liked if isinstance(liked, str) else ("Like" if rating == "up" else "Dislike")
        if turn is not None and turn.feedback == value:  # Gradio may send one choice twice: store it once
            return gr.skip(), session
        try:
            self.feedback.add(
                FeedbackIn(
                    answer_id=answer_id,
                    rating=rating,
                    comment=comment,
                    question=turn.question if turn is not None else None,
                )
            )
        except FeedbackUnavailableError:  # the rating is not stored, so the same click can try again
            log.warning("a chat rating could not be stored: the feedback database is unavailable")
            return note_html(NOT_SAVED), session
        if turn is not None:
            turn.feedback = value
        return note_html(note), session

    def landing(self) -> Any:
        """The empty conversation's placeholder, naming the sources once they are loaded."""
        return gr.Chatbot(placeholder=landing_markdown(catalog(self.get_sources())))

    @staticmethod
    def pick_example(data: gr.SelectData) -> str:
        value: Any = data.value
        return value.get("text", "") if isinstance(value, dict) else str(value)

    @staticmethod
    def save(session: ChatSession) -> str:
        return saved_html(session)

    @staticmethod
    def clear() -> tuple[list[dict[str, str]], ChatSession, str, Any, str]:
        """A fresh conversation (the browser's copy is dropped when the saved element empties)."""
        fresh = ChatSession()
        return [], fresh, saved_html(fresh), gr.Row(visible=False), note_html("The conversation was cleared.")


# --- small HTML pieces ------------------------------------------------------------------------------
def saved_html(session: ChatSession) -> str:
    """The hidden element ``chat.js`` reads the finished turns from."""
    return f'<div class="ivig-saved" data-conversation="{html.escape(session.saved(), quote=True)}"></div>'


def note_html(text: str) -> str:
    return f'<p class="ivig-note-text">{html.escape(text)}</p>' if text else ""


def _header_html(settings: Settings) -> str:
    return (
        f'<div class="ivig-header"><h1>{html.escape(settings.server.app_title)}</h1>'
        "<p>Answers come only from a few published sources about IVIG. Every sentence is quoted "
        "word for word, with a link to read it in its source.</p></div>"
    )


def _disclaimer_html() -> str:
    text = html.escape(DISCLAIMER)
    return f'<div class="ivig-disclaimer-text" role="note"><strong>Please note:</strong> {text}</div>'


# --- layout ---------------------------------------------------------------------------------------
def build_chat_app(
    get_assistant: Callable[[], Assistant | None],
    settings: Settings,
    *,
    limiter: Limiter,
    feedback: FeedbackStore,
    on_answer: Callable[[Answer], None] | None = None,
    get_sources: Callable[[], Mapping[str, Any]] = dict,
) -> gr.Blocks:
    """The chat as a Gradio Blocks app on the server's assistant, sources, rate limiter and feedback store.

    ``get_assistant`` returns ``None`` while the server is still opening the index, so the
    chat can be mounted before start-up finishes; ``get_sources`` gives the source views
    (their metadata names each source's kind and publisher).
    """
    handlers = ChatHandlers(
        get_assistant=get_assistant,
        get_sources=get_sources,
        settings=settings,
        limiter=limiter,
        feedback=feedback,
        on_answer=on_answer,
    )
    private: dict[str, Any] = {"api_visibility": "private"}
    with gr.Blocks(title=settings.server.app_title, fill_height=True, analytics_enabled=False) as app:
        session = gr.State(ChatSession())
        with gr.Row(elem_id="ivig-top", equal_height=False):
            gr.HTML(_header_html(settings), elem_id="ivig-header", js_on_load=None)
            new = gr.Button("New conversation", elem_id="ivig-new", size="sm", scale=0, min_width=0)
        with gr.Row(elem_id="ivig-confirm", visible=False) as confirm:
            gr.HTML(
                "<p>Start a new conversation? The questions and answers on this page will be cleared.</p>",
                elem_id="ivig-confirm-text",
                js_on_load=None,
            )
            clear = gr.Button("Clear the conversation", elem_id="ivig-clear", size="sm", variant="stop")
            keep = gr.Button("Keep it", elem_id="ivig-keep", size="sm")
        chatbot = gr.Chatbot(
            elem_id="ivig-chat",
            label="Conversation",
            show_label=False,
            scale=1,
            height=None,
            min_height=240,
            layout="bubble",
            examples=[{"text": q} for q in settings.server.example_questions],
            placeholder=landing_markdown([]),
            feedback_options=("Like", "Dislike", *REASONS),
            buttons=["copy"],
            sanitize_html=True,
            allow_tags=False,
            latex_delimiters=[],
            autoscroll=False,  # chat.js brings the start of each new answer into view instead
        )
        note = gr.HTML("", elem_id="ivig-note", js_on_load=None)
        box = gr.Textbox(
            elem_id="ivig-question",
            label="Your question",
            show_label=False,
            placeholder="Type your question…",
            max_lines=4,
            max_length=settings.policy.max_question_chars,
            submit_btn="Ask",
            autofocus=True,
        )
        gr.HTML(_disclaimer_html(), elem_id="ivig-disclaimer", js_on_load=None)
        saved = gr.HTML("", elem_id="ivig-saved", visible="hidden", js_on_load=None)
        restore = gr.Textbox(elem_id="ivig-restore", visible="hidden", label="Saved conversation")

        # Private: the JSON API under /api (with its key and limits) is the programmatic way in.
        outputs = [chatbot, session, box]
        slots = settings.server.max_concurrent_answers
        box.submit(
            handlers.respond, [box, session], outputs, api_name="chat", concurrency_limit=slots, **private
        ).then(handlers.save, [session], saved, **private)
        chatbot.example_select(handlers.pick_example, None, box, **private).then(
            handlers.respond, [box, session], outputs, concurrency_limit=slots, **private
        ).then(handlers.save, [session], saved, **private)
        chatbot.like(handlers.rate, [session], [note, session], **private).then(
            handlers.save, [session], saved, **private
        )
        restore.change(handlers.restore, [restore, session], [chatbot, session, saved], **private)
        new.click(lambda: gr.Row(visible=True), None, confirm, **private)
        keep.click(lambda: gr.Row(visible=False), None, confirm, **private)
        clear.click(handlers.clear, None, [chatbot, session, saved, confirm, note], **private)
        app.load(handlers.landing, None, chatbot, **private)
    return app


def chat_css() -> str:
    return CSS_FILE.read_text("utf-8")


def mount_chat(app: FastAPI, blocks: gr.Blocks) -> None:
    """Mount the chat at ``/`` of the API server (call it after adding the API routes: ``/`` catches all).

    Gradio 6 takes CSS and theme at mount/launch time, not in the Blocks constructor. The
    chat's script is a file under ``/static`` (no inline script), loaded through ``head``.
    """
    gr.mount_gradio_app(
        app,
        blocks,
        path="/",
        head=f'<style>{chat_css()}</style><script src="/static/chat.js" defer></script>',
        footer_links=[],
        run_history=False,
        show_error=False,
        ssr_mode=False,
        mcp_server=False,
    )


__all__ = ["ChatSession", "Conversation", "Turn", "build_chat_app", "mount_chat"]
