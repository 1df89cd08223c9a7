"""The CUDA side of PyTorch-Direct without DGL's UVA (the PyPI DGL is CPU-only): a host feature table
pinned and mapped into the GPU's address space, read by GPU threads directly (zero-copy).

- `pin_host_tensor`: `cudaHostRegister` on the tensor's existing memory (no copy). It can fail for
  some memory (e.g. file-backed mappings, or limits on very large regions, as DGL users report);
  `UvaFeatureTable` then copies the table chunk by chunk into a pinned allocation instead.
- `uva_cuda_view`: a torch CUDA tensor aliasing the pinned host memory, built through
  `__cuda_array_interface__`. With unified virtual addressing the host pointer is valid on the
  device, and torch accepts registered host memory (`getDeviceFromPtr`).
- `gather_rows`: `out[i] = table[idx[i]]` executed by the GPU reading host memory over PCIe. The
  Triton kernel implements the paper's alignment: each row's reads start at the 128-byte boundary at
  or below the row start (masked), so every PCIe read request is a full aligned packet even when
  rows are not multiples of 128 B (the `IndexSelectMultiKernelAligned` idea). Without Triton, the
  fallback is `torch.index_select` on the CUDA view (the same zero-copy access, unaligned).

Nothing here runs without a GPU; `benchmarks/gcn_loader_cuda.py` exercises it on one.
"""

from __future__ import annotations

from typing import Optional

import torch

ALIGN_BYTES = 128
_CUDA_HOST_REGISTER_PORTABLE = 1  # usable from every CUDA context
_CUDA_HOST_REGISTER_MAPPED = 2  # mapped into the device address space (implicit under UVA, explicit here)

try:  # Triton ships with CUDA builds of torch; the CPU build here has none
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None


def triton_available() -> bool:
    return triton is not None and torch.cuda.is_available()


def pin_host_tensor(tensor: torch.Tensor) -> bool:
    """Page-lock `tensor`'s memory in place with cudaHostRegister; False when the driver refuses."""
    if tensor.device.type != "cpu" or not tensor.is_contiguous():
        raise ValueError(
            "only a contiguous CPU tensor can be registered in place "
            "(a non-contiguous one would silently be copied, and the copy pinned)"
        )
    cudart = torch.cuda.cudart()
    nbytes = tensor.numel() * tensor.element_size()
    try:
        torch.cuda.check_error(
            cudart.cudaHostRegister(
                tensor.data_ptr(), nbytes, _CUDA_HOST_REGISTER_PORTABLE | _CUDA_HOST_REGISTER_MAPPED
            )
        )
    except Exception:  # noqa: BLE001 - the CUDA error type differs across torch versions
        return False
    return True


def unpin_host_tensor(tensor: torch.Tensor) -> None:
    torch.cuda.check_error(torch.cuda.cudart().cudaHostUnregister(tensor.data_ptr()))


def pinned_copy(tensor: torch.Tensor, chunk_rows: int = 1 << 16) -> torch.Tensor:
    """A pinned allocation holding `tensor`, filled chunk by chunk (a memmap is never read whole)."""
    out = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    for start in range(0, tensor.shape[0], chunk_rows):
        out[start : start + chunk_rows].copy_(tensor[start : start + chunk_rows])
    return out


class _CudaArray:
    def __init__(self, tensor: torch.Tensor):
        typestr = {torch.float32: "<f4", torch.float16: "<f2", torch.int64: "<i8"}[tensor.dtype]
        self.__cuda_array_interface__ = {
            "data": (tensor.data_ptr(), False),
            "shape": tuple(tensor.shape),
            "strides": tuple(s * tensor.element_size() for s in tensor.stride()),
            "typestr": typestr,
            "version": 2,
        }


def uva_cuda_view(pinned: torch.Tensor, device: torch.device | str = "cuda") -> torch.Tensor:
    """A CUDA tensor that aliases pinned host memory (reads go over PCIe; nothing is copied)."""
    with torch.cuda.device(device):
        view = torch.as_tensor(_CudaArray(pinned), device=device)
    if view.data_ptr() != pinned.data_ptr():
        raise RuntimeError("torch copied the pinned table instead of mapping it: no zero-copy view")
    return view


if triton is not None:  # pragma: no cover - needs a GPU

    @triton.jit
    def _gather_rows_kernel(
        src, idx, out, dim, out_stride, ALIGN: tl.constexpr, BLOCK: tl.constexpr, ALIGNED: tl.constexpr
    ):
        row = tl.program_id(0)
        node = tl.load(idx + row).to(tl.int64)
        start = node * dim
        if ALIGNED:
            base = start - (start % ALIGN)  # the 128-byte boundary at or below the row start
        else:
            base = start
        span = start + dim - base
        for off in range(0, span, BLOCK):
            e = base + off + tl.arange(0, BLOCK)
            keep = (e >= start) & (e < start + dim)
            v = tl.load(src + e, mask=keep)
            tl.store(out + row * out_stride + (e - start), v, mask=keep)


def gather_rows(
    table: torch.Tensor,
    idx: torch.Tensor,
    out: Optional[torch.Tensor] = None,
    aligned: bool = True,
    use_triton: Optional[bool] = None,
    block: int = 128,
) -> torch.Tensor:
    """`out[i] = table[idx[i]]` on the GPU; `table` may be a UVA view of host memory."""
    if out is None:
        out = torch.empty((idx.numel(), table.shape[1]), dtype=table.dtype, device=idx.device)
    use_triton = triton_available() if use_triton is None else use_triton
    if not use_triton:
        return torch.index_select(table, 0, idx, out=out)
    if not table.is_contiguous() or out.stride(1) != 1:
        raise ValueError("the Triton gather needs a row-major table and output rows")
    align_elems = ALIGN_BYTES // table.element_size()
    _gather_rows_kernel[(idx.numel(),)](
        table, idx, out, table.shape[1], out.stride(0), ALIGN=align_elems, BLOCK=block, ALIGNED=aligned
    )
    return out


class UvaFeatureTable:
    """The feature table pinned in host memory and visible to the GPU; gathers rows into GPU buffers."""

    def __init__(self, features: torch.Tensor, device: torch.device | str = "cuda"):
        self.device = torch.device(device)
        host = features.contiguous()
        self.registered = pin_host_tensor(host)
        self.host = host if self.registered else pinned_copy(host)
        self.view = uva_cuda_view(self.host, self.device)

    def gather(self, idx: torch.Tensor, out: torch.Tensor, aligned: bool = True) -> torch.Tensor:
        return gather_rows(self.view, idx, out=out, aligned=aligned)

    def close(self) -> None:
        if self.registered:
            unpin_host_tensor(self.host)
            self.registered = False
