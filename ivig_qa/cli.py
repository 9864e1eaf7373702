"""The ``ivig-qa`` command line: index, ask, chat, serve, feedback (and the commands other modules add)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markdown import Markdown
from rich.markup import escape
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ivig_qa.settings import Settings
from ivig_qa.types import Answer, Status

app = typer.Typer(
    help="Answers questions about IVIG only from curated sources, with citations.", no_args_is_help=True
)
console = Console()
err = Console(stderr=True)

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="TOML settings file (default: ivig-qa.toml).")
]
EXIT_INVALID = 2


def load_settings(config: Path | None = None, **overrides: object) -> Settings:
    """Settings from env + TOML; a bad config is a readable error and exit code 2."""
    if config is not None and not config.is_file():
        err.print(f"[red]config file not found:[/] {config}")
        raise typer.Exit(EXIT_INVALID)
    try:
        return Settings.load(config, **{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        lines = [f"  {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        err.print("[red]invalid settings:[/]\n" + "\n".join(lines))
        raise typer.Exit(EXIT_INVALID) from None
    except Exception as exc:  # e.g. a TOML syntax error
        err.print(f"[red]cannot read settings:[/] {exc}")
        raise typer.Exit(EXIT_INVALID) from None


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )


def load_assistant(settings: Settings):
    """Open (and if needed build) the index with a progress bar; errors exit cleanly."""
    from ivig_qa.assistant import Assistant
    from ivig_qa.corpus import CorpusError
    from ivig_qa.embeddings import ModelNotFoundError
    from ivig_qa.index import IndexUnavailableError

    with _progress() as bar:
        task = bar.add_task("embedding chunks", total=None)

        def on_progress(done: int, total: int, _doc: str) -> None:
            bar.update(task, completed=done, total=total)

        try:
            return Assistant.load(settings, progress=on_progress)
        except (CorpusError, IndexUnavailableError, ModelNotFoundError) as exc:
            err.print("[red]error:[/]", escape(str(exc)))
            raise typer.Exit(1) from None


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress to stderr.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )


@app.command()
def index(
    rebuild: Annotated[
        bool,
        typer.Option(
            "--rebuild",
            help="Embed every document again into a new version (the old one answers until the switch).",
        ),
    ] = False,
    config: ConfigOpt = None,
) -> None:
    """Build or refresh the index from the corpus folder (only changed documents are embedded)."""
    from ivig_qa.corpus import CorpusError
    from ivig_qa.embeddings import ModelNotFoundError, ensure_onnx
    from ivig_qa.index import IndexStore, IndexUnavailableError

    settings = load_settings(config)
    store = IndexStore(settings)
    with _progress() as bar:
        task = bar.add_task("embedding chunks", total=None)
        try:
            summary = store.build(
                rebuild=rebuild,
                progress=lambda done, total, _d: bar.update(task, completed=done, total=total),
            )
        except (CorpusError, IndexUnavailableError, ModelNotFoundError) as exc:
            err.print("[red]error:[/]", escape(str(exc)))
            raise typer.Exit(1) from None
    if settings.index.query_encoder == "onnx":
        ensure_onnx(settings)  # made now, once per model, so answering processes start fast
    for warning in summary.warnings:
        err.print(f"[yellow]warning:[/] {escape(warning)}")
    for problem in summary.problems:
        err.print(f"[red]not indexed:[/] {escape(problem)}")
    table = Table(title="Index", show_header=False)
    table.add_row("documents", str(summary.documents))
    not_indexed = [p.split(": ", 1)[0] for p in summary.problems]
    table.add_row("not indexed", ", ".join(not_indexed) or "none")
    table.add_row("chunks", str(summary.chunks))
    table.add_row("sentences", str(summary.sentences))
    table.add_row("embedded", ", ".join(summary.embedded_documents) or "none (up to date)")
    table.add_row("reused", str(len(summary.reused_documents)))
    table.add_row("removed", ", ".join(summary.removed_documents) or "none")
    table.add_row("seconds", f"{summary.seconds:.1f}")
    table.add_row("location", settings.index.chroma_url or str(settings.index.index_dir))
    console.print(table)


def render_answer(answer: Answer) -> None:
    """A readable answer: status, text, each source with its quote, then the disclaimer."""
    style = {Status.URGENT_CARE: "bold red", Status.INVALID_INPUT: "yellow"}.get(answer.status, "green")
    console.print(Panel(Markdown(answer.answer), title=f"[{style}]{answer.status.value}", border_style=style))
    for c in answer.citations:
        console.print(f"[bold][{c.n}][/] {c.title} [dim]({c.chunk_id}, chars {c.start}–{c.end})[/]")
        console.print(f"    “{' '.join(c.quote.split())}”", style="dim", markup=False, highlight=False)
    console.print(Panel(answer.disclaimer, title="Disclaimer", border_style="dim"))


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="The question, in plain words.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the Answer JSON contract.")] = False,
    config: ConfigOpt = None,
) -> None:
    """Answer one question from the sources."""
    assistant = load_assistant(load_settings(config))
    answer = assistant.ask(question)
    if as_json:
        sys.stdout.write(json.dumps(answer.to_dict(), ensure_ascii=False, indent=2) + "\n")
    else:
        render_answer(answer)
    if answer.status == Status.INVALID_INPUT:
        raise typer.Exit(EXIT_INVALID)


@app.command()
def chat(config: ConfigOpt = None) -> None:
    """Chat in the terminal (follow-up questions use the conversation so far)."""
    assistant = load_assistant(load_settings(config))
    history: list[dict[str, str]] = []
    console.print("[bold]IVIG questions[/] — answers come only from the bundled sources. Ctrl-D to quit.")
    while True:
        try:
            question = console.input("[bold cyan]you>[/] ")
        except (EOFError, KeyboardInterrupt):
            console.print()
            return
        answer = assistant.ask(question, history=history)
        render_answer(answer)
        history += [{"role": "user", "content": question}, {"role": "assistant", "content": answer.answer}]


SetOpt = Annotated[Path, typer.Option("--set", help="Question set (JSONL, see docs/design.md).")]


@app.command("eval")
def eval_command(
    set_file: SetOpt,
    engine: Annotated[
        str | None, typer.Option("--engine", help="Answer engine (default: from settings).")
    ] = None,
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            help="NAME.md (writes NAME.md/.json/.png), or a folder for report.md/.json/categories.png.",
        ),
    ] = Path("eval/reports/latest.md"),
    fail_under: Annotated[
        list[str] | None,
        typer.Option(
            "--fail-under",
            help="METRIC=VALUE (repeatable; names as in report.json). Exit 1 when a score is below "
            "VALUE, or a count/latency metric is above it.",
        ),
    ] = None,
    baseline: Annotated[
        bool, typer.Option("--baseline", help="Also score the LangChain-tutorial RAG retrieval.")
    ] = False,
    checker: Annotated[
        str, typer.Option("--checker", help="Support checker for citation recall/precision.")
    ] = "verbatim",
    config: ConfigOpt = None,
) -> None:
    """Score a question set through the real assistant: retrieval, citations, statuses, integrity."""
    from ivig_qa import evaluation as ev
    from ivig_qa.corpus import CorpusError

    try:
        thresholds = [ev.parse_threshold(spec) for spec in fail_under or []]
        support = ev.make_checker(checker)
    except ValueError as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_INVALID) from None
    settings = load_settings(config, engine=engine)
    try:
        documents = ev.load_documents(settings.index.corpus_dir)
        items = ev.load_set(set_file, documents)
    except CorpusError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None
    except ev.EvalSetError as exc:
        err.print(f"[red]invalid question set[/] ({len(exc.errors)} problem(s)):", highlight=False)
        for line in exc.errors:
            err.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_INVALID) from None
    assistant = load_assistant(settings)
    with _progress() as bar:
        base = None
        if baseline:
            building = bar.add_task("baseline: embedding 1000-char chunks", total=None)
            base = ev.BaselineRetriever.build(
                documents, settings.index.embedding_model, settings.index.embedding_batch_size
            )
            bar.update(building, total=1, completed=1)
        task = bar.add_task(f"evaluating {set_file.name}", total=len(items))
        try:
            report = ev.run_evaluation(
                assistant,
                items,
                documents,
                set_file=set_file,
                checker=support,
                baseline=base,
                progress=lambda done, total, _id: bar.update(task, completed=done, total=total),
            )
        finally:
            if base:
                base.close()
    paths = ev.write_report(report, out)
    for table in ev.summary_tables(report):
        console.print(table)
    console.print("report: " + ", ".join(str(p) for p in paths), highlight=False)
    misses = ev.missed_thresholds(report.metrics, thresholds)
    for why in misses:
        err.print(f"[red]threshold missed:[/] {why}", highlight=False, soft_wrap=True)
    if misses:
        raise typer.Exit(1)


@app.command("doc2query")
def doc2query_command(
    out: Annotated[
        Path | None, typer.Option("--out", help="Cache file (default: index.doc2query_file, else packaged).")
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Generate the doc2query questions missing from the cache for the corpus (needs the `llm` extra)."""
    from ivig_qa import doc2query

    code = doc2query.run(load_settings(config), out)
    if code:
        raise typer.Exit(code)


