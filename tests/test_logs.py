"""fedq's messages go through named loggers under ``fedq``: lines to stdout, warnings prefixed, errors to stderr."""

from __future__ import annotations

import logging
import re
import tokenize
from pathlib import Path

from fedq.logs import ConsoleHandler, configure

REPO = Path(__file__).resolve().parent.parent
# The only prints of the library: a command's own output (a report's table) and an answer to a parent process.
PRINTS = {"fedq/report/__main__.py": 2, "fedq/deploy/memory.py": 1}


def test_lines_go_to_the_current_stdout_warnings_prefixed_and_errors_to_stderr(console, capsys):
    configure()  # once per process, however often
    assert sum(isinstance(h, ConsoleHandler) for h in console.handlers) == 1
    logging.getLogger("fedq.fl.rounds").info("round 1/3 | 4 clients")
    logging.getLogger("fedq.fl.settings").warning("updates wait past fl.max_staleness")
    logging.getLogger("fedq.cli").error("quant.bits=5 is not supported")
    logging.getLogger("fedq.fl.rounds").debug("not shown at INFO")
    out, err = capsys.readouterr()  # capsys swapped sys.stdout after configure: the handler follows it
    assert out == "round 1/3 | 4 clients\nwarning: updates wait past fl.max_staleness\n"
    assert err == "error: quant.bits=5 is not supported\n"


def test_the_library_logs_instead_of_printing():
    found: dict[str, int] = {}
    for path in [p for top in ("fedq", "server", "clients") for p in (REPO / top).rglob("*.py")]:
        with path.open("rb") as handle:
            tokens = list(tokenize.tokenize(handle.readline))
        calls = sum(1 for a, b in zip(tokens, tokens[1:]) if a.type == tokenize.NAME and a.string == "print" and b.string == "(")
        if calls:
            found[str(path.relative_to(REPO))] = calls
    assert found == PRINTS


def test_every_logger_is_under_fedqs_even_in_a_module_run_as_main():
    """``python -m fedq.train`` runs fedq/train.py as ``__main__``: a logger named by ``__name__`` there would not be
    under ``fedq``, and its lines would go nowhere the console shows."""
    for path in [p for top in ("fedq", "server", "clients") for p in (REPO / top).rglob("*.py")]:
        text = path.read_text()
        for name in re.findall(r"^log = logging\.getLogger\(([^)]*)\)", text, re.M):  # each module's own logger
            where = path.relative_to(REPO)
            if name == "__name__":
                assert path.parts[-2:][0] != "server" and "__main__" not in text, f"{where}: name its logger fedq.*"
            elif name != "ROOT":  # fedq.logs itself
                assert re.fullmatch(r'"fedq(\.\w+)*"', name), f"{where}: logger {name} is not under fedq"
