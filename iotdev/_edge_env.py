"""``create_from_edge_environment()``: a module's configuration from the
environment the IoT Edge runtime gives it, as azure-iot-device v2 reads it.

* The runtime's variables: ``IOTEDGE_IOTHUBHOSTNAME`` (the hub: user name and
  token resource), ``IOTEDGE_GATEWAYHOSTNAME`` (edgeHub: where TLS, MQTT and
  ``invoke_method`` go), ``IOTEDGE_DEVICEID``, ``IOTEDGE_MODULEID``,
  ``IOTEDGE_MODULEGENERATIONID``, ``IOTEDGE_WORKLOADURI``,
  ``IOTEDGE_APIVERSION``.  The trust bundle and every SAS signature come from
  the workload API (``_workload.py``).
* Without them, the local-debug pair of Visual Studio (Code):
  ``EdgeHubConnectionString`` (a module's, with ``GatewayHostName``) and
  ``EdgeModuleCACertificateFile`` (the PEM to trust); tokens are made from the
  string's key.

No I/O beyond reading the environment, the CA file and the workload API."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

from ._auth import ConnectionString
from ._hubclient import HubConfig, build_config

__all__ = ["EDGE_VARIABLES", "config_from_edge_environment"]

EDGE_VARIABLES = ("IOTEDGE_IOTHUBHOSTNAME", "IOTEDGE_DEVICEID", "IOTEDGE_MODULEID",
                  "IOTEDGE_GATEWAYHOSTNAME", "IOTEDGE_MODULEGENERATIONID",
                  "IOTEDGE_WORKLOADURI", "IOTEDGE_APIVERSION")
_EXCLUDED = ("server_verification_cert", "gateway_hostname")


def config_from_edge_environment(environ: Mapping[str, str] | None = None,
                                 **kwargs: Any) -> HubConfig:
    """The configuration of ``create_from_edge_environment(**kwargs)``.

    Raises:
        TypeError: an unknown option, or one v2 refuses here
            (``server_verification_cert``, ``gateway_hostname``: the
            environment gives them).
        OSError: ``"IoT Edge environment not configured correctly"`` (neither
            set of variables), or the workload API failed (``IoTEdgeError``,
            naming the status); a missing CA file (``FileNotFoundError``).
        ValueError: an unusable debug connection string or CA file, or a
            token that cannot be signed (``IoTEdgeError`` is both).
    """
    env = os.environ if environ is None else environ
    for name in _EXCLUDED:
        if name in kwargs:
            raise TypeError(f"Unsupported keyword argument: {name!r} (the IoT Edge "
                            "environment gives it)")
    if all(name in env for name in EDGE_VARIABLES):
        return _from_runtime(env, kwargs)
    try:
        connection_string = env["EdgeHubConnectionString"]
        ca_file = env["EdgeModuleCACertificateFile"]
    except KeyError as exc:
        raise OSError("IoT Edge environment not configured correctly") from exc
    try:
        with open(ca_file, encoding="utf-8") as file:
            ca_pem = file.read()
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"Invalid CA certificate file {ca_file!r}: {exc}") from exc
    cs = ConnectionString.parse(connection_string)
    if not cs.module_id or not cs.gateway_host_name or not cs.shared_access_key:
        raise ValueError("Invalid Connection String: EdgeHubConnectionString needs ModuleId, "
                         "GatewayHostName and SharedAccessKey")
    config = build_config(hostname=cs.host_name, device_id=cs.device_id,
                          module_id=cs.module_id, symmetric_key=cs.shared_access_key,
                          server_verification_cert=ca_pem,
                          gateway_hostname=cs.gateway_host_name, **kwargs)
    config.edge = True
    return config


def _from_runtime(env: Mapping[str, str], kwargs: dict[str, Any]) -> HubConfig:
    from ._auth import default_user_agent
    from ._workload import Workload, build_sas_token

    workload = Workload(env["IOTEDGE_WORKLOADURI"], env["IOTEDGE_MODULEID"],
                        env["IOTEDGE_MODULEGENERATIONID"], env["IOTEDGE_APIVERSION"],
                        user_agent=default_user_agent())
    ca_pem = workload.trust_bundle()  # IoTEdgeError (an OSError) naming the status
    config = build_config(hostname=env["IOTEDGE_IOTHUBHOSTNAME"],
                          device_id=env["IOTEDGE_DEVICEID"],
                          module_id=env["IOTEDGE_MODULEID"], server_verification_cert=ca_pem,
                          gateway_hostname=env["IOTEDGE_GATEWAYHOSTNAME"], **kwargs)
    config.workload, config.edge = workload, True
    # As v2 (its RenewableSasToken signs at creation): a runtime that cannot
    # sign fails here, with an error that is a ValueError as v2's is.  The
    # token serves a CONNECT that follows soon (``HubConfig.presigned``).
    token, expiry = build_sas_token(config.resource_uri(), workload, config.sastoken_ttl)
    config.presigned = (token, expiry, time.time())
    return config
