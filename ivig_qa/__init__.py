"""ivig-qa: answers patients' questions about IVIG only from curated sources, with citations.

Importing the package switches off every network side effect before any library loads:
no model hub, no telemetry.
"""

import os

for _key, _value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "ANONYMIZED_TELEMETRY": "False",
    "GRADIO_ANALYTICS_ENABLED": "False",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_key, _value)

__version__ = "0.1.0"

from ivig_qa.settings import Settings  # noqa: E402
from ivig_qa.types import Answer, Citation, Status  # noqa: E402

__all__ = [
    "Answer",
    "Assistant",
    "AssistantRunnable",
    "Citation",
    "Settings",
    "Status",
    "__version__",
    "as_runnable",
]


def __getattr__(name: str):
    """Import the assistant lazily: it pulls in torch, which the settings/CLI help don't need."""
    if name == "Assistant":
        from ivig_qa.assistant import Assistant

        return Assistant
    if name == "AssistantRunnable":
        from ivig_qa.chain import AssistantRunnable

        return AssistantRunnable
    raise AttributeError(name)


def as_runnable(settings: Settings | None = None):  # -> ivig_qa.chain.AssistantRunnable
    """Open the assistant (building the index when needed) as a LangChain Runnable."""
    from ivig_qa.assistant import Assistant

    return Assistant.load(settings).as_runnable()
