"""Shared fixtures: a throwaway CA and real mosquitto brokers on loopback.

Fixtures (helpers and their attributes are documented in ``tests/_broker.py``):

* ``test_ca`` (session): ``CertAuthority`` with ``ca_cert``, ``server_cert``,
  ``server_key`` (Paths), the ``*_pem`` strings, ``issue_client_cert(cn)`` and
  ``ssl_context()``.
* ``mosquitto`` (one broker for the session; tests keep apart by unique client
  ids and topics, and must not stop or restart it): ``Mosquitto`` with ``host``,
  ``tcp_port``, ``tls_port``, ``ws_port``, ``ca_cert``, ``log_path``, ``open()``.
* ``mosquitto_factory`` (function): ``make(extra_config="", start=True)`` returns a
  fresh ``Mosquitto`` of the test's own, stopped at teardown; for ``restart()``.
* ``mosquitto_clients`` (session): ``MosquittoClients`` with ``pub``/``sub`` paths,
  ``publish(...)`` and ``subscribe(...)``.

A missing ``mosquitto``/``mosquitto_pub``/``mosquitto_sub`` skips the test, or
fails it when ``CI`` is ``true`` or ``1``.  When a test that used a broker fails,
the tail of the broker's log is added to the report.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests._broker import (
    CertAuthority,
    Mosquitto,
    MosquittoClients,
    require_program,
)

_BROKER_FIXTURES = {"mosquitto", "mosquitto_factory", "mosquitto_clients"}


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> CertAuthority:
    """A CA and a ``localhost``/``127.0.0.1`` server certificate, made at run time."""
    return CertAuthority(tmp_path_factory.mktemp("test-ca"))


@pytest.fixture(scope="session")
def mosquitto_executable() -> str:
    return require_program("mosquitto")


@pytest.fixture(scope="session")
def _mosquitto_session(
    mosquitto_executable: str, test_ca: CertAuthority, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Mosquitto]:
    broker = Mosquitto(mosquitto_executable, tmp_path_factory.mktemp("mosquitto"), test_ca)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def mosquitto(_mosquitto_session: Mosquitto) -> Mosquitto:
    """The session's broker, running (started again if an earlier test killed it)."""
    if not _mosquitto_session.running:
        _mosquitto_session.start()
    return _mosquitto_session


class _Factory:
    def __init__(self, executable: str, ca: CertAuthority, directory: Path) -> None:
        self.executable = executable
        self.ca = ca
        self.directory = directory
        self.brokers: list[Mosquitto] = []

    def __call__(self, *, extra_config: str = "", start: bool = True) -> Mosquitto:
        broker = Mosquitto(
            self.executable,
            self.directory / f"mosquitto-{len(self.brokers)}",
            self.ca,
            extra_config=extra_config,
        )
        self.brokers.append(broker)
        if start:
            broker.start()
        return broker

    def stop_all(self) -> None:
        for broker in self.brokers:
            broker.stop()


@pytest.fixture
def mosquitto_factory(
    mosquitto_executable: str, test_ca: CertAuthority, tmp_path: Path
) -> Iterator[Callable[..., Mosquitto]]:
    """``make(extra_config="", start=True) -> Mosquitto``: brokers owned by one test."""
    factory = _Factory(mosquitto_executable, test_ca, tmp_path)
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.fixture(scope="session")
def mosquitto_clients() -> MosquittoClients:
    return MosquittoClients(
        pub=require_program("mosquitto_pub"), sub=require_program("mosquitto_sub")
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that use a broker fixture get the ``mosquitto`` marker even if unmarked."""
    for item in items:
        if _BROKER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.mosquitto)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Any:
    report = yield
    if report.failed:
        funcargs = getattr(item, "funcargs", {})
        brokers: list[Mosquitto] = []
        for value in funcargs.values():
            if isinstance(value, Mosquitto):
                brokers.append(value)
            elif isinstance(value, _Factory):
                brokers.extend(value.brokers)
        for broker in brokers:
            report.sections.append(
                (f"mosquitto log ({broker.log_path})", broker.log_tail(80))
            )
    return report
