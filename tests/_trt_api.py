"""What the real TensorRT Python modules contain, recorded from them, and fakes held to it.

``tests/data/tensorrt_api.json`` holds, per release (8.6.1, 10.3.0, 10.13.3.9, 11.4.0.106), the
public names of the ``tensorrt`` module, the members (and their kind: method / property / class)
of the classes the project touches and the members and values of the enums it reads. It is
written from the real modules by ``python tests/_trt_wheels.py --write-api``, and the conformance
test (``test_tensorrt_conformance.py``) fails when it no longer equals them.

The fakes of ``test_tensorrt_builder_fake.py`` / ``test_tensorrt_backend_fake.py`` are held to
these lists: :func:`restrict` removes from a fake class what the real class lacks and makes
instances refuse any other public attribute (read or write), :func:`fake_module` refuses
module attributes the real module lacks, :func:`fake_enum` has the real members and values.
So a misspelt or removed TensorRT name fails the fake tests too.

8.5 (JetPack 5.1) has no bindings-only wheel: it is modelled as 8.6.1 without
``IBuilderConfig.builder_optimization_level`` (added in 8.6); 11.0 as 11.4.
"""
from __future__ import annotations

import json
import types
from functools import lru_cache
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent / "data" / "tensorrt_api.json"
RELEASES = ("8.6.1", "10.3.0", "10.13.3.9", "11.4.0.106")
ADDED_IN_86 = {"IBuilderConfig": {"builder_optimization_level"}}
FAKE_ONLY = frozenset({"calls"})  # bookkeeping the fake modules carry for the tests


@lru_cache(maxsize=None)
def recorded() -> dict[str, dict]:
    return json.loads(DATA.read_text())


def _release_key(version: str) -> tuple[int, int]:
    parts = version.split(".")
    return int(parts[0]), int(parts[1])


@lru_cache(maxsize=None)
def api_for(version: str) -> dict:
    """The recorded API of the release ``version`` stands for (nearest recorded release of its major)."""
    data = recorded()
    if version in data:
        return data[version]
    want = _release_key(version)
    same_major = [r for r in data if _release_key(r)[0] == want[0]]
    if not same_major:
        raise KeyError(f"no recorded TensorRT release with major {want[0]} (have {', '.join(data)})")
    below = [r for r in same_major if _release_key(r) <= want]
    base = max(below, key=_release_key) if below else min(same_major, key=_release_key)
    snap = json.loads(json.dumps(data[base]))
    if want < (8, 6):
        for cls, names in ADDED_IN_86.items():
            for n in names:
                snap["classes"][cls].pop(n, None)
    snap["version"] = version
    return snap


def members(version: str, cls: str) -> dict[str, str]:
    return api_for(version)["classes"].get(cls, {})


def has(version: str, name: str) -> bool:
    """Whether the real module of ``version`` has the top-level name."""
    return name in api_for(version)["module"]


class FakeEnumValue:
    """An enum member: ``name``, ``int()`` and a repr like pybind's."""

    def __init__(self, enum: str, name: str, value: int) -> None:
        self.name, self.value, self._enum = name, value, enum

    def __int__(self) -> int:
        return self.value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FakeEnumValue) and (other._enum, other.value) == (self._enum, self.value)

    def __hash__(self) -> int:
        return hash((self._enum, self.value))

    def __repr__(self) -> str:
        return f"<{self._enum}.{self.name}: {self.value}>"


def fake_enum(version: str, name: str) -> type:
    """A class whose attributes (and ``__members__``) are the real enum's members with their values."""
    values = api_for(version)["enums"][name]
    members_ = {k: FakeEnumValue(name, k, v) for k, v in values.items()}
    return type(name.split(".")[-1], (), {**members_, "__members__": members_})


