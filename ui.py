"""The ivig-qa Gradio chat, runnable directly: ``python ui.py``.

Opens the index (building it first when needed, with progress in the log), then serves
the chat on ``settings.server.host:settings.server.port`` together with the HTTP API it links to
(``/sources/...`` pages for citations in context, ``/api``). It is the same app as
``ivig-qa serve`` (``ivig_qa.web.app.serve``): the chat and the API share one rate limiter
and one feedback store.
"""

from __future__ import annotations

import typer

import ivig_qa  # noqa: F401  (switches off telemetry before Gradio loads)
from ivig_qa.cli import load_settings
from ivig_qa.web.app import serve
from ivig_qa.web.lifecycle import default_loader
from ivig_qa.web.middleware import configure_logging


def main() -> None:
    """Open the index before listening, so the first visitor gets an answer, not a wait."""
    try:  # a bad setting is a readable message and exit code 2, as in the CLI
        settings = load_settings(chat_ui=True)  # this script is the chat: mounted whatever the config says
    except typer.Exit as stop:
        raise SystemExit(stop.exit_code) from None
    configure_logging(fmt=settings.server.log_format)
    serve(settings, assistant=default_loader(settings)())


if __name__ == "__main__":
    main()
