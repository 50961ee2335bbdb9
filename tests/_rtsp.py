"""A minimal RTSP server for tests: a real RTSP/RTP stream on 127.0.0.1 that can be killed and
restarted on the same port.

FFmpeg (the static binary of the ``imageio-ffmpeg`` wheel) plays a video file in a loop at its
own rate (``-re -stream_loop -1``) and sends RTP over UDP to a local port; this server answers
OPTIONS, DESCRIBE (FFmpeg's SDP), SETUP (RTP over the RTSP connection only: ``461`` to UDP, so a
client falls back to TCP), PLAY, GET_PARAMETER and TEARDOWN, and relays every RTP packet to each
playing client interleaved (``$``, channel 0, 16-bit length, packet). :meth:`RtspServer.stop`
closes the listening socket and every connection and kills FFmpeg, as a crashed camera or a
restarted server would; :meth:`RtspServer.start` brings it back on the same port.

    with RtspServer(video) as srv:           # rtsp://127.0.0.1:<srv.port>/live
        ...
        srv.stop(); time.sleep(2); srv.start()
"""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType

import imageio_ffmpeg

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()


def encode_mpeg4(src: Path, dst: Path, gop: int = 5) -> Path:
    """``src`` re-encoded as MPEG-4 Part 2 with a keyframe every ``gop`` frames, for streaming with
    ``-c:v copy``: a client that joins (or re-joins) mid-stream decodes within ``gop`` frames, and
    decodes exactly the frames that reading ``dst`` itself gives."""
    subprocess.run([FFMPEG, "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-i", str(src), "-an",
                    "-c:v", "mpeg4", "-q:v", "2", "-g", str(gop), "-bf", "0", str(dst)], check=True)
    return dst


class _Client:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.lock = threading.Lock()
        self.playing = False
        self.frames = 0  # RTP packets with the marker bit (the last packet of a frame) relayed

    def send(self, data: bytes) -> bool:
        with self.lock:
            try:
                self.sock.sendall(data)
                return True
            except OSError:
                return False

    def close(self) -> None:
        self.playing = False
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()


