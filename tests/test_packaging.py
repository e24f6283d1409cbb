"""fedq installed as a wheel (not editable) finds its configs from any folder."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e  # Flower + Ray, or a subprocess run of an installed fedq

REPO = Path(__file__).resolve().parent.parent


def test_the_wheel_ships_every_config(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {name for name in names if name.startswith("configs/") and name.endswith(".yaml")}
    expected = {str(p.relative_to(REPO)) for p in (REPO / "configs").rglob("*.yaml")}
    assert expected and shipped == expected
    modules = {str(p.relative_to(REPO)) for top in ("fedq", "clients", "server") for p in (REPO / top).rglob("*.py")}
    assert modules and modules <= names  # every module of the checkout, every subpackage included


def test_installed_entry_points_find_their_configs_outside_the_checkout(installed_wheel, tmp_path):
    site = installed_wheel
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    for module in ("fedq.simulate", "fedq.train", "fedq.evaluate"):
        result = subprocess.run(
            [sys.executable, "-c", f"import fedq, runpy, sys; print(fedq.__file__); sys.argv = ['{module}', 'clients=4', 'quant=w4', '--cfg', 'job']; runpy.run_module('{module}', run_name='__main__')"],
            cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stdout.splitlines()[0].startswith(str(site))  # the installed copy, not the checkout
        assert "bits: 4" in result.stdout and "clients: 4" in result.stdout
