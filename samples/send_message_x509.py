"""Send telemetry as an X.509 device (v2's send_message_x509 sample).

    HOSTNAME, DEVICE_ID, X509_CERT_FILE, X509_KEY_FILE, X509_PASS_PHRASE (optional)
    IOTHUB_CA_FILE, IOTHUB_PORT: as in client_options.py

With the emulator: ``Hub.add_x509_device(DEVICE_ID)`` issues the certificate
and key files from its CA.
"""

import os

from client_options import client_options

from iotdev import X509, IoTHubDeviceClient, Message


def main() -> None:
    x509 = X509(cert_file=os.environ["X509_CERT_FILE"], key_file=os.environ["X509_KEY_FILE"],
                pass_phrase=os.getenv("X509_PASS_PHRASE"))
    client = IoTHubDeviceClient.create_from_x509_certificate(
        x509=x509, hostname=os.environ["HOSTNAME"], device_id=os.environ["DEVICE_ID"],
        **client_options())
    client.connect()
    try:
        client.send_message(Message("hello from an X.509 device"))
        print("sent a message with X.509 authentication")
    finally:
        client.shutdown()


if __name__ == "__main__":
    main()
