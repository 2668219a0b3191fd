"""Server counters in the Prometheus text format (``GET /metrics``), without a client library.

Call as::

    m = Metrics()
    m.request("chat", 200, packs=["pirate"], n_prompt=31, n_generated=12, prompt_s=0.02, decode_s=0.2, total_s=0.3)
    text = m.render(queue_depth=0, slots_busy=1, slots=2, packs_loaded=3, packs_refused=1)
"""

from __future__ import annotations

import threading
import time
from collections import Counter


def _label(value: str) -> str:
    """A label value escaped as the text format asks (backslash, quote, newline)."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """Thread-safe counters of one server process."""

    def __init__(self):
        self._lock = threading.Lock()
        self.started = time.time()
        self.requests: Counter = Counter()  # (endpoint, status) → count
        self.pack_requests: Counter = Counter()  # pack name → requests that used it
        self.prompt_tokens = 0
        self.generated_tokens = 0
        self.prompt_seconds = 0.0
        self.decode_seconds = 0.0
        self.request_seconds = 0.0
        self.finished = 0

    def request(self, endpoint: str, status: int, packs=(), n_prompt: int = 0, n_generated: int = 0,
                prompt_s: float = 0.0, decode_s: float = 0.0, total_s: float = 0.0) -> None:
        """Count one answered request: its endpoint, HTTP status, packs, tokens and phase seconds."""
        with self._lock:
            self.requests[(endpoint, int(status))] += 1
            for p in packs:
                self.pack_requests[p] += 1
            self.prompt_tokens += int(n_prompt)
            self.generated_tokens += int(n_generated)
            self.prompt_seconds += float(prompt_s)
            self.decode_seconds += float(decode_s)
            if status == 200:
                self.request_seconds += float(total_s)
                self.finished += 1

    def render(self, **gauges: float) -> str:
        """The text exposition: counters above plus ``gauges`` (``cmdv_<name>``, e.g. ``queue_depth``).
        ``cmdv_prompt_tokens_per_second`` / ``cmdv_decode_tokens_per_second`` are per slot-second: tokens over
        the summed phase seconds of all slots."""
        with self._lock:
            lines = ["# HELP cmdv_requests_total Requests answered, by endpoint and HTTP status.",
                     "# TYPE cmdv_requests_total counter"]
            lines += [f'cmdv_requests_total{{endpoint="{_label(e)}",status="{s}"}} {n}'
                      for (e, s), n in sorted(self.requests.items())]
            lines += ["# HELP cmdv_pack_requests_total Requests that applied each pack.",
                      "# TYPE cmdv_pack_requests_total counter"]
            lines += [f'cmdv_pack_requests_total{{pack="{_label(p)}"}} {n}' for p, n in sorted(self.pack_requests.items())]
            rates = {"prompt_tokens_per_second": self.prompt_tokens / self.prompt_seconds if self.prompt_seconds else 0.0,
                     "decode_tokens_per_second": self.generated_tokens / self.decode_seconds if self.decode_seconds else 0.0}
            counters = {"prompt_tokens_total": self.prompt_tokens, "generated_tokens_total": self.generated_tokens,
                        "prompt_seconds_total": self.prompt_seconds, "decode_seconds_total": self.decode_seconds}
            summary = (self.request_seconds, self.finished)
        for name, value in counters.items():
            lines += [f"# TYPE cmdv_{name} counter", f"cmdv_{name} {value:g}"]
        lines += ["# HELP cmdv_request_duration_seconds Seconds from request to last token, answered requests.",
                  "# TYPE cmdv_request_duration_seconds summary", f"cmdv_request_duration_seconds_sum {summary[0]:g}",
                  f"cmdv_request_duration_seconds_count {summary[1]}"]
        for name, value in {**rates, "uptime_seconds": time.time() - self.started, **gauges}.items():
            lines += [f"# TYPE cmdv_{name} gauge", f"cmdv_{name} {float(value):g}"]
        return "\n".join(lines) + "\n"
