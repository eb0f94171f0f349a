"""ONNX Runtime backend: the CPU default (CUDA execution provider when the build has it).

Inputs and outputs go through I/O binding: the converted input array is handed to ONNX Runtime without a
copy, and the compact outputs (scores, features, map, argmax) are written straight into numpy arrays
this module allocates. The ``probs`` output is bound only when asked for; otherwise ONNX Runtime keeps
it in its own arena and it is never copied.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import numpy as np

from avminer.engines.base import Engine, to_nchw_float
from avminer.engines.bundle import Bundle
from avminer.engines.contract import (
    COMPACT_OUTPUTS,
    INPUT_NAME,
    OUTPUT_ARGMAX,
    OUTPUT_FEATURES,
    OUTPUT_PROBS,
    OUTPUT_SCORES,
    OUTPUT_UMAP,
    EngineOutput,
    host_prediction,
)
from avminer.errors import BackendUnavailableError, EngineError

log = logging.getLogger(__name__)


def _cuda_index(device: str) -> int:
    _, _, idx = device.partition(":")
    return int(idx) if idx else 0


class OrtEngine(Engine):
    """An ONNX Runtime session over the bundle's ``model.onnx``.

    Args:
        bundle: a verified bundle.
        threads: intra-op threads (0: ONNX Runtime's default, one per physical core).
        device: ``cpu``, or ``cuda[:N]`` for the CUDA execution provider (onnxruntime-gpu).
        reuse_outputs: write every batch into the same output buffers. Saves an allocation per batch, but
            an :class:`EngineOutput` is then only valid until the next :meth:`infer`; leave it off when
            batches are scored while the next one runs.
        spin: let idle intra-op threads busy-wait for the next batch. Off by default: a miner's decode
            and scoring threads share the cores, and spinning threads steal their time (measured on the
            shared 2-core dev box: 3.2 frames/s spinning vs 3.7-5.4 not, K=4 ERFNet-0.25 at 176x240).
    """

    backend = "onnxruntime"

    def __init__(
        self, bundle: Bundle, threads: int = 0, device: str = "cpu", reuse_outputs: bool = False, spin: bool = False
    ) -> None:
        super().__init__(bundle)
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if threads > 0:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        opts.log_severity_level = 3  # warnings about unused initialisers etc. are noise in a miner's log
        providers: list[Any] = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendUnavailableError(
                    f"onnxruntime has no CUDA execution provider (have {ort.get_available_providers()}); "
                    "pip install onnxruntime-gpu, or use device=cpu or backend=tensorrt"
                )
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": _cuda_index(device)}))
        elif device != "cpu":
            raise EngineError(f"onnxruntime backend: unknown device {device!r}; use cpu or cuda[:N]")
        try:
            self._session = ort.InferenceSession(str(bundle.onnx_path), sess_options=opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own (non-public) exception types
            raise EngineError(f"onnxruntime could not load {bundle.onnx_path}: {exc}") from exc
        names = {o.name for o in self._session.get_outputs()}
        if set(COMPACT_OUTPUTS) - names or INPUT_NAME not in {i.name for i in self._session.get_inputs()}:
            raise EngineError(
                f"{bundle.onnx_path}: graph must take '{INPUT_NAME}' and return {', '.join(COMPACT_OUTPUTS)} "
                f"(has outputs {sorted(names)}); re-export with tools/reexport_bundle.py"
            )
        self._has_probs = OUTPUT_PROBS in names
        self.device = device
        self.threads = threads
        self._reuse = reuse_outputs
        self._buffers: dict[int, dict[str, np.ndarray]] = {}
        self._lock = threading.Lock()  # only guards the reused buffers; sessions run concurrently

    def _outputs(self, n: int, probs: bool) -> dict[str, np.ndarray]:
        b = self.bundle
        h, w = self.input_hw
        mh, mw = self.head.map_hw((h, w))
        umap_dtype = np.uint8 if self.head.map_dtype == "uint8" else np.float16
        if self._reuse and not probs and n in self._buffers:
            return self._buffers[n]
        bufs = {
            OUTPUT_SCORES: np.empty((n, len(self.head.score_names())), np.float32),
            OUTPUT_FEATURES: np.empty((n, b.feature_dim), np.float32),
            OUTPUT_UMAP: np.empty((n, mh, mw), umap_dtype),
            OUTPUT_ARGMAX: np.empty((n, h, w), np.uint8),
        }
        if probs:
            if not self._has_probs:
                raise EngineError(f"model {self.version}: the graph has no '{OUTPUT_PROBS}' output to return")
            bufs[OUTPUT_PROBS] = np.empty((b.members, n, len(b.classes), h, w), np.float32)
        elif self._reuse:
            self._buffers[n] = bufs
        return bufs

    def _run(self, images: np.ndarray, probs: bool) -> EngineOutput:
        x = to_nchw_float(images)  # [N, 3, H, W]
        if self._reuse:
            with self._lock:
                return self._bound_run(x, probs)
        return self._bound_run(x, probs)

    def _bound_run(self, x: np.ndarray, probs: bool) -> EngineOutput:
        bufs = self._outputs(x.shape[0], probs)
        binding = self._session.io_binding()
        binding.bind_cpu_input(INPUT_NAME, x)
        for name, buf in bufs.items():
            binding.bind_output(name, "cpu", 0, buf.dtype, list(buf.shape), buf.ctypes.data)
        if not probs and self._has_probs:
            binding.bind_output(OUTPUT_PROBS, "cpu")  # ORT-allocated, never copied out
        try:
            self._session.run_with_iobinding(binding)
        except Exception as exc:
            raise EngineError(f"onnxruntime failed on a batch of {x.shape[0]} for model {self.version}: {exc}") from exc
        return self._output(bufs[OUTPUT_SCORES], bufs[OUTPUT_FEATURES], bufs[OUTPUT_UMAP],
                            host_prediction(bufs[OUTPUT_ARGMAX]), bufs.get(OUTPUT_PROBS))

    def close(self) -> None:
        super().close()
        self._buffers.clear()
        self._session = None


def open_backend(bundle: Bundle, threads: int = 0, device: str = "cpu", **options: Any) -> OrtEngine:
    """The :data:`avminer.engines.BACKENDS` factory (torch-only options are ignored)."""
    return OrtEngine(bundle, threads=threads, device=device)
