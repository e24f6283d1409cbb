"""One report for many runs: a Hydra sweep of real simulations, then `python -m fedq.report`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedq.report.compare import ReportError, find_runs
from helpers import TINY_RUN



@pytest.mark.e2e
def test_a_sweep_and_its_report(tmp_path):
    sweep = tmp_path / "sweep"
    result = subprocess.run(
        [sys.executable, "-m", "fedq.simulate", "-m", *TINY_RUN, "comm.uplink.name=fp32,sign", "quant.bits=32",
         "comm.downlink.name=fp32", f"data.cache_dir={tmp_path / 'cache'}", f"hydra.sweep.dir={sweep}"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    runs = sorted(p.name for p in sweep.iterdir() if (p / "summary.json").is_file())
    assert runs == ["run-0", "run-1"]  # one folder per run; the report names what differs

    report = subprocess.run([sys.executable, "-m", "fedq.report", str(sweep), "--target-bleu", "0"],
                            capture_output=True, text=True, timeout=120)
    assert report.returncode == 0, report.stderr
    lines = [line for line in report.stdout.splitlines() if line.startswith("| comm.uplink.name=")]
    assert len(lines) == 2
    rows = json.loads((sweep / "report.json").read_text())
    by_codec = {row["setting"]: row for row in rows}
    fp32, sign = by_codec["comm.uplink.name=fp32"], by_codec["comm.uplink.name=sign"]
    assert fp32["delta_vs_fp32"] == 0.0 and sign["delta_vs_fp32"] == pytest.approx(sign["test_bleu"] - fp32["test_bleu"])
    assert sign["up_mb"] * 28 < fp32["up_mb"] and fp32["total_ratio"] == pytest.approx(1.0)
    assert fp32["to_target"]["round"] == 1 and fp32["to_target"]["mb"] == pytest.approx(fp32["up_mb"] / 2 + fp32["down_mb"] / 2)
    assert "round reaching valid BLEU 0" in report.stdout
    assert (sweep / "report.png").stat().st_size > 5000 and (sweep / "report.md").read_text().startswith("| setting")


@pytest.mark.e2e
def test_a_folder_without_runs_is_one_line(tmp_path):
    with pytest.raises(ReportError, match="holds no run"):
        find_runs([tmp_path])
    result = subprocess.run([sys.executable, "-m", "fedq.report", str(tmp_path / "missing")], capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0


@pytest.mark.e2e
def test_a_failed_run_fails_the_report_with_its_reason(tmp_path):
    from fedq.report.run_log import write_failure

    write_failure(tmp_path / "run", "disk full: cannot write model.fedq in /x")
    result = subprocess.run([sys.executable, "-m", "fedq.report", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: the run in {tmp_path / 'run'} failed: disk full: cannot write model.fedq in /x"


def test_the_reference_row_is_fp32_training_and_traffic_else_fp32_traffic_at_the_same_qat():
    from fedq.config import compose_config
    from fedq.report.compare import Run, fp32_reference

    def run(*overrides: str) -> Run:
        return Run(Path("/".join(overrides) or "default"), compose_config(list(overrides)), {}, None)

    qat_fp32, qat_default, fp32 = run("quant.bits=2", "comm=fp32"), run("quant.bits=2"), run("quant.bits=32", "comm=fp32")
    assert fp32_reference([qat_default, qat_fp32]) is qat_fp32  # a table of codecs at one QAT setting
    assert fp32_reference([qat_default, qat_fp32, fp32]) is fp32
    assert fp32_reference([qat_default]) is None


def test_a_row_is_labelled_by_the_settings_that_differ_but_not_by_deploy_settings_a_run_never_used():
    from fedq.config import compose_config
    from fedq.report.compare import Run, differing_settings

    runs = [Run(Path(str(i)), compose_config(overrides), {}, None) for i, overrides in enumerate(
        [["fl.attack=ipm", "deploy.variants=[fp32]"], ["fl.attack=sign_flip"]])]
    assert differing_settings(runs) == ["fl.attack=ipm", "fl.attack=sign_flip"]


def test_a_codec_is_labelled_as_it_ran():
    from fedq.config import compose_config
    from fedq.report.compare import codec_label

    grid = compose_config(["quant.bits=2", "comm.uplink.name=grid", "comm.uplink.step=8", "comm.uplink.correlated=true",
                           "comm.downlink.entropy_coding=true"])
    assert (codec_label(grid, "uplink"), codec_label(grid, "downlink")) == ("grid step 8 correlated", "uniform 4-bit ANS deltas")
    mask = compose_config(["quant.bits=2", "comm.uplink.name=mask", "comm.uplink.density=0.2", "comm.uplink.step=1.5",
                           "comm.uplink.carry=0"])
    assert codec_label(mask, "uplink") == "mask 0.2 step 1.5 carry 0"  # grid values: no bits
    assert codec_label(compose_config(["quant.bits=4", "comm.uplink.name=mask"]), "uplink") == "mask 4-bit 0.15"
    default = compose_config(["quant.bits=2"])
    assert (codec_label(default, "uplink"), codec_label(default, "downlink")) == ("uniform 2-bit", "uniform 4-bit deltas")


def test_the_table_counts_the_attackers_each_defence_admitted_where_a_run_had_attackers():
    from fedq.config import compose_config
    from fedq.report.compare import Run, markdown, report_rows
    from fedq.report.run_log import summarize_traffic

    def rows(admitted: list[int | None], removed: list[int | None]) -> list[dict]:
        return [{"uplink_bytes": 10, "downlink_bytes": 20, "fp32_uplink_bytes": 40, "fp32_downlink_bytes": 80,
                 "rejected": 0, "dropped": {}, "sim_seconds": None, "wall_seconds": 1.0, "attackers": 1,
                 "attackers_admitted": a, "honest_removed": r} for a, r in zip(admitted, removed)]

    def run(defence: str, admitted: list[int | None], removed: list[int | None]) -> Run:
        summary = {**summarize_traffic(rows(admitted, removed)), "final_test_bleu": 50.0, "final_valid_bleu": 50.0,
                   "wall_seconds": 60.0}
        cfg = compose_config(["fl.attack=ipm", "fl.attackers=0.25", "fl.clients_per_round=4", *defence.split()])
        return Run(Path(defence), cfg, summary, None)

    runs = [run("fl.defence=dnc fl.byzantine=1", [0, 1, 0], [0, 0, 1]), run("fl.defence=none", [1, 1, 1], [0, 0, 0]),
            run("fl.defence=nnm fl.byzantine=1", [None, None, None], [None, None, None])]
    table = markdown(report_rows(runs))
    assert "| attackers admitted | honest removed |" in table
    cells = [line.split(" | ")[-2:] for line in table.splitlines()[2:5]]
    assert cells == [["1/3", "1 |"], ["3/3", "0 |"], ["-", "- |"]]


def test_the_progress_line_says_how_many_attackers_the_defence_admitted_where_it_counted():
    from fedq.report.console import progress_line

    row = {"round": 3, "clients": 5, "dropped": {}, "rejected": 0, "resynced": 0, "train_loss": 2.0, "uplink_bytes": 100,
           "downlink_bytes": 200, "fp32_uplink_bytes": 1600, "fp32_downlink_bytes": 1600, "uplink_ratio": 16.0,
           "valid_bleu": None, "sim_seconds": None, "wall_seconds": 1.0, "attackers": 1, "attackers_admitted": 0}
    assert "| 5 clients | attackers admitted 0/1 | loss 2.000 |" in progress_line(row, [row], 5)
    for uncounted in ({"attackers_admitted": None}, {"attackers": 0, "attackers_admitted": 0}):
        assert "attackers" not in progress_line({**row, **uncounted}, [row], 5)


def test_the_table_states_each_private_runs_epsilon_and_a_run_without_dp_none():
    from fedq.config import compose_config
    from fedq.report.compare import Run, markdown, report_rows
    from fedq.report.run_log import summarize_traffic

    def run(epsilons: list[float | None], *settings: str) -> Run:
        rows = [{"uplink_bytes": 10, "downlink_bytes": 20, "fp32_uplink_bytes": 40, "fp32_downlink_bytes": 80,
                 "rejected": 0, "dropped": {}, "sim_seconds": None, "wall_seconds": 1.0, "epsilon": e} for e in epsilons]
        summary = {**summarize_traffic(rows), "final_test_bleu": 50.0, "final_valid_bleu": 50.0, "wall_seconds": 60.0}
        return Run(Path("-".join(settings) or "plain"), compose_config(list(settings)), summary, None)

    table = markdown(report_rows([run([1.5, 2.25], "fl.dp.clip=1", "fl.dp.noise_multiplier=1"), run([None, None])]))
    assert table.splitlines()[0].endswith("| ε |")
    assert [line.rsplit(" | ", 1)[-1] for line in table.splitlines()[2:4]] == ["2.25 |", "- |"]  # the last round's
    assert "fl.dp.clip=1.0 fl.dp.noise_multiplier=1.0" in table  # labelled by the nested settings that differ
