"""The operator's dashboard and the gateway's /metrics.

GET /dashboard is one static page (dashboard.html: plain JS, canvas charts,
nothing fetched from elsewhere) that polls GET /dashboard/data, the process's
Sampler ring buffer as JSON. Both show operator data, as /metrics does, so all
three answer only clients in `gateway.operator_networks` (loopback by
default); anyone else gets 403 whatever the gateway's listen address.
"""
from __future__ import annotations

import ipaddress
from pathlib import Path

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

PAGE = Path(__file__).with_name("dashboard.html")


def add_operator_routes(app: FastAPI, gateway_registry, sampler,
                        operator_networks: list[str]) -> None:
    networks = [ipaddress.ip_network(n, strict=False) for n in operator_networks]

    def operator(request: Request) -> None:
        host = request.client.host if request.client else ""
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            address = None
        if address is None or not any(address in network for network in networks):
            raise HTTPException(403, "operator data: this client is not in "
                                     "gateway.operator_networks")

    @app.get("/metrics", tags=["operations"], dependencies=[Depends(operator)],
             response_class=Response,
             responses={200: {"content": {CONTENT_TYPE_LATEST: {}},
                              "description": "Prometheus text format"}})
    async def metrics():
        # The process's metrics (every service it runs), then the gateway's own.
        return Response(generate_latest(REGISTRY) + generate_latest(gateway_registry),
                        media_type=CONTENT_TYPE_LATEST)

    @app.get("/dashboard", include_in_schema=False, dependencies=[Depends(operator)])
    async def dashboard():
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    @app.get("/dashboard/data", include_in_schema=False, dependencies=[Depends(operator)])
    async def dashboard_data(since: float = 0.0):
        if sampler is None:
            raise HTTPException(503, "no sampler runs in this process")
        return sampler.dashboard(since)
