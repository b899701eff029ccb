"""An IoT Edge sink module (azure-iot-device v2 code, asyncio: only the
import differs; its handlers are coroutines, which iotdev runs on the
client's loop).  It takes the messages routed to its input ``alerts``, sends
each upstream as telemetry with the sender's name, answers the direct method
``stats``, and stops at the message marked ``end``."""

import asyncio
import json

from iotdev import Message, MethodRequest, MethodResponse
from iotdev.aio import IoTHubModuleClient


async def main() -> None:
    client = IoTHubModuleClient.create_from_edge_environment()
    received: list[float] = []
    sending: list[asyncio.Future[None]] = []
    done = asyncio.Event()

    async def on_message(message: Message) -> None:  # started in arrival order
        if message.custom_properties.get("end") == "true":
            done.set()
            return
        reading = json.loads(message.data)
        received.append(reading["temperature"])
        upstream = Message(json.dumps({"alert": reading, "input": message.input_name,
                                       "from": message.custom_properties.get("$.cmid")}),
                           content_type="application/json", content_encoding="utf-8")
        sending.append(asyncio.ensure_future(client.send_message(upstream)))

    async def on_method(request: MethodRequest) -> None:
        payload = {"alerts": len(received), "max": max(received, default=None)}
        await client.send_method_response(
            MethodResponse.create_from_method_request(request, 200, payload))

    client.on_message_received = on_message
    client.on_method_request_received = on_method
    await client.connect()
    print("sink: ready", flush=True)
    await asyncio.wait_for(done.wait(), 60)
    await asyncio.gather(*sending)  # every alert acknowledged upstream
    print(f"sink: {len(received)} alerts sent upstream")
    await client.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
