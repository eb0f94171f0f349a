"""torch backend: the ensemble and its scoring head as one torch module, on the CPU or a CUDA GPU.

The module is :class:`avminer.models.head.CompactEnsemble` rebuilt from the bundle's ``model.pt``: the
same graph the ONNX file holds, so scores agree with ONNX Runtime (tested on the CPU).

On CUDA the engine is built for throughput (issue #14; **not run on a GPU in this repository's CI**):

- ``precision``: ``fp32``, ``fp16`` (default on CUDA) or ``bf16``: the net's weights and activations;
  the scoring head always computes in float32.
- ``channels_last`` memory format: the uint8 NHWC frames need no transpose, and cuDNN/oneDNN pick
  their NHWC kernels.
- ``compile``: ``torch.compile`` (inductor, with ``freezing`` so conv+BN fold into one kernel) at load,
  with every batch padded to ``max_batch`` so exactly one graph is compiled and warmed up before the
  engine serves: a hot-swap loads in the holder's background thread and never compiles mid-stream.
  If compilation fails the engine logs why and runs eagerly (``compiled`` says which it does).
- Pinned host staging buffers and non-blocking copies on the engine's own CUDA stream; only the
  compact outputs come back (a few KB a frame); the argmax stays on the GPU until a row is asked for.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from avminer.engines.base import Engine
from avminer.engines.bundle import Bundle
from avminer.engines.contract import EngineOutput, host_prediction
from avminer.errors import BackendUnavailableError, BundleError, EngineError, TrainerError
from avminer.utils.imports import is_cuda_available, require_torch

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "bf16")
COMPILE_MODES = ("off", "on", "auto")
DEFAULT_MAX_BATCH = 32


class TorchEngine(Engine):
    """The ensemble with its scoring head as a torch module.

    Args:
        bundle: a verified bundle with a ``model.pt``.
        device: ``cpu`` or ``cuda[:N]``.
        threads: torch intra-op threads (0: leave torch's setting alone; note it is process-wide).
        channels_last: run convolutions in NHWC memory layout (measured 1.2x on the CPU, K=4
            ERFNet-0.25 at 176x240, one thread).
        model: an already built ensemble (``avminer.models.Ensemble``) instead of rebuilding it from
            the bundle (tests, or a model the caller holds).
        precision: ``fp32``, ``fp16`` or ``bf16`` for the net (default: fp16 on CUDA, fp32 on the CPU).
        compile: ``on``, ``off`` or ``auto`` (on for CUDA, off for the CPU).
        max_batch: the batch size compiled for (smaller batches are padded up to it, larger ones split).
        compile_fn: the compiler (default ``torch.compile`` with inductor); tests inject one that fails.
        mc_dropout_samples: > 0: score by Monte-Carlo dropout instead of the ensemble's members
            (:class:`avminer.models.ensemble.MCDropoutEnsemble`: T stochastic passes of the first member,
            so the in-graph mutual information is BALD; the baseline ``selection.policy: bald`` uses it).
    """

    backend = "torch"

    def __init__(
        self,
        bundle: Bundle,
        device: str = "cpu",
        threads: int = 0,
        channels_last: bool = True,
        model: Any | None = None,
        precision: str | None = None,
        compile: str = "auto",
        max_batch: int = DEFAULT_MAX_BATCH,
        compile_fn: Callable[[Any], Any] | None = None,
        mc_dropout_samples: int = 0,
    ) -> None:
        super().__init__(bundle)
        torch = require_torch()
        cuda = device.startswith("cuda")
        if cuda and not is_cuda_available():
            raise BackendUnavailableError(f"device {device!r} asked for but torch sees no CUDA device")
        precision = precision or ("fp16" if cuda else "fp32")
        if precision not in PRECISIONS:
            raise EngineError(f"torch engine: precision must be one of {PRECISIONS}, got {precision!r}")
        if compile not in COMPILE_MODES:
            raise EngineError(f"torch engine: compile must be one of {COMPILE_MODES}, got {compile!r}")
        if max_batch < 1:
            raise EngineError(f"torch engine: max_batch must be >= 1, got {max_batch}")
        if mc_dropout_samples == 1 or mc_dropout_samples < 0:
            raise EngineError(f"torch engine: mc_dropout_samples must be 0 (off) or >= 2, got {mc_dropout_samples}")
        if threads > 0:
            torch.set_num_threads(threads)
        if model is None:
            if bundle.torch_path is None:
                raise BundleError(f"{bundle.path}: no model.pt in the bundle; the torch backend cannot run it")
            from avminer.models import load_ensemble

            try:
                model = load_ensemble(bundle.torch_path)
            except TrainerError as exc:
                raise BundleError(f"{bundle.path}: model.pt cannot be rebuilt: {exc}") from exc
        from avminer.models.ensemble import MCDropoutEnsemble
        from avminer.models.head import CompactEnsemble

        self.device = device
        self.precision = precision
        self.max_batch = max_batch
        self._device = torch.device(device)
        self._dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        self._memory_format = torch.channels_last if channels_last else torch.contiguous_format
        model = model.eval().to(self._device, dtype=self._dtype, memory_format=self._memory_format)
        self.mc_dropout_samples = mc_dropout_samples
        if mc_dropout_samples:
            model = MCDropoutEnsemble(model, mc_dropout_samples)
        # Two views of the same weights: the compact graph (served, maybe compiled) and one that also
        # returns the probabilities (explicit requests only, always eager).
        self._module = CompactEnsemble(model, self.head, self.input_hw).eval().to(self._device)
        self._with_probs = CompactEnsemble(model, self.head, self.input_hw, with_probs=True).eval().to(self._device)
        self._stream = torch.cuda.Stream(device=self._device) if cuda else None
        if cuda:
            torch.cuda.synchronize(self._device)  # weights copied on the default stream; batches run on ours
        self._lock = threading.Lock()  # one stream, one set of compiled graphs: batches run one at a time
        self._forward: Callable[[Any], Any] = self._module
        self.compiled = False
        self.compile_error: str | None = None
        if compile == "on" or (compile == "auto" and cuda):
            self._compile(compile_fn)

    # -- compilation ---------------------------------------------------------------------------------------
    def _compile(self, compile_fn: Callable[[Any], Any] | None) -> None:
        """Compile and warm up the served graph now (at load), or fall back to eager and say why."""
        import torch

        fn = compile_fn or _inductor_compile
        try:
            compiled = fn(self._module)
            h, w = self.input_hw
            dummy = np.zeros((self.max_batch, h, w, 3), dtype=np.uint8)
            with torch.inference_mode():
                for _ in range(2):  # the first call compiles, the second checks the compiled graph runs again
                    self._call(compiled, dummy)
        except Exception as exc:  # inductor raises many kinds (missing compiler, unsupported op, OOM, ...)
            self.compile_error = f"{type(exc).__name__}: {exc}"
            log.warning("torch.compile failed for model %s; running eagerly: %s", self.version, self.compile_error)
            return
        self._forward = compiled
        self.compiled = True

    # -- inference ---------------------------------------------------------------------------------------------
    def _to_input(self, images: np.ndarray) -> Any:
        """uint8 ``[N, H, W, 3]`` on the host -> ``[N, 3, H, W]`` in the net's dtype on the device."""
        import torch

        if self._stream is None:
            x = torch.from_numpy(images)
        else:
            # Pageable memory makes a "non-blocking" copy synchronous: stage in pinned memory (torch's
            # caching host allocator reuses the block batch after batch).
            staged = torch.empty(images.shape, dtype=torch.uint8, pin_memory=True)
            staged.numpy()[...] = images
            x = staged.to(self._device, non_blocking=True)  # [N, H, W, 3]
        # permute() of NHWC storage is already channels_last; .to() keeps or densifies the layout.
        return x.permute(0, 3, 1, 2).to(self._dtype, memory_format=self._memory_format)  # [N, 3, H, W]

    def _call(self, module: Callable[[Any], Any], images: np.ndarray, pad: bool = False) -> tuple[Any, ...]:
        """The module's outputs for ``images``, every kernel on the engine's stream (CUDA).

        ``pad``: run chunks of exactly ``max_batch`` rows (the one shape a compiled graph knows) and join
        them. The join runs on the engine's stream too: on the default stream it would read the chunks
        before the engine's stream had written them (uninitialised memory: an argmax of 255 on an H200).
        """
        import torch

        def run() -> tuple[Any, ...]:
            if not pad:
                return tuple(module(self._to_input(images)))
            n = images.shape[0]
            parts = [tuple(module(self._to_input(_pad(images[i:i + self.max_batch], self.max_batch))))
                     for i in range(0, n, self.max_batch)]
            if len(parts) == 1:
                return tuple(t[:n] for t in parts[0])
            return tuple(torch.cat([p[j] for p in parts])[:n] for j in range(len(parts[0])))

        if self._stream is None:
            return run()
        with torch.cuda.stream(self._stream):
            return run()

    def _run(self, images: np.ndarray, probs: bool) -> EngineOutput:
        import torch

        n = images.shape[0]
        if probs:
            module: Callable[[Any], Any] = self._with_probs
        else:
            module = self._forward
        try:
            with self._lock, torch.inference_mode():
                outs = self._call(module, images, pad=self.compiled and not probs)
                host = self._to_host(outs, probs)
        except RuntimeError as exc:
            raise EngineError(f"torch failed on a batch of {n} for model {self.version}: {exc}") from exc
        scores, features, umap = host[:3]
        argmax = outs[3]
        if self._stream is None:
            fetch = host_prediction(argmax.numpy())
        else:
            def fetch(row: int) -> np.ndarray:
                return np.asarray(argmax[row].cpu().numpy(), dtype=np.uint8)  # one row crosses PCIe
        return self._output(scores, features, umap, fetch, host[3] if probs else None)

    def _to_host(self, outs: tuple[Any, ...], probs: bool) -> list[np.ndarray]:
        """The compact outputs (and probs when asked for) as numpy arrays in host memory."""
        import torch

        wanted = [outs[0], outs[1], outs[2]] + ([outs[4]] if probs else [])
        if self._stream is None:
            return [t.float().numpy() if t.dtype not in (torch.uint8, torch.float16) else t.numpy() for t in wanted]
        host = []
        with torch.cuda.stream(self._stream):
            for t in wanted:
                t = t.float() if t.dtype not in (torch.uint8, torch.float16) else t
                buf = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
                buf.copy_(t, non_blocking=True)
                host.append(buf)
        self._stream.synchronize()  # the pinned buffers are complete; the numpy views keep them alive
        return [b.numpy() for b in host]

    def close(self) -> None:
        super().close()
        self._forward = None  # type: ignore[assignment]
        self._module = None  # type: ignore[assignment]
        self._with_probs = None  # type: ignore[assignment]


def _pad(images: np.ndarray, batch: int) -> np.ndarray:
    """Pad a batch with black frames up to ``batch`` rows (the one shape the compiled graph knows)."""
    if images.shape[0] == batch:
        return images
    out = np.zeros((batch, *images.shape[1:]), dtype=images.dtype)
    out[: images.shape[0]] = images
    return out


def _inductor_compile(module: Any) -> Any:
    """``torch.compile`` with inductor and ``freezing`` (constant-folds weights: conv+BN in one kernel)."""
    import torch

    try:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True  # process-wide; only affects modules compiled in inference mode
    except (ImportError, AttributeError) as exc:
        log.debug("inductor freezing unavailable: %s", exc)
    return torch.compile(module, backend="inductor", dynamic=False)


def open_backend(bundle: Bundle, threads: int = 0, device: str = "cpu", **options: Any) -> TorchEngine:
    """The :data:`avminer.engines.BACKENDS` factory: ``precision``, ``compile``, ``max_batch``,
    ``mc_dropout_samples`` options."""
    known = {k: v for k, v in options.items()
             if k in ("precision", "compile", "max_batch", "mc_dropout_samples") and v is not None}
    return TorchEngine(bundle, device=device, threads=threads, **known)
