"""Researchers extend, not fork: a defence and an attack of the user's own module run a federated round, every
registry reads its entries (never a hand list), and no extension's name is special-cased outside its own module."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

from fedq.comm.codecs import CODECS
from fedq.config import compose_config, validate_config
from fedq.deploy.settings import VARIANTS
from fedq.errors import ConfigError
from fedq.fl.attacks import ATTACKS, Attack
from fedq.fl.client import LocalExchange
from fedq.fl.client_state import ClientStore
from fedq.fl.defences import DEFENCES, Defence
from fedq.fl.entries import entry_settings
from fedq.fl.federation import Federation
from fedq.fl.fleet import FLEETS, PROFILES, fleet
from fedq.fl.run import run_federation
from fedq.fl.settings import FLConfig
from fedq.fl.strategies import STRATEGIES
from fedq.report.sinks import SINKS
from helpers import TINY
from server.aggregation import FlowerAggregator

REPO = Path(__file__).resolve().parent.parent

# The worked example of docs/DESIGN.md ("Extending fedq"), as a user would write it in their own file.
USER_MODULE = '''
import numpy as np

from fedq.fl.attacks import Attack
from fedq.fl.defences import Defence


class DropFarthest(Defence):
    """Drop the one update farthest from the round's coordinate-wise median."""

    name = "drop_farthest"
    seen = []  # (round, updates, the index dropped): for the test to read

    def __call__(self, updates, weights, view):
        median = np.median(np.stack(updates), axis=0)
        far = int(np.argmax([np.linalg.norm(update - median) for update in updates]))
        DropFarthest.seen.append((view.server_round, len(updates), far))
        return [u for i, u in enumerate(updates) if i != far], [w for i, w in enumerate(weights) if i != far]


