"""Where a federated run's rows and config go besides ``metrics.jsonl`` (always written): one registry entry each.

``report.sinks=[tensorboard,mlflow]`` sends every round's row and the summary
to each sink named, so that runs compare in the tools researchers already use:

- ``tensorboard``: event files in ``RUN/tensorboard/`` (``tensorboard --logdir``
  over a folder of runs), each numeric field of a row a scalar at its round, the
  config as text;
- ``mlflow``: one MLflow run per fedq run, in ``report.mlflow_uri`` (default: a
  local store, the SQLite file ``RUN/mlflow.db``; MLflow 3 keeps its folder
  store in maintenance only), experiment ``report.experiment``; the
  settings that differ from fedq's defaults as parameters, each numeric field a
  metric at its round. A resumed run logs into the same MLflow run.

Both are optional extras (``pip install -e ".[sinks]"``); a sink whose package
is missing is refused with one line before any work. A researcher's own sink: a
subclass of :class:`Sink` in their module, named as ``module:Class``.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional

from fedq.errors import ConfigError
from fedq.files import atomic_write
from fedq.registry import ClassRegistry


@dataclass
class ReportConfig:
    sinks: list[str] = field(default_factory=list)  # entries of fedq.report.sinks.SINKS (or module:Class)
    mlflow_uri: Optional[str] = None  # mlflow's tracking URI; None = a local SQLite store in the run folder
    experiment: str = "fedq"  # the MLflow experiment


class Sink:
    """Receives a run's rows as they are written; ``check`` says, before any work, why it cannot run."""

    name: ClassVar[str]
    requires: ClassVar[tuple[str, ...]] = ()  # importable modules it needs

    def __init__(self, run_dir: Path, settings: dict[str, Any], config_yaml: str, report: ReportConfig) -> None:
        self.run_dir = run_dir

    @classmethod
    def check(cls) -> None:
        missing = [module for module in cls.requires if importlib.util.find_spec(module) is None]
        if missing:
            raise ConfigError(f"report.sinks={cls.name} needs {', '.join(missing)}, which is not installed: "
                              'pip install -e ".[sinks]"')

    def round(self, row: dict[str, Any]) -> None:
        """One round's row (``row["round"]`` its step)."""

    def summary(self, summary: dict[str, Any]) -> None:
        """The run's summary, once it has finished."""

    def close(self) -> None:
        """Flush and release what the sink holds."""


SINKS: ClassRegistry[Sink] = ClassRegistry("sinks", "report.sinks", Sink)


def numeric(values: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The numeric fields of a row or summary (nested counts flattened as ``dropped.dropout``), as floats."""
    found: dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            found |= numeric(value, f"{prefix}{key}.")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            found[f"{prefix}{key}"] = float(value)
    return found


@SINKS.add
class TensorBoardSink(Sink):
    name = "tensorboard"
    requires = ("tensorboard",)
    FOLDER = "tensorboard"

    def __init__(self, run_dir: Path, settings: dict[str, Any], config_yaml: str, report: ReportConfig) -> None:
        super().__init__(run_dir, settings, config_yaml, report)
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / self.FOLDER))
        self.writer.add_text("config", f"```\n{config_yaml}\n```")

    def round(self, row: dict[str, Any]) -> None:
        for key, value in numeric(row).items():
            if key != "round":
                self.writer.add_scalar(f"round/{key}", value, row["round"])
        self.writer.flush()

    def summary(self, summary: dict[str, Any]) -> None:
        for key, value in numeric(summary).items():
            self.writer.add_scalar(f"summary/{key}", value, int(summary.get("rounds", 0)))

    def close(self) -> None:
        self.writer.close()


@SINKS.add
class MLflowSink(Sink):
    name = "mlflow"
    requires = ("mlflow", "sqlalchemy", "alembic")  # the local SQLite store needs the last two
    RUN_ID_FILE = ".mlflow-run"  # the MLflow run of this fedq run, so that a resumed run continues it

    def __init__(self, run_dir: Path, settings: dict[str, Any], config_yaml: str, report: ReportConfig) -> None:
        super().__init__(run_dir, settings, config_yaml, report)
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=report.mlflow_uri or mlflow_store(run_dir))
        saved = run_dir / self.RUN_ID_FILE
        if saved.is_file():
            self.run_id = saved.read_text().strip()
            return
        experiment = self.client.get_experiment_by_name(report.experiment)
        if experiment is None:  # its artifacts (the config) in the run folder, not in the working directory
            artifacts = (run_dir / "mlflow-artifacts").resolve().as_uri()
            experiment_id = self.client.create_experiment(report.experiment, artifact_location=artifacts)
        else:
            experiment_id = experiment.experiment_id
        self.run_id = self.client.create_run(experiment_id, run_name=run_dir.name,
                                             tags={"fedq.run_dir": str(run_dir)}).info.run_id
        for key, value in settings.items():
            self.client.log_param(self.run_id, key, str(value)[:500])
        self.client.log_text(self.run_id, config_yaml, "config.yaml")
        atomic_write(saved, self.run_id)

    def round(self, row: dict[str, Any]) -> None:
        for key, value in numeric(row).items():
            if key != "round":
                self.client.log_metric(self.run_id, key, value, step=int(row["round"]))

    def summary(self, summary: dict[str, Any]) -> None:
        for key, value in numeric(summary).items():
            self.client.log_metric(self.run_id, f"final.{key}", value)
        self.client.set_terminated(self.run_id)


def mlflow_store(run_dir: Path) -> str:
    """The default tracking URI of a run: a SQLite file in its folder (``mlflow ui --backend-store-uri`` reads it)."""
    return f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"


def check_report_config(report: ReportConfig) -> None:
    for name in report.sinks:
        SINKS.get(name).check()
    if len(set(report.sinks)) < len(report.sinks):
        raise ConfigError(f"report.sinks={report.sinks} names a sink twice")


def open_sinks(report: ReportConfig, run_dir: Path, settings: dict[str, Any], config_yaml: str) -> list[Sink]:
    return [SINKS.make(name, run_dir, settings, config_yaml, report) for name in report.sinks]
