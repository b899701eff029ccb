"""The conformance checker itself: its catalogue, selection, the CLI and its
report files, and its behaviour against servers that answer nonsense."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from iotdev.conformance import (
    CHECKS,
    STATEMENTS,
    Target,
    compare_profiles,
    run_checks,
    select_checks,
)
from iotdev.conformance._cli import main, parse_target
from tests._broker import Mosquitto

HOST = "127.0.0.154"


def test_catalogue_names_known_statements() -> None:
    ids = [c.id for c in CHECKS]
    assert len(ids) == len(set(ids))
    for c in CHECKS:
        assert c.statements, c.id
        unknown = set(c.statements) - set(STATEMENTS)
        assert not unknown, f"{c.id} names {unknown}, not server statements of Appendix B"
    named = {s for c in CHECKS for s in c.statements}
    untestable = {s for s, (_, reason) in STATEMENTS.items() if reason}
    # every server statement is either named by a check or explained as untestable
    assert set(STATEMENTS) - named - untestable == set()


def test_select_by_prefix_glob_and_statement() -> None:
    assert {c.id for c in select_checks(["ping"])} == {"ping.pingresp"}
    assert all(c.id.startswith("malformed.") for c in select_checks(["malformed.*"]))
    by_statement = select_checks(statements=["3.1.0-1"])
    assert "malformed.first-packet-not-connect" in {c.id for c in by_statement}
    assert all("MQTT-3.1.0-1" in c.statements for c in by_statement)
    with pytest.raises(ValueError, match="matches no check"):
        select_checks(["nothing-like-this"])
    with pytest.raises(ValueError, match="no check exercises"):
        select_checks(statements=["MQTT-9.9.9-9"])


@pytest.mark.parametrize(("text", "expected"), [
    ("broker", ("broker", 1883)), ("broker:1884", ("broker", 1884)),
    ("[::1]:8883", ("::1", 8883)), ("::1", ("::1", 1883)),
])
def test_parse_target(text: str, expected: tuple[str, int]) -> None:
    assert parse_target(text, 1883) == expected


def test_parse_target_refuses_bad_ports() -> None:
    with pytest.raises(ValueError):
        parse_target("broker:0", 1883)
    with pytest.raises(ValueError):
        parse_target("broker:http", 1883)


def test_cli_reports_and_profiles(mosquitto: Mosquitto, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    paths = {k: tmp_path / f"report.{k}" for k in ("json", "xml", "profile")}
    code = main([f"{mosquitto.host}:{mosquitto.tcp_port}", "--select", "connect.accepted",
                 "--select", "malformed.pingreq-flags", "--select", "subscribe.overlapping",
                 "--timeout", "1.5", "--json", str(paths["json"]), "--junit",
                 str(paths["xml"]), "--profile-out", str(paths["profile"]),
                 "--broker-name", "mosquitto"])
    out = capsys.readouterr()
    assert code == 1  # mosquitto 2.0.11 answers a PINGREQ with flags 0001
    assert "FAIL malformed.pingreq-flags" in out.err  # progress lines
    assert "breaks [MQTT-2.2.2-2]" in out.out and "c1 -> c1 00" in out.out
    data = json.loads(paths["json"].read_text())
    assert [c["outcome"] for c in data["checks"]] == ["passed", "failed", "optional"]
    assert data["checks"][1]["statement_broken"] == "MQTT-2.2.2-2"
    assert data["checks"][1]["exchanges"][-1]["hex"] in ("d000", "")
    assert data["coverage"]["by_section"]["2"]["failed"] == 1
    suite = ET.fromstring(paths["xml"].read_text())
    assert [c.get("name") for c in suite.findall("testcase")] == [
        "connect.accepted", "malformed.pingreq-flags", "subscribe.overlapping"]
    profile = json.loads(paths["profile"].read_text())
    assert profile["broker"] == "mosquitto"
    assert profile["choices"] == {"subscribe.overlapping": "one-copy"}
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"broker": "other", "choices": {
        "subscribe.overlapping": "copy-per-subscription"}, "outcomes": {
        "connect.accepted": "passed", "malformed.pingreq-flags": "passed",
        "subscribe.overlapping": "optional"}}))
    table = compare_profiles([paths["profile"], other])
    assert "one-copy" in table and "copy-per-subscription" in table
    assert "malformed.pingreq-flags" in table  # differs: failed vs passed
    assert "connect.accepted" not in table  # same everywhere, no choice


def test_cli_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--select", "no-such-check", "localhost"]) == 2
    assert main([]) == 2
    assert main(["localhost:99999"]) == 2
    assert "iotdev-mqtt-check:" in capsys.readouterr().err


def test_cli_unreachable_broker_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    sock = socket.socket()
    sock.bind((HOST, 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    assert main([f"{HOST}:{port}", "--select", "ping", "-q"]) == 2
    assert "cannot reach the broker" in capsys.readouterr().err


def test_console_script_lists_checks() -> None:
    script = Path(sys.executable).with_name("iotdev-mqtt-check")
    done = subprocess.run([str(script), "--list", "--statement", "MQTT-3.1.0-2"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "malformed.second-connect" in done.stdout


# ----------------------------------------------------------------- hostile servers


def _serve(behaviour: Callable[[socket.socket], None]) -> Iterator[int]:
    listener = socket.socket()
    listener.bind((HOST, 0))
    listener.listen(64)
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=_guarded, args=(behaviour, conn), daemon=True).start()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        listener.close()
        thread.join(5)


def _guarded(behaviour: Callable[[socket.socket], None], conn: socket.socket) -> None:
    try:
        conn.settimeout(5)
        behaviour(conn)
    except OSError:
        pass
    finally:
        conn.close()


def _garbage(conn: socket.socket) -> None:
    conn.recv(65536)
    conn.sendall(bytes(range(256)) * 4)


def _silent(conn: socket.socket) -> None:
    while conn.recv(65536):
        pass


def _accept_then_garbage(conn: socket.socket) -> None:
    conn.recv(65536)
    conn.sendall(bytes.fromhex("20 02 00 00 90 03 00 01 07 ff ff ff ff ff"))


def _closes(conn: socket.socket) -> None:
    conn.shutdown(socket.SHUT_RDWR)


@pytest.mark.parametrize("behaviour", [_garbage, _silent, _accept_then_garbage, _closes],
                         ids=["garbage", "silent", "connack-then-garbage", "closes"])
def test_checker_survives_hostile_servers(behaviour: Callable[[socket.socket], None]) -> None:
    for port in _serve(behaviour):
        chosen = select_checks(["connect.accepted", "connect.takeover", "publish.qos1",
                                "session.resume", "malformed.second-connect",
                                "robust.partial-connect", "subscribe.suback"])
        report = run_checks(Target(HOST, port, answer_timeout=0.3, quiet_timeout=0.1),
                            checks=chosen, jobs=3)
        assert len(report.results) == len(chosen)
        for r in report.results:
            assert r.outcome in ("passed", "failed", "optional", "skipped")
            assert not r.message.startswith("error in the check"), r
        assert report.outcomes()["connect.accepted"] == "failed"


def test_readme_example_runs(mosquitto: Mosquitto, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    """The README's example (also run as written by tests/test_readme.py),
    here with its output checked: no check of its selection fails on mosquitto."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("## The MQTT conformance checker", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert "port=8883, tls=True, ca=\"ca.pem\"" in code
    code = code.replace("port=8883", f"port={mosquitto.tls_port}")
    code = code.replace('ca="ca.pem"', f"ca={str(mosquitto.ca_cert)!r}")
    exec(compile(code, "README.md (conformance checker)", "exec"), {})
    out = capsys.readouterr().out
    assert "MQTT 3.1.1 conformance of" in out and "failed: 0" in out

