"""``ivig-qa bench``: how fast the assistant is, measured the way it runs, against targets.

Six measurements, each on a private index built in a temporary folder so the operator's
index is never touched:

* **answer latency** per stage (``Answer.timings_ms``) over the evaluation questions, warm;
* **HTTP throughput** at several concurrencies against a real ``ivig-qa serve`` process on
  a free loopback port (a fixed number of requests, rate limit off through Settings);
* **cold start**: a fresh Python process that opens the index and answers one question;
* **index build throughput** on the bundled corpus and on a generated corpus of at least
  10,000 chunks, next to the bare sentence-transformers encode of the same texts (the
  physical limit), so the pipeline's own overhead is visible;
* **peak memory** (RSS high-water mark) of the server process;
* **the LLM engine** (when its extra is installed), warm over a few answerable questions: the
  first visible text (the lead), the summary's first token and the full verified answer.

``corpora`` makes the inputs, ``measure`` takes the measurements (``llm`` the LLM engine's),
``targets`` checks them against the goals, ``runner`` runs them all into one report and
``report`` writes it out.
The process helpers (free ports, a ``chroma run`` server, an ``ivig-qa serve`` process)
are in :mod:`ivig_qa.testing`, shared with the tests that need real servers.
"""

from ivig_qa.bench.report import tables, write_report
from ivig_qa.bench.runner import BenchConfig, run_bench

__all__ = ["BenchConfig", "run_bench", "tables", "write_report"]
