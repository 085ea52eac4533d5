"""The bolt-python side of `cargo bench --bench e2e -- bolt` (see BENCHMARKS.md).

What a Bolt app does with a mention: Bolt acknowledges the `app_mention` envelope itself, then
the listener posts a reply in the mention's thread. Nothing is stored. The reply echoes the
mention's text (without the `<@bot>` part), so the bench can match each answer to its mention.

Configuration from the environment (the bench sets it):
  SLACK_API_URL    the simulator's Web API, e.g. http://127.0.0.1:PORT/api/
  SLACK_APP_TOKEN  xapp-… (Socket Mode)
  SLACK_BOT_TOKEN  xoxb-…

Install: python3 -m pip install -r requirements.txt (slack_bolt, aiohttp, uvloop).
"""

import asyncio
import logging
import os
import re
import signal

import uvloop
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk.web.async_client import AsyncWebClient

MENTION = re.compile(r"<@[A-Z0-9]+(\|[^>]*)?>\s*")


async def main() -> None:
    logging.basicConfig(level=os.environ.get("BOLT_LOG", "WARNING"))
    # Popped: AsyncApp would also read SLACK_BOT_TOKEN, and warn that the client's wins.
    client = AsyncWebClient(
        token=os.environ.pop("SLACK_BOT_TOKEN"), base_url=os.environ["SLACK_API_URL"]
    )
    app = AsyncApp(client=client)

    @app.event("app_mention")
    async def on_mention(event, say):
        text = MENTION.sub("", event.get("text", "")).strip()
        await say(text=f"pong {text}", thread_ts=event.get("thread_ts") or event["ts"])

    handler = AsyncSocketModeHandler(app, os.environ["SLACK_APP_TOKEN"])
    await handler.connect_async()
    print("bolt-python: connected", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await handler.close_async()


if __name__ == "__main__":
    uvloop.run(main())
