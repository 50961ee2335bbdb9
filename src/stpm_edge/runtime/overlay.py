"""Drawing: the anomaly heatmap blended over the frame, mask contours, side-by-side view, HUD.

Maps are in normalised units (0.5 = threshold); the colour scale is fixed at 0 → 1 so that
a colour means the same score in every frame (half-way up the colormap is the threshold).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from stpm_edge.errors import StpmError

COLORMAPS = {"turbo": cv2.COLORMAP_TURBO, "jet": cv2.COLORMAP_JET, "inferno": cv2.COLORMAP_INFERNO}
OK_COLOR = (60, 180, 75)  # BGR green
NG_COLOR = (40, 40, 230)  # BGR red
CONTOUR_COLOR = (255, 255, 255)
BOX_COLOR = (0, 255, 255)


@dataclass(frozen=True)
class OverlayStyle:
    colormap: str = "turbo"
    alpha: float = 0.5  # heatmap weight: 0 = frame only, 1 = heatmap only
    contours: bool = True  # outline the mask regions (callers pass the mask of NG frames only)
    boxes: bool = False
    side_by_side: bool = False
    vmax: float = 1.0  # the map value drawn at the top of the colormap (0.5 = threshold at mid-scale)

    def validated(self) -> OverlayStyle:
        if self.colormap.lower() not in COLORMAPS:
            raise StpmError(f"colormap {self.colormap!r}: choose one of {', '.join(COLORMAPS)}")
        if not 0.0 <= self.alpha <= 1.0:
            raise StpmError(f"alpha {self.alpha}: must be between 0 and 1")
        if not self.vmax > 0:
            raise StpmError(f"vmax {self.vmax}: must be positive")
        return OverlayStyle(self.colormap.lower(), float(self.alpha), self.contours, self.boxes, self.side_by_side,
                            float(self.vmax))


def colorize(anomaly_map: np.ndarray, colormap: str = "turbo", vmax: float = 1.0) -> np.ndarray:
    """float map (normalised units) → uint8 BGR heatmap of the same size (0 → bottom, ``vmax`` → top)."""
    cmap = COLORMAPS.get(colormap.lower())
    if cmap is None:
        raise StpmError(f"colormap {colormap!r}: choose one of {', '.join(COLORMAPS)}")
    levels = cv2.convertScaleAbs(np.maximum(anomaly_map, 0.0, dtype=np.float32), alpha=255.0 / vmax)
    return cv2.applyColorMap(levels, cmap)


def draw_contours(image: np.ndarray, mask: np.ndarray, color: tuple[int, int, int] = CONTOUR_COLOR) -> np.ndarray:
    """Outline the regions of ``mask`` on ``image`` (in place; returned for chaining)."""
    m = mask.astype(np.uint8) if mask.dtype != np.uint8 else mask
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if contours:
        cv2.drawContours(image, contours, -1, color, _thickness(image))
    return image


def _thickness(image: np.ndarray) -> int:
    return max(1, round(min(image.shape[:2]) / 320))


def draw_boxes(image: np.ndarray, boxes: list, color: tuple[int, int, int] = BOX_COLOR) -> np.ndarray:
    t = _thickness(image)
    for b in boxes:
        cv2.rectangle(image, (b.x, b.y), (b.x + b.w - 1, b.y + b.h - 1), color, t)
    return image


def render(frame: np.ndarray, anomaly_map: np.ndarray, mask: np.ndarray | None, style: OverlayStyle = OverlayStyle(),
           boxes: list | None = None) -> np.ndarray:
    """The overlay image: heatmap blended at ``alpha``, contours/boxes, optionally frame | overlay."""
    if anomaly_map.shape[:2] != frame.shape[:2]:
        raise StpmError(f"overlay: map {anomaly_map.shape[:2]} and frame {frame.shape[:2]} differ in size")
    heat = colorize(anomaly_map, style.colormap, style.vmax)
    out = cv2.addWeighted(heat, style.alpha, frame, 1.0 - style.alpha, 0.0) if style.alpha > 0 else frame.copy()
    if style.contours and mask is not None and mask.any():
        draw_contours(out, mask)
    if style.boxes and boxes:
        draw_boxes(out, boxes)
    if style.side_by_side:
        out = np.hstack([frame, out])
    return out


# ----------------------------------------------------------------------------------- HUD
def short_label(describe: str) -> str:
    """``onnxruntime (CUDAExecutionProvider, CPUExecutionProvider) fp16`` → ``onnxruntime CUDA fp16``."""
    if "(" in describe and ")" in describe:
        head, rest = describe.split("(", 1)
        inner, tail = rest.split(")", 1)
        first = inner.split(",")[0].strip().replace("ExecutionProvider", "")
        return " ".join(p for p in (head.strip(), first, tail.strip()) if p)
    return describe


@dataclass
class HudInfo:
    score: float
    anomalous: bool
    threshold: float
    fps: float | None = None
    latency_ms: float | None = None
    backend: str = ""
    frame_index: int | None = None


def _text(img: np.ndarray, text: str, org: tuple[int, int], scale: float, color=(255, 255, 255)) -> None:
    """White text on a dark box (an outline drawn with a thicker stroke does not line up in OpenCV 5)."""
    th = max(1, round(scale * 2))
    (tw, tht), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, th)
    x, y = org
    pad = max(1, th)
    x0, y0, x1, y1 = max(x - pad, 0), max(y - tht - pad, 0), min(x + tw + pad, img.shape[1]), min(y + base + pad, img.shape[0])
    if x1 > x0 and y1 > y0:
        img[y0:y1, x0:x1] = (img[y0:y1, x0:x1] >> 2)  # darken to a quarter: readable on any heatmap
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, color, th, cv2.LINE_AA)


def draw_hud(image: np.ndarray, info: HudInfo) -> np.ndarray:
    """OK/NG badge with the score (top left) and FPS, latency, backend lines (bottom left), in place."""
    h, w = image.shape[:2]
    scale = max(0.3, min(h, w) / 640.0)
    line = int(round(30 * scale)) + 4
    pad = max(2, line // 5)
    badge = "NG" if info.anomalous else "OK"
    color = NG_COLOR if info.anomalous else OK_COLOR
    (bw, bh), _ = cv2.getTextSize(badge, cv2.FONT_HERSHEY_SIMPLEX, scale * 1.4, max(1, round(scale * 3)))
    cv2.rectangle(image, (0, 0), (bw + 2 * pad, bh + 2 * pad + 2), color, -1)
    cv2.putText(image, badge, (pad, bh + pad), cv2.FONT_HERSHEY_SIMPLEX, scale * 1.4, (255, 255, 255),
                max(1, round(scale * 3)), cv2.LINE_AA)
    _text(image, f"score {info.score:.2f} / {info.threshold:.2f}", (bw + 3 * pad, bh + pad), scale)
    lines = []
    if info.fps is not None or info.latency_ms is not None:
        parts = []
        if info.fps is not None:
            parts.append(f"{info.fps:.1f} fps")
        if info.latency_ms is not None:
            parts.append(f"{info.latency_ms:.0f} ms")
        if info.frame_index is not None:
            parts.append(f"#{info.frame_index}")
        lines.append("  ".join(parts))
    if info.backend:
        lines.append(info.backend)
    for i, text in enumerate(reversed(lines)):
        _text(image, text, (pad, h - pad - i * line), scale * 0.8)
    return image