@app.command()
def models(
    join: Annotated[
        bool, typer.Option("--join", help="Join the model's installed parts into the cache now (and verify).")
    ] = False,
    full: Annotated[
        bool, typer.Option("--verify", help="Hash the joined file again instead of trusting its stamp.")
    ] = False,
    name: Annotated[
        str | None, typer.Option("--model", help="A packaged model by name (default: llm.model).")
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """List the packaged LLMs for `engine = "llm"` (installed, joined, verified) and show one in detail."""
    import importlib.util

    from ivig_qa.engines.llm import models as packaged

    settings = load_settings(config)
    try:
        spec = packaged.get(name or settings.llm.model)
    except packaged.ModelUnavailableError as exc:
        err.print("[red]error:[/]", escape(str(exc)), highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    if join:
        with _progress() as bar:
            task = bar.add_task(f"joining {spec.name} (MB)", total=None)
            try:
                packaged.assemble(
                    settings.llm.model_dir,
                    spec,
                    full_check=full,
                    progress=lambda done, total: bar.update(task, completed=done >> 20, total=total >> 20),
                )
            except packaged.ModelUnavailableError as exc:
                err.print("[red]error:[/]", escape(str(exc)), highlight=False, soft_wrap=True)
                raise typer.Exit(1) from None
    listing = Table(title="Packaged LLMs (llm.model)")
    for column in ("model", "parts installed", "joined", "verified", "license"):
        listing.add_column(column, overflow="fold")
    for entry in packaged.registry().values():
        st = packaged.status(settings.llm.model_dir, entry, full_check=full and entry is spec)
        mark = " (selected)" if entry.name == spec.name else ""
        mark += " (default)" if entry.name == packaged.default_name() else ""
        listing.add_row(
            entry.name + mark,
            f"{st.parts_installed}/{entry.count}",
            "yes" if st.exists else "no",
            "[green]yes[/]" if st.verified else "no",
            entry.license,
        )
    console.print(listing)
    state = packaged.status(settings.llm.model_dir, spec, full_check=full)
    table = Table(title=f"LLM (engine = llm): {spec.name}", show_header=False)
    table.add_column("what", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    table.add_row("engine in use", settings.answer.engine)
    table.add_row("backend", settings.llm.backend)
    libs = {m: importlib.util.find_spec(m) is not None for m in ("llama_cpp", "langchain_openai")}
    table.add_row("libraries", ", ".join(f"{m}: {'yes' if ok else 'no'}" for m, ok in libs.items()))
    if settings.llm.model_path is not None:
        table.add_row("model file (llm.model_path)", str(settings.llm.model_path))
    table.add_row("packaged model", f"{spec.name} ({spec.count} parts)")
    table.add_row("source", f"{spec.source}; publisher: {spec.publisher}")
    table.add_row("chat template", spec.chat_template)
    versions = sorted({p.version for p in state.parts if p.version})
    table.add_row(
        "parts installed",
        f"{state.parts_installed}/{spec.count}" + (f" (version {', '.join(versions)})" if versions else ""),
    )
    missing = [p.distribution for p in state.parts if not p.installed]
    if missing:
        table.add_row("parts missing", ", ".join(missing) + f" — {escape(packaged.INSTALL_HINT)}")
    table.add_row("joined file", f"{state.path}" + ("" if state.exists else " (not joined yet)"))
    if state.size is not None:
        table.add_row("size", f"{state.size:,} bytes")
    table.add_row("expected SHA-256", spec.sha256)
    if full and state.sha256:
        table.add_row("SHA-256 now", state.sha256)
    how = "hashed now" if full else "size+mtime stamp of the last full check"
    verdict = "[green]verified[/]" if state.verified else "[red]not verified[/]"
    table.add_row("verified", f"{verdict} ({how})" if state.exists else "[yellow]—[/]")
    console.print(table)
    if state.exists and not state.verified:
        raise typer.Exit(1)


HostOpt = Annotated[
    str | None, typer.Option("--host", help="Address to listen on (default: settings.server.host).")
]
PortOpt = Annotated[
    int | None, typer.Option("--port", help="Port to listen on (default: settings.server.port).")
]


@app.command()
def serve(host: HostOpt = None, port: PortOpt = None, config: ConfigOpt = None) -> None:
    """Serve the HTTP API (/api), the chat (/), the widget (/widget.js) and the embed page (/embed)."""
    from ivig_qa.web.app import serve as run_server
    from ivig_qa.web.middleware import configure_logging

    settings = load_settings(config, host=host, port=port)
    configure_logging(fmt=settings.server.log_format)
    run_server(settings)


@app.command()
def feedback(
    since: Annotated[
        str | None, typer.Option("--since", help="Only ratings since: 7d, 12h, 30m, 2w or a date (UTC).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    export: Annotated[
        Path | None, typer.Option("--export", help="Also write every rating of the period to FILE.csv.")
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Review the ratings: totals, and each thumbs-down with its status, reasons, sources and comment.

    Questions are shown only when ``log_questions`` is on (and only those stored while it was).
    """
    from ivig_qa.feedback import FeedbackUnavailableError, feedback_location, open_store
    from ivig_qa.feedback.report import FeedbackReport, parse_since

    settings = load_settings(config)
    try:
        start = parse_since(since) if since else None
    except ValueError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(EXIT_INVALID) from None
    where = feedback_location(settings)
    if isinstance(where, Path) and not where.is_file():
        err.print(f"[yellow]no feedback yet:[/] {where} does not exist")
        raise typer.Exit(1)
    try:
        store = open_store(settings)
        try:
            report = FeedbackReport(
                store.ratings(since=start), start, settings.server.log_questions, store.location
            )
        finally:
            store.close()
    except FeedbackUnavailableError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(1) from None
    if export is not None:
        count = report.write_csv(export)
        err.print(f"wrote {count} rating(s) to {export}", highlight=False)
    if as_json:
        sys.stdout.write(json.dumps(report.to_json(), ensure_ascii=False, indent=2) + "\n")
        return
    for table in report.tables():
        console.print(table)


@app.command()
def bench(
    out: Annotated[Path, typer.Option("--out", help="Folder for bench.json and bench.md.")] = Path(
        "bench/results"
    ),
    set_file: Annotated[
        Path, typer.Option("--set", help="Questions for the latency and load tests (JSONL).")
    ] = Path("eval/questions.jsonl"),
    rounds: Annotated[int, typer.Option("--rounds", min=1, help="Passes over the questions.")] = 2,
    requests: Annotated[
        int, typer.Option("--requests", min=1, help="HTTP requests per concurrency level.")
    ] = 400,
    cold_runs: Annotated[int, typer.Option("--cold-runs", min=1, help="Fresh processes timed.")] = 3,
    scaled_chunks: Annotated[
        int, typer.Option("--scaled-chunks", min=0, help="Chunks in the generated corpus (0: skip).")
    ] = 10_000,
    config: ConfigOpt = None,
) -> None:
    """Measure answer latency, HTTP throughput, cold start, index build speed and memory."""
    from ivig_qa import bench as b

    settings = load_settings(config)
    if not set_file.is_file():
        err.print(f"[red]error:[/] question set not found: {set_file}")
        raise typer.Exit(EXIT_INVALID)
    options = b.BenchConfig(
        questions_file=set_file,
        rounds=rounds,
        requests=requests,
        cold_runs=cold_runs,
        scaled_chunks=scaled_chunks,
    )
    with err.status("benchmarking") as status:

        def step(message: str) -> None:
            status.update(message)
            err.print(f"• {message}", highlight=False)

        report = b.run_bench(settings, options, step=step)
    for t in b.tables(report):
        table = Table(title=t.title)
        for column in t.header:
            table.add_column(column)
        for row in t.rows:
            table.add_row(*(cell.replace("**", "") for cell in row))
        console.print(table)
    paths = b.write_report(report, out)
    console.print("results: " + ", ".join(str(p) for p in paths), highlight=False)


if __name__ == "__main__":
    app()
