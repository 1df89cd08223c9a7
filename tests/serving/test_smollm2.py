"""The real target (SmolLM2-135M-Instruct): PEARL's greedy output equals AR's, through the server."""

from __future__ import annotations

import pytest
import torch
from openai import OpenAI

from components.decoding.engine import build_decoder
from components.decoding.models import layer_skip_draft
from components.lm.smollm2 import load_model, load_tokenizer
from components.serving.app import create_app
from components.serving.server import BackgroundServer
from components.serving.service import GenerationService
from components.serving.text import HFTextCodec

pytestmark = pytest.mark.slow  # loads the 135M model and decodes on CPU: minutes on the shared machine


def test_smollm2_pearl_server_matches_autoregressive():
    torch.set_num_threads(1)
    target = load_model()
    codec = HFTextCodec(load_tokenizer())
    messages = [{"role": "user", "content": "Name two sorting algorithms."}]
    prompt = codec.chat_prompt(messages)
    expected, _ = build_decoder("ar", target).generate(prompt, 12, stop_ids=codec.eos_ids)
    decoder = build_decoder("pearl", target, layer_skip_draft(target, 8), gamma=3)
    try:
        got, _ = decoder.generate(prompt, 12, stop_ids=codec.eos_ids)
        assert got == expected
        with BackgroundServer(create_app(GenerationService(decoder, codec, "SmolLM2-135M-Instruct"))) as srv:
            client = OpenAI(base_url=srv.base_url, api_key="none", max_retries=0, timeout=600)
            reply = client.chat.completions.create(
                model="SmolLM2-135M-Instruct", messages=messages, max_tokens=12, temperature=0
            )
        assert reply.choices[0].message.content == codec.decode([t for t in expected if t not in codec.eos_ids])
    finally:
        decoder.close()
