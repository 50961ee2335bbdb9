"""Serve an exported stpm-edge ONNX model through a real Triton Inference Server (PyTriton).

Self-contained on purpose: it runs inside the PyTriton virtualenv (``scripts/triton_env.sh``,
made from Debian's /usr/bin/python3.11), where stpm_edge and torch are not installed. It needs
only ``nvidia-pytriton``, ``onnxruntime`` and ``numpy``:

    .venv-triton/bin/python src/stpm_edge/triton/serve.py model.onnx --name stpm --http-port 8000

Triton's Python backend calls ``infer`` with the frames its dynamic batcher gathered; it runs
ONNX Runtime (CPU) on the stpm-edge graph and returns ``anomaly_map`` and ``score``. The model's
``stpm_edge`` metadata (threshold, input spec) goes into the model config's ``parameters`` as
in a repository written by ``stpm-export --triton``, so a ``triton://`` client needs nothing
else. Binds 127.0.0.1 unless ``--address`` says otherwise. Prints ``READY <http> <grpc> <token>`` on
stdout when the model is loaded (the token is what Triton's restricted endpoints, such as
statistics, want in the ``triton-access-token`` header); stops on SIGINT/SIGTERM.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

import numpy as np

METADATA_KEY = "stpm_edge"


def load(model: str, threads: int):
    import onnxruntime as ort  # noqa: PLC0415

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    meta = sess.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    if meta is None:
        raise SystemExit(f"serve: {model}: not an stpm-edge model (no {METADATA_KEY!r} metadata)")
    return sess, json.loads(meta)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="an exported .onnx with a dynamic batch (stpm-export --dynamic-batch)")
    p.add_argument("--name", default="stpm")
    p.add_argument("--address", default="127.0.0.1")
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--delay-us", type=int, default=5000, help="dynamic batcher: max queue delay (microseconds)")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    p.add_argument("--exit-timeout", type=int, default=5, help="seconds to finish in-flight requests on SIGTERM")
    p.add_argument("--verbose", action="store_true")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if a.verbose else logging.WARNING)

    from pytriton.decorators import batch  # noqa: PLC0415
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor  # noqa: PLC0415
    from pytriton.triton import Triton, TritonConfig  # noqa: PLC0415

    sess, meta = load(a.model, a.threads)
    spec = meta["input"]
    if spec.get("batch") is not None:
        raise SystemExit(f"serve: {a.model} has a fixed batch of {spec['batch']}; export with --dynamic-batch")
    dtype = np.uint8 if spec["dtype"] == "uint8" else np.float32
    in_shape = (spec["height"], spec["width"], 3) if spec["layout"] == "NHWC" else (3, spec["height"], spec["width"])
    out_shape = meta.get("outputs", {}).get("anomaly_map", {}).get("shape")
    map_shape = tuple(int(d) for d in out_shape[1:]) if out_shape else (1, *meta["model_size"])
    in_name = spec["name"]

    @batch
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        amap, score = sess.run(["anomaly_map", "score"], {in_name: inputs[in_name]})
        return {"anomaly_map": amap.astype(np.float32), "score": score.astype(np.float32).reshape(-1, 1)}

    # PyTriton writes the model config itself and has no option for extra parameters: add the
    # stpm-edge metadata to the config it generates (what stpm-export --triton writes too).
    from pytriton.models.model import Model  # noqa: PLC0415

    extra = {METADATA_KEY: json.dumps(meta, separators=(",", ":"), sort_keys=True),
             f"{METADATA_KEY}.threshold": repr(float(meta.get("threshold", 0.5)))}
    generate = Model._get_triton_model_config  # noqa: SLF001

    def with_metadata(self):  # noqa: ANN001, ANN202
        cfg = generate(self)
        cfg.backend_parameters.update(extra)
        return cfg

    Model._get_triton_model_config = with_metadata  # noqa: SLF001
    config = TritonConfig(http_address=a.address, http_port=a.http_port, grpc_address=a.address,
                          grpc_port=a.grpc_port, allow_metrics=False, log_verbose=1 if a.verbose else 0,
                          exit_timeout_secs=a.exit_timeout)
    with Triton(config=config) as triton:
        triton.bind(model_name=a.name, infer_func=infer,
                    inputs=[Tensor(name=in_name, dtype=dtype, shape=in_shape)],
                    outputs=[Tensor(name="anomaly_map", dtype=np.float32, shape=map_shape),
                             Tensor(name="score", dtype=np.float32, shape=(1,))],
                    config=ModelConfig(max_batch_size=a.max_batch,
                                       batcher=DynamicBatcher(max_queue_delay_microseconds=a.delay_us)),
                    strict=True)
        # The statistics and repository endpoints need PyTriton's access token (header triton-access-token).
        token = triton._security_config.access_token or "-"  # noqa: SLF001
        print(f"READY {a.http_port} {a.grpc_port} {token}", flush=True)
        triton.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
