"""``stpm-run MODEL --camera 0``: stream frames through a model with a live heatmap overlay.

Stops at the end of a file/folder (unless ``--loop``), after ``--max-frames``, on ``q``/Esc in
the window, or on SIGINT/SIGTERM — which finish the frames in flight, finalise the video and
print the summary. Exit codes: 0 done (also after SIGTERM: an orderly stop), 130 after SIGINT
(Ctrl-C), 1 on an error (bad model or source, camera not found, source lost for good).
"""
from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.table import Table

from stpm_edge.cli.common import EXIT_INTERRUPTED, console, print_json, setup_logging, user_errors
from stpm_edge.errors import StpmError, first_line

logger = logging.getLogger("stpm_edge.run")

SOURCE_HELP = ("Camera index, /dev/videoN, v4l2://, csi://N (Jetson), rtsp://..., http(s)://..., gst:PIPELINE, "
               "a video file (file:// or path), an image folder or a glob. Options may follow as a query, "
               "e.g. csi://0?width=1280&height=720&fps=30 or rtsp://cam/s?latency=0&codec=h265.")


def _install_signals(stop: Any) -> dict:
    """SIGINT/SIGTERM → ``stop(name)``; a second SIGINT aborts (KeyboardInterrupt)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    seen: list[str] = []

    def handler(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if seen and signum == signal.SIGINT:
            raise KeyboardInterrupt
        seen.append(name)
        stop(name)

    old = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        old[sig] = signal.signal(sig, handler)
    return old


def _print_summary(s: dict, demo: dict | None) -> None:
    console.print(f"{s['frames']} frames in {s['seconds']:.1f} s ({s['fps']:.1f} fps), "
                  f"{s['ng_frames']} NG, dropped {s['dropped']}, corrupt {s['corrupt']}, "
                  f"reconnects {s['reconnects']} — {s['stop_reason']}", highlight=False)
    table = Table("stage", "p50 ms", "p99 ms", "mean ms", box=None, pad_edge=False)
    for stage, st in s["latency_ms"].items():
        if st["count"]:
            table.add_row(stage, f"{st['p50']:.2f}", f"{st['p99']:.2f}", f"{st['mean']:.2f}")
    console.print(table)
    if s.get("raw"):
        r = s["raw"]
        console.print(f"raw backend {r['fps']:.1f} fps on the same frames; stpm-run reached {100 * r['ratio']:.1f}%",
                      highlight=False)
    for kind, where in s["outputs"].items():
        console.print(f"{kind}: {where}", highlight=False)
    if demo:
        console.print(f"demo: defects on frames {demo['defect_frames']}; NG on {demo['ng_frames']} "
                      f"({demo['detected']}/{len(demo['defect_frames'])} detected, "
                      f"{len(demo['false_alarms'])} false alarms)", highlight=False)


def _demo_assets(image_size: int, epochs: int, frames: int, rebuild: bool, quiet: bool) -> Any:
    from stpm_edge.apps.demo import DemoConfig, build_demo, demo_cache_dir

    cfg = DemoConfig(image_size=image_size, epochs=epochs, frames=frames)
    status = console.status("demo: preparing", spinner="dots") if not quiet else None
    if status:
        status.start()
    try:
        assets = build_demo(demo_cache_dir(), cfg, rebuild=rebuild,
                            progress=(lambda m: status.update(f"demo (first run only): {m}")) if status else None)
    finally:
        if status:
            status.stop()
    t = assets.manifest["training"]
    logger.info("demo: %s %s (trained %d epochs, %.0f s; test image AUROC %s)", assets.root,
                "(cached)" if assets.cached else "(built)", t["epochs_run"], t["seconds"],
                "-" if t["test_image_auroc_at_best"] is None else f"{t['test_image_auroc_at_best']:.3f}")
    return assets


def _check_before_writing(batch: int, max_frames: Optional[int], output: Optional[Path], kind: Optional[str],
                          events: Optional[Path], save_anomalies: Optional[Path]) -> None:
    """Every option that decides what is written, checked before any file is created."""
    from stpm_edge.data.io import check_writable  # noqa: PLC0415

    if batch < 1:
        raise StpmError(f"--batch {batch}: must be at least 1")
    if max_frames is not None and max_frames < 1:
        raise StpmError(f"--max-frames {max_frames}: must be at least 1")
    if output is not None:
        check_writable(output, folder=kind != "video")
    if events is not None:
        check_writable(events)
    if save_anomalies is not None:
        check_writable(save_anomalies, folder=True)


@user_errors("stpm-run")
def run_cmd(
    model: Optional[str] = typer.Argument(None, help="Model: .onnx (stpm-export), .engine (TensorRT), .pt checkpoint "
                                                    "or triton://HOST:PORT/NAME (Triton server). Not needed with --demo."),
    camera: Optional[int] = typer.Option(None, "--camera", "-c", help="Camera index (the default source is camera 0)."),
    source: Optional[List[str]] = typer.Option(None, "--source", "-s", help=SOURCE_HELP + " Repeat -s for several "
                                               "streams through one model (frames batched up to --batch)."),
    sources_file: Optional[Path] = typer.Option(None, "--sources", help="A file with one source URI per line "
                                                "(# comments), for many streams."),
    batch_wait: float = typer.Option(5.0, help="Several streams: ms to wait for more frames after the first of a batch."),
    backend: str = typer.Option("auto", help="auto | onnxruntime | cpu | cuda | tensorrt (| torch for .pt)."),
    threads: Optional[int] = typer.Option(None, help="CPU inference threads (default: the backend's choice)."),
    threshold: Optional[float] = typer.Option(None, help="NG threshold in normalised units (default: the model's, 0.5)."),
    loop: bool = typer.Option(False, "--loop", help="Restart a video file or image folder at its end."),
    max_frames: Optional[int] = typer.Option(None, help="Stop after this many frames."),
    batch: int = typer.Option(1, help="Frames per inference call (throughput on files; live sources use what is ready)."),
    width: Optional[int] = typer.Option(None, help="Capture width for cameras (csi:// default 1280)."),
    height: Optional[int] = typer.Option(None, help="Capture height for cameras (csi:// default 720)."),
    fps: Optional[int] = typer.Option(None, "--fps", help="Capture frame rate for cameras (csi:// default 30)."),
    flip: Optional[int] = typer.Option(None, help="csi:// nvvidconv flip-method 0..7."),
    reconnect: bool = typer.Option(True, "--reconnect/--no-reconnect", help="Re-open a camera or stream that drops "
                                   "(exponential backoff 0.5 s .. 8 s)."),
    reconnect_attempts: int = typer.Option(10, help="Reconnect attempts per outage before giving up (0 = forever)."),
    colormap: str = typer.Option("turbo", help="Heatmap colormap: turbo | jet | inferno."),
    alpha: float = typer.Option(0.5, help="Heatmap opacity 0..1."),
    contours: bool = typer.Option(True, "--contours/--no-contours", help="Outline the regions above the threshold on NG frames."),
    boxes: bool = typer.Option(False, "--boxes", help="Draw the bounding boxes of the regions."),
    side_by_side: bool = typer.Option(False, "--side-by-side", help="Show the frame and the overlay side by side."),
    hud: bool = typer.Option(True, "--hud/--no-hud", help="FPS, latency, backend, score and the OK/NG badge."),
    headless: bool = typer.Option(False, "--headless", help="No window (automatic without a display or GUI-less "
                                  "OpenCV). Several streams share one window, tiled."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Write the overlay video (.mp4/.avi/.mkv) or "
                                          "frames into a folder. The video appears only when complete."),
    save_anomalies: Optional[Path] = typer.Option(None, help="Folder for each NG frame: frame, overlay and mask."),
    events: Optional[Path] = typer.Option(None, help="JSON-lines file: one line per NG frame (timestamp, frame, "
                                          "score, boxes), flushed at once."),
    compare_raw: bool = typer.Option(False, "--compare-raw", help="Afterwards, time the bare backend on the same "
                                     "frames and report stpm-run's throughput as a share of it."),
    demo: bool = typer.Option(False, "--demo", help="Build (once, cached) a sample model and inspection video and "
                              "stream it; writes stpm-demo.mp4 unless --output is given."),
    demo_image_size: int = typer.Option(128, help="Demo: image and model size.", hidden=True),
    demo_epochs: int = typer.Option(40, help="Demo: training epochs at most (early stopping may end sooner).",
                                    hidden=True),
    demo_frames: int = typer.Option(60, help="Demo: frames in the inspection video.", hidden=True),
    rebuild_demo: bool = typer.Option(False, "--rebuild-demo", help="Demo: rebuild the cached model and video."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
    verbose: bool = typer.Option(False, "-v", "--verbose"),
) -> None:
    """Stream a camera, stream, video or image folder through a model with a live heatmap overlay.

    Examples: stpm-run --demo | stpm-run model.onnx --camera 0 | stpm-run model.onnx -s csi://0 --events ng.jsonl |
    stpm-run model.onnx -s line.mp4 --headless -o overlay.mp4 --json.
    Stop with q/Esc in the window, Ctrl-C (exit 130) or SIGTERM (exit 0): the video is finalised either way.
    """
    setup_logging(verbose)
    if not verbose:  # the provider choice is in the summary; keep error output to one line
        logging.getLogger("stpm_edge.runtime.backends").setLevel(logging.WARNING)
    from stpm_edge.runtime.detector import Detector
    from stpm_edge.apps.run.outputs import AnomalySink, EventSink, ImageFolderSink, VideoSink, WindowSink, output_kind
    from stpm_edge.runtime.overlay import OverlayStyle
    from stpm_edge.apps.run.pipeline import Pipeline, PipelineConfig
    from stpm_edge.apps.run.sources import ReconnectPolicy, make_source, parse_uri

    source = list(source or [])
    if sources_file is not None:
        source += _read_sources(sources_file)
    if len(source) > 1:
        if demo or camera is not None:
            raise StpmError("several sources: drop --demo and --camera")
        if model is None:
            raise StpmError("missing MODEL (an .onnx/.engine/.pt file or triton:// URI)")
        _check_before_writing(batch, max_frames, output, output_kind(output) if output is not None else None,
                              events, save_anomalies)
        return _run_multi(model, source, backend=backend, threads=threads, threshold=threshold, loop=loop,
                          max_frames=max_frames, batch=batch, batch_wait=batch_wait / 1000.0,
                          reconnect=reconnect, reconnect_attempts=reconnect_attempts,
                          style=(colormap, alpha, contours, boxes, side_by_side), hud=hud, output=output,
                          save_anomalies=save_anomalies, events=events, json_out=json_out,
                          size=(width, height, fps, flip), headless=headless)
    source = source[0] if source else None
    assets = None
    if demo:
        if model is not None or source is not None or camera is not None:
            raise StpmError("--demo brings its own model and video; drop MODEL, --camera and --source")
        assets = _demo_assets(demo_image_size, demo_epochs, demo_frames, rebuild_demo, json_out)
        model, source = assets.model, str(assets.video)
        threshold = assets.manifest["threshold"] if threshold is None else threshold
        output = output or Path("stpm-demo.mp4")
    if model is None:
        raise StpmError("missing MODEL (an .onnx/.engine/.pt file), or use --demo")
    if camera is not None and source is not None:
        raise StpmError("give either --camera or --source, not both")
    uri: str | int = source if source is not None else (camera if camera is not None else 0)
    spec = parse_uri(uri)
    if loop and spec.live:
        raise StpmError(f"--loop applies to files and folders; {spec.uri} is a live source")
    if reconnect_attempts < 0:
        raise StpmError("--reconnect-attempts must be >= 0")
    style = OverlayStyle(colormap, alpha, contours, boxes, side_by_side).validated()
    kind = output_kind(output) if output is not None else None
    _check_before_writing(batch, max_frames, output, kind, events, save_anomalies)

    detector = Detector(model, backend=backend, threshold=threshold, threads=threads)
    sinks: list = []
    src = make_source(spec, loop=loop, reconnect=ReconnectPolicy(reconnect, reconnect_attempts),
                      width=width, height=height, fps=fps, flip=flip)
    try:
        src.open()
        if _window_wanted(headless):
            sinks.append(WindowSink("stpm-run"))
        if output is not None:
            sinks.append(VideoSink(output, src.fps or 30.0) if kind == "video" else ImageFolderSink(output))
        if save_anomalies is not None:
            sinks.append(AnomalySink(save_anomalies))
        if events is not None:
            sinks.append(EventSink(events, spec.uri))
        ng_seen: list[int] = []
        on_frame = (lambda r: ng_seen.append(r.index) if r.result.is_anomalous else None) if assets else None
        pipeline = Pipeline(detector, src, sinks, PipelineConfig(max_frames, batch, None, 1.0, style, hud, compare_raw),
                            on_frame=on_frame)
        old = _install_signals(pipeline.stop)
        error: StpmError | None = None
        try:
            summary = pipeline.run()
        except StpmError as e:
            error, summary = e, pipeline.summary
        finally:
            for sig, h in old.items():
                signal.signal(sig, h)
    finally:
        src.close()
        detector.close()
    result = summary.to_dict() if summary is not None else {}
    demo_info = None
    if assets is not None and summary is not None:
        from stpm_edge.apps.demo import demo_report

        demo_info = demo_report(assets.defect_frames, ng_seen)
        result["demo"] = {**demo_info, "cache": str(assets.root), "cached": assets.cached}
    if summary is not None:
        if error is not None:
            result["error"] = str(error)
        if json_out:
            print_json(result)
        elif error is None or verbose:  # a failed run says so in one line (its summary with -v)
            _print_summary(result, demo_info)
    if error is not None:
        raise error
    if summary is not None and summary.stop_reason == "SIGINT":
        raise typer.Exit(EXIT_INTERRUPTED)


def _window_wanted(headless: bool) -> bool:
    """A window unless --headless, or no display / a GUI-less OpenCV (then headless, said at -v)."""
    from stpm_edge.apps.run.outputs import can_show_window

    if not headless and not can_show_window():
        logger.info("no display (or OpenCV without GUI): running headless")
        return False
    return not headless


def _read_sources(path: Path) -> list[str]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise StpmError(f"--sources {path}: cannot read it ({first_line(e)})") from None
    found = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
    if not found:
        raise StpmError(f"--sources {path}: no source URIs in it")
    return found


def stream_output(output: Path, name: str, n: int) -> Path:
    """The output of stream ``name``: ``{stream}`` in the path is replaced; a path without it is a
    folder that gets ``<name>.mp4`` per stream."""
    text = str(output)
    if "{stream}" in text:
        return Path(text.replace("{stream}", name))
    from stpm_edge.apps.run.outputs import VIDEO_FOURCC

    if Path(text).suffix.lower() in VIDEO_FOURCC and n > 1:
        raise StpmError(f"-o {output}: one video for {n} streams; put {{stream}} in the name (e.g. out_{{stream}}.mp4) "
                        f"or give a folder")
    return Path(text) / f"{name}.mp4"


def _run_multi(model: str, uris: list[str], *, backend: str, threads: Any, threshold: Any, loop: bool, max_frames: Any,
               batch: int, batch_wait: float, reconnect: bool, reconnect_attempts: int, style: tuple, hud: bool,
               output: Any, save_anomalies: Any, events: Any, json_out: bool, size: tuple, headless: bool) -> None:
    from stpm_edge.apps.run.multi import MultiPipeline, PipelineConfig, Stream
    from stpm_edge.apps.run.outputs import (AnomalySink, EventSink, ImageFolderSink, TiledWindowSink, VideoSink,
                                           output_kind)
    from stpm_edge.apps.run.sources import ReconnectPolicy, make_source, parse_uri
    from stpm_edge.runtime.detector import Detector
    from stpm_edge.runtime.overlay import OverlayStyle

    if reconnect_attempts < 0:
        raise StpmError("--reconnect-attempts must be >= 0")
    specs = [parse_uri(u) for u in uris]
    if loop and any(s.live for s in specs):
        raise StpmError("--loop applies to files and folders, and some sources are live")
    names = [f"s{i}" for i in range(len(specs))]
    outs = [stream_output(output, n, len(names)) for n in names] if output is not None else []
    kinds = [output_kind(o) for o in outs]
    cfg = PipelineConfig(max_frames, batch, None, 1.0, OverlayStyle(*style).validated(), hud)
    detector = Detector(model, backend=backend, threshold=threshold, threads=threads)
    w, h, f, flip = size
    streams: list = []
    shared: list = []
    try:
        for i, spec in enumerate(specs):
            src = make_source(spec, loop=loop, reconnect=ReconnectPolicy(reconnect, reconnect_attempts),
                              width=w, height=h, fps=f, flip=flip)
            streams.append(Stream(names[i], src))
            src.open()
            if outs:
                streams[-1].sinks.append(VideoSink(outs[i], src.fps or 30.0) if kinds[i] == "video"
                                         else ImageFolderSink(outs[i]))
        if _window_wanted(headless):
            shared.append(TiledWindowSink(names, "stpm-run"))
        if save_anomalies is not None:
            shared.append(AnomalySink(save_anomalies))
        if events is not None:
            shared.append(EventSink(events, "multi"))
        pipeline = MultiPipeline(detector, streams, shared, cfg, batch_wait)
        old = _install_signals(pipeline.stop)
        error = None
        try:
            summary = pipeline.run()
        except StpmError as e:
            error, summary = e, pipeline.summary
        finally:
            for sig, hnd in old.items():
                signal.signal(sig, hnd)
    finally:
        for st in streams:
            st.source.close()
        detector.close()
    if summary is not None:
        if json_out:
            print_json(summary)
        else:
            _print_multi(summary)
    if error is not None:
        raise error
    if summary is not None and summary["errors"]:
        raise StpmError(f"{len(summary['errors'])} of {len(streams)} streams failed: "
                        + "; ".join(f"{k}: {v}" for k, v in summary["errors"].items()))
    if summary is not None and summary["stop_reason"] == "SIGINT":
        raise typer.Exit(EXIT_INTERRUPTED)


def _print_multi(s: dict) -> None:
    console.print(f"[bold]{s['frames']} frames[/] from {len(s['streams'])} streams in {s['seconds']:.1f} s "
                  f"({s['fps']:.1f} fps), [bold]{s['ng_frames']} NG[/], batches {s['batches']} — {s['stop_reason']}",
                  highlight=False)
    table = Table("stream", "source", "frames", "NG", "fps", "dropped", "e2e p50 ms", "state", box=None, pad_edge=False)
    for name, st in s["streams"].items():
        e2e = st["latency_ms"]["end_to_end"]
        table.add_row(name, st["source"], str(st["frames"]), str(st["ng_frames"]), f"{st['fps']:.1f}",
                      str(st["dropped"]), f"{e2e['p50']:.1f}" if e2e["count"] else "-", st["error"] or st["stop_reason"])
    console.print(table)
