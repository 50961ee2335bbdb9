"""A Triton model repository from an exported model: ``REPO/NAME/config.pbtxt`` + ``REPO/NAME/1/model.onnx``.

Follows Triton's model-repository layout (``<name>/config.pbtxt``, ``<name>/<version>/model.*``):

* ``NAME`` runs ``model.onnx`` on the ``onnxruntime`` backend (CPU or GPU: ``KIND_AUTO``);
* ``NAME_trt`` (only where stpm-export built an engine) runs it as ``model.plan`` on
  ``tensorrt_plan`` (``KIND_GPU``). A plan only runs on the GPU and TensorRT release that built
  it: build it on the serving machine (docs/scale-out.md).

Tensors: the uint8 frame input ``frames`` ``[H, W, 3]`` and the outputs ``anomaly_map``
``[1, h, w]`` and ``score`` (``dims: [1]`` reshaped to ``[]``: its full shape is ``[batch]``).

Batching. A dynamic-batch export gets ``max_batch_size`` = the engine profile's maximum
(``--max-batch``, default 8) and ``dynamic_batching``. A fixed-batch export (batch ``B``)
cannot be batched by Triton (its backends require the batch dimension to be ``-1``): it is
written with ``max_batch_size: 0``, full dims ``[B, H, W, 3]`` and no ``dynamic_batching``;
clients send exactly ``B`` frames (the triton:// backend pads and chunks). Export with
``--dynamic-batch`` for Triton's batching.

The stpm-edge metadata travels as config ``parameters``: ``stpm_edge`` (the whole metadata
JSON, what the triton:// backend reads), ``stpm_edge.threshold`` and ``stpm_edge.input``
(for people reading the config). Everything is generated as text first (pure functions,
unit-tested), validated, then written atomically; names cannot leave ``REPO``.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from stpm_edge.artifact import ANOMALY_MAP, METADATA_KEY, SCORE, ModelMetadata
from stpm_edge.data.io import atomic_dir
from stpm_edge.errors import StpmError

DEFAULT_MAX_BATCH = 8
DEFAULT_QUEUE_DELAY_US = 2000
VERSION = "1"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
TRT_SUFFIX = "_trt"
KINDS = ("KIND_AUTO", "KIND_CPU", "KIND_GPU")
_TYPES = {"uint8": "TYPE_UINT8", "float32": "TYPE_FP32"}


def check_name(name: str) -> str:
    """A Triton model name that is one plain folder name (``../x``, ``a/b``, ``.x`` refused)."""
    if not isinstance(name, str) or not NAME_RE.match(name) or ".." in name:
        raise StpmError(f"--triton-name {name!r}: expected letters, digits, '_', '-', '.' (no folders, no '..', "
                        f"not starting with '.'), at most 128 characters")
    return name


@dataclass(frozen=True)
class TritonOptions:
    """What the repository's configs say beyond the model itself."""

    name: str = "stpm"
    max_batch: int | None = None  # dynamic-batch exports: max_batch_size (None: DEFAULT_MAX_BATCH)
    instances: int = 1
    kind: str = "KIND_AUTO"  # onnxruntime's instance kind; the plan is always KIND_GPU
    queue_delay_us: int = DEFAULT_QUEUE_DELAY_US

    def validated(self) -> TritonOptions:
        check_name(self.name)
        check_name(self.name + TRT_SUFFIX)
        if self.max_batch is not None and not 1 <= int(self.max_batch) <= 4096:
            raise StpmError(f"--max-batch {self.max_batch}: expected 1..4096")
        if not 1 <= int(self.instances) <= 64:
            raise StpmError(f"--triton-instances {self.instances}: expected 1..64")
        if self.kind not in KINDS:
            raise StpmError(f"instance kind {self.kind!r}: expected one of {', '.join(KINDS)}")
        if not 0 <= int(self.queue_delay_us) <= 10_000_000:
            raise StpmError(f"queue delay {self.queue_delay_us} us: expected 0..10000000")
        return self


def _q(text: str) -> str:
    """A protobuf text-format string literal (the metadata JSON is ASCII: ensure_ascii)."""
    out = []
    for ch in text:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif not (32 <= ord(ch) < 127):
            out.append("".join(f"\\{b:03o}" for b in ch.encode("utf-8")))
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _dims(values: list[int] | tuple[int, ...]) -> str:
    return "[ " + ", ".join(str(int(v)) for v in values) + " ]"


def max_batch_size(metadata: ModelMetadata, max_batch: int | None = None) -> int:
    """Triton's ``max_batch_size``: the profile maximum for a dynamic batch, 0 for a fixed one."""
    return 0 if metadata.input.batch is not None else int(max_batch or DEFAULT_MAX_BATCH)


