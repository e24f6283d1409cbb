"""The benchmarks run: every study's rows are valid runs, a study runs its rows into one layout, and every benchmark
script's --quick mode completes (its numbers are not the real figures; benchmarks/README.md has those)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedq.config import compose_config, validate_config
from fedq.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
from study import STUDIES, study_rows  # noqa: E402  (benchmarks/ is scripts, not a package)

ROWS = [(study.name, row) for study in sorted(STUDIES.iterdir()) if (study / "_common.yaml").is_file()
        for row in study_rows(study.name)]
SCRIPTS = sorted(p.name for p in (REPO / "benchmarks").glob("bench_*.py"))
# -m bench: the scripts that start Flower + Ray, or a process per variant (2-3 minutes together)
SLOW_SCRIPTS = {"bench_adapter_memory.py", "bench_deployment.py", "bench_fleet.py", "bench_peers.py", "bench_sim_overhead.py"}


def test_the_studies_are_the_ones_the_benchmarks_readme_runs():
    readme = (REPO / "benchmarks" / "README.md").read_text()
    studies = sorted({study for study, _ in ROWS})
    assert studies == ["defences", "defences_fleet", "downlink", "faults", "fl_multi30k", "fl_table", "frontier",
                       "frontier_rare", "privacy", "qat_table", "secagg"]
    assert all(f"python benchmarks/study.py {study}" in readme for study in studies)
    assert all(f"`{script}`" in readme for script in SCRIPTS)


@pytest.mark.parametrize(("study", "row"), ROWS, ids=[f"{study}/{row.name}" for study, row in ROWS])
def test_every_row_of_every_study_is_a_valid_run(study, row):
    cfg = compose_config([f"+experiment={row.experiment}"])
    try:
        validate_config(cfg)
    except ConfigError as err:  # a study of a downloadable corpus: checked where the corpus is at hand
        if "does not exist" not in str(err):
            raise
        pytest.skip(f"{study} needs its corpus: {err}")
    if row.entry == "train":
        assert cfg.train.max_steps > 0 or cfg.train.max_minutes > 0


def test_a_row_names_its_own_settings_over_the_studys_common_ones():
    common = compose_config(["+experiment=faults/clean"])
    row = compose_config(["+experiment=faults/alie_nnm"])
    assert (common.fl.devices, common.fl.clients_per_round, common.quant.bits) == ("mixed", 10, 2)  # _common.yaml
    assert (row.fl.devices, row.fl.attack, row.fl.defence, row.fl.byzantine) == ("mixed", "alie", "nnm", 2)
    assert compose_config(["+experiment=fl_table/fed_w2_sign"]).comm.uplink.name == "sign"  # a group chosen by a row


@pytest.mark.e2e
def test_a_study_runs_its_rows_into_study_row_folders_and_keeps_finished_ones(tmp_path):
    out = tmp_path / "fl_table"
    command = [sys.executable, str(REPO / "benchmarks" / "study.py"), "fl_table", "fed_w2_sign", "central_w2", "--quick",
               "--out", str(out)]
    first = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    summary = json.loads((out / "fed_w2_sign" / "summary.json").read_text())
    assert summary["rounds"] == 1 and (out / "central_w2" / "checkpoint" / "meta.json").is_file()
    assert "+experiment=fl_table/fed_w2_sign" in (out / "fed_w2_sign" / "log.txt").read_text()
    report = json.loads((out / "report.json").read_text())
    assert sorted(row["training"] for row in report) == ["centralized", "federated"]
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stdout.count(": kept (finished in") == 2, again.stdout
    wrong = subprocess.run([*command[:3], "no_such_row"], capture_output=True, text=True, timeout=60)
    assert wrong.returncode != 0 and "fl_table has no row 'no_such_row'" in wrong.stderr


@pytest.mark.e2e
@pytest.mark.parametrize("script", [pytest.param(s, marks=pytest.mark.bench) if s in SLOW_SCRIPTS else s for s in SCRIPTS])
def test_every_benchmark_script_has_a_quick_mode_that_completes(script, tmp_path):
    out = tmp_path / "result.json"
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), "--quick", "--out", str(out)],
                            capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "QUICK smoke run" in result.stdout and json.loads(out.read_text())


def test_the_defence_table_puts_attacks_in_rows_and_defences_in_columns_against_clean_fedavg(tmp_path):
    from defence_table import main

    def finished(row: str, bleu: float, admitted: int | None = None) -> None:
        (tmp_path / row).mkdir()
        summary = {"final_test_bleu": bleu, "attackers": 4 if admitted is not None else 0, "attackers_admitted": admitted}
        (tmp_path / row / "summary.json").write_text(json.dumps(summary))

    finished("none-fedavg", 60.0)
    finished("none-fltrust", 59.5)
    finished("ipm-fedavg", 50.0, 4)
    finished("ipm-fltrust", 59.0, 0)
    finished("ipm10-fltrust", 59.75, 0)
    finished("ipm_eps2-fedavg", 20.0, 4)
    out = tmp_path / "table.md"
    main(["--results", str(tmp_path), "--out", str(out)])
    lines = out.read_text().splitlines()
    assert lines[2] == "| attack | FedAvg | FLTrust |"
    assert lines[4:7] == ["| no attack | +0.00 | -0.50 |", "| IPM (ε 0.5) | -10.00 (4/4) | -1.00 (0/4) |",
                          "| IPM (ε 0.5), 10 % | · | -0.25 (0/4) |"]
    assert "| ipm_eps2-fedavg | 20.00 | -40.00 (4/4) |" in lines  # a sweep row, below the grid
    (tmp_path / "none-fedavg" / "summary.json").unlink()
    with pytest.raises(SystemExit, match=f"the clean row none-fedavg has not finished in {tmp_path}"):
        main(["--results", str(tmp_path)])


def test_the_secagg_table_checks_the_targets_side_by_side(tmp_path):
    from secagg_table import main

    def finished(row: str, bleu: float, uplink: int, seconds: float, epsilon: float | None = None) -> None:
        (tmp_path / row).mkdir()
        summary = {"final_test_bleu": bleu, "uplink_bytes": uplink, "secagg_bytes": uplink // 100, "epsilon": epsilon,
                   "train_loss_final": 5.0}
        (tmp_path / row / "summary.json").write_text(json.dumps(summary))
        (tmp_path / row / "metrics.jsonl").write_text("\n".join(json.dumps({"wall_seconds": s}) for s in (seconds, 99.0, seconds)))

    finished("plain", 10.0, 2_000_000, 4.0)
    finished("clear_grid", 9.5, 2_000_000, 4.0)
    finished("secagg", 9.5, 9_000_000, 6.0)
    out = tmp_path / "table.md"
    main(["--results", str(tmp_path), "--out", str(out)])
    text = out.read_text()
    assert "| SecAgg+ on the shared grid | 9.50 | 5.000 | · | 9.0 | 0.09 | 4.50 | 6.0 |" in text  # the median round
    assert ("1,000 clients, 100 a round: SecAgg+ vs the same grid in the clear: test BLEU 9.50 vs 9.50, train loss 5.0000 vs "
            "5.0000 (identical); a round 1.50× the time") in text
    assert "SecAgg+ vs the default uplink: test BLEU -0.50 (target within 1: met); uplink 4.50× (target ≤ 4: missed" in text
    assert "main job" not in text  # no row of that group
