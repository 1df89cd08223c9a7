"""The HTTP API through the official `openai` client, malformed requests, the API key."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest
from openai import OpenAI

from components.serving.app import create_app
from tests.serving.conftest import API_KEY, MODEL, tiny_service


def test_models_lists_the_served_model(client):
    assert [m.id for m in client.models.list().data] == [MODEL]


def test_completion_with_usage_and_greedy_determinism(client):
    first = client.completions.create(model=MODEL, prompt="def add(a, b):", max_tokens=12, temperature=0)
    again = client.completions.create(model=MODEL, prompt="def add(a, b):", max_tokens=12, temperature=0)
    assert first.choices[0].text == again.choices[0].text
    assert first.usage.prompt_tokens == len(b"def add(a, b):")
    assert 0 < first.usage.completion_tokens <= 12
    assert first.usage.total_tokens == first.usage.prompt_tokens + first.usage.completion_tokens
    assert first.choices[0].finish_reason in ("stop", "length")


def test_chat_completion_and_streaming_agree(client):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    whole = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=20, temperature=0)
    assert whole.choices[0].message.role == "assistant"
    pieces, finish, usage = [], None, None
    stream = client.chat.completions.create(
        model=MODEL,
        messages=messages,
        max_tokens=20,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    for event in stream:
        if event.usage is not None:
            usage = event.usage
        for choice in event.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert "".join(pieces) == whole.choices[0].message.content
    assert finish == whole.choices[0].finish_reason
    assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens


def test_streamed_completion_with_sampling_and_seed(client):
    kwargs = dict(model=MODEL, prompt="SELECT", max_tokens=16, temperature=0.8, top_p=0.9, seed=7)
    text = "".join(c.choices[0].text for c in client.completions.create(stream=True, **kwargs))
    assert text == client.completions.create(**kwargs).choices[0].text  # same seed, same sample


def test_stop_sequence_cuts_the_text(client):
    full = client.completions.create(model=MODEL, prompt="x = ", max_tokens=24, temperature=0).choices[0].text
    if len(full) < 4:
        pytest.skip("the random model ended too early to choose a stop string")
    stop = full[2:4]
    cut = client.completions.create(model=MODEL, prompt="x = ", max_tokens=24, temperature=0, stop=[stop])
    assert cut.choices[0].text == full[: full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


@pytest.mark.parametrize(
    "body, status, fragment",
    [
        (b"{not json", 400, "malformed JSON"),
        ({"model": MODEL}, 400, "prompt"),
        ({"model": MODEL, "prompt": "hi", "temperature": 5}, 400, "temperature"),
        ({"model": MODEL, "prompt": "hi", "top_p": 0}, 400, "top_p"),
        ({"model": MODEL, "prompt": "hi", "max_tokens": 0}, 400, "max_tokens"),
        ({"model": MODEL, "prompt": "hi", "n": 3}, 400, "n"),
        ({"model": MODEL, "prompt": ""}, 400, "empty"),
        ({"model": "gpt-5", "prompt": "hi"}, 404, "does not exist"),
        ({"model": MODEL, "prompt": "hi", "max_tokens": 100000}, 400, "exceeds the context"),
        ({"model": MODEL, "prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ],
)
def test_malformed_requests_get_4xx_and_the_server_keeps_serving(server, client, body, status, fragment):
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    url = server.base_url + "/completions"
    response = (
        httpx.post(url, content=body, headers=headers)
        if isinstance(body, bytes)
        else httpx.post(url, json=body, headers=headers)
    )
    assert response.status_code == status
    assert fragment in response.json()["error"]["message"]
    assert client.completions.create(model=MODEL, prompt="ok", max_tokens=2).usage.completion_tokens >= 1


def test_chat_validation(server):
    headers = {"Authorization": f"Bearer {API_KEY}"}
    url = server.base_url + "/chat/completions"
    bad_role = httpx.post(url, json={"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}, headers=headers)
    assert bad_role.status_code == 400 and "role" in bad_role.json()["error"]["message"]
    empty = httpx.post(url, json={"model": MODEL, "messages": []}, headers=headers)
    assert empty.status_code == 400


def test_api_key_is_required(server):
    intruder = OpenAI(base_url=server.base_url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        intruder.models.list()
    assert httpx.get(server.base_url + "/models").status_code == 401


def test_a_stream_dropped_before_its_first_byte_gives_its_admission_back():
    """The client hangs up at once: the response task is cancelled before the body generator runs."""

    service = tiny_service()
    app = create_app(service, max_queue=4)
    body = json.dumps({"model": MODEL, "prompt": "abc", "max_tokens": 64, "stream": True}).encode()

    async def drop_one() -> None:
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive():
            if messages:
                return messages.pop()
            return {"type": "http.disconnect"}

        async def send(message):
            await asyncio.sleep(0.05)  # the disconnect is noticed while the headers are on their way

        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/v1/completions",
            "raw_path": b"/v1/completions",
            "query_string": b"",
            "root_path": "",
            "headers": [(b"content-type", b"application/json")],
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 80),
        }
        await app(scope, receive, send)

    try:
        for _ in range(6):  # more drops than the queue holds: a leak would end in 503s
            asyncio.run(drop_one())
        assert app.state.queue_state["admitted"] == 0
    finally:
        service.decoder.close()
