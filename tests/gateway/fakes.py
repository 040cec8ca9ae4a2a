"""What the gateway tests drive by hand: a meter with scripted readings, a Prometheus exporter whose counter
the test sets, and an upstream that never answers (or stalls mid-stream)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from greenlm.energy.base import Measurement, Meter, Reading


class ScriptedMeter(Meter):
    name = "scripted"
    energy_source = "measured"

    def __init__(self):
        self.joules = 0.0

    def at(self, time_s: float, add_j: float = 0.0) -> Reading:
        """A reading at `time_s`, `add_j` joules after the previous one."""
        self.joules += add_j
        return Reading(time_s=time_s, values={"j": self.joules})

    def read(self) -> Reading:  # the tests hand readings over themselves
        raise NotImplementedError

    def measure(self, start: Reading, end: Reading) -> Measurement:
        return Measurement(
            meter=self.name,
            energy_source=self.energy_source,
            duration_s=end.time_s - start.time_s,
            energy_j={"all": end.values["j"] - start.values["j"]},
        )


class _Quiet(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:  # the test's output stays clean
        pass


class FakeExporter:
    """A Prometheus endpoint on 127.0.0.1 whose energy counter the test sets (grows, resets, wraps)."""

    def __init__(self, metric: str = "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", kind: str = "counter"):
        self.metric, self.kind = metric, kind
        self.series: dict[str, float] = {}  # label text ('gpu="0"') -> value
        self.scrapes = 0
        exporter = self

        class Handler(_Quiet):
            def do_GET(self):
                exporter.scrapes += 1
                lines = [f"# TYPE {exporter.metric} {exporter.kind}"]
                lines += [
                    f"{exporter.metric}{{{labels}}} {value}" for labels, value in exporter.series.items()
                ]
                body = ("\n".join(lines) + "\n").encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/metrics"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class FakeUpstream:
    """An OpenAI-compatible server on 127.0.0.1 that answers /health and /v1/models, and then, for a completion,
    `mode`: "silent" (reads the request, never answers) or "stall" (sends the stream's headers and one chunk,
    then nothing). `release` ends every held request."""

    def __init__(self, mode: str = "silent", model: str = "fake"):
        self.mode = mode
        self.release = threading.Event()
        self.posts = 0
        upstream = self

        class Handler(_Quiet):
            protocol_version = "HTTP/1.1"

            def _json(self, status: int, payload) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path == "/health":
                    self._json(200, {"status": "ok"})
                elif self.path == "/v1/models":
                    self._json(200, {"object": "list", "data": [{"id": model, "object": "model"}]})
                else:
                    self._json(404, {"error": {"message": "no such route", "type": "not_found_error"}})

            def do_POST(self):
                upstream.posts += 1
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if upstream.mode == "stall":
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.end_headers()
                    chunk = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": model,
                             "choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None}]}  # fmt: skip
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()
                upstream.release.wait(60)
                self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
