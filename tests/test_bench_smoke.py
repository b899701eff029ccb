"""Smoke test of the benchmark machinery (``python -m bench``).

It runs the figures with ``--quick`` in a subprocess (tiny work: a few
messages, ten devices) and checks that the command works and writes its
result files, and it checks the harness's pairing, targets and report pieces
directly.  It never asserts anything about speed: the figures of a quick run on
a test machine mean nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests._ci import require_module

REPO = Path(__file__).resolve().parent.parent

require_module("paho.mqtt.client", "the codec figure compares with paho-mqtt")


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

    (ratio,) = [r for r in figure["ratios"] if r["peer"] == "paho-mqtt"]
    assert ratio["ours"] == "iotdev_mqtt"
    assert ratio["metric"] is None
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


# Figures that need the benchmark's own brokers (127.0.0.149:8883/443 and the
# emulator on 127.0.0.150:8883): another bench run on this machine may hold the
# ports, and mosquitto may be missing; then they skip, and say why.
_BROKER_FIGURES = ("tls-1by1", "wss-pipelined", "c2d-latency", "rss-threads", "scale-100")
_ACCEPTED_SKIPS = ("busy", "not installed", "not permitted", "not a local address")


@pytest.mark.mosquitto
def test_quick_run_of_the_broker_figures(tmp_path: Path) -> None:
    require_module("azure.iot.device", "the device figures compare with it")
    proc = _run_bench(tmp_path, "--quick", "--no-chart", "--only", *_BROKER_FIGURES,
                      "import")
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    data = json.loads((tmp_path / "bench-results.json").read_text(encoding="utf-8"))
    assert data["schema"] == 2
    for name in (*_BROKER_FIGURES, "import"):
        figure = data["figures"][name]
        if figure["status"] == "skipped":
            assert any(word in figure["reason"] for word in _ACCEPTED_SKIPS), figure["reason"]
            continue
        assert figure["status"] == "ok", figure["reason"]
        for result in figure["contestants"].values():
            assert len(result["samples"]) == figure["rounds"]
            assert result["min"] > 0
        assert figure["ratios"], name
    scale = data["figures"]["scale-100"]
    if scale["status"] == "ok":
        ours = scale["contestants"]["iotdev asyncio"]
        assert ours["extra"]["connected"]["min"] == scale["work"]
        assert ours["extra"]["msgs_per_s"]["min"] > 0
        assert ours["extra"]["threads"]["max"] == 1  # no thread per client
    one_by_one = data["figures"]["tls-1by1"]
    if one_by_one["status"] == "ok":
        pairs = {(r["ours"], r["peer"]) for r in one_by_one["ratios"]}
        assert pairs == {("iotdev MQTTClient sync", "paho-mqtt"),
                         ("iotdev device sync", "azure-iot-device sync"),
                         ("iotdev device asyncio", "azure-iot-device asyncio")}
        assert {t["label"] for t in one_by_one["targets"]}


def test_harness_pairs_each_ours_with_its_peers_and_checks_targets(tmp_path: Path) -> None:
    from bench.harness import (
        README_BEGIN,
        README_END,
        Contestant,
        Figure,
        Metric,
        Session,
        Target,
        Value,
        readme_block,
        results_json,
        results_markdown,
        run_figure,
        update_readme,
    )

    samples = {"a": 10.0, "b": 30.0, "p": 5.0, "q": 10.0}

    def constant(name: str) -> Contestant:
        ours = name in "ab"
        versus = {"a": ("p",), "b": ("q",)}.get(name, ())
        return Contestant(name, lambda work: Value(samples[name], {"p99": samples[name] * 2}),
                          ours=ours, versus=versus, work_scale=0.5 if name == "q" else 1.0)

    def setup(session: Session) -> list[Contestant]:
        return [constant(n) for n in "apbq"]

    figure = Figure(
        "pairs", "pairing", "ms", setup, work=4, quick_work=1, kind="value",
        higher_is_better=False, metrics=(Metric("p99", "ms"),),
        targets=(Target("a at least 2x better than p? no", "a", "p", at_least=2.0),
                 Target("b under 40 ms", "b", at_most=40.0),
                 Target("b p99 over 100 ms", "b", metric="p99", at_least=100.0)))
    result = run_figure(figure, rounds=2, quick=False)
    assert result.status == "ok", result.reason
    pairs = {(r.ours, r.peer, r.metric): r.summary.median for r in result.ratios}
    assert pairs == {("a", "p", None): 0.5, ("a", "p", "p99"): 0.5,
                     ("b", "q", None): 1 / 3, ("b", "q", "p99"): 1 / 3}
    assert [t.met for t in result.targets] == [False, True, False]
    assert result.contestant("q") is not None and result.contestant("q").work == 2  # type: ignore[union-attr]

    data = results_json([result], rounds=2, quick=False, argv=[])
    markdown = results_markdown([result], data)
    assert "**missed**" in markdown and "b under 40 ms" in markdown
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{README_BEGIN}\nold\n{README_END}\n\n## next\n",
                      encoding="utf-8")
    assert update_readme(readme, readme_block([result], data, "chart.png", 12.0))
    text = readme.read_text(encoding="utf-8")
    assert "old" not in text and "chart.png" in text and text.endswith("## next\n")
    assert text.count(README_BEGIN) == 1 and text.count(README_END) == 1
    no_markers = tmp_path / "OTHER.md"
    no_markers.write_text("nothing\n", encoding="utf-8")
    assert not update_readme(no_markers, "block")


def test_chart_is_drawn(tmp_path: Path) -> None:
    # Skipped by `make test` on purpose: matplotlib (the bench extra, ~60 MB with
    # numpy) is installed by `make bench`, which draws the chart with it.
    pytest.importorskip("matplotlib", reason="matplotlib comes with the bench extra "
                        "(`make bench`), not with `make test`")
    from bench._chart import draw
    from bench.harness import Contestant, Figure, Session, run_figure

    def setup(session: Session) -> list[Contestant]:
        return [Contestant("ours", lambda work: work, ours=True),
                Contestant("peer", lambda work: work)]

    figure = Figure("t", "throughput", "ops/s", setup, work=10, quick_work=1,
                    chart="throughput")
    result = run_figure(figure, rounds=2, quick=True)
    assert draw([result], tmp_path / "chart.png", subtitle="test")
    assert (tmp_path / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
