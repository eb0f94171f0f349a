"""TensorRT backend: build a plan from the bundle's ONNX graph, store it in the bundle, run it.

A plan only runs on the GPU architecture and the TensorRT version that built it, so plans are keyed
``sm{major}{minor}-trt{version}`` (e.g. ``sm90-trt10.13.0.35``) in the bundle's ``plans/`` folder and
manifest (``plans``: key -> file, ``plan_info``: key -> how it was built). Asking for a plan on a machine
whose key is not in the bundle is refused with a :class:`BundleError` that names what differs; ``avminer
engine build BUNDLE`` on that machine adds a matching one.

Build: ``OnnxParser`` into a network, one optimisation profile for the dynamic batch (min/opt/max), a
timing cache serialised next to the plan (rebuilds reuse it), and FP16:

- TensorRT 10 and earlier: ``BuilderFlag.FP16`` on the FP32 graph (weakly typed; TensorRT picks FP16
  kernels where it pays). ``fp32`` plans also clear ``BuilderFlag.TF32`` so FP32 means FP32.
- TensorRT 11 removed the precision flags: networks are strongly typed, so FP16 needs an FP16 graph.
  The ONNX graph is converted first (ModelOpt AutoCast, else onnxconverter-common), keeping FP32 inputs
  and outputs; without either package an FP16 build is refused with what to install (FP32 works).

Run: I/O tensors are torch CUDA tensors (no pycuda); their ``data_ptr()`` goes to ``set_tensor_address``
and the plan is enqueued with ``execute_async_v3`` on the current torch stream.

Every import of tensorrt or torch happens inside functions (``import avminer`` must stay light).
"""

from __future__ import annotations

import datetime as _dt
import logging
import re
import tempfile
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from avminer.engines.base import Engine
from avminer.engines.bundle import Bundle, add_file
from avminer.engines.contract import (
    COMPACT_OUTPUTS,
    INPUT_NAME,
    OUTPUT_ARGMAX,
    OUTPUT_FEATURES,
    OUTPUT_PROBS,
    OUTPUT_SCORES,
    OUTPUT_UMAP,
    EngineOutput,
)
from avminer.errors import BackendUnavailableError, BundleError, EngineError
from avminer.utils.imports import is_cuda_available, require_tensorrt, require_torch

log = logging.getLogger(__name__)

_KEY = re.compile(r"^sm(?P<major>\d+)(?P<minor>\d)-trt(?P<trt>[0-9][0-9A-Za-z.+_-]*)$")
DEFAULT_MAX_BATCH = 32
DEFAULT_OPT_BATCH = 8
WORKSPACE_BYTES = 4 << 30


@dataclass(frozen=True)
class PlanKey:
    """What a TensorRT plan is bound to: the GPU's compute capability and the TensorRT version."""

    sm: tuple[int, int]
    trt_version: str

    def __str__(self) -> str:
        return f"sm{self.sm[0]}{self.sm[1]}-trt{self.trt_version}"

    @classmethod
    def parse(cls, key: str) -> PlanKey:
        """Parse ``sm90-trt10.13.0.35``; raise :class:`BundleError` on anything else."""
        m = _KEY.match(key)
        if not m:
            raise BundleError(f"plan key {key!r} is not of the form sm<major><minor>-trt<version> (e.g. sm90-trt10.13)")
        return cls((int(m["major"]), int(m["minor"])), m["trt"])


def describe_mismatch(have: PlanKey, want: PlanKey) -> str:
    """Say in words why a plan built for ``have`` cannot run where ``want`` is needed."""
    why = []
    if have.sm != want.sm:
        why.append(f"built for another GPU (sm{have.sm[0]}{have.sm[1]}, this GPU is sm{want.sm[0]}{want.sm[1]})")
    if have.trt_version != want.trt_version:
        why.append(f"built with another TensorRT version ({have.trt_version}, this is {want.trt_version})")
    return " and ".join(why) or "identical key"


