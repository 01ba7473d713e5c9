"""What a service process does before it serves (``shared.serve``)."""

from __future__ import annotations

import gc
from typing import Any

import pytest
from fastapi import FastAPI

import shared.serve
from shared.settings import ServiceSettings


def test_a_service_process_freezes_what_it_built_before_serving(monkeypatch: pytest.MonkeyPatch) -> None:
    """The objects of startup are left out of the collector's full passes (each walked ~100k
    objects: 30-90 ms with the event loop stopped, in every request's and poll's latency)."""
    served: dict[str, Any] = {}

    def run(app: FastAPI, **options: Any) -> None:  # instead of uvicorn: note what it would serve
        served["app"], served["frozen"] = app, gc.get_freeze_count()

    monkeypatch.setattr(shared.serve.uvicorn, "run", run)
    gc.unfreeze()
    try:
        shared.serve.serve(ServiceSettings(), lambda settings: FastAPI(title="probe"))
    finally:
        gc.unfreeze()
    assert served["app"].title == "probe"
    assert served["frozen"] > 1000
