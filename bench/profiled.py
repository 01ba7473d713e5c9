"""``python -m bench.profiled <service> <out.html>``: serve a service under pyinstrument and write
the profile when it stops (SIGTERM lets uvicorn shut down cleanly first)."""

from __future__ import annotations

import signal
import sys
from functools import partial
from pathlib import Path

from pyinstrument import Profiler


def _exit(*_: object) -> None:
    raise SystemExit(0)


def main() -> None:
    service, out = sys.argv[1], Path(sys.argv[2])
    from services.ops.registry import build, settings_for
    from shared.serve import serve

    # uvicorn handles SIGTERM (graceful shutdown), then raises it again with the handler found
    # before it started: this one, so the profile is written instead of the process dying.
    signal.signal(signal.SIGTERM, _exit)
    profiler = Profiler(interval=0.001, async_mode="disabled")
    profiler.start()
    try:
        serve(settings_for(service), partial(build, service))
    finally:
        profiler.stop()
        out.write_text(profiler.output_html())
        (out.with_suffix(".txt")).write_text(profiler.output_text(unicode=False, color=False, show_all=False))


if __name__ == "__main__":
    main()
