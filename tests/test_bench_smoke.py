"""Smoke test of the benchmark machinery (``python -m bench``).

It runs the ``codec`` figure with ``--quick`` in a subprocess and checks that
the command works and writes its result files.  It never asserts anything
about speed: the figures of a quick run on a test machine mean nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytest.importorskip("paho.mqtt.client", reason="the codec figure compares with paho-mqtt")


def _run_bench(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    # ``bench`` is a directory of the repository, not an installed package.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_quick_codec_run_writes_results(tmp_path: Path) -> None:
    proc = _run_bench(tmp_path, "--quick", "--only", "codec")
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"

    data = json.loads((tmp_path / "bench-results.json").read_text(encoding="utf-8"))
    assert data["settings"]["quick"] is True
    figure = data["figures"]["codec"]
    assert figure["status"] == "ok", figure["reason"]
    assert figure["unit"] == "ops/s"
    rounds = figure["rounds"]
    assert rounds >= 1

    contestants = figure["contestants"]
    assert {"iotdev_mqtt", "paho-mqtt"} <= set(contestants)
    assert contestants["iotdev_mqtt"]["ours"] is True
    for result in contestants.values():
        assert len(result["samples"]) == rounds
        assert result["min"] <= result["median"] <= result["max"]
        assert result["min"] > 0

    ratio = figure["ratios"]["paho-mqtt"]
    assert ratio["ours"] == "iotdev_mqtt"
    assert len(ratio["per_round"]) == rounds
    assert ratio["min"] <= ratio["median"] <= ratio["max"]
    assert ratio["min"] > 0

    markdown = (tmp_path / "bench-results.md").read_text(encoding="utf-8")
    assert "## codec" in markdown
    assert "paho-mqtt" in markdown


def test_unknown_figure_is_a_usage_error(tmp_path: Path) -> None:
    proc = _run_bench(tmp_path, "--quick", "--only", "no-such-figure")
    assert proc.returncode == 2
    assert "no-such-figure" in proc.stderr
    assert not (tmp_path / "bench-results.json").exists()


def test_harness_alternates_and_pairs_ratios_by_round() -> None:
    from bench.harness import Contestant, Figure, Session, Skip, run_figure

    calls: list[str] = []
    values = {"ours": iter([2.0, 2.0, 2.0, 9.0, 3.0]), "peer": iter([1.0, 1.0, 4.0, 3.0, 1.0])}

    def contestant(name: str) -> Contestant:
        def run(work: int) -> float:
            calls.append(name)
            return next(values[name])

        return Contestant(name, run, ours=name == "ours")

    def setup(session: Session) -> list[Contestant]:
        return [contestant("ours"), contestant("peer")]

    figure = Figure("t", "test", "ms", setup, work=1, quick_work=1, kind="value",
                    higher_is_better=False)
    result = run_figure(figure, rounds=4, quick=True)
    assert result.status == "ok", result.reason
    assert calls == ["ours", "peer"] * 5  # one warm-up, then four alternating rounds
    (ratio,) = result.ratios
    assert ratio.per_round == [0.5, 2.0, 1 / 3, 1 / 3]  # peer / ours: lower is better

    def skip(session: Session) -> list[Contestant]:
        raise Skip("no broker here")

    skipped = run_figure(Figure("s", "skip", "ops/s", skip, 1, 1), rounds=1, quick=True)
    assert (skipped.status, skipped.reason) == ("skipped", "no broker here")
