"""The official `openai` SDK against the relay (driven by e2e::openai_sdk). Prints one JSON object: what each client
saw. The Rust test asserts on it; this script only fails on a crash.

Environment: SSEGATE_BASE (the relay's /v1 URL, direct or through nginx), SSEGATE_KEY (a client key), SSEGATE_MOCK
(the mock vendor's URL, for its counters).
"""

import asyncio
import json
import os
import time
import urllib.error
import urllib.request

import httpx
import openai
from httpx_sse import connect_sse
from openai import AsyncOpenAI, OpenAI

BASE = os.environ["SSEGATE_BASE"]
KEY = os.environ["SSEGATE_KEY"]
MOCK = os.environ["SSEGATE_MOCK"]
# Eight content chunks, 60 ms apart: a buffering relay would deliver them in one burst.
PACED = {"x-mock-chunks": "8", "x-mock-interval-ms": "60"}
MESSAGES = [{"role": "user", "content": "你好"}]


def counter(name):
    with urllib.request.urlopen(f"{MOCK}/stats") as res:
        return json.load(res)[name]


def wait_for(name, at_least, timeout_ms=5000):
    """The mock's long poll: true once its counter `name` reached `at_least`."""
    url = f"{MOCK}/stats/wait?counter={name}&at_least={at_least}&timeout_ms={timeout_ms}"
    try:
        with urllib.request.urlopen(url) as res:
            return res.status == 200
    except urllib.error.HTTPError:
        return False


def unstamp(text):
    """Drops the mock's `ts=<nanos>;` emission stamp."""
    return text.split(";", 1)[1] if text.startswith("ts=") else text


def sync_stream():
    client = OpenAI(base_url=BASE, api_key=KEY, max_retries=0)
    stream = client.chat.completions.create(
        model="mock-1",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers=PACED,
    )
    start, arrivals, text, usage = time.monotonic(), [], "", None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage.model_dump()
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append((time.monotonic() - start) * 1000)
            text += unstamp(chunk.choices[0].delta.content)
    return {"arrivals_ms": arrivals, "text": text, "usage": usage}


async def async_stream():
    client = AsyncOpenAI(base_url=BASE, api_key=KEY, max_retries=0)
    try:
        stream = await client.chat.completions.create(
            model="mock-1", messages=MESSAGES, stream=True, extra_headers=PACED
        )
        chunks, text = 0, ""
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                chunks += 1
                text += unstamp(chunk.choices[0].delta.content)
        return {"chunks": chunks, "text": text}
    finally:
        await client.close()


def wrong_key():
    client = OpenAI(base_url=BASE, api_key="not-a-client-key", max_retries=0)
    try:
        client.chat.completions.create(model="mock-1", messages=MESSAGES, stream=True)
    except openai.AuthenticationError as e:
        return {"error": "AuthenticationError", "status": e.status_code, "body": e.body}
    except openai.APIError as e:
        return {"error": type(e).__name__}
    return {"error": None}


def close_cancels():
    """Reads three chunks of a long answer, then `stream.close()`: the vendor must see the cancel."""
    client = OpenAI(base_url=BASE, api_key=KEY, max_retries=0)
    before = counter("streams_cancelled")
    stream = client.chat.completions.create(
        model="mock-1",
        messages=MESSAGES,
        stream=True,
        extra_headers={"x-mock-chunks": "400", "x-mock-interval-ms": "25"},
    )
    read = 0
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            read += 1
        if read == 3:
            break
    stream.close()
    return {"read": read, "cancelled": wait_for("streams_cancelled", before + 1)}


def responses_stream():
    client = OpenAI(base_url=BASE, api_key=KEY, max_retries=0)
    stream = client.responses.create(model="mock-1", input="你好", stream=True, extra_headers=PACED)
    types, text = [], ""
    for event in stream:
        types.append(event.type)
        if event.type == "response.output_text.delta":
            text += unstamp(event.delta)
    return {"types": types, "text": text}


# The vendor drops the connection after three of six content chunks.
RESET = {"x-mock-chunks": "6", "x-mock-reset-after": "3", "x-mock-interval-ms": "10"}


def raised(events):
    """Runs `events` (a stream's iterator) to its end: what it yielded and what it raised."""
    seen = 0
    try:
        for _ in events:
            seen += 1
    except openai.APIError as e:
        return {
            "seen": seen,
            "raised": type(e).__name__,
            "api_error": isinstance(e, openai.APIError),
            "message": e.message,
            "code": e.code,
            "type": e.type,
        }
    return {"seen": seen, "raised": None}


def chat_reset():
    client = OpenAI(base_url=BASE, api_key=KEY, max_retries=0)
    return raised(
        client.chat.completions.create(
            model="mock-1", messages=MESSAGES, stream=True, extra_headers=RESET
        )
    )


def responses_reset():
    client = OpenAI(base_url=BASE, api_key=KEY, max_retries=0)
    return raised(
        client.responses.create(model="mock-1", input="你好", stream=True, extra_headers=RESET)
    )


def raw_sse_reset():
    """A plain SSE client (httpx-sse): what events a failed stream shows it."""
    body = {"model": "mock-1", "stream": True, "messages": MESSAGES}
    headers = {"authorization": f"Bearer {KEY}", **RESET}
    with httpx.Client(timeout=30) as c:
        with connect_sse(c, "POST", f"{BASE}/chat/completions", json=body, headers=headers) as source:
            events = [(e.event, e.data) for e in source.iter_sse()]
    errors = [json.loads(d) for (name, d) in events if name == "error"]
    return {
        "events": len(events),
        "errors": errors,
        "done": any(d.strip() == "[DONE]" for (_, d) in events),
    }


print(
    json.dumps(
        {
            "version": openai.__version__,
            "sync": sync_stream(),
            "async": asyncio.run(async_stream()),
            "wrong_key": wrong_key(),
            "close": close_cancels(),
            "responses": responses_stream(),
            "chat_reset": chat_reset(),
            "responses_reset": responses_reset(),
            "raw_sse_reset": raw_sse_reset(),
        },
        ensure_ascii=False,
    )
)
