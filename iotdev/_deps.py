"""Clear errors for a missing optional (or ``--no-deps``-skipped) dependency.

Each feature that needs a third-party package checks for it where the user
asks for the feature (client creation, ``ProxyOptions(...)``, the upload call,
``iotdev-hub serve``), so a missing package is a ``MissingDependencyError``
naming the option and what to install, never a ``ModuleNotFoundError`` deep in
an I/O thread.  ``importlib.util.find_spec`` looks without importing: the
package is still loaded only when a connection needs it.
"""

from __future__ import annotations

import sys

__all__ = ["REQUIREMENTS", "MissingDependencyError", "require"]

# What pip should install for each package iotdev uses (pyproject.toml).
REQUIREMENTS = {
    "h11": "h11>=0.16,<1",
    "wsproto": "wsproto>=1.2,<2",
    "certifi": "certifi>=2024.7.4",
    "cryptography": "iotdev[emulator]",
}


class MissingDependencyError(ModuleNotFoundError):
    """A feature was asked for whose package is not installed.

    A ``ModuleNotFoundError`` (so an ``ImportError``), with ``name`` set to the
    missing package and ``feature`` to what needed it.
    """

    def __init__(self, message: str, *, name: str, feature: str) -> None:
        super().__init__(message, name=name)
        self.feature = feature


def require(package: str, feature: str) -> None:
    """Raise ``MissingDependencyError`` unless ``package`` can be imported.

    Args:
        package: the top-level import name (``"wsproto"``).
        feature: what the user asked for, as they wrote it
            (``"websockets=True"``).

    Raises:
        MissingDependencyError: the package is not installed; the message names
            the feature and the ``pip install`` argument that brings it.
    """
    if sys.modules.get(package) is not None:  # loaded (None: blocked)
        return
    from importlib.util import find_spec  # not on import: 3 modules for the client

    if find_spec(package) is not None:
        return
    what = REQUIREMENTS.get(package, package)
    if what.startswith("iotdev["):
        hint = f"pip install '{what}'"
    else:
        hint = (f"pip install '{what}' (it is a dependency of iotdev: was iotdev "
                "installed with --no-deps?)")
    raise MissingDependencyError(f"{feature} needs the {package!r} package, which is not "
                                 f"installed: {hint}", name=package, feature=feature)
