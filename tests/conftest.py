"""Shared test settings."""

import logging
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from fedq.logs import ROOT, configure

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and do not stall when other jobs share the CPUs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def console():
    """fedq's lines on the console as a command shows them (fedq.logs.configure), for capsys to read; undone after."""
    logger = logging.getLogger(ROOT)
    saved = logger.handlers[:], logger.level, logger.propagate
    configure()
    yield logger
    logger.handlers[:], logger.level, logger.propagate = saved


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    """fedq built as a wheel (what `pip install .` installs)."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(REPO)],
        check=True, capture_output=True, timeout=300,
    )
    (built,) = out.glob("fedq-*.whl")
    return built


@pytest.fixture(scope="session")
def installed_wheel(wheel, tmp_path_factory) -> Path:
    """A site-packages folder holding the wheel's files (not an editable install of the checkout)."""
    site = tmp_path_factory.mktemp("site")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    return site