def restrict(cls: type, version: str, real: str) -> type:
    """``cls`` held to the real class ``real`` of ``version``: public attributes the real class lacks
    are removed from ``cls``, and instances refuse to get or set any other public name."""
    allowed = frozenset(members(version, real))
    if not allowed:
        raise KeyError(f"TensorRT {version} has no class {real}")
    for name in [n for n in vars(cls) if not n.startswith("_") and n not in allowed]:
        delattr(cls, name)  # (only cls itself: fakes are defined afresh per release, their bases are not)
    label = f"{real} of TensorRT {version}"

    # Python subclasses (our logger and calibrators) may add attributes, as on the real pybind classes.
    def __getattribute__(self: Any, name: str) -> Any:
        if type(self) is cls and not name.startswith("_") and name not in allowed:
            raise AttributeError(f"'{label}' has no attribute {name!r}")
        return object.__getattribute__(self, name)

    def __setattr__(self: Any, name: str, value: Any) -> None:
        if type(self) is cls and not name.startswith("_") and name not in allowed:
            raise AttributeError(f"'{label}' has no attribute {name!r}")
        previous = cls.__dict__.get("_fake_setattr")
        if previous is not None:
            previous(self, name, value)
        else:
            object.__setattr__(self, name, value)

    if "__setattr__" in cls.__dict__:
        cls._fake_setattr = cls.__dict__["__setattr__"]
    cls.__getattribute__ = __getattribute__
    cls.__setattr__ = __setattr__
    cls.__name__ = real
    return cls


