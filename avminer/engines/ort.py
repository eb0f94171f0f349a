"""ONNX Runtime backend: the CPU default (CUDA execution provider when the build has it).

Inputs and outputs go through I/O binding: the converted input array is handed to ONNX Runtime without a
copy, and the outputs are written straight into numpy arrays this module allocates, so no per-batch
copy of the (large) probability tensor happens on the way out.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import numpy as np

from avminer.engines.base import Engine, to_nchw_float
from avminer.engines.bundle import INPUT_NAME, OUTPUT_FEATURES, OUTPUT_PROBS, Bundle
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
        if {OUTPUT_PROBS, OUTPUT_FEATURES} - names or INPUT_NAME not in {i.name for i in self._session.get_inputs()}:
            raise EngineError(
                f"{bundle.onnx_path}: graph must take '{INPUT_NAME}' and return '{OUTPUT_PROBS}' and "
                f"'{OUTPUT_FEATURES}' (has outputs {sorted(names)}); re-export with avminer.engines.export"
            )
        self.device = device
        self.threads = threads
        self._reuse = reuse_outputs
        self._buffers: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._lock = threading.Lock()  # only guards the reused buffers; sessions run concurrently

    def _outputs(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        b = self.bundle
        shape_p = (b.members, n, len(b.classes), b.input_height, b.input_width)
        if not self._reuse:
            return np.empty(shape_p, np.float32), np.empty((n, b.feature_dim), np.float32)
        if n not in self._buffers:
            self._buffers[n] = (np.empty(shape_p, np.float32), np.empty((n, b.feature_dim), np.float32))
        return self._buffers[n]

    def _run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = to_nchw_float(images)  # [N, 3, H, W]
        if self._reuse:
            with self._lock:
                return self._bound_run(x)
        return self._bound_run(x)

    def _bound_run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probs, features = self._outputs(x.shape[0])  # [K, N, C, H, W], [N, D]
        binding = self._session.io_binding()
        binding.bind_cpu_input(INPUT_NAME, x)
        for name, buf in ((OUTPUT_PROBS, probs), (OUTPUT_FEATURES, features)):
            binding.bind_output(name, "cpu", 0, np.float32, list(buf.shape), buf.ctypes.data)
        try:
            self._session.run_with_iobinding(binding)
        except Exception as exc:
            raise EngineError(f"onnxruntime failed on a batch of {x.shape[0]} for model {self.version}: {exc}") from exc
        return probs, features

    def close(self) -> None:
        super().close()
        self._buffers.clear()
        self._session = None
