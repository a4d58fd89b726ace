"""The dashboard, the JSON API, ``/metrics`` and the health endpoints (FastAPI).

Pages (``/``, ``/associations``, ``/studies``, ``/jobs``, ``/jobs/{id}``, ``/failures``,
``/destinations``, ``/models``, ``/config``) render the documents that the
JSON API under ``/api`` returns; OpenAPI is at ``/docs``. Actions (retry a
job or a delivery, C-ECHO a destination) need ``Authorization: Bearer
<web.token>``; reading needs it too unless the server is bound to loopback.
Every response carries ``Cache-Control: no-store`` (pages and documents may
hold patient data) and headers against sniffing, framing and referrers.
"""

from __future__ import annotations

import datetime as dt
import hmac
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.templating import Jinja2Templates

from node.metrics import CONTENT_TYPE, NodeMetrics
from node.web import data, quality
from node.web.data import WebContext

__all__ = ["create_app"]

_TEMPLATES = Path(__file__).resolve().parent / "templates"
_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "frame-ancestors 'none'; object-src 'none'; base-uri 'none'",
    "Referrer-Policy": "no-referrer",
}


def _when(timestamp: float | None) -> str:
    if not timestamp:
        return "-"
    return dt.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def create_app(ctx: WebContext, metrics: NodeMetrics, *,
               readiness: Callable[[], dict[str, bool]],
               models: Callable[[], list[dict[str, Any]]]) -> FastAPI:
    """Build the web application over the node's catalogue, queue and outbox.

    Parameters
    ----------
    ctx
        Configuration and the stores the pages read.
    metrics
        The node's metrics (``/metrics``).
    readiness
        Returns the checks of ``/readyz`` (name -> passed).
    models
        Returns the installed model packs (``ModelPack.info()`` of each).
    """
    web = ctx.config.web
    app = FastAPI(title="segnode", description="segnode node: status, jobs, deliveries.",
                  version="1")
    templates = Jinja2Templates(directory=str(_TEMPLATES))
    templates.env.filters["when"] = _when

    @app.middleware("http")
    async def safety_headers(request: Request, call_next: Callable[..., Any]) -> Response:
        response = await call_next(request)
        for name, value in _HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    def token_ok(request: Request) -> bool:
        given = request.headers.get("authorization", "")
        return bool(web.token) and hmac.compare_digest(given, f"Bearer {web.token}")

    def may_read(request: Request) -> None:
        if not web.open_reading and not token_ok(request):
            raise HTTPException(401, "a bearer token is needed: this node is not bound to "
                                     "loopback")

    def may_act(request: Request) -> None:
        if not web.token:
            raise HTTPException(403, "actions are off: set web.token in the configuration")
        if not token_ok(request):
            raise HTTPException(401, "missing or wrong bearer token")

    def job_or_404(job_id: int) -> data.Job:
        job = ctx.queue.get(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id}")
        return job

    read = [Depends(may_read)]

    # -- health and metrics ---------------------------------------------------------------

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        """The process is alive."""
        return {"status": "alive"}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        """Listener accepting, database writable, model loaded, disk above the threshold."""
        checks = readiness()
        return JSONResponse({"ready": all(checks.values()), "checks": checks},
                            status_code=200 if all(checks.values()) else 503)

    @app.get("/metrics", dependencies=read)
    def prometheus() -> Response:
        """Prometheus text format."""
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    # -- JSON API -------------------------------------------------------------------------

    @app.get("/api/overview", dependencies=read)
    def api_overview() -> dict[str, Any]:
        return data.overview(ctx)

    @app.get("/api/associations", dependencies=read)
    def api_associations(limit: int = 100) -> list[dict[str, Any]]:
        return ctx.catalogue.list_associations(limit=min(max(limit, 1), 1000))

    @app.get("/api/studies", dependencies=read)
    def api_studies(limit: int = 100) -> list[dict[str, Any]]:
        """Recent studies, each with its series, their state and the job that took them."""
        return data.studies(ctx, limit=min(max(limit, 1), 1000))

    @app.get("/api/jobs", dependencies=read)
    def api_jobs(state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        return [data.job_summary(j) for j in ctx.queue.list(state, limit=min(limit, 1000))]

    @app.get("/api/jobs/{job_id}", dependencies=read)
    def api_job(job_id: int) -> dict[str, Any]:
        return data.job_detail(ctx, job_or_404(job_id))

    @app.get("/api/jobs/{job_id}/files/{volume}/{name}", dependencies=read)
    def api_job_file(job_id: int, volume: str, name: str) -> FileResponse:
        """A preview image or volume table of one of the job's volumes."""
        if not (name.startswith("preview") and name.endswith(".png")) and name not in (
                "volumes.csv", "volumes.json"):
            raise HTTPException(404, f"'{name}' is not served")
        for folder in data.job_folders(job_or_404(job_id)):
            if folder.name == volume and (folder / name).is_file():
                return FileResponse(folder / name)
        raise HTTPException(404, f"job {job_id} has no {volume}/{name}")

    @app.get("/api/export/volumes.csv", dependencies=read)
    def api_export(since: str | None = None, until: str | None = None,
                   study_uid: str | None = None) -> Response:
        """Volume tables of finished jobs, by study or over a date range (YYYY-MM-DD)."""
        def day(text: str | None, default: float) -> float:
            if not text:
                return default
            try:
                return dt.datetime.fromisoformat(text).timestamp()
            except ValueError:
                raise HTTPException(422, f"'{text}' is not a date (YYYY-MM-DD)") from None
        start, end = day(since, 0.0), day(until, time.time() + 86400)
        jobs = [j for j in ctx.queue.list("done", limit=100000)
                if start <= (j.finished_at or 0) < end
                and (study_uid is None or j.study_uid == study_uid)]
        return Response(data.volumes_export(ctx, jobs), media_type="text/csv",
                        headers={"Content-Disposition": "attachment; filename=volumes.csv"})

    @app.get("/api/quality", dependencies=read)
    def api_quality(model: str | None = None) -> dict[str, Any]:
        return quality.quality(ctx.catalogue, model)

    @app.get("/api/quality/{model}/{structure}", dependencies=read)
    def api_quality_cases(model: str, structure: str) -> list[dict[str, Any]]:
        return quality.quality_cases(ctx.catalogue, model, structure)

    @app.get("/api/failures", dependencies=read)
    def api_failures() -> dict[str, Any]:
        return data.failures(ctx)

    @app.get("/api/destinations", dependencies=read)
    def api_destinations() -> list[dict[str, Any]]:
        return [{"name": d.name, "ae_title": d.ae_title, "host": d.host, "port": d.port,
                 "tls": d.tls is not None} for d in ctx.config.destinations]

    @app.get("/api/models", dependencies=read)
    def api_models() -> list[dict[str, Any]]:
        return models()

    @app.get("/api/config", dependencies=read)
    def api_config() -> dict[str, Any]:
        return data.redacted_config(ctx.config)

    @app.post("/api/jobs/{job_id}/retry", dependencies=[Depends(may_act)])
    def api_retry_job(job_id: int) -> dict[str, Any]:
        job_or_404(job_id)
        if not ctx.queue.requeue(job_id):
            raise HTTPException(409, f"job {job_id} is not failed or done")
        return {"job": job_id, "state": "queued"}

    @app.post("/api/deliveries/{delivery_id}/retry", dependencies=[Depends(may_act)])
    def api_retry_delivery(delivery_id: int) -> dict[str, Any]:
        if ctx.outbox.retry(delivery_id) == 0:
            raise HTTPException(409, f"delivery {delivery_id} is not failed")
        return {"delivery": delivery_id, "state": "pending"}

    @app.post("/api/destinations/{name}/echo", dependencies=[Depends(may_act)])
    def api_echo(name: str) -> dict[str, Any]:
        from node.scu import SendFailure, echo

        dest = next((d for d in ctx.config.destinations if d.name == name), None)
        if dest is None:
            raise HTTPException(404, f"no destination '{name}'")
        started = time.monotonic()
        try:
            echo(dest, ctx.config.node)
        except SendFailure as exc:
            return {"destination": name, "ok": False, "error": str(exc)}
        return {"destination": name, "ok": True,
                "ms": round(1000 * (time.monotonic() - started))}

    # -- pages ----------------------------------------------------------------------------

    def page(request: Request, template: str, **context: Any) -> HTMLResponse:
        return templates.TemplateResponse(request, template, {
            "node": ctx.config.node.ae_title, "actions": bool(web.token), **context})

    @app.get("/", response_class=HTMLResponse, dependencies=read, include_in_schema=False)
    def page_overview(request: Request) -> HTMLResponse:
        return page(request, "overview.html", o=data.overview(ctx),
                    jobs=[data.job_summary(j) for j in ctx.queue.list(limit=10)])

    @app.get("/associations", response_class=HTMLResponse, dependencies=read,
             include_in_schema=False)
    def page_associations(request: Request) -> HTMLResponse:
        return page(request, "associations.html", rows=ctx.catalogue.list_associations(200))

    @app.get("/studies", response_class=HTMLResponse, dependencies=read,
             include_in_schema=False)
    def page_studies(request: Request) -> HTMLResponse:
        return page(request, "studies.html", studies=data.studies(ctx, 200))

    @app.get("/jobs", response_class=HTMLResponse, dependencies=read, include_in_schema=False)
    def page_jobs(request: Request, state: str | None = None) -> HTMLResponse:
        return page(request, "jobs.html", state=state,
                    jobs=[data.job_summary(j) for j in ctx.queue.list(state, limit=200)])

    @app.get("/jobs/{job_id}", response_class=HTMLResponse, dependencies=read,
             include_in_schema=False)
    def page_job(request: Request, job_id: int) -> HTMLResponse:
        return page(request, "job.html", job=data.job_detail(ctx, job_or_404(job_id)))

    @app.get("/failures", response_class=HTMLResponse, dependencies=read,
             include_in_schema=False)
    def page_failures(request: Request) -> HTMLResponse:
        return page(request, "failures.html", f=data.failures(ctx))

    @app.get("/destinations", response_class=HTMLResponse, dependencies=read,
             include_in_schema=False)
    def page_destinations(request: Request) -> HTMLResponse:
        return page(request, "destinations.html", destinations=api_destinations())

    @app.get("/models", response_class=HTMLResponse, dependencies=read,
             include_in_schema=False)
    def page_models(request: Request) -> HTMLResponse:
        return page(request, "models.html", packs=models())

    @app.get("/quality", response_class=HTMLResponse, dependencies=read,
             include_in_schema=False)
    def page_quality(request: Request, model: str | None = None) -> HTMLResponse:
        return page(request, "quality.html", quality=quality.quality(ctx.catalogue, model))

    @app.get("/quality/{model}/{structure}", response_class=HTMLResponse, dependencies=read,
             include_in_schema=False)
    def page_quality_cases(request: Request, model: str, structure: str) -> HTMLResponse:
        return page(request, "quality_cases.html", model=model, structure=structure,
                    cases=quality.quality_cases(ctx.catalogue, model, structure))

    @app.get("/config", response_class=HTMLResponse, dependencies=read,
             include_in_schema=False)
    def page_config(request: Request) -> HTMLResponse:
        import yaml

        text = yaml.safe_dump(data.redacted_config(ctx.config), sort_keys=False)
        return page(request, "config.html", text=text)

    return app
