"""Upload a file (v2's upload_to_blob sample, without azure-storage-blob).

v2's two calls, get_storage_info_for_blob and notify_blob_upload_status, around
the blob PUT done with the standard library.  (iotdev's own
``client.upload_blob(name, data)`` does all three in one call.)

    python upload_to_blob.py [FILE]    # default: this script

Environment: see client_options.py, plus IOTHUB_HTTPS_PORT, the emulator's device
port (its WebSocket port) when it is not 443.
"""

import http.client
import os
import ssl
import sys

from client_options import client_options

from iotdev import IoTHubDeviceClient


def main() -> None:
    path = sys.argv[1] if len(sys.argv) > 1 else __file__
    options = client_options()
    if os.getenv("IOTHUB_HTTPS_PORT"):
        options["https_port"] = int(os.environ["IOTHUB_HTTPS_PORT"])
    client = IoTHubDeviceClient.create_from_connection_string(
        os.environ["IOTHUB_DEVICE_CONNECTION_STRING"], **options)
    try:
        info = client.get_storage_info_for_blob(os.path.basename(path))
        context = ssl.create_default_context(cadata=options.get("server_verification_cert"))
        blob = http.client.HTTPSConnection(info["hostName"], context=context, timeout=30)
        with open(path, "rb") as f:
            data = f.read()
        blob.request("PUT", f"/{info['containerName']}/{info['blobName']}{info['sasToken']}",
                     body=data, headers={"x-ms-blob-type": "BlockBlob"})
        response = blob.getresponse()
        response.read()
        ok = 200 <= response.status < 300
        client.notify_blob_upload_status(info["correlationId"], ok, response.status,
                                         f"{response.status} {response.reason}")
        print(f"uploaded {len(data)} bytes to {info['blobName']}: {response.status}")
        if not ok:
            sys.exit(1)
    finally:
        client.shutdown()


if __name__ == "__main__":
    main()
