"""Run a service process: logging first, then uvicorn on the service's port."""

from __future__ import annotations

import gc
from collections.abc import Callable

import uvicorn
from fastapi import FastAPI

from shared.logging import configure_logging
from shared.settings import ServiceSettings


def serve(settings: ServiceSettings, build_app: Callable[[ServiceSettings], FastAPI]) -> None:
    configure_logging(settings.service_name, settings.log_level, settings.log_format)
    app = build_app(settings)
    # What exists now (modules, the app, its models: ~100k objects) lives as long as the process.
    # Frozen, it is left out of the collector's full passes, which walked all of it: 30-90 ms
    # during which the event loop, so every consumer poll and request, stood still.
    gc.freeze()
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None, access_log=False,
                lifespan="on", timeout_graceful_shutdown=10)
