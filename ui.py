"""The ivig-qa Gradio chat, runnable directly: ``python ui.py``.

Opens the index (building it first when needed, with progress in the log), then serves
the chat on ``settings.host:settings.port`` together with the HTTP API it links to
(``/sources/...`` pages for citations in context, ``/api``). The chat itself lives in
``ivig_qa/chat_ui.py``; ``ivig-qa serve`` runs the same server.
"""

from __future__ import annotations

import ivig_qa  # noqa: F401  (switches off telemetry before Gradio loads)
from ivig_qa.settings import Settings
from ivig_qa.web.app import serve
from ivig_qa.web.chat import build_chat_app
from ivig_qa.web.lifecycle import default_loader
from ivig_qa.web.limits import TokenBucketLimiter
from ivig_qa.web.middleware import configure_logging


def main() -> None:
    """Open the index before listening, so the first visitor gets an answer, not a wait."""
    configure_logging()
    settings = Settings()
    assistant = default_loader(settings)()
    chat = build_chat_app(assistant, settings, limiter=TokenBucketLimiter(settings.rate_limit_per_minute))
    serve(settings, assistant=assistant, chat=chat)


if __name__ == "__main__":
    main()