class _FakeModule(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        version = self.__dict__.get("__version__")
        if version and not name.startswith("_") and name not in FAKE_ONLY and not has(version, name):
            raise AttributeError(f"the tensorrt module of TensorRT {version} has no {name!r}")
        super().__setattr__(name, value)


def fake_module(version: str) -> types.ModuleType:
    """An empty ``tensorrt``-named module that accepts only the real module's names of ``version``."""
    api_for(version)  # KeyError for a release nothing stands for
    trt = _FakeModule("tensorrt")
    trt.__version__ = version
    return trt


# -- what the project uses ----------------------------------------------------------------------
# (owner, member, kind, since, before): the project uses ``owner.member`` on releases in [since, before)
# (None: unbounded). owner "tensorrt" is the module; enums have kind "enum" (a member of it).
ALL = (None, None)
BEFORE_10 = (None, (10, 0))
BEFORE_11 = (None, (11, 0))
FROM_86 = ((8, 6), None)
ONLY_10 = ((10, 0), (11, 0))
FROM_10 = ((10, 0), None)

USED: list[tuple[str, str, str, tuple]] = [
    *[("tensorrt", n, "class", ALL) for n in ("Builder", "Runtime", "OnnxParser", "ILogger", "IBuilderConfig",
                                            "NetworkDefinitionCreationFlag", "BuilderFlag", "MemoryPoolType",
                                            "DeviceType", "DataType", "TensorIOMode", "LayerType")],
    *[("tensorrt", n, "class", BEFORE_11) for n in ("IInt8EntropyCalibrator2", "IInt8MinMaxCalibrator",
                                                  "CalibrationAlgoType")],
    ("tensorrt", "float32", "value", ALL),
    ("ILogger.Severity", "INTERNAL_ERROR", "enum", ALL), ("ILogger.Severity", "ERROR", "enum", ALL),
    ("ILogger.Severity", "WARNING", "enum", ALL),
    ("NetworkDefinitionCreationFlag", "EXPLICIT_BATCH", "enum", BEFORE_10),
    ("NetworkDefinitionCreationFlag", "STRONGLY_TYPED", "enum", ONLY_10),
    *[("BuilderFlag", n, "enum", BEFORE_11) for n in ("FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS")],
    ("BuilderFlag", "GPU_FALLBACK", "enum", ALL), ("BuilderFlag", "TF32", "enum", ALL),
    ("MemoryPoolType", "WORKSPACE", "enum", ALL), ("DeviceType", "DLA", "enum", ALL),
    ("TensorIOMode", "INPUT", "enum", ALL),
    *[("DataType", n, "enum", ALL) for n in ("FLOAT", "HALF", "INT8", "INT32", "BOOL", "UINT8")],
    ("DataType", "INT64", "enum", FROM_10), ("DataType", "BF16", "enum", FROM_10),
    *[("LayerType", n, "enum", ALL) for n in ("CONSTANT", "SHAPE", "ASSERTION")],
    *[("CalibrationAlgoType", n, "enum", BEFORE_11) for n in ("ENTROPY_CALIBRATION_2", "MINMAX_CALIBRATION")],
    *[("Builder", n, "method", ALL) for n in ("create_network", "create_builder_config",
                                             "create_optimization_profile", "build_serialized_network")],
    ("Builder", "num_DLA_cores", "property", ALL),
    *[("IBuilderConfig", n, "method", ALL) for n in ("set_memory_pool_limit", "set_flag", "clear_flag",
                                                    "add_optimization_profile", "create_timing_cache",
                                                    "set_timing_cache", "get_timing_cache")],
    *[("IBuilderConfig", n, "property", ALL) for n in ("default_device_type", "DLA_core")],
    ("IBuilderConfig", "builder_optimization_level", "property", FROM_86),
    ("IBuilderConfig", "int8_calibrator", "property", BEFORE_11),
    ("IBuilderConfig", "set_calibration_profile", "method", BEFORE_11),
    *[("INetworkDefinition", n, "method", ALL) for n in ("get_layer", "get_input", "get_output")],
    *[("INetworkDefinition", n, "property", ALL) for n in ("num_layers", "num_inputs", "num_outputs")],
    *[("ILayer", n, "method", ALL) for n in ("get_input", "get_output")],
    *[("ILayer", n, "property", ALL) for n in ("name", "type", "num_inputs", "num_outputs")],
    # FP32 pinning of the head: only in weakly typed builds (8.5-10), whose layer-precision API 11 removed
    ("ILayer", "precision", "property", BEFORE_11), ("ILayer", "set_output_type", "method", BEFORE_11),
    *[("ITensor", n, "property", ALL) for n in ("name", "dtype")],
    *[("OnnxParser", n, "method", ALL) for n in ("parse_from_file", "parse", "get_error")],
    ("OnnxParser", "num_errors", "property", ALL),
    ("IOptimizationProfile", "set_shape", "method", ALL), ("ITimingCache", "serialize", "method", ALL),
    ("Runtime", "deserialize_cuda_engine", "method", ALL), ("Runtime", "DLA_core", "property", ALL),
    ("ICudaEngine", "num_io_tensors", "property", ALL),
    *[("ICudaEngine", n, "method", ALL) for n in ("get_tensor_name", "get_tensor_mode", "get_tensor_dtype",
                                                 "get_tensor_shape", "get_tensor_profile_shape",
                                                 "create_execution_context")],
    *[("IExecutionContext", n, "method", ALL) for n in ("set_input_shape", "get_tensor_shape", "set_tensor_address",
                                                       "execute_async_v3")],
    *[(c, n, "method", BEFORE_11) for c in ("IInt8EntropyCalibrator2", "IInt8MinMaxCalibrator")
      for n in ("get_batch_size", "get_batch", "read_calibration_cache", "write_calibration_cache", "get_algorithm")],
]

# What the plan relies on being gone (the 10.x -> 11.x migration guide): absent on [since, before).
REMOVED: list[tuple[str, str, tuple]] = [
    *[("BuilderFlag", n, ((11, 0), None)) for n in ("FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS",
                                                    "PREFER_PRECISION_CONSTRAINTS")],
    ("NetworkDefinitionCreationFlag", "EXPLICIT_BATCH", ((11, 0), None)),
    ("NetworkDefinitionCreationFlag", "STRONGLY_TYPED", (None, (10, 0))),
    ("IBuilderConfig", "int8_calibrator", ((11, 0), None)),
    ("IBuilderConfig", "set_calibration_profile", ((11, 0), None)),
    ("IBuilderConfig", "max_workspace_size", ((10, 0), None)),
    ("ILayer", "precision", ((11, 0), None)), ("ILayer", "set_output_type", ((11, 0), None)),
    *[("tensorrt", n, ((11, 0), None)) for n in ("IInt8EntropyCalibrator2", "IInt8MinMaxCalibrator",
                                                 "IInt8Calibrator")],
    ("DataType", "INT64", (None, (10, 0))),
]


def applies(version: str, span: tuple) -> bool:
    since, before = span
    v = _release_key(version)
    return (since is None or v >= since) and (before is None or v < before)


def lookup(snap: dict, owner: str, member: str) -> str | None:
    """The kind of ``owner.member`` in a snapshot ("enum" for enum members), None when absent."""
    if owner == "tensorrt":
        if member not in snap["module"]:
            return None
        return "class" if member in snap["classes"] or member in snap["enums"] else "value"
    if owner in snap["enums"]:
        return "enum" if member in snap["enums"][owner] else None
    return snap["classes"].get(owner, {}).get(member)
