"""stpm-export --triton: the generated config.pbtxt parses with Triton's own ModelConfig
protobuf (tritonclient ships it), carries the metadata, and names cannot escape REPO."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from _trt_models import write_onnx

from stpm_edge.artifact import read_onnx_metadata
from stpm_edge.errors import StpmError
from stpm_edge.triton.repo import TritonOptions, config_text, model_folder, write_repository

pb = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient is not installed (pip install "
                         "-e '.[dev]')")
text_format = pytest.importorskip("google.protobuf.text_format")


def parse(text: str):
    return text_format.Parse(text, pb.ModelConfig())


@pytest.fixture()
def dynamic_model(tmp_path: Path) -> Path:
    return write_onnx(tmp_path / "m" / "model.onnx", batch=None, h=8, w=12)


def test_dynamic_batch_config_parses(dynamic_model: Path) -> None:
    meta = read_onnx_metadata(dynamic_model)
    cfg = parse(config_text(meta, TritonOptions("line-1", max_batch=6, instances=2)))
    assert cfg.name == "line-1" and cfg.backend == "onnxruntime" and cfg.max_batch_size == 6
    (inp,) = cfg.input
    assert inp.name == "frames" and inp.data_type == pb.TYPE_UINT8 and list(inp.dims) == [8, 12, 3]
    amap, score = cfg.output
    assert amap.name == "anomaly_map" and amap.data_type == pb.TYPE_FP32 and list(amap.dims) == [1, 8, 12]
    assert score.name == "score" and list(score.dims) == [1] and list(score.reshape.shape) == []
    assert cfg.HasField("dynamic_batching") and cfg.dynamic_batching.max_queue_delay_microseconds > 0
    assert cfg.instance_group[0].count == 2 and cfg.instance_group[0].kind == pb.ModelInstanceGroup.KIND_AUTO
    stpm = json.loads(cfg.parameters["stpm_edge"].string_value)
    assert stpm["input"]["batch"] is None and stpm["threshold"] == 0.5
    assert float(cfg.parameters["stpm_edge.threshold"].string_value) == 0.5
    assert json.loads(cfg.parameters["stpm_edge.input"].string_value)["height"] == 8


def test_default_max_batch_and_plan(dynamic_model: Path) -> None:
    meta = read_onnx_metadata(dynamic_model)
    cfg = parse(config_text(meta, TritonOptions("m"), plan=True))
    assert cfg.name == "m_trt" and cfg.platform == "tensorrt_plan" and cfg.max_batch_size == 8
    assert cfg.instance_group[0].kind == pb.ModelInstanceGroup.KIND_GPU


def test_fixed_batch_has_no_triton_batching(tmp_path: Path) -> None:
    meta = read_onnx_metadata(write_onnx(tmp_path / "model.onnx", batch=4))
    cfg = parse(config_text(meta, TritonOptions("m")))
    assert cfg.max_batch_size == 0 and not cfg.HasField("dynamic_batching")
    assert list(cfg.input[0].dims) == [4, 8, 8, 3] and list(cfg.output[1].dims) == [4]


def test_write_repository_layout_and_replace(dynamic_model: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    meta = read_onnx_metadata(dynamic_model)
    engine = tmp_path / "model.fp32.engine"
    engine.write_bytes(b"plan")
    entries = write_repository(repo, dynamic_model, meta, TritonOptions("stpm"), engine, meta)
    assert [e.name for e in entries] == ["stpm", "stpm_trt"]
    assert (repo / "stpm" / "1" / "model.onnx").read_bytes() == dynamic_model.read_bytes()
    assert (repo / "stpm_trt" / "1" / "model.plan").read_bytes() == b"plan"
    parse((repo / "stpm" / "config.pbtxt").read_text())
    write_repository(repo, dynamic_model, meta, TritonOptions("stpm", max_batch=3))  # replaces in place
    assert parse((repo / "stpm" / "config.pbtxt").read_text()).max_batch_size == 3
    assert sorted(p.name for p in repo.iterdir()) == ["stpm", "stpm_trt"]  # nothing staged left behind


@pytest.mark.parametrize("name", ["../x", "a/b", ".hidden", "..", "", "x" * 200, "a\\b", "é"])
def test_names_cannot_escape(name: str, tmp_path: Path) -> None:
    with pytest.raises(StpmError, match="--triton-name"):
        model_folder(tmp_path / "repo", name)
    assert not (tmp_path / "repo").exists() and not (tmp_path / "x").exists()


def test_refuses_foreign_folder(dynamic_model: Path, tmp_path: Path) -> None:
    (tmp_path / "repo" / "stpm").mkdir(parents=True)
    (tmp_path / "repo" / "stpm" / "notes.txt").write_text("mine")
    with pytest.raises(StpmError, match="not a Triton model folder"):
        write_repository(tmp_path / "repo", dynamic_model, read_onnx_metadata(dynamic_model))
    assert (tmp_path / "repo" / "stpm" / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_cli_export_writes_repository(small_model: Path, tmp_path: Path) -> None:
    from _cli import CliRunner

    from stpm_edge.cli.app import app

    out, repo = tmp_path / "exp", tmp_path / "repo"
    runner = CliRunner()
    bad = runner.invoke(app, ["export", str(small_model), "-o", str(out), "--no-engine", "--triton", str(repo),
                              "--triton-name", "../x"])
    assert bad.exit_code == 1 and "--triton-name" in bad.stderr and not out.exists() and not repo.exists()
    res = runner.invoke(app, ["export", str(small_model), "-o", str(out), "--no-engine", "--dynamic-batch",
                              "--max-batch", "4", "--triton", str(repo), "--triton-name", "brick", "--json"])
    assert res.exit_code == 0, res.stderr
    summary = json.loads(res.stdout)
    assert [m["name"] for m in summary["triton"]["models"]] == ["brick"]
    cfg = parse((repo / "brick" / "config.pbtxt").read_text())
    assert cfg.max_batch_size == 4 and cfg.HasField("dynamic_batching")
    assert (repo / "brick" / "1" / "model.onnx").read_bytes() == (out / "model.onnx").read_bytes()
    assert json.loads(cfg.parameters["stpm_edge"].string_value) == read_onnx_metadata(out / "model.onnx").to_dict()
