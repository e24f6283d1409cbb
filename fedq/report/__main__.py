"""``python -m fedq.report DIR [DIR ...] [--out FOLDER]``: one table and one plot for many runs.

DIR is a run folder or any folder with runs below it (e.g. the folder of a
``python -m fedq.simulate -m ...`` sweep). Prints the Markdown table and writes
report.md, report.json and report.png to --out (default: the first DIR).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from fedq.errors import FedqError
from fedq.logs import configure as configure_logging
from fedq.report.compare import write_report

log = logging.getLogger("fedq.report")  # not __name__: run as __main__


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fedq.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run folders, or folders with runs below them")
    parser.add_argument("--out", type=Path, default=None, help="where report.md/.json/.png go (default: the first DIR)")
    parser.add_argument("--target-bleu", type=float, default=None,
                        help="add the first round reaching this valid BLEU, with the simulated hours and MB up to it")
    args = parser.parse_args(argv)
    configure_logging()
    try:
        result = write_report(args.runs, args.out or args.runs[0], args.target_bleu)
    except FedqError as err:
        log.error(str(err))
        sys.exit(2)
    print(result["markdown"], end="")  # the command's output, not a message
    print(f"\nreport: {result['out_dir']}/report.md, report.json, report.png")


if __name__ == "__main__":
    main()
