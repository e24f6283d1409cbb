"""Report sinks: a run's rows reach TensorBoard and MLflow as metrics.jsonl holds them, read back with each tool's own
reader; a sink that cannot run is one line before any work."""

from __future__ import annotations

import json

import pytest

from fedq.config import compose_config, validate_config
from fedq.errors import ConfigError
from fedq.fl.client import LocalExchange
from fedq.fl.client_state import ClientStore
from fedq.fl.federation import Federation
from fedq.fl.run import run_federation
from fedq.report.compare import differing_settings
from fedq.report.sinks import SINKS, mlflow_store
from helpers import TINY
from server.aggregation import FlowerAggregator

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")


def test_a_runs_rows_and_config_reach_tensorboard_and_mlflow_as_metrics_jsonl_holds_them(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = compose_config([*TINY, f"data.cache_dir={tmp_path / 'cache'}", "fl.rounds=2", "fl.eval_every=1", "quant.bits=4",
                          "data.max_eval_pairs=4", "report.sinks=[tensorboard,mlflow]", "report.experiment=mine"])
    validate_config(cfg)
    federation = Federation(cfg)
    run = tmp_path / "run"
    monkeypatch.chdir(tmp_path)  # nothing of the sinks' may land in the working directory
    summary = run_federation(cfg, run, LocalExchange(federation, ClientStore(None)), FlowerAggregator(cfg),
                             federation=federation)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    for key in ("train_loss", "uplink_bytes", "valid_bleu"):
        scalars = events.Scalars(f"round/{key}")
        assert [s.step for s in scalars] == [1, 2][: len(scalars)] and scalars
        assert [s.value for s in scalars] == pytest.approx([row[key] for row in rows if row[key] is not None])
    assert events.Scalars("summary/final_test_bleu")[0].value == pytest.approx(summary["final_test_bleu"])

    client = MlflowClient(tracking_uri=mlflow_store(run))
    (mlflow_run,) = client.search_runs([client.get_experiment_by_name("mine").experiment_id])
    assert mlflow_run.data.params["quant.bits"] == "4" and mlflow_run.info.status == "FINISHED"
    history = client.get_metric_history(mlflow_run.info.run_id, "train_loss")
    assert [(m.step, m.value) for m in history] == [(row["round"], pytest.approx(row["train_loss"])) for row in rows]
    assert mlflow_run.data.metrics["final.final_test_bleu"] == pytest.approx(summary["final_test_bleu"])
    assert "config.yaml" in [a.path for a in client.list_artifacts(mlflow_run.info.run_id)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "run"]


def test_a_sink_that_cannot_run_is_one_line_and_sinks_label_no_row(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="report.sinks='wandb' is unknown; choose one of tensorboard, mlflow"):
        validate_config(compose_config(["report.sinks=[wandb]"]))
    monkeypatch.setattr(SINKS.get("mlflow"), "requires", ("no_such_package_for_fedq",))
    with pytest.raises(ConfigError, match='report.sinks=mlflow needs no_such_package_for_fedq, which is not installed: '
                                          'pip install -e ".\\[sinks\\]"'):
        validate_config(compose_config(["report.sinks=[mlflow]"]))
    with pytest.raises(ConfigError, match="report.sinks is not used by fedq.train"):
        from fedq.cli import refuse_unused

        refuse_unused(compose_config(["report.sinks=[tensorboard]"]), "train")

    from types import SimpleNamespace
    runs = [SimpleNamespace(config=compose_config(sinks)) for sinks in (["report.sinks=[tensorboard]"], [])]
    assert differing_settings(runs) == ["-", "-"]  # where a run's rows also went is not what it measured


def test_report_mlflow_uri_sends_the_run_to_that_store_and_not_to_the_run_folder(tmp_path):
    from mlflow.tracking import MlflowClient

    from fedq.report.sinks import ReportConfig

    run, store = tmp_path / "run", f"sqlite:///{tmp_path / 'shared.db'}"
    run.mkdir()
    sink = SINKS.make("mlflow", run, {"quant.bits": 2}, "quant: {bits: 2}\n",
                      ReportConfig(sinks=["mlflow"], mlflow_uri=store, experiment="shared"))
    sink.round({"round": 1, "train_loss": 2.5})
    sink.summary({"rounds": 1, "final_test_bleu": 1.0})
    client = MlflowClient(tracking_uri=store)
    (found,) = client.search_runs([client.get_experiment_by_name("shared").experiment_id])
    assert found.data.params["quant.bits"] == "2" and found.data.metrics["train_loss"] == 2.5
    assert not (run / "mlflow.db").exists()
