"""Host (CPU) inputs and outputs without per-call allocation.

`tvm.runtime.tensor(array)` allocates and copies through Python-level checks: 17 us per
input on a small model whose kernels take 30 us (digits CNN, Intel Xeon), and `.numpy()`
on each output another 7 us. Here each thread keeps one 64-byte-aligned numpy buffer per
input, viewed by a TVM tensor made once (DLPack, zero copy: TVM requires that
alignment), so a call is one `np.copyto` per input; outputs are read through DLPack
and copied once. Anything DLPack refuses (a dtype, a zero-size tensor) falls back to
the plain path.
"""

from __future__ import annotations

import threading

import numpy as np

ALIGNMENT = 64  # bytes: what TVM's from_dlpack requires of CPU data


def aligned_empty(shape, dtype) -> np.ndarray:
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + ALIGNMENT, np.uint8)
    offset = (-raw.ctypes.data) % ALIGNMENT
    return raw[offset:offset + nbytes].view(dtype).reshape(shape)


class HostInputs:
    """Per-thread input tensors for a model with these input specs (name, shape, dtype)."""

    def __init__(self, tvm, device, specs):
        self._tvm = tvm
        self._device = device
        self._specs = [(tuple(s.shape), str(s.dtype)) for s in specs]
        self._local = threading.local()
        self.enabled = device.dlpack_device_type() == tvm.runtime.cpu().dlpack_device_type()

    def tensors(self, arrays: list[np.ndarray]) -> list:
        staged = self._staged() if self.enabled else None
        if staged is None:
            return [self._tvm.runtime.tensor(a, self._device) for a in arrays]
        buffers, tensors = staged
        for buffer, array in zip(buffers, arrays):
            np.copyto(buffer, array)
        return tensors

    def _staged(self):
        staged = getattr(self._local, "staged", None)
        if staged is None:
            if any(0 in shape for shape, _ in self._specs):
                # numpy gives a zero-size view non-compact strides ((3, 0): (4, 4)); where
                # DLPack takes it (its data happened to be aligned) the library rejects it.
                self.enabled = False
                return None
            try:
                buffers = [aligned_empty(shape, dtype) for shape, dtype in self._specs]
                staged = (buffers, [self._tvm.runtime.from_dlpack(b) for b in buffers])
            except Exception:  # noqa: BLE001 - DLPack refused a buffer: plain tensors from now on
                self.enabled = False
                return None
            self._local.staged = staged
        return staged


def host_numpy(tensor) -> np.ndarray:
    """A numpy copy of a CPU tensor (DLPack view, copied), else `.numpy()`."""
    try:
        return np.from_dlpack(tensor).copy()
    except Exception:  # noqa: BLE001 - a device tensor or a dtype numpy's DLPack lacks
        return tensor.numpy()
