"""The official `anthropic` and `google-genai` SDKs against the relay's anthropic and gemini routes (driven by
e2e::vendor_sdks). Prints one JSON object: what each client saw. The Rust test asserts on it; this script only
fails on a crash.

Environment: SSEGATE_BASE (the relay or nginx in front of it), SSEGATE_KEY (a client key).
"""

import json
import os
import time

import anthropic
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

BASE = os.environ["SSEGATE_BASE"]
KEY = os.environ["SSEGATE_KEY"]
# Eight content chunks, 60 ms apart: a buffering relay would deliver them in one burst.
PACED = {"x-mock-chunks": "8", "x-mock-interval-ms": "60"}
# Silences longer than the routes' 100 ms keep-alive interval: the SDKs read the relay's keep-alives.
SLOW = {"x-mock-chunks": "3", "x-mock-interval-ms": "350"}


def unstamp(text):
    """Drops the mock's `ts=<nanos>;` emission stamp."""
    return text.split(";", 1)[1] if text.startswith("ts=") else text


def claude(headers):
    # The relay takes its own client key as a bearer token: `auth_token`, not `api_key` (x-api-key).
    return anthropic.Anthropic(
        base_url=f"{BASE}/anthropic", auth_token=KEY, max_retries=0, default_headers=headers
    )


def claude_stream(headers):
    start, arrivals, text = time.monotonic(), [], ""
    with claude(headers).messages.stream(
        model="claude-3-5-haiku-latest",
        max_tokens=256,
        messages=[{"role": "user", "content": "你好"}],
    ) as stream:
        for piece in stream.text_stream:
            arrivals.append((time.monotonic() - start) * 1000)
            text += unstamp(piece)
        final = stream.get_final_message()
    return {
        "arrivals_ms": arrivals,
        "text": text,
        "usage": {"input": final.usage.input_tokens, "output": final.usage.output_tokens},
        "stop_reason": final.stop_reason,
    }


def claude_error(headers):
    seen = 0
    try:
        with claude(headers).messages.stream(
            model="claude-3-5-haiku-latest",
            max_tokens=256,
            messages=[{"role": "user", "content": "你好"}],
        ) as stream:
            for _ in stream.text_stream:
                seen += 1
    except anthropic.APIStatusError as e:
        body = e.body if isinstance(e.body, dict) else {}
        return {
            "raised": type(e).__name__,
            "status": e.status_code,
            "type": (body.get("error") or {}).get("type"),
            "message": str(e),
            "seen": seen,
        }
    return {"raised": None, "seen": seen}


def gemini(headers):
    # The route sits at the SDK's own path for one model; the relay's key goes as a bearer token.
    options = types.HttpOptions(
        base_url=f"{BASE}/gemini-sdk/",
        api_version="v1beta",
        headers={"authorization": f"Bearer {KEY}", **headers},
    )
    return genai.Client(api_key="unused-by-the-relay", http_options=options)


def gemini_stream(headers):
    start, arrivals, text, usage, finish, block = time.monotonic(), [], "", None, None, None
    client = gemini(headers)  # held: a client that is collected closes its connections mid-stream
    for chunk in client.models.generate_content_stream(model="gemini-2.0-flash", contents="你好"):
        if chunk.candidates:
            part = chunk.candidates[0]
            if part.content and part.content.parts and part.content.parts[0].text:
                arrivals.append((time.monotonic() - start) * 1000)
                text += unstamp(part.content.parts[0].text)
            if part.finish_reason:
                finish = str(part.finish_reason.value)
        if chunk.prompt_feedback and chunk.prompt_feedback.block_reason:
            block = str(chunk.prompt_feedback.block_reason.value)
        if chunk.usage_metadata:
            usage = {
                "prompt": chunk.usage_metadata.prompt_token_count,
                "candidates": chunk.usage_metadata.candidates_token_count,
            }
    return {"arrivals_ms": arrivals, "text": text, "usage": usage, "finish": finish, "block": block}


def gemini_error(headers):
    seen = 0
    client = gemini(headers)
    try:
        for _ in client.models.generate_content_stream(model="gemini-2.0-flash", contents="你好"):
            seen += 1
    except genai_errors.APIError as e:
        return {"raised": type(e).__name__, "code": e.code, "status": e.status, "message": e.message, "seen": seen}
    return {"raised": None, "seen": seen}


print(
    json.dumps(
        {
            "anthropic_version": anthropic.__version__,
            "genai_version": genai.__version__,
            "claude": claude_stream(PACED),
            "claude_slow": claude_stream(SLOW),
            "claude_reset": claude_error({"x-mock-chunks": "5", "x-mock-reset-after": "2"}),
            "claude_429": claude_error({"x-mock-status": "429"}),
            "gemini": gemini_stream(PACED),
            "gemini_slow": gemini_stream(SLOW),
            "gemini_blocked": gemini_stream({"x-mock-block-after": "0"}),
            "gemini_reset": gemini_error({"x-mock-chunks": "5", "x-mock-reset-after": "2"}),
            "gemini_429": gemini_error({"x-mock-status": "429"}),
        }
    )
)