def test_malformed_inputs_are_the_shared_vectors() -> None:
    """Rows citing an M-vector send its bytes (with client id "p"; CONNECTs
    differ only in keep-alive, 60 here and 10 in the vectors)."""
    from iotdev.conformance._checks_malformed import MALFORMED_INPUTS

    data = json.loads((Path(__file__).parent / "data" / "mqtt-3.1.1-vectors.json").read_text())
    vectors = {v["id"]: bytes.fromhex(v["hex"].replace(" ", "")) for v in data["malformed"]}
    # The reference's M42 announces remaining length 0x14 for a 0x15-byte body
    # (its last byte falls outside the packet); we send the intended packet.
    assert vectors["M42"][1] == 0x14 and len(vectors["M42"]) - 2 == 0x15
    vectors["M42"] = b"\x10\x15" + vectors["M42"][2:]
    compared = 0
    for check_id, (title, phase, build) in MALFORMED_INPUTS.items():
        if "(M" not in title:
            continue
        vector = vectors[title.split("(M", 1)[1].split(")", 1)[0].join(("M", ""))]
        sent = build("p")
        if phase == "before" and sent[0] & 0xF0 == 0x10:
            sent = sent[:10] + vector[10:12] + sent[12:]
        assert sent == vector, f"{check_id}: {sent.hex(' ')} != {vector.hex(' ')}"
        compared += 1
    assert compared >= 45
