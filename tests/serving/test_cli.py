"""``serve``: settings read once, the metrics directory made and cleaned, and the host
``--engine`` names handed both (the host interface every host implements)."""

from __future__ import annotations

import dataclasses
import os
import sys
import types

import pytest

from serving import cli, config, hosts
from serving.runtime import logs


@pytest.fixture
def fake_host(monkeypatch):
    calls = []

    def run(config, metrics_dir):
        calls.append((config, metrics_dir, metrics_dir and os.path.isdir(metrics_dir)))
        return 7

    module = types.ModuleType("fake_host")
    module.run = run
    monkeypatch.setitem(sys.modules, "fake_host", module)
    monkeypatch.setitem(config.ENGINES, "gunicorn",
                        dataclasses.replace(config.ENGINES["gunicorn"], module="fake_host"))
    monkeypatch.setattr(cli, "_reexec_for_chainer", lambda argv: None)
    # The test process's logging stays pytest's.
    monkeypatch.setattr(logs, "configure", lambda level, log_format="text": None)
    # serve makes its metrics directory this process's (an environment variable and
    # prometheus_client's value class): both put back after the test.
    from prometheus_client import values

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "unset")
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
    monkeypatch.setattr(values, "ValueClass", values.ValueClass)
    return calls


def test_serve_hands_the_settings_and_a_fresh_metrics_directory_to_the_host(
        fake_host, tmp_path):
    with pytest.raises(SystemExit) as stop:
        cli.main(["--model-dir", str(tmp_path), "--workers", "3"])
    assert stop.value.code == 7  # the host's exit status is serve's
    (config, metrics_dir, existed), = fake_host
    assert config.workers == 3 and config.model_dir == str(tmp_path)
    assert existed and not os.path.exists(metrics_dir)  # made for the host, removed after


def test_an_operators_metrics_directory_is_kept(fake_host, tmp_path, monkeypatch):
    mine = tmp_path / "metrics"
    mine.mkdir()
    (mine / "counter_1.db").write_bytes(b"old")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(mine))
    with pytest.raises(SystemExit):
        cli.main(["--model-dir", str(tmp_path)])
    assert fake_host[0][1] == str(mine) and mine.is_dir()
    assert not (mine / "counter_1.db").exists()  # an earlier run's counts are not ours


def test_metrics_off_hands_no_directory(fake_host, tmp_path):
    with pytest.raises(SystemExit):
        cli.main(["--model-dir", str(tmp_path), "--no-metrics"])
    assert fake_host[0][1] is None


def test_bad_settings_exit_2_before_any_host(fake_host, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["--model-dir", str(tmp_path), "--workers", "zero"])
    assert stop.value.code == 2 and fake_host == []
    assert capsys.readouterr().err.startswith("serve: error: ")


def test_every_engine_names_a_host_with_run():
    import importlib

    for name, engine in config.ENGINES.items():
        assert callable(importlib.import_module(engine.module).run), name
        assert engine.carries <= config.CAPABILITIES, name
