"""One table and one plot for many runs: ``python -m fedq.report RUN_OR_SWEEP_DIR [...]``.

A folder with ``summary.json`` is a federated run (``fedq.simulate``); one with
``checkpoint/meta.json`` and no summary is a centralized run (``fedq.train``);
any other folder is searched for runs below it (a Hydra multirun folder, or a
folder of runs). Each row names the settings in which the runs differ, the bytes
both ways and their total ratio against fp32, the final test BLEU and its
difference to the federated fp32 row (quant fp32, fp32 both ways; else the row
with fp32 both ways, the reference of a table of codecs) when one is among them.
The plot draws each federated run's valid BLEU against the megabytes sent so
far, up and down together.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedq.comm.settings import downlink_codec, uplink_codec
from fedq.config import FedqConfig, config_from_yaml, read_config_file, settings_by_key
from fedq.environment import environment_key
from fedq.errors import FedqError
from fedq.files import atomic_write
from fedq.quant import resolve_method
from fedq.report.run_log import FAILURE_FILE, SUMMARY_FILE, min_median_max_bleu, read_failure, read_rows

REPORT_FILES = ("report.md", "report.json", "report.png")


class ReportError(FedqError):
    """Nothing to report, or a run folder that cannot be read."""


@dataclass
class Run:
    path: Path
    config: FedqConfig
    summary: dict[str, Any] | None  # federated runs
    meta: dict[str, Any] | None  # centralized runs

    @property
    def federated(self) -> bool:
        return self.summary is not None


def find_runs(paths: list[Path]) -> list[Run]:
    """The runs in ``paths``; a run that failed (failure.json, no summary) is a ReportError with its reason, so
    that ``flwr run ... && python -m fedq.report OUT`` fails when the run did."""
    runs: list[Run] = []
    for path in paths:
        if not path.is_dir():
            raise ReportError(f"{path} is not a folder")
        failed = [p.parent for p in sorted(path.rglob(FAILURE_FILE)) if not (p.parent / SUMMARY_FILE).is_file()]
        if failed:
            raise ReportError(f"the run in {failed[0]} failed: {read_failure(failed[0])}")
        found = [folder for folder in [path, *sorted(p for p in path.rglob("*") if p.is_dir())] if _is_run(folder)]
        found = [folder for folder in found if not any(parent in found for parent in folder.parents)]
        if not found:
            raise ReportError(f"{path} holds no run (no {SUMMARY_FILE}, no checkpoint/meta.json)")
        runs += [_read_run(folder) for folder in found]
    return runs


def _is_run(folder: Path) -> bool:
    return (folder / SUMMARY_FILE).is_file() or (folder / "checkpoint" / "meta.json").is_file()


def _read_run(folder: Path) -> Run:
    try:
        if (folder / SUMMARY_FILE).is_file():
            summary = json.loads((folder / SUMMARY_FILE).read_text())
            return Run(folder, config_from_yaml(summary["config"], str(folder / SUMMARY_FILE)), summary, None)
        meta = json.loads((folder / "checkpoint" / "meta.json").read_text())
        return Run(folder, read_config_file(folder / "checkpoint" / "config.yaml"), None, meta)
    except (OSError, ValueError, KeyError) as err:
        raise ReportError(f"cannot read the run in {folder}: {err}") from None


def quant_label(cfg: FedqConfig) -> str:
    quant = cfg.quant
    if quant.bits >= 32:
        return "fp32"
    method = resolve_method(quant)
    kind = {"ternary": "ternary (1.58-bit)", "binary": "binary"}.get(method, f"{quant.bits}-bit {method}")
    return f"{kind}, {quant.scope}" + (f", act {quant.act_bits}-bit" if quant.act_bits else "")


def codec_label(cfg: FedqConfig, direction: str) -> str:
    """'uniform 2-bit', 'uniform 2-bit ANS', 'topk 4-bit 0.01', 'grid step 8 correlated', 'mask 0.2 step 1.5 carry 0',
    'uniform 4-bit deltas', 'fp32': the codec as it ran."""
    codec = uplink_codec(cfg.comm, cfg.quant.bits) if direction == "uplink" else downlink_codec(cfg.comm)
    settings = vars(codec)  # the codec's own settings (a dataclass of its fields)
    label = codec.name + (f" {settings['bits']}-bit" if settings.get("bits") is not None else "")
    if "density" in settings:
        label += f" {settings['density']:g}"
    if settings.get("step") is not None:
        label += f" step {settings['step']:g}"
    if settings.get("entropy_coding", False):
        label += " ANS"
    if settings.get("carry", 1.0) != 1.0:
        label += f" carry {settings['carry']:g}"
    if direction == "uplink" and cfg.comm.uplink.correlated:
        label += " correlated"
    return label + (" deltas" if direction == "downlink" and not codec.whole_values else "")


def differing_settings(runs: list[Run]) -> list[str]:
    """Per run, its settings whose values are not the same in every run (``key=value``, one line); not the paths,
    ``deploy.*`` and ``report.*``, which change nothing a run measured."""
    flat = [settings_by_key(run.config) for run in runs]
    keys = sorted({k for leaves in flat for k in leaves
                   if k not in ("hydra", "ckpt", "resume", "data.cache_dir") and not k.startswith(("deploy.", "report."))})
    varying = [k for k in keys if len({json.dumps(leaves.get(k), default=str) for leaves in flat}) > 1 and k != "fl.clients"]
    return [" ".join(f"{k}={leaves.get(k)}" for k in varying) or "-" for leaves in flat]


def is_fp32_traffic(run: Run) -> bool:
    cfg = run.config
    codecs = (uplink_codec(cfg.comm, cfg.quant.bits), downlink_codec(cfg.comm))
    return run.federated and all(codec.whole_values and codec.bits_per_value >= 32 for codec in codecs)


def fp32_reference(runs: list[Run]) -> Run | None:
    """The federated run without QAT and with fp32 both ways; else one with fp32 both ways (the reference of a table
    that varies only what goes over the wire)."""
    return next((run for run in runs if is_fp32_traffic(run) and run.config.quant.bits >= 32), None) \
        or next((run for run in runs if is_fp32_traffic(run)), None)


def time_to_bleu(run: Run, target: float) -> dict[str, Any] | None:
    """The first round whose valid BLEU reached ``target``: its number, simulated hours and MB sent so far."""
    hours = megabytes = 0.0
    for row in read_rows(run.path):
        hours += (row.get("sim_seconds") or 0.0) / 3600
        megabytes += (row["uplink_bytes"] + row["downlink_bytes"]) / 1e6
        bleu = row.get("valid_bleu")
        if bleu is None and run.summary and row["round"] == run.summary["rounds"]:
            bleu = run.summary["final_valid_bleu"]  # the last round is scored by the final evaluation
        if bleu is not None and bleu >= target:
            return {"round": row["round"], "sim_hours": hours if row.get("sim_seconds") is not None else None, "mb": megabytes}
    return None


def report_rows(runs: list[Run], target_bleu: float | None = None) -> list[dict[str, Any]]:
    reference = fp32_reference(runs)
    rows = []
    for run, setting in zip(runs, differing_settings(runs)):
        row: dict[str, Any] = {"run": str(run.path), "setting": setting, "qat": quant_label(run.config)}
        if run.summary is not None:
            s = run.summary
            row.update(
                training="federated", uplink=codec_label(run.config, "uplink"), downlink=codec_label(run.config, "downlink"),
                rounds=s["rounds"], up_mb=s["uplink_bytes"] / 1e6, down_mb=s["downlink_bytes"] / 1e6,
                total_ratio=s["total_ratio"], uplink_ratio=s["uplink_ratio"], test_bleu=s["final_test_bleu"],
                valid_bleu=s["final_valid_bleu"], minutes=s["wall_seconds"] / 60,
                sim_hours=s["sim_seconds"] / 3600 if s.get("sim_seconds") is not None else None,
                start_test_bleu=s.get("initial_test_bleu"), own_text=s.get("own_text_bleu"),
                attackers=s.get("attackers", 0), attackers_admitted=s.get("attackers_admitted"),
                honest_removed=s.get("honest_removed"), epsilon=s.get("epsilon"),
            )
        else:
            m = run.meta or {}
            row.update(training="centralized", rounds=None, test_bleu=m.get("test_bleu"), valid_bleu=m.get("valid_bleu"),
                       minutes=m.get("train_seconds", 0.0) / 60, steps=m.get("steps"))
        row["environment"] = environment_key((run.summary or run.meta or {}).get("environment"))
        reference_bleu = reference.summary["final_test_bleu"] if reference is not None and reference.summary else None
        scored = reference_bleu is not None and row["test_bleu"] is not None
        row["delta_vs_fp32"] = row["test_bleu"] - reference_bleu if scored else None
        if target_bleu is not None and run.federated:
            row["to_target"] = time_to_bleu(run, target_bleu)
        rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]], target_bleu: float | None = None) -> str:
    def cell(value: Any, fmt: str = "{}") -> str:
        return "-" if value is None else fmt.format(value)

    extra = [f"round reaching valid BLEU {target_bleu:g}", "simulated hours to it", "MB to it"] if target_bleu is not None else []
    adapted = any(r.get("start_test_bleu") is not None or r.get("own_text") for r in rows)  # runs from init_from
    personal = any("personal" in (r.get("own_text") or {}) for r in rows)
    extra += ["test BLEU of the start", "own-text BLEU before (min/median/max)", "after"] if adapted else []
    extra += ["after personal steps"] if personal else []
    attacked = any(r.get("attackers") for r in rows)
    extra += ["attackers admitted", "honest removed"] if attacked else []
    private = any(r.get("epsilon") is not None for r in rows)
    extra += ["ε"] if private else []
    header = ["setting", "training", "QAT", "uplink", "downlink", "up MB", "down MB", "total ratio", "test BLEU",
              "Δ vs fp32", "valid BLEU", "simulated hours", "minutes", *extra]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r["setting"], r["training"], r["qat"], cell(r.get("uplink")), cell(r.get("downlink")),
                 cell(r.get("up_mb"), "{:.1f}"), cell(r.get("down_mb"), "{:.1f}"), cell(r.get("total_ratio"), "{:.1f}x"),
                 cell(r["test_bleu"], "{:.2f}"), cell(r["delta_vs_fp32"], "{:+.2f}"), cell(r["valid_bleu"], "{:.2f}"),
                 cell(r.get("sim_hours"), "{:.2f}"), cell(r["minutes"], "{:.1f}")]
        if target_bleu is not None:
            reached = r.get("to_target") or {}
            cells += [cell(reached.get("round")), cell(reached.get("sim_hours"), "{:.2f}"), cell(reached.get("mb"), "{:.1f}")]
        if adapted:
            own = r.get("own_text") or {}
            kinds = ("initial", "final", "personal") if personal else ("initial", "final")
            cells += [cell(r.get("start_test_bleu"), "{:.2f}")]
            cells += [min_median_max_bleu(own[k]) if k in own else "-" for k in kinds]
        if attacked:
            present = r.get("attackers") or 0
            cells += [f"{r['attackers_admitted']}/{present}" if r.get("attackers_admitted") is not None and present else "-",
                      cell(r.get("honest_removed"))]
        if private:
            cells += [cell(r.get("epsilon"), "{:.2f}")]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n" + environment_note(rows)


def environment_note(rows: list[dict[str, Any]]) -> str:
    """Below the table, when its rows ran in more than one environment (fedq.environment): which rows ran where,
    since another torch, CPU kernel or thread count changes a seeded run's numbers."""
    environments: dict[str, list[int]] = {}
    for number, row in enumerate(rows, 1):
        environments.setdefault(row.get("environment") or "not recorded", []).append(number)
    if len(environments) < 2:
        return ""
    lines = [f"- rows {', '.join(map(str, numbers))}: {key}" for key, numbers in environments.items()]
    return f"\nNote: these rows ran in {len(environments)} different environments:\n" + "\n".join(lines) + "\n"


