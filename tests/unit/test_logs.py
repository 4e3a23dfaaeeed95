"""Log formats: one JSON object per line with time, level, event, logger and context; or text."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
from collections.abc import Iterator

import pytest

from fedtrace.logs import configure_logging, context


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_is_one_object_per_line_with_the_standard_fields() -> None:
    stream = io.StringIO()
    configure_logging("json", logging.INFO, stream)
    log = logging.getLogger("node.server")
    before = dt.datetime.now(dt.UTC)
    log.info("fedtrace node %s serving on %s", "EE", "127.0.0.1:7001")
    log.warning("second line\nwith a newline")

    first, second = lines(stream)
    assert first["event"] == "fedtrace node EE serving on 127.0.0.1:7001"
    assert first["level"] == "info"
    assert first["logger"] == "node.server"
    assert isinstance(first["time"], str) and first["time"].endswith("Z")
    moment = dt.datetime.fromisoformat(first["time"])
    assert moment.utcoffset() == dt.timedelta(0)
    assert abs((moment - before).total_seconds()) < 5
    assert second["level"] == "warning" and second["event"] == "second line\nwith a newline"


def test_context_fields_join_the_line_without_overwriting_standard_ones() -> None:
    stream = io.StringIO()
    configure_logging("json", "INFO", stream)
    logging.getLogger("node.gate").info(
        "query answered",
        extra=context(
            kind="match", partner="FR", seconds=0.25, level="spoofed", when=dt.date(2026, 1, 2)
        ),
    )
    (line,) = lines(stream)
    assert line["kind"] == "match" and line["partner"] == "FR" and line["seconds"] == 0.25
    assert line["level"] == "info" and line["context_level"] == "spoofed"
    assert line["when"] == "2026-01-02"  # not JSON by nature: written as text


def test_exceptions_are_one_field_of_the_same_line() -> None:
    stream = io.StringIO()
    configure_logging("json", logging.INFO, stream)
    try:
        raise RuntimeError("epoch build failed")
    except RuntimeError:
        logging.getLogger("node.epoch").exception("dataset wallets: could not start a new epoch")
    (line,) = lines(stream)
    assert line["level"] == "error"
    assert "RuntimeError: epoch build failed" in str(line["exception"])


def test_level_filters_records() -> None:
    stream = io.StringIO()
    configure_logging("json", logging.WARNING, stream)
    logging.getLogger("x").info("hidden")
    logging.getLogger("x").warning("shown")
    assert [line["event"] for line in lines(stream)] == ["shown"]


def test_text_keeps_the_human_format() -> None:
    stream = io.StringIO()
    configure_logging("text", logging.INFO, stream)
    logging.getLogger("node.server").info("stopped")
    text = stream.getvalue()
    assert text.rstrip().endswith("INFO node.server: stopped")
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


def test_no_format_means_text_on_a_terminal_and_json_otherwise() -> None:
    terminal, pipe = Terminal(), io.StringIO()
    configure_logging(None, logging.INFO, terminal)
    logging.getLogger("t").info("for a person")
    configure_logging(None, logging.INFO, pipe)
    logging.getLogger("t").info("for a collector")
    assert "INFO t: for a person" in terminal.getvalue()
    assert lines(pipe)[0]["event"] == "for a collector"
    assert "for a collector" not in terminal.getvalue()  # the second call replaced the first


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="log format"):
        configure_logging("xml", logging.INFO, io.StringIO())  # type: ignore[arg-type]