def select_plan(bundle: Bundle, want: PlanKey) -> Path:
    """The bundle's plan for ``want``, or a :class:`BundleError` that says why none fits.

    Also cross-checks the key against the build record in ``plan_info`` so a renamed or hand-edited
    entry is refused rather than handed to TensorRT.
    """
    plans: dict[str, str] = dict(bundle.manifest.get("plans", {}))
    rel = plans.get(str(want))
    if rel is None:
        if not plans:
            raise BundleError(
                f"{bundle.path}: no TensorRT plan in the bundle; run `avminer engine build {bundle.path}` "
                f"on this machine ({want})"
            )
        reasons = "; ".join(f"{k}: {describe_mismatch(PlanKey.parse(k), want)}" for k in sorted(plans))
        raise BundleError(
            f"{bundle.path}: no TensorRT plan for this machine ({want}); the bundle has {reasons}. "
            f"Run `avminer engine build {bundle.path}` here to add one"
        )
    info = bundle.manifest.get("plan_info", {}).get(str(want), {})
    recorded = PlanKey((int(info.get("sm", [0, 0])[0]), int(info.get("sm", [0, 0])[1])), str(info.get("tensorrt", "")))
    if info and recorded != want:
        raise BundleError(
            f"{bundle.path}: plan {rel} is listed under {want} but was {describe_mismatch(recorded, want)}; "
            f"rebuild it with `avminer engine build {bundle.path}`"
        )
    return bundle.path / rel


def _device_index(device: str) -> int:
    if device == "cpu":
        return 0  # "auto" on a GPU machine with the default device setting: the first GPU
    if not device.startswith("cuda"):
        raise EngineError(f"TensorRT backend: unknown device {device!r}; use cuda[:N]")
    _, _, idx = device.partition(":")
    return int(idx) if idx else 0


def _require_gpu() -> tuple[Any, Any]:
    trt = require_tensorrt()
    torch = require_torch()
    if not is_cuda_available():
        raise BackendUnavailableError("TensorRT needs a CUDA device and torch sees none; use backend=onnxruntime")
    return trt, torch


def current_key(device: str = "cuda:0") -> PlanKey:
    """The plan key of this machine's GPU ``device`` and installed TensorRT."""
    trt, torch = _require_gpu()
    major, minor = torch.cuda.get_device_capability(_device_index(device))
    return PlanKey((int(major), int(minor)), str(trt.__version__))


def has_fp16_flag(trt: Any) -> bool:
    """True where FP16 is a builder flag (TensorRT <= 10); False for strongly typed only (TensorRT >= 11)."""
    return hasattr(trt.BuilderFlag, "FP16")


HEAD_SCOPE = "/head/"
"""Name prefix the exporter gives the scoring head's nodes (the module attribute ``head``)."""


def _detach_outputs(model: Any) -> None:
    """Give every graph output that nodes also consume its own Identity node, in place.

    ``probs`` is both a graph output and the head's input; with ``keep_io_types`` the converters cast the
    output back to FP32 but leave its internal consumers typed inconsistently (ONNX Runtime refuses the
    graph). Behind an Identity the internal tensor and the graph output are two tensors.
    """
    import onnx

    consumed = {name for node in model.graph.node for name in node.input}
    for out in model.graph.output:
        if out.name not in consumed:
            continue
        inner = f"{out.name}__inner"
        for node in model.graph.node:
            node.output[:] = [inner if o == out.name else o for o in node.output]
            node.input[:] = [inner if i == out.name else i for i in node.input]
        model.graph.node.append(onnx.helper.make_node("Identity", [inner], [out.name], name=f"{out.name}__output"))


def onnx_to_fp16(onnx_bytes: bytes) -> bytes:
    """Convert an FP32 ONNX graph to FP16 with FP32 inputs/outputs (for strongly typed TensorRT builds).

    With ModelOpt the scoring head (nodes under ``/head/``, :class:`avminer.models.head.ScoringHead`)
    stays in FP32: entropies of FP16 probabilities lose their small terms, and the head is cheap next to
    the net.

    Raises:
        BackendUnavailableError: neither ModelOpt nor onnxconverter-common is installed.
    """
    import onnx

    graph = onnx.load_from_string(onnx_bytes)
    _detach_outputs(graph)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "model.onnx"
        src.write_bytes(graph.SerializeToString())
        try:
            from modelopt.onnx.autocast import convert_to_mixed_precision

            return bytes(
                convert_to_mixed_precision(
                    onnx_path=str(src), low_precision_type="fp16", keep_io_types=True,
                    nodes_to_exclude=[f"^{HEAD_SCOPE}"],  # regular expressions of node names
                ).SerializeToString()
            )
        except ImportError:
            pass
        try:
            from onnxconverter_common import float16
        except ImportError as exc:
            raise BackendUnavailableError(
                "FP16 on TensorRT >= 11 needs the graph converted to FP16 first: pip install "
                "'nvidia-modelopt[onnx]' (or onnxconverter-common); or build with --fp32"
            ) from exc
        with warnings.catch_warnings():
            # It warns once per weight below FP16's range that it clamps: expected, and noise in a build log.
            warnings.filterwarnings("ignore", message="the float32 number", category=UserWarning)
            head = [n.name for n in graph.graph.node if n.name.startswith(HEAD_SCOPE)]
            model = float16.convert_float_to_float16(onnx.load(str(src)), keep_io_types=True, node_block_list=head)
        return bytes(model.SerializeToString())