class Amplify(Attack):
    """An attacker alone that sends its update 50 times over."""

    name = "amplify"

    def alone(self, update, rng):
        return 50.0 * update
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    module = f"my_extensions_{tmp_path.name}"
    (tmp_path / f"{module}.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield module
    sys.modules.pop(module, None)


def test_a_defence_and_an_attack_of_the_users_own_module_run_a_federated_round(tmp_path, user_module):
    cfg = compose_config([*TINY, f"data.cache_dir={tmp_path / 'cache'}", "fl.clients_per_round=4", "fl.rounds=2",
                          "fl.eval_every=0", "data.max_eval_pairs=4", f"fl.attack={user_module}:Amplify", "fl.attackers=0.25",
                          f"fl.defence={user_module}:DropFarthest"])
    validate_config(cfg)
    federation = Federation(cfg)
    (attacker,) = federation.faults.attackers
    summary = run_federation(cfg, tmp_path / "run", LocalExchange(federation, ClientStore(None)), FlowerAggregator(cfg),
                             federation=federation)
    seen = sys.modules[user_module].DropFarthest.seen
    assert [(server_round, count) for server_round, count, _ in seen] == [(1, 4), (2, 4)]
    assert all(far == attacker for _, _, far in seen)  # the round's four updates in client order: the attacker's is dropped
    assert summary["rounds"] == 2


MORE_ENTRIES = '''
from dataclasses import dataclass
from typing import ClassVar

from fedq.comm.codecs import UniformCodec
from fedq.fl.strategies import FedAvgStrategy


@dataclass(frozen=True)
class CoarseUniform(UniformCodec):
    """The uniform codec on blocks of 4096 values by default (a codec of one's own, by subclassing)."""

    name: ClassVar[str] = "coarse_uniform"
    block_size: int = 4096


class TokenMean(FedAvgStrategy):
    """Flower's FedAvg under another name, as a strategy entry of one's own."""

    name = "token_mean"
'''


def test_a_codec_and_a_strategy_of_the_users_own_module_are_used(tmp_path, monkeypatch):
    module = f"my_entries_{tmp_path.name}"
    (tmp_path / f"{module}.py").write_text(MORE_ENTRIES)
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = compose_config([*TINY, f"data.cache_dir={tmp_path / 'cache'}", f"comm.uplink.name={module}:CoarseUniform",
                          f"fl.strategy={module}:TokenMean", "quant.bits=2"])
    validate_config(cfg)
    federation = Federation(cfg)
    assert type(federation.uplink).__name__ == "CoarseUniform" and federation.uplink.block_size == 4096
    assert federation.uplink.bits == 2  # quant.bits, as for a built-in codec that takes bits
    assert type(FlowerAggregator(cfg).strategy).__name__ == "FedAvg"
    sys.modules.pop(module, None)


DEVICES = '''
from fedq.fl.fleet import DeviceProfile

SATELLITE = DeviceProfile("satellite", train_gflops=2.0, up_mbps=0.5, down_mbps=5.0, availability=0.4)
'''


def test_a_device_profile_of_the_users_own_module_is_a_fleet_alone_or_part_of_a_mix(tmp_path, monkeypatch):
    module = f"my_devices_{tmp_path.name}"
    (tmp_path / f"{module}.py").write_text(DEVICES)
    monkeypatch.syspath_prepend(str(tmp_path))
    profiles, index = fleet(f"{module}:SATELLITE", 3, seed=0)
    assert [p.name for p in profiles] == ["satellite"] and list(index) == [0, 0, 0]
    mix = tmp_path / "fleet.yaml"
    mix.write_text(f"mix: {{'{module}:SATELLITE': 0.5, midrange-4g: 0.5}}\n")
    profiles, index = fleet(str(mix), 4, seed=0)
    assert sorted(profiles[i].name for i in index) == ["midrange-4g", "midrange-4g", "satellite", "satellite"]
    validate_config(compose_config([*TINY, f"fl.devices={module}:SATELLITE"]))
    with pytest.raises(ConfigError, match=f"fl.devices={module}:GEO: {module} has no GEO"):
        validate_config(compose_config([*TINY, f"fl.devices={module}:GEO"]))
    with pytest.raises(ConfigError, match="its mix names a profile it does not define .*'tablet' is unknown"):
        mix.write_text("mix: {tablet: 1.0}\n")
        validate_config(compose_config([*TINY, f"fl.devices={mix}"]))
    sys.modules.pop(module, None)


def test_an_extension_that_cannot_be_used_is_one_line(tmp_path, user_module):
    base = [*TINY, f"data.cache_dir={tmp_path}"]
    for setting, why in ((f"fl.defence={user_module}:Nothing", f"{user_module} has no Nothing"),
                         ("fl.defence=no_such_module_here:X", "cannot import no_such_module_here"),
                         (f"fl.defence={user_module}:Amplify", "is not a fedq.fl.defences.Defence"),
                         ("fl.defence=nmm", "fl.defence='nmm' is unknown; choose one of none, nnm, bucketing, cclip, dnc, fltrust, trustfilter, flame")):
        with pytest.raises(ConfigError, match=re.escape(why)):
            validate_config(compose_config([*base, setting]))


def test_the_registries_hold_the_built_in_entries_and_their_checks_refuse_what_cannot_run(tmp_path):
    assert DEFENCES.names() == ("none", "nnm", "bucketing", "cclip", "dnc", "fltrust", "trustfilter", "flame")
    assert ATTACKS.names() == ("none", "sign_flip", "scaled_noise", "std_shift", "alie", "ipm", "min_max", "min_sum")
    assert all(issubclass(DEFENCES.get(name), Defence) for name in DEFENCES.names())
    assert [name for name in ATTACKS.names() if ATTACKS.get(name).collusive] == ["alie", "ipm", "min_max", "min_sum"]
    assert all(issubclass(ATTACKS.get(name), Attack) for name in ATTACKS.names())
    base = [*TINY, f"data.cache_dir={tmp_path}"]
    with pytest.raises(ConfigError, match="fl.bucket_size=3 is larger than the round's 2 clients"):
        validate_config(compose_config([*base, "fl.defence=bucketing", "fl.bucket_size=3"]))
    with pytest.raises(ConfigError, match="fl.attack=ipm needs honest clients in every round"):
        validate_config(compose_config([*base, "fl.attack=ipm", "fl.attackers=0.5"]))


def test_an_entrys_own_setting_is_refused_where_the_runs_entries_do_not_read_it(tmp_path):
    base = [*TINY, f"data.cache_dir={tmp_path}"]
    owners = entry_settings()
    assert set(owners) <= {f.name for f in dataclasses.fields(FLConfig)}  # every claimed setting is a field of fl.*
    assert owners["bucket_size"] == ["fl.defence=bucketing"] and "fl.strategy=krum" in owners["byzantine"]
    for given, why in ((["fl.bucket_size=3"], "fl.bucket_size=3 is not used by this run (fl.strategy=fedavg, "
                        "fl.defence=none, fl.attack=none); it is a setting of fl.defence=bucketing"),
                       (["fl.attack=ipm", "fl.attackers=0.25", "fl.clients_per_round=4", "fl.attack_z=1.5"], "fl.attack_z=1.5 is not used"),
                       (["fl.strategy=fedmedian", "fl.trim_beta=0.3"], "it is a setting of fl.strategy=fedtrimmedavg")):
        with pytest.raises(ConfigError, match=re.escape(why)):
            validate_config(compose_config([*base, *given]))
    for used in (["fl.defence=bucketing", "fl.bucket_size=1"], ["fl.defence=nnm", "fl.byzantine=1"],
                 ["fl.attack=alie", "fl.attackers=0.25", "fl.clients_per_round=4", "fl.attack_z=1.5"]):
        validate_config(compose_config([*base, *used]))


def test_the_readmes_settings_table_names_every_registrys_entries():
    """The README's table is written by hand; this keeps it the registries' (a new entry must be named there)."""
    table = (REPO / "README.md").read_text()

    def listed(setting: str) -> set[str]:
        found = re.findall(rf"`{re.escape(setting)}` ([\w/-]+)(?: \([^)]*\) or ([\w/-]+))?", table)
        assert found, f"{setting} is not in README.md's settings table"
        return {name for group in found[0] for name in group.split("/") if name}

    assert listed("comm.uplink.name") == set(CODECS.names())
    assert listed("fl.strategy") == set(STRATEGIES.names())
    assert listed("fl.defence") == set(DEFENCES.names())
    assert listed("fl.attack") | {"none"} == set(ATTACKS.names())
    assert listed("fl.devices") == set(FLEETS) | set(PROFILES.names())
    assert f"report.sinks=[{','.join(SINKS.names())}]" in table


def test_no_extension_is_special_cased_outside_its_own_module():
    """``if fl.defence == "cclip"`` in the round would make a second home for the entry: each entry's own module decides.
    No string literal outside an entry's module is an entry's name, except as a setting's default (``= "fedavg"``)."""
    homes = {"fedq/fl/defences.py": DEFENCES.names(), "fedq/fl/attacks.py": ATTACKS.names(),
             "fedq/fl/strategies.py": STRATEGIES.names(), "fedq/report/sinks.py": SINKS.names(),
             "fedq/comm/codecs/": tuple(name for name in CODECS.names() if name not in VARIANTS),  # fp32 is a variant too
             "fedq/fl/fleet.py": PROFILES.names()}
    sources = [p for top in ("fedq", "server", "clients") for p in (REPO / top).rglob("*.py")]
    for home, names in homes.items():
        quoted = {f'"{name}"' for name in names if name != "none"} | {f"'{name}'" for name in names if name != "none"}
        found = []
        for path in sources:
            if str(path.relative_to(REPO)).startswith(home):
                continue
            with path.open("rb") as handle:
                previous = ""
                for token in tokenize.tokenize(handle.readline):
                    if token.type == tokenize.STRING and token.string in quoted and previous != "=":
                        found.append(f"{path.relative_to(REPO)}:{token.start[0]}: {token.line.strip()}")
                    if token.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT):
                        previous = token.string
        assert not found, f"entries of {home} special-cased elsewhere: {found}"


@pytest.mark.e2e
def test_help_lists_every_registrys_entries():
    result = subprocess.run([sys.executable, "-m", "fedq.simulate", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for setting, registry in (("fl.defence", DEFENCES), ("fl.attack", ATTACKS), ("report.sinks", SINKS),
                              ("fl.strategy", STRATEGIES),
                              ("comm.uplink.name, comm.downlink.name", CODECS)):
        assert f"  {setting}: {' '.join(registry.names())}" in result.stdout, result.stdout[-1500:]
    assert f"  fl.devices: {' '.join([*FLEETS, *PROFILES.names()])} (or module:NAME" in result.stdout
