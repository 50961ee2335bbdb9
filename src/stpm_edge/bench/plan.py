"""Which backend × precision × device × batch combinations run, and why the others cannot.

A pure function of what was found (:class:`BenchFiles`, :class:`Env`) and what was asked
(:class:`Request`), so every decision has a unit test without a GPU. Decisions:

* **torch** (the PyTorch eager reference of the checkpoint): FP32 on every device (the memory
  format — contiguous or channels_last — is chosen at run time, whichever is faster); FP16 only
  on CUDA (autocast; PyTorch has no fast FP16 convolutions on x86 CPUs, so on the CPU the
  reference is FP32); no INT8 (the INT8 models are ONNX Q/DQ graphs; PyTorch eager has no
  equivalent path). On CUDA, ``cuda_graphs`` adds the same rows replayed from a CUDA graph.
* **onnxruntime**: ``model.onnx`` / ``model.fp16.onnx`` / both INT8 forms beside it
  (``model.int8.onnx`` = TensorRT's symmetric Q/DQ form, ``model.int8.cpu.onnx`` = ORT x86
  form), one labelled row each; CPU provider on ``cpu``, CUDA provider on ``cuda``.
* **tensorrt**: ``model.<precision>.engine`` beside the model, CUDA only (+ a CUDA-graph row).
* **triton** (``MODEL`` is a ``triton://HOST:PORT/NAME`` URI): the served model, one row per batch
  (precision ``served``: whatever the server runs), nothing local.
* **streams**: ``--streams N`` runs a row as N client threads calling the one loaded backend at
  once (N cameras on one model): latency per call as each client sees it, throughput of all.
* **batch**: a dynamic-batch export runs each batch in one call. A fixed-batch export runs a
  larger batch as chunks of its batch and a smaller one padded to it (what every backend does,
  see ``runtime.backends.base``); such rows carry a note saying so.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

BACKENDS = ("torch", "onnxruntime", "tensorrt")  # local; a triton:// MODEL runs on the triton backend only
PRECISIONS = ("fp32", "fp16", "int8")
DEVICES = ("cpu", "cuda")
# ONNX file variants beside model.onnx: key → (precision, form)
ONNX_VARIANTS = {"fp32": ("fp32", ""), "fp16": ("fp16", ""), "int8": ("int8", "tensorrt"),
                 "int8.cpu": ("int8", "cpu")}
FORM_LABELS = {"tensorrt": "TensorRT Q/DQ form", "cpu": "CPU form"}
CUDA_EP = "CUDAExecutionProvider"


@dataclass(frozen=True)
class BenchFiles:
    """What was found for one model: ONNX variants (key as in ``ONNX_VARIANTS``), engines by
    precision, the checkpoint (or why not), the export's fixed batch (None: dynamic)."""

    onnx: dict[str, Path] = field(default_factory=dict)
    engines: dict[str, Path] = field(default_factory=dict)
    checkpoint: Path | None = None
    checkpoint_problem: str = ""
    model_batch: int | None = None
    missing_hint: dict[str, str] = field(default_factory=dict)  # variant key → how to make it
    triton: str = ""  # a triton:// URI: the model on a Triton server instead of files

    def base_name(self) -> str:
        p = self.onnx.get("fp32") or next(iter(self.onnx.values()), None)
        return p.name[:-len(".onnx")] if p is not None else "model"


@dataclass(frozen=True)
class Env:
    """The machine: a CUDA GPU for PyTorch (its name, or None), ORT's providers, and why TensorRT
    cannot run here ('' when it can)."""

    cuda_gpu: str | None = None
    ort_providers: tuple[str, ...] = ("CPUExecutionProvider",)
    trt_problem: str = "tensorrt is not installed"


@dataclass(frozen=True)
class Request:
    backends: tuple[str, ...] = BACKENDS
    precisions: tuple[str, ...] = PRECISIONS
    batches: tuple[int, ...] = (1,)
    devices: tuple[str, ...] = ("auto",)
    cuda_graphs: bool = True
    streams: tuple[int, ...] = (1,)


@dataclass(frozen=True)
class Combo:
    """One row to measure. ``form``: the INT8 file form (``tensorrt``/``cpu``) or ''."""

    backend: str
    precision: str
    device: str
    batch: int
    path: Path | str  # str: a triton:// URI
    form: str = ""
    cuda_graph: bool = False
    note: str = ""
    streams: int = 1  # client threads calling the backend at once

    @property
    def label(self) -> str:
        if self.backend == "torch":
            text = f"torch {self.precision} {'eager' if self.precision == 'fp32' else 'autocast'}"
        else:
            text = f"{self.backend} {self.precision}"
        if self.form:
            text += f" ({FORM_LABELS.get(self.form, self.form)})"
        if self.cuda_graph:
            text += " + CUDA graph"
        if self.streams > 1:
            text += f" × {self.streams} streams"
        return text

    @property
    def group(self) -> tuple:
        """Rows sharing one loaded backend (they differ only in batch and streams)."""
        return (self.backend, self.precision, self.form, self.device, self.cuda_graph, str(self.path))


@dataclass(frozen=True)
class Skip:
    backend: str
    reason: str
    precision: str = ""
    device: str = ""
    form: str = ""

    def to_dict(self) -> dict:
        return {"backend": self.backend, "precision": self.precision or None, "form": self.form or None,
                "device": self.device or None, "reason": self.reason}