class RtspServer:
    """``rtsp://127.0.0.1:<port>/<path>`` streaming ``video`` (looping); see the module docstring."""

    def __init__(self, video: Path, port: int = 0, path: str = "live", copy: bool = True) -> None:
        self.video = Path(video)
        self.port = port
        self.path = path
        self.copy = copy  # -c:v copy (e.g. a file from encode_mpeg4); else re-encode to MPEG-4 Part 2
        self.sessions = 0  # PLAY requests served, over every start
        self.frames_sent = 0  # frames relayed to clients, over every start
        self._tmp = Path(tempfile.mkdtemp(prefix="rtsp-"))
        self._running = threading.Event()
        self._threads: list[threading.Thread] = []
        self._clients: list[_Client] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._udp: socket.socket | None = None
        self._ffmpeg: subprocess.Popen | None = None
        self._sdp = ""

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/{self.path}"

    @property
    def playing(self) -> int:
        with self._lock:
            return sum(c.playing for c in self._clients)

    # -- life cycle ------------------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> RtspServer:
        assert not self._running.is_set(), "already running"
        self._udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._udp.bind(("127.0.0.1", 0))
        self._udp.settimeout(0.2)
        rtp_port = self._udp.getsockname()[1]
        sdp = self._tmp / "stream.sdp"
        sdp.unlink(missing_ok=True)
        codec = ["-c:v", "copy"] if self.copy else ["-c:v", "mpeg4", "-q:v", "3", "-g", "5"]
        self._ffmpeg = subprocess.Popen(
            [FFMPEG, "-hide_banner", "-loglevel", "error", "-nostdin", "-re", "-stream_loop", "-1", "-i",
             str(self.video), "-an", *codec, "-f", "rtp", "-sdp_file", str(sdp), f"rtp://127.0.0.1:{rtp_port}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not (sdp.is_file() and "m=video" in sdp.read_text()):
            if time.monotonic() > deadline or self._ffmpeg.poll() is not None:
                self._kill_ffmpeg()
                raise RuntimeError(f"ffmpeg did not start streaming {self.video}")
            time.sleep(0.05)
        self._sdp = self._describe(sdp.read_text())
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", self.port))
        self._listener.listen(8)
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._running.set()
        self._threads = [threading.Thread(target=self._accept_loop, name="rtsp-accept", daemon=True),
                         threading.Thread(target=self._relay_loop, name="rtsp-relay", daemon=True)]
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        """Drop everything at once: listener, connections (FIN to each client), FFmpeg."""
        self._running.clear()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.close()
            self._listener = None
        with self._lock:
            clients, self._clients = self._clients, []
        for c in clients:
            c.close()
        self._kill_ffmpeg()
        for t in self._threads:
            t.join(timeout=5.0)
        self._threads = []
        if self._udp is not None:
            self._udp.close()
            self._udp = None

    def close(self) -> None:
        self.stop()
        for p in self._tmp.iterdir():
            p.unlink()
        self._tmp.rmdir()

    def __enter__(self) -> RtspServer:
        return self.start() if not self._running.is_set() else self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _kill_ffmpeg(self) -> None:
        if self._ffmpeg is not None:
            self._ffmpeg.kill()
            self._ffmpeg.wait(timeout=10)
            self._ffmpeg = None

    @staticmethod
    def _describe(sdp: str) -> str:
        """FFmpeg's SDP for a client of ours: any address, a control URL per stream."""
        out = []
        for line in sdp.splitlines():
            line = line.strip()
            if line.startswith("c="):
                line = "c=IN IP4 0.0.0.0"
            if line.startswith("m=video"):
                out.append("a=control:*")
                parts = line.split()
                parts[1] = "0"
                line = " ".join(parts)
                out.append(line)
                out.append("a=control:trackID=0")
                continue
            if line:
                out.append(line)
        return "\r\n".join(out) + "\r\n"

    # -- threads ---------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        listener = self._listener
        while self._running.is_set() and listener is not None:
            try:
                sock, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client = _Client(sock)
            with self._lock:
                if not self._running.is_set():
                    client.close()
                    break
                self._clients.append(client)
            threading.Thread(target=self._serve, args=(client,), name="rtsp-client", daemon=True).start()

    def _relay_loop(self) -> None:
        udp = self._udp
        while self._running.is_set() and udp is not None:
            try:
                packet = udp.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                break
            if len(packet) < 12:
                continue
            data = b"$\x00" + len(packet).to_bytes(2, "big") + packet
            marker = bool(packet[1] & 0x80)
            with self._lock:
                clients = [c for c in self._clients if c.playing]
            for c in clients:
                if c.send(data):
                    if marker:
                        c.frames += 1
                        self.frames_sent += 1
                else:
                    self._drop(c)

    def _drop(self, client: _Client) -> None:
        client.close()
        with self._lock:
            if client in self._clients:
                self._clients.remove(client)

    def _serve(self, client: _Client) -> None:
        """One RTSP connection: requests in, replies out (interleaved data from the client skipped)."""
        buf = b""
        session = f"{os.getpid():x}{id(client) & 0xFFFFFF:06x}"
        try:
            while self._running.is_set():
                while buf.startswith(b"$") and len(buf) >= 4:  # RTCP receiver reports: skip
                    n = 4 + int.from_bytes(buf[2:4], "big")
                    if len(buf) < n:
                        break
                    buf = buf[n:]
                head, sep, rest = buf.partition(b"\r\n\r\n")
                if not sep or buf.startswith(b"$"):
                    chunk = client.sock.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
                    continue
                lines = head.decode("latin-1").split("\r\n")
                headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
                length = int(headers.get("content-length", "0"))
                if len(rest) < length:
                    chunk = client.sock.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
                    continue
                buf = rest[length:]
                method, url = (lines[0].split() + ["", ""])[:2]
                if not self._reply(client, method, url, headers, session):
                    break
        except OSError:
            pass
        finally:
            self._drop(client)

    def _reply(self, client: _Client, method: str, url: str, headers: dict[str, str], session: str) -> bool:
        cseq = headers.get("cseq", "0")
        extra, body, status = [], "", "200 OK"
        if method == "OPTIONS":
            extra.append("Public: OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN, GET_PARAMETER")
        elif method == "DESCRIBE":
            base = url if url.endswith("/") else url + "/"
            extra += [f"Content-Base: {base}", "Content-Type: application/sdp"]
            body = self._sdp
        elif method == "SETUP":
            transport = headers.get("transport", "")
            if "RTP/AVP/TCP" not in transport:
                status = "461 Unsupported Transport"
            else:
                extra += ["Transport: RTP/AVP/TCP;unicast;interleaved=0-1", f"Session: {session};timeout=60"]
        elif method == "PLAY":
            extra += [f"Session: {session}", "Range: npt=0.000-"]
        elif method in ("GET_PARAMETER", "TEARDOWN"):
            extra.append(f"Session: {session}")
        else:
            status = "405 Method Not Allowed"
        msg = [f"RTSP/1.0 {status}", f"CSeq: {cseq}", *extra]
        if body:
            msg.append(f"Content-Length: {len(body.encode())}")
        if not client.send(("\r\n".join(msg) + "\r\n\r\n" + body).encode()):
            return False
        if method == "PLAY":
            client.playing = True
            with self._lock:
                self.sessions += 1
        return method != "TEARDOWN"
