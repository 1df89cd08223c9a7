"""A loopback server over tiny random models (byte-level text), started and stopped by the tests."""

from __future__ import annotations

import pytest
import torch
from openai import OpenAI

from components.decoding.engine import build_decoder
from components.decoding.models import layer_skip_draft, tiny_llama
from components.serving.app import create_app
from components.serving.server import BackgroundServer
from components.serving.service import GenerationService
from components.serving.text import ByteCodec

MODEL = "tiny-pearl"
API_KEY = "test-key-123"


def tiny_service(method: str = "pearl") -> GenerationService:
    torch.set_num_threads(1)  # two shared cores: avoid oversubscription in tiny forwards
    target = tiny_llama(vocab_size=260, hidden=32, layers=2, max_positions=256, dtype=torch.float32)
    draft = layer_skip_draft(target, 1)
    decoder = build_decoder(method, target, draft, gamma=3, parallel=True)
    return GenerationService(decoder, ByteCodec(260), MODEL)


@pytest.fixture(scope="module")
def server():
    service = tiny_service()
    with BackgroundServer(create_app(service, api_key=API_KEY, max_queue=256)) as srv:
        yield srv
    service.decoder.close()


@pytest.fixture
def client(server):
    return OpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0, timeout=60)