def resolve_devices(requested: Sequence[str], env: Env) -> tuple[list[str], list[Skip]]:
    """``auto`` → ``cuda`` when PyTorch sees a GPU, else ``cpu``; ``cuda`` without a GPU is skipped."""
    devices: list[str] = []
    skips: list[Skip] = []
    for d in requested:
        d = "cuda" if d == "auto" and env.cuda_gpu else ("cpu" if d == "auto" else d)
        if d == "cuda" and not env.cuda_gpu:
            skips.append(Skip("torch", "no CUDA GPU is available to PyTorch: the CUDA rows (FP32, FP16 autocast, "
                                       "CUDA graphs) were not run", device="cuda"))
            continue
        if d not in devices:
            devices.append(d)
    return devices, skips


def batch_note(model_batch: int | None, batch: int) -> str:
    """How a fixed-batch export runs ``batch`` frames ('' when it runs them in one call)."""
    if model_batch is None or batch == model_batch:
        return ""
    if batch > model_batch:
        chunks = -(-batch // model_batch)
        pad = chunks * model_batch - batch
        return (f"runs as {chunks}×{model_batch} chunks (fixed-batch {model_batch} export"
                f"{f'; last chunk padded by {pad}' if pad else ''}; export with --dynamic-batch for one call)")
    return f"padded to the export's fixed batch {model_batch} (export with --dynamic-batch)"


def _torch_rows(files: BenchFiles, device: str, precisions: Sequence[str], graphs: bool
                ) -> tuple[list[tuple[str, bool]], list[Skip]]:
    if files.checkpoint is None:
        return [], [Skip("torch", files.checkpoint_problem or "no checkpoint for the PyTorch reference",
                         device=device)]
    rows: list[tuple[str, bool]] = []
    skips: list[Skip] = []
    for p in precisions:
        if p == "int8":
            skips.append(Skip("torch", "PyTorch eager has no INT8 path for this model; INT8 runs as the ONNX Q/DQ "
                                       "graphs (onnxruntime, tensorrt)", "int8", device))
        elif p == "fp16" and device == "cpu":
            skips.append(Skip("torch", "PyTorch has no fast FP16 convolutions on the CPU; the CPU reference is FP32 "
                                       "(FP16 autocast runs on CUDA)", "fp16", device))
        else:
            rows.append((p, False))
            if device == "cuda" and graphs:
                rows.append((p, True))
    return rows, skips


def plan(files: BenchFiles, env: Env, req: Request) -> tuple[list[Combo], list[Skip]]:
    """The combinations to run (grouped by loaded backend, batches innermost) and the skips."""
    combos: list[Combo] = []

    def add(backend: str, precision: str, device: str, path: Path | str, form: str = "", graph: bool = False,
            note: str = "", fixed_batch: bool = True) -> None:
        for n in req.streams:
            for b in req.batches:
                bn = batch_note(files.model_batch, b) if fixed_batch else ""
                notes = "; ".join(x for x in (note, bn) if x)
                combos.append(Combo(backend, precision, device, b, path, form, graph, notes, n))

    if files.triton:
        add("triton", "served", "remote", files.triton)
        return combos, []
    devices, skips = resolve_devices(req.devices, env)

    for device in devices:
        if "torch" in req.backends:
            rows, s = _torch_rows(files, device, req.precisions, req.cuda_graphs)
            skips += s
            for p, graph in rows:
                add("torch", p, device, files.checkpoint, graph=graph, fixed_batch=False)  # type: ignore[arg-type]
        if "onnxruntime" in req.backends:
            if device == "cuda" and CUDA_EP not in env.ort_providers:
                skips.append(Skip("onnxruntime", f"{CUDA_EP} is not in this onnxruntime build "
                                                 f"(pip install onnxruntime-gpu)", device="cuda"))
            else:
                for key, (p, form) in ONNX_VARIANTS.items():
                    if p not in req.precisions:
                        continue
                    path = files.onnx.get(key)
                    if path is None:
                        name = f"{files.base_name()}.{key}.onnx" if key != "fp32" else f"{files.base_name()}.onnx"
                        hint = files.missing_hint.get(key, "")
                        skips.append(Skip("onnxruntime", f"no {name} beside the model{f' ({hint})' if hint else ''}",
                                          p, device, form))
                        continue
                    note = ""
                    if form == "tensorrt" and device == "cpu":
                        note = "TensorRT's symmetric Q/DQ form: slow on ONNX Runtime x86 (the CPU form is for ORT)"
                    elif form == "cpu" and device == "cuda":
                        note = "x86 form (uint8 activations), not made for GPUs"
                    add("onnxruntime", p, device, path, form, note=note)
    if "tensorrt" in req.backends:
        if env.trt_problem:
            skips.append(Skip("tensorrt", env.trt_problem, device="cuda"))
        elif "cuda" not in devices:
            skips.append(Skip("tensorrt", "TensorRT runs on CUDA only and no CUDA device was selected",
                              device="cuda"))
        else:
            for p in req.precisions:
                engine = files.engines.get(p)
                if engine is None:
                    why = files.missing_hint.get(f"engine.{p}", "build it with stpm-export on this machine")
                    skips.append(Skip("tensorrt", f"no {files.base_name()}.{p}.engine beside the model ({why})",
                                      p, "cuda"))
                    continue
                add("tensorrt", p, "cuda", engine)
                if req.cuda_graphs:
                    add("tensorrt", p, "cuda", engine, graph=True)
    return combos, skips


def reference_key(c: Combo) -> tuple[str, int, int]:
    return (c.device, c.batch, c.streams)


def is_reference(c: Combo) -> bool:
    """The PyTorch eager FP32 row (no CUDA graph) is the reference of its device, batch and streams."""
    return c.backend == "torch" and c.precision == "fp32" and not c.cuda_graph