def build_plan(
    bundle: Bundle,
    *,
    fp16: bool = True,
    device: str = "cuda:0",
    opt_batch: int = DEFAULT_OPT_BATCH,
    max_batch: int = DEFAULT_MAX_BATCH,
    workspace_bytes: int = WORKSPACE_BYTES,
) -> Bundle:
    """Build a TensorRT plan for this GPU and TensorRT version and add it (and its timing cache) to the bundle.

    Args:
        bundle: a verified bundle (its directory must be writable).
        fp16: FP16 kernels (see the module docstring for how, per TensorRT version); else strict FP32.
        device: the CUDA device to build for.
        opt_batch: the batch size TensorRT tunes kernels for (the pipeline's usual batch).
        max_batch: largest batch the plan accepts; :class:`TensorRTEngine` splits larger ones.
        workspace_bytes: builder scratch memory limit.

    Returns:
        The re-verified bundle, with ``plans[key]`` and ``plan_info[key]`` in its manifest.

    Raises:
        BackendUnavailableError: no TensorRT, no CUDA device, or no FP16 converter on TensorRT >= 11.
        EngineError: the ONNX parser or the builder failed.
    """
    trt, torch = _require_gpu()
    key = current_key(device)
    idx = _device_index(device)
    h, w = bundle.input_height, bundle.input_width
    onnx_bytes = bundle.onnx_path.read_bytes()
    strongly_typed = not has_fp16_flag(trt)
    if fp16 and strongly_typed:
        onnx_bytes = onnx_to_fp16(onnx_bytes)
    cache_rel = f"plans/{key}.timing-cache"
    logger = trt.Logger(trt.Logger.WARNING)
    with torch.cuda.device(idx):
        builder = trt.Builder(logger)
        network = builder.create_network(0)  # explicit batch is the only mode since TensorRT 10
        parser = trt.OnnxParser(network, logger)
        if not parser.parse(onnx_bytes):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise EngineError(f"TensorRT could not parse {bundle.onnx_path}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
        if fp16 and not strongly_typed:
            config.set_flag(trt.BuilderFlag.FP16)
        if not fp16 and hasattr(trt.BuilderFlag, "TF32"):
            config.clear_flag(trt.BuilderFlag.TF32)
        profile = builder.create_optimization_profile()
        profile.set_shape(INPUT_NAME, (1, 3, h, w), (min(opt_batch, max_batch), 3, h, w), (max_batch, 3, h, w))
        config.add_optimization_profile(profile)
        cache_path = bundle.path / cache_rel
        old_cache = cache_path.read_bytes() if cache_rel in bundle.manifest["files"] else b""
        cache = config.create_timing_cache(old_cache)
        config.set_timing_cache(cache, False)  # ignore_mismatch=False: a foreign cache is not silently used
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise EngineError(f"TensorRT failed to build a plan for {bundle.path} ({key}); see the TensorRT log above")
        cache_bytes = bytes(config.get_timing_cache().serialize())
        gpu_name = torch.cuda.get_device_name(idx)
    plan_rel = f"plans/{key}.plan"
    info = {
        "tensorrt": key.trt_version,
        "sm": list(key.sm),
        "gpu": gpu_name,
        "precision": "fp16" if fp16 else "fp32",
        "strongly_typed": strongly_typed,
        "min_batch": 1,
        "opt_batch": min(opt_batch, max_batch),
        "max_batch": max_batch,
        "timing_cache": cache_rel,
        "built_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    bundle = add_file(bundle, cache_rel, cache_bytes)
    bundle = add_file(bundle, plan_rel, bytes(plan), {"plans": {str(key): plan_rel}, "plan_info": {str(key): info}})
    log.info("built TensorRT plan %s for model %s (%s)", key, bundle.version, info["precision"])
    return bundle


_DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT32": "int32", "INT8": "int8", "UINT8": "uint8"}


class TensorRTEngine(Engine):
    """A deserialised TensorRT plan with one execution context.

    Args:
        bundle: a verified bundle.
        device: ``cuda[:N]`` (``cpu`` means the first GPU: it is what ``backend=auto`` passes by default).
        build: build and add a plan when the bundle has none for this machine (takes minutes);
            else refuse with a :class:`BundleError`.
        fp16: precision of a plan built here.
    """

    backend = "tensorrt"

    def __init__(self, bundle: Bundle, device: str = "cuda:0", build: bool = True, fp16: bool = True) -> None:
        trt, torch = _require_gpu()
        key = current_key(device)
        if str(key) not in bundle.manifest.get("plans", {}) and build:
            bundle = build_plan(bundle, fp16=fp16, device=device)
        plan_path = select_plan(bundle, key)
        super().__init__(bundle)
        self._idx = _device_index(device)
        self._torch_device = torch.device("cuda", self._idx)
        self.device = f"cuda:{self._idx}"
        self.key = key
        info = bundle.manifest.get("plan_info", {}).get(str(key), {})
        self.max_batch = int(info.get("max_batch", DEFAULT_MAX_BATCH))
        self.precision = str(info.get("precision", "unknown"))
        self._logger = trt.Logger(trt.Logger.WARNING)
        with torch.cuda.device(self._idx):
            self._runtime = trt.Runtime(self._logger)
            self._engine = self._runtime.deserialize_cuda_engine(plan_path.read_bytes())
            if self._engine is None:
                raise BundleError(
                    f"{plan_path}: TensorRT {key.trt_version} refused the plan (built for another TensorRT version "
                    f"or GPU, or corrupt); rebuild it with `avminer engine build {bundle.path}`"
                )
            self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        missing = {INPUT_NAME, *COMPACT_OUTPUTS} - set(names)
        if missing:
            raise BundleError(f"{plan_path}: plan lacks tensors {sorted(missing)}; rebuild it")
        self._dtypes = {n: getattr(torch, _DTYPES[self._engine.get_tensor_dtype(n).name]) for n in names}
        self._lock = threading.Lock()  # one execution context: batches run one at a time

    def _run(self, images: np.ndarray, probs: bool) -> EngineOutput:
        """Every output tensor is bound on the device (TensorRT needs an address for each); only the
        compact ones are copied to the host, ``argmax`` row by row on demand, ``probs`` on request."""
        import torch

        host: dict[str, list[np.ndarray]] = {OUTPUT_SCORES: [], OUTPUT_FEATURES: [], OUTPUT_UMAP: []}
        argmax_parts: list[Any] = []
        probs_parts: list[np.ndarray] = []
        with self._lock, torch.cuda.device(self._idx):
            stream = torch.cuda.current_stream(self._torch_device)
            for start in range(0, images.shape[0], self.max_batch):
                chunk = torch.from_numpy(images[start:start + self.max_batch]).to(self._torch_device)  # [n, H, W, 3]
                x = chunk.permute(0, 3, 1, 2).to(self._dtypes[INPUT_NAME]).contiguous()  # [n, 3, H, W]
                if not self._context.set_input_shape(INPUT_NAME, tuple(x.shape)):
                    raise EngineError(f"TensorRT rejected input shape {tuple(x.shape)} (plan max batch {self.max_batch})")
                self._context.set_tensor_address(INPUT_NAME, x.data_ptr())
                outputs = {}
                for name in (*COMPACT_OUTPUTS, OUTPUT_PROBS):
                    if name not in self._dtypes:
                        continue
                    shape = tuple(self._context.get_tensor_shape(name))
                    outputs[name] = torch.empty(shape, dtype=self._dtypes[name], device=self._torch_device)
                    self._context.set_tensor_address(name, outputs[name].data_ptr())
                if not self._context.execute_async_v3(stream.cuda_stream):
                    raise EngineError(f"TensorRT execution failed for model {self.version}")
                for name, parts in host.items():
                    t = outputs[name]
                    parts.append((t if name == OUTPUT_UMAP else t.float()).cpu().numpy())
                argmax_parts.append(outputs[OUTPUT_ARGMAX])  # stays on the device
                if probs:
                    probs_parts.append(outputs[OUTPUT_PROBS].float().cpu().numpy())  # [K, n, C, H, W]
            # .cpu() synchronises the stream, so x and the outputs stay alive until TensorRT is done.
        argmax = argmax_parts[0] if len(argmax_parts) == 1 else torch.cat(argmax_parts)

        def fetch(row: int) -> np.ndarray:
            return np.asarray(argmax[row].cpu().numpy(), dtype=np.uint8)

        cat = {name: parts[0] if len(parts) == 1 else np.concatenate(parts) for name, parts in host.items()}
        return self._output(cat[OUTPUT_SCORES], cat[OUTPUT_FEATURES], cat[OUTPUT_UMAP], fetch,
                            np.concatenate(probs_parts, axis=1) if probs else None)

    def close(self) -> None:
        super().close()
        self._context = None
        self._engine = None
        self._runtime = None


# Tolerances of a TensorRT plan against ONNX Runtime (FP32) on the same frames.
# FP32 plans (TF32 off) differ only in summation order: ~1e-6..1e-5 on probabilities; 1e-3 leaves room.
# FP16 has a unit roundoff of 2**-11 (4.9e-4), amplified by the depth of the net. Measured on the trained
# starter bundle (K=4 ERFNet-0.25, 144x192) with the same graph converted to FP16 (onnx_to_fp16, run by
# ONNX Runtime on the CPU, a stand-in for a strongly typed TensorRT 11 plan): probs max 1.1e-2, mean
# 1.3e-4, features 4e-4 relative, argmax agreement 99.92%. The limits below leave ~5x on the max and
# ~8x on the mean for TensorRT's own kernel choices. Frame scores average thousands of pixels and the
# thresholds are per-slice quantiles, so such differences move decisions far less than the ensemble's
# own spread. (Untrained random-weight nets amplify rounding thousands of times more; do not judge
# FP16 on them.)
TRT_TOLERANCE = {
    "fp32": {"probs_max": 1e-3, "probs_mean": 1e-4, "features_rel": 1e-3},
    "fp16": {"probs_max": 5e-2, "probs_mean": 1e-3, "features_rel": 1e-2},
}


def check_tensorrt_parity(bundle: Bundle, batch: int = 2, device: str = "cuda:0", seed: int = 0) -> dict[str, Any]:
    """Compare this machine's TensorRT plan with ONNX Runtime on random frames (see :data:`TRT_TOLERANCE`).

    Returns:
        max/mean abs difference on probs, relative max difference on features, argmax agreement and
        the plan's precision.

    Raises:
        BundleError: no plan for this machine.
        EngineError: a difference above the tolerance of the plan's precision.
    """
    from avminer.engines.ort import OrtEngine

    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(batch, bundle.input_height, bundle.input_width, 3), dtype=np.uint8)
    with TensorRTEngine(bundle, device=device, build=False) as trt_engine, OrtEngine(bundle) as ort_engine:
        a = trt_engine.infer(images, probs=True)
        b = ort_engine.infer(images, probs=True)
        precision = trt_engine.precision
    assert a.probs is not None and b.probs is not None
    diff = np.abs(a.probs - b.probs)  # [K, N, C, H, W]
    scale = max(1.0, float(np.abs(b.features).max()))
    report: dict[str, Any] = {
        "precision": precision,
        "probs_max": float(diff.max()),
        "probs_mean": float(diff.mean()),
        "features_rel": float(np.abs(a.features - b.features).max() / scale),
        "argmax_agreement": float((a.probs.argmax(axis=2) == b.probs.argmax(axis=2)).mean()),
        "scores_max": float(np.abs(a.scores - b.scores).max()),
    }
    report["probs"] = report["probs_max"]
    tol = TRT_TOLERANCE.get(precision, TRT_TOLERANCE["fp16"])
    bad = {k: report[k] for k, limit in tol.items() if not report[k] <= limit}
    if bad:
        raise EngineError(f"model {bundle.version}: TensorRT ({precision}) vs ONNX Runtime off by {bad}; limits {tol}")
    return report


def open_backend(bundle: Bundle, threads: int = 0, device: str = "cuda:0", **options: Any) -> TensorRTEngine:
    """The :data:`avminer.engines.BACKENDS` factory (a plan is built here when the bundle has none)."""
    return TensorRTEngine(bundle, device=device)