def config_text(metadata: ModelMetadata, options: TritonOptions, *, plan: bool = False) -> str:
    """The ``config.pbtxt`` of one model (``plan``: the tensorrt_plan one)."""
    options = options.validated()
    spec = metadata.input
    if spec.dtype not in _TYPES:
        raise StpmError(f"input dtype {spec.dtype!r} has no Triton type")
    mbs = max_batch_size(metadata, options.max_batch)
    fixed = [] if mbs else [int(spec.batch)]  # type: ignore[arg-type]
    in_dims = fixed + [int(d) for d in spec.shape(1)[1:]]
    mh, mw = metadata.map_shape
    name = options.name + (TRT_SUFFIX if plan else "")
    lines = [f"# stpm-edge {metadata.arch} ({metadata.precision}), generated by stpm-export --triton",
             f"name: {_q(name)}"]
    lines.append('platform: "tensorrt_plan"' if plan else 'backend: "onnxruntime"')
    lines += [f"max_batch_size: {mbs}",
              "input [", "  {", f"    name: {_q(spec.name)}", f"    data_type: {_TYPES[spec.dtype]}",
              f"    dims: {_dims(in_dims)}", "  }", "]",
              "output [", "  {", f"    name: {_q(ANOMALY_MAP)}", "    data_type: TYPE_FP32",
              f"    dims: {_dims(fixed + [1, mh, mw])}", "  },", "  {", f"    name: {_q(SCORE)}",
              "    data_type: TYPE_FP32"]
    if mbs:  # full shape [batch]: one element per frame, reshaped to a scalar
        lines += ["    dims: [ 1 ]", "    reshape: { shape: [ ] }"]
    else:
        lines += [f"    dims: {_dims(fixed)}"]
    lines += ["  }", "]",
              "instance_group [", "  {", f"    count: {int(options.instances)}",
              f"    kind: {'KIND_GPU' if plan else options.kind}", "  }", "]"]
    if mbs:
        lines += ["dynamic_batching {", f"  max_queue_delay_microseconds: {int(options.queue_delay_us)}", "}"]
    params = {METADATA_KEY: json.dumps(metadata.to_dict(), separators=(",", ":"), sort_keys=True),
              f"{METADATA_KEY}.threshold": repr(float(metadata.threshold)),
              f"{METADATA_KEY}.input": json.dumps(spec.to_dict(), separators=(",", ":"))}
    for key, value in params.items():
        lines += ["parameters {", f"  key: {_q(key)}", f"  value: {{ string_value: {_q(value)} }}", "}"]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class RepoEntry:
    """One model written into the repository."""

    name: str
    folder: Path
    model_file: Path
    kind: str  # "onnxruntime" | "tensorrt_plan"
    max_batch_size: int

    def to_dict(self) -> dict:
        return {"name": self.name, "folder": str(self.folder), "model": str(self.model_file), "kind": self.kind,
                "max_batch_size": self.max_batch_size}


def model_folder(repo: Path, name: str) -> Path:
    """``repo/name``, refusing anything that would resolve outside ``repo``."""
    check_name(name)
    repo = Path(repo)
    if repo.exists() and not repo.is_dir():
        raise StpmError(f"--triton {repo}: not a folder")
    dest = repo / name
    if dest.resolve().parent != repo.resolve():
        raise StpmError(f"--triton-name {name!r}: resolves outside {repo}")
    if dest.is_symlink():
        raise StpmError(f"{dest}: is a symbolic link; refusing to replace it")
    return dest


def _write_model(dest: Path, config: str, source: Path, filename: str) -> None:
    """Write ``dest/config.pbtxt`` and ``dest/1/filename`` as one atomic folder, replacing an
    earlier stpm-edge model there (never a folder without a config.pbtxt)."""
    if dest.exists() and any(dest.iterdir()) and not (dest / "config.pbtxt").is_file():
        raise StpmError(f"{dest}: exists and is not a Triton model folder; refusing to replace it")
    old = None
    if dest.exists():  # move the old model aside, then the new one in, then drop the old
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
        old.rmdir()
    with atomic_dir(dest.parent / f".{dest.name}.staged") as tmp:
        (tmp / VERSION).mkdir()
        shutil.copyfile(source, tmp / VERSION / filename)
        (tmp / "config.pbtxt").write_text(config, encoding="utf-8")
    if old is not None:
        os.replace(dest, old)
    os.replace(dest.parent / f".{dest.name}.staged", dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_repository(repo: Path, onnx_path: Path, metadata: ModelMetadata, options: TritonOptions = TritonOptions(),
                     engine_path: Path | None = None, engine_metadata: ModelMetadata | None = None) -> list[RepoEntry]:
    """Write the onnxruntime model (and the tensorrt_plan one when ``engine_path`` is given)."""
    options = options.validated()
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise StpmError(f"{onnx_path}: no such ONNX file")
    if engine_path is not None and not Path(engine_path).is_file():
        raise StpmError(f"{engine_path}: no such engine file")
    jobs = [(options.name, config_text(metadata, options), onnx_path, "model.onnx", "onnxruntime", metadata)]
    if engine_path is not None:
        meta = engine_metadata or metadata
        jobs.append((options.name + TRT_SUFFIX, config_text(meta, options, plan=True), Path(engine_path),
                     "model.plan", "tensorrt_plan", meta))
    dests = [model_folder(repo, j[0]) for j in jobs]  # every name checked before the first write
    entries = []
    for dest, (name, text, src, filename, kind, meta) in zip(dests, jobs):
        _write_model(dest, text, src, filename)
        entries.append(RepoEntry(name, dest, dest / VERSION / filename, kind, max_batch_size(meta, options.max_batch)))
    return entries


__all__ = ["DEFAULT_MAX_BATCH", "RepoEntry", "TritonOptions", "check_name", "config_text", "max_batch_size",
           "model_folder", "write_repository"]