def plot(runs: list[Run], labels: list[str], path: Path) -> Path:
    """Valid BLEU against cumulative MB sent both ways, one curve per federated run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for run, label in zip(runs, labels):
        if run.summary is None:
            continue
        points, total = [(0.0, run.summary.get("initial_valid_bleu"))], 0.0
        for row in read_rows(run.path):
            total += (row["uplink_bytes"] + row["downlink_bytes"]) / 1e6
            if row.get("valid_bleu") is not None:
                points.append((total, row["valid_bleu"]))
        points.append((total, run.summary["final_valid_bleu"]))
        scored = [(mb, float(bleu)) for mb, bleu in points if bleu is not None]
        ax.plot([mb for mb, _ in scored], [bleu for _, bleu in scored], marker="o", label=label)
    ax.set_xlabel("MB sent so far, up + down")
    ax.set_ylabel("valid BLEU (deployed form)")
    ax.set_xscale("symlog", linthresh=1.0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buffer = __import__("io").BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    atomic_write(path, buffer.getvalue())
    return path


def write_report(paths: list[Path], out_dir: Path, target_bleu: float | None = None) -> dict[str, Any]:
    runs = find_runs(paths)
    rows = report_rows(runs, target_bleu)
    table = markdown(rows, target_bleu)
    atomic_write(out_dir / "report.md", table)
    atomic_write(out_dir / "report.json", json.dumps(rows, indent=2))
    plot(runs, [f"{r['setting']} ({r['qat']})" for r in rows], out_dir / "report.png")
    return {"rows": rows, "markdown": table, "out_dir": str(out_dir)}
