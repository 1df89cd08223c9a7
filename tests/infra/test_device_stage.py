"""scripts/device_stage.py: the chunks rejoin to the exact tar, and the halved draft still loads."""

import torch

from components.lm.model import GPT, GPTConfig
from tests.scripts_module import load_script

device_stage = load_script("device_stage")


def test_chunks_rejoin_to_the_original_bytes(tmp_path):
    payload = torch.randint(0, 256, (int(2.5 * 2**20),), dtype=torch.uint8).numpy().tobytes()
    (tmp_path / "stage.tar").write_bytes(payload)
    folders = device_stage.split(tmp_path / "stage.tar", chunk_mib=1, stage=tmp_path / "stage")
    assert [f.name for f in folders] == ["1", "2", "3"]
    parts = sorted(p for f in folders for p in f.iterdir())
    assert [p.name for p in parts] == ["stage.tar.000", "stage.tar.001", "stage.tar.002"]
    assert max(p.stat().st_size for p in parts) == 2**20
    assert b"".join(p.read_bytes() for p in parts) == payload


def test_fp16_draft_loads_and_predicts_like_the_original(tmp_path):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=16))
    model.save(tmp_path / "draft")
    device_stage.draft_as_fp16(tmp_path / "draft", tmp_path / "half")
    assert (tmp_path / "half" / "model.safetensors").stat().st_size < (
        tmp_path / "draft" / "model.safetensors"
    ).stat().st_size
    half = GPT.from_folder(tmp_path / "half")
    ids = torch.randint(0, 64, (1, 12))
    with torch.no_grad():
        full_logits, half_logits = model.eval()(ids)[0], half(ids)[0]
    assert half_logits.dtype == torch.float32
    torch.testing.assert_close(half_logits, full_logits, rtol=0, atol=5e-3)
