"""The review web app: ``create_app(settings)`` -> FastAPI with server-rendered pages and a JSON API.

Reviewers: ``/invite/<token>`` opens a session (cookie ``plr_session``: HttpOnly, SameSite=Lax, Secure
over https), ``/r/`` resumes at the first unanswered case of their shuffled queue, ``/r/case/<id>``
shows one image and one (or two) blinded maps, ``/r/img/<case>/<slot>`` serves a case's PNGs to the
reviewer who owns the case only. Organisers: ``/admin`` (login with the deployment's API key or the
admin token) and ``/api/...`` (``Authorization: Bearer <key>``). Every form carries the session's
CSRF token; every bad request is a 4xx with a body (JSON under /api, HTML elsewhere), never a 500.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio.to_thread
from fastapi import FastAPI, Form, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from pretextlab.core.errors import UserError
from pretextlab.review import service as svc
from pretextlab.review.db import open_database
from pretextlab.review.files import read_asset
from pretextlab.review.security import PID_RE, TOKEN_RE, RateLimiter, hash_token, new_pid, new_token, same
from pretextlab.review.settings import ReviewSettings
from pretextlab.review.spec import MAP_TYPES, parse_spec

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import pandas as pd

log = logging.getLogger("pretextlab.review")
HERE = Path(__file__).parent
SESSION_COOKIE = "plr_session"
ADMIN_COOKIE = "plr_admin"
LOGIN_CSRF_COOKIE = "plr_login_csrf"
STATIC = {"review.js": "text/javascript; charset=utf-8", "review.css": "text/css; charset=utf-8"}
CSP = (
    "default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)


class InviteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: str = Field(..., min_length=1, max_length=200)


class SecurityHeaders:
    """Pure ASGI middleware: security headers and ``Server-Timing: app;dur=<ms>`` on every response."""

    HEADERS = [
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
        (b"x-frame-options", b"DENY"),
        (b"content-security-policy", CSP.encode()),
    ]

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                took = f"app;dur={(time.perf_counter() - started) * 1000:.1f}".encode()
                message["headers"] = [*message.get("headers", []), *self.HEADERS, (b"server-timing", took)]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def etag_matches(if_none_match: str, etag: str) -> bool:
    """Whether an ``If-None-Match`` header names ``etag`` (weak comparison, as RFC 9110 asks for GET)."""
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return "*" in tags or etag in tags


class HttpError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def create_app(settings: ReviewSettings | None = None) -> FastAPI:
    """The app for ``settings``: opens (and migrates) the database, reads the organiser key from the env."""
    settings = settings or ReviewSettings()
    engine, sm = open_database(settings.db, pool_size=settings.threads)
    asset_root = settings.asset_root()
    key = os.environ.get(settings.api_key_env, "")
    key_digest = hash_token(key) if key else None
    del key
    login_limit = RateLimiter(settings.login_per_minute)
    answer_limit = RateLimiter(settings.answers_per_minute)
    # templates and static files ship with the package: read once, never re-checked on disk per request
    env = Environment(
        loader=FileSystemLoader(str(HERE / "templates")), autoescape=select_autoescape(["html"]), auto_reload=False
    )
    static_files = {name: (HERE / "static" / name).read_bytes() for name in STATIC}

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # Request handlers are plain functions run in worker threads; more threads than this only take
        # turns on the one GIL (each database call hands it over), so a request that holds SQLite's write
        # lock waits for the GIL behind dozens of others. Requests beyond this wait their turn in order.
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.threads
        yield

    app = FastAPI(title="pretextlab review", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.settings, app.state.engine, app.state.sessionmaker = settings, engine, sm

    # ------------------------------------------------------------------------------------ helpers
    def wants_json(request: Request) -> bool:
        return request.url.path.startswith("/api/") or "application/json" in request.headers.get("accept", "")

    def root(request: Request) -> str:
        return str(request.scope.get("root_path") or "").rstrip("/")

    def page(request: Request, name: str, http_status: int = 200, **ctx: Any) -> HTMLResponse:
        html = env.get_template(name).render(root=root(request), **ctx)
        return HTMLResponse(html, status_code=http_status, headers={"Cache-Control": "no-store"})

    def error(request: Request, status: int, message: str) -> Response:
        if wants_json(request):
            return JSONResponse({"detail": message}, status_code=status)
        return page(request, "error.html", http_status=status, status_code=status, message=message)

    def is_https(request: Request) -> bool:
        if settings.secure_cookies is not None:
            return settings.secure_cookies
        proto = request.headers.get("x-forwarded-proto", "") if settings.trust_forwarded_proto else ""
        return request.url.scheme == "https" or proto.split(",")[0].strip() == "https"

    def set_cookie(request: Request, response: Response, name: str, value: str, max_age: int | None) -> None:
        response.set_cookie(
            name, value, max_age=max_age, httponly=True, samesite="lax", secure=is_https(request), path="/"
        )

    def client_key(request: Request) -> str:
        return request.client.host if request.client else "unknown"

    def organiser_ok(credential: str) -> bool:
        digest = hash_token(credential) if credential else ""
        return same(digest, key_digest) or same(digest, settings.admin_token_sha256)

    def api_organiser(request: Request) -> None:
        auth = request.headers.get("authorization", "")
        cred = auth[7:].strip() if auth.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
        if not cred or not organiser_ok(cred):
            raise HttpError(401, "organiser credential missing or wrong (Authorization: Bearer <API key>)")

    def admin_session(request: Request, csrf: str | None = None) -> str:
        found = svc.session_for(sm, request.cookies.get(ADMIN_COOKIE), "organiser")
        if found is None:
            raise HttpError(401, "organiser login required: /admin/login")
        if csrf is not None and not same(csrf, found[1]):
            raise HttpError(403, "CSRF token missing or wrong: reload the page")
        return found[1]

    def reviewer(request: Request) -> svc.ReviewerContext:
        return svc.reviewer_context(sm, request.cookies.get(SESSION_COOKIE))

    def base_url(request: Request) -> str:
        return (settings.base_url or str(request.base_url)).rstrip("/")  # base_url includes the root path

    # ------------------------------------------------------------------------------------ errors
    @app.exception_handler(HttpError)
    async def _http_error(request: Request, exc: HttpError) -> Response:
        return error(request, exc.status, exc.message)

    @app.exception_handler(svc.AccessError)
    async def _access_error(request: Request, exc: svc.AccessError) -> Response:
        return error(request, exc.status, exc.message)

    @app.exception_handler(svc.ReviewError)
    async def _review_error(request: Request, exc: svc.ReviewError) -> Response:
        return error(request, exc.status, str(exc))

    @app.exception_handler(UserError)
    async def _user_error(request: Request, exc: UserError) -> Response:
        return error(request, 422, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        err = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path"))
        return error(request, 422, f"{loc or 'request'}: {err.get('msg')}")

    @app.exception_handler(StarletteHTTPException)
    async def _starlette(request: Request, exc: StarletteHTTPException) -> Response:
        return error(request, exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:  # a bug: logged, never a traceback out
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error(request, 500, "internal error")

    app.add_middleware(SecurityHeaders)

    # ------------------------------------------------------------------------------------ static
    @app.get("/static/{name}")
    def static(name: str) -> Response:
        if name not in STATIC:
            raise HttpError(404, "no such file")
        return Response(
            static_files[name],
            media_type=STATIC[name],
            headers={"Cache-Control": "public, max-age=3600"},
        )

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/")
    def home(request: Request) -> Response:
        return page(request, "home.html")

    # ------------------------------------------------------------------------------------ reviewer
    @app.get("/invite/{token}")
    def open_invite(request: Request, token: str) -> Response:
        if not login_limit.allow(f"login:{client_key(request)}"):
            raise HttpError(429, "too many attempts: wait a minute and try again")
        if not TOKEN_RE.match(token):
            raise HttpError(403, "this invitation link is not valid")
        session_token = svc.login(sm, token, settings.session_hours)
        response = RedirectResponse(root(request) + "/r/", status_code=303)
        set_cookie(request, response, SESSION_COOKIE, session_token, int(settings.session_hours * 3600))
        return response

    @app.get("/r/")
    def resume(request: Request) -> Response:
        ctx = reviewer(request)
        nxt = svc.next_case_pid(sm, ctx)
        return RedirectResponse(root(request) + (f"/r/case/{nxt}" if nxt else "/r/done"), status_code=303)

    @app.get("/r/done")
    def done(request: Request) -> Response:
        ctx = reviewer(request)
        rows = [r for r in svc.progress(sm, _review_pid(ctx)) if r["reviewer"] == ctx.reviewer_pid]
        return page(
            request, "done.html", csrf=ctx.csrf, progress=rows[0] if rows else None, next=svc.next_case_pid(sm, ctx)
        )

    def _review_pid(ctx: svc.ReviewerContext) -> str:
        from sqlalchemy import select

        from pretextlab.review.models import Review

        with sm() as s:
            return s.scalar(select(Review.pid).where(Review.id == ctx.review_id))

    @app.get("/r/case/{case_pid}")
    def show_case(request: Request, case_pid: str) -> Response:
        ctx = reviewer(request)
        view = svc.case_view(sm, ctx, case_pid)
        return page(request, "case.html", case=view, q=ctx.spec["questions"], csrf=ctx.csrf, nonce=new_pid())

    @app.post("/r/case/{case_pid}")
    def answer(
        request: Request,
        case_pid: str,
        csrf: str = Form(""),
        nonce: str = Form(""),
        rating: str | None = Form(None),
        preference: str | None = Form(None),
        comment: str | None = Form(None),
        region_x: str | None = Form(None),
        region_y: str | None = Form(None),
    ) -> Response:
        ctx = reviewer(request)
        if not same(csrf, ctx.csrf):
            raise HttpError(403, "CSRF token missing or wrong: reload the page")
        if not answer_limit.allow(f"answer:{ctx.session_id}"):
            raise HttpError(429, "too many answers in a minute: slow down a little")
        status, nxt = svc.submit_answer(
            sm,
            ctx,
            case_pid,
            {
                "nonce": nonce,
                "rating": rating,
                "preference": preference,
                "comment": comment,
                "region_x": region_x,
                "region_y": region_y,
            },
        )
        target = root(request) + (f"/r/case/{nxt}" if nxt else "/r/done")
        if wants_json(request):
            return JSONResponse({"status": status, "next": target}, status_code=201 if status == "created" else 200)
        return RedirectResponse(target, status_code=303)

    @app.get("/r/img/{case_pid}/{slot}")
    def image(request: Request, case_pid: str, slot: str) -> Response:
        ctx = reviewer(request)
        if slot not in ("image", "map", "map-b") or not PID_RE.match(case_pid):
            raise HttpError(404, "no such image")
        key = svc.slot_asset(sm, ctx, case_pid, slot)  # only the reviewer who owns the case gets this far
        # An asset never changes once written (a fresh random key per PNG), so the browser may keep it and a
        # reload that revalidates gets a 304 without the file being read again.
        etag = f'"{hashlib.sha256(key.encode()).hexdigest()[:32]}"'
        headers = {"Cache-Control": "private, max-age=86400, immutable", "ETag": etag}
        if etag_matches(request.headers.get("if-none-match", ""), etag):
            return Response(status_code=304, headers=headers)
        return Response(read_asset(ctx.asset_root, key), media_type="image/png", headers=headers)

    @app.post("/r/logout")
    def logout(request: Request, csrf: str = Form("")) -> Response:
        ctx = reviewer(request)
        if not same(csrf, ctx.csrf):
            raise HttpError(403, "CSRF token missing or wrong: reload the page")
        svc.end_session(sm, request.cookies.get(SESSION_COOKIE))
        response = page(
            request,
            "error.html",
            status_code=200,
            message="You are logged out. Your invitation link resumes where you stopped.",
        )
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    # ------------------------------------------------------------------------------------ organiser pages
    @app.get("/admin/login")
    def admin_login_form(request: Request) -> Response:
        token = new_token()
        response = page(request, "admin_login.html", csrf=token)
        set_cookie(request, response, LOGIN_CSRF_COOKIE, token, 600)
        return response

    @app.post("/admin/login")
    def admin_login(request: Request, key: str = Form(""), csrf: str = Form("")) -> Response:
        if not login_limit.allow(f"login:{client_key(request)}"):
            raise HttpError(429, "too many attempts: wait a minute and try again")
        if not same(csrf, request.cookies.get(LOGIN_CSRF_COOKIE)):
            raise HttpError(403, "CSRF token missing or wrong: reload the login page")
        if not organiser_ok(key):
            raise HttpError(401, "wrong organiser key")
        response = RedirectResponse(root(request) + "/admin", status_code=303)
        set_cookie(
            request,
            response,
            ADMIN_COOKIE,
            svc.organiser_session(sm, settings.session_hours),
            int(settings.session_hours * 3600),
        )
        response.delete_cookie(LOGIN_CSRF_COOKIE, path="/")
        return response

    @app.get("/admin")
    def admin_home(request: Request) -> Response:
        csrf = admin_session(request)
        return page(request, "admin_home.html", csrf=csrf, reviews=svc.list_reviews(sm), map_types=MAP_TYPES)

    @app.post("/admin/reviews")
    def admin_create(
        request: Request,
        csrf: str = Form(""),
        title: str = Form(""),
        encoders: str = Form(""),
        registry: str = Form(""),
        store: str = Form(""),
        items: str = Form(""),
        sample: str = Form(""),
        seed: str = Form("0"),
        map_types: list[str] = Form([]),
        likert: str = Form(""),
        scale: str = Form("5"),
        pairwise: str = Form(""),
        comment: str = Form(""),
        region: str = Form(""),
        display_size: str = Form("320"),
    ) -> Response:
        admin_session(request, csrf)
        data: dict[str, Any] = {
            "title": title.strip(),
            "encoders": [e.strip() for e in encoders.splitlines() if e.strip()],
            "registry": registry.strip() or None,
            "store": store.strip(),
            "items": [i.strip() for i in items.replace(",", "\n").splitlines() if i.strip()] or None,
            "sample": sample.strip() or None,
            "seed": seed.strip() or 0,
            "map_types": map_types or ["attention"],
            "questions": {
                "scale": scale or 5,
                "pairwise": bool(pairwise),
                "comment": bool(comment),
                "region": bool(region),
                **({"likert": likert.strip()} if likert.strip() else {}),
            },
            "display_size": display_size or 320,
        }
        review = svc.create_review(sm, parse_spec(data, "form"), asset_root)
        return RedirectResponse(root(request) + f"/admin/reviews/{review.pid}", status_code=303)

    def admin_review_page(
        request: Request, review_pid: str, csrf: str, new_link: str | None = None, new_label: str | None = None
    ) -> Response:
        with sm() as s:
            review = svc.get_review(s, review_pid)
            title, status, spec = review.title, review.status, review.spec
        return page(
            request,
            "admin_review.html",
            csrf=csrf,
            pid=review_pid,
            title=title,
            status=status,
            spec=spec,
            progress=svc.progress(sm, review_pid),
            new_link=new_link,
            new_label=new_label,
        )

    @app.get("/admin/reviews/{review_pid}")
    def admin_review(request: Request, review_pid: str) -> Response:
        return admin_review_page(request, review_pid, admin_session(request))

    @app.post("/admin/reviews/{review_pid}/invites")
    def admin_invite(request: Request, review_pid: str, csrf: str = Form(""), label: str = Form("")) -> Response:
        csrf_ok = admin_session(request, csrf)
        _, token = svc.invite(sm, review_pid, label)
        return admin_review_page(request, review_pid, csrf_ok, f"{base_url(request)}/invite/{token}", label.strip())

    @app.post("/admin/reviews/{review_pid}/reviewers/{reviewer_pid}/revoke")
    def admin_revoke(request: Request, review_pid: str, reviewer_pid: str, csrf: str = Form("")) -> Response:
        admin_session(request, csrf)
        svc.revoke(sm, review_pid, reviewer_pid)
        return RedirectResponse(root(request) + f"/admin/reviews/{review_pid}", status_code=303)

    @app.post("/admin/reviews/{review_pid}/close")
    def admin_close(request: Request, review_pid: str, csrf: str = Form("")) -> Response:
        admin_session(request, csrf)
        svc.close_review(sm, review_pid)
        return RedirectResponse(root(request) + f"/admin/reviews/{review_pid}", status_code=303)

    @app.get("/admin/reviews/{review_pid}/report")
    def admin_report(request: Request, review_pid: str) -> Response:
        csrf = admin_session(request)
        from pretextlab.review.analysis import analyse

        with sm() as s:
            title = svc.get_review(s, review_pid).title
        return page(
            request,
            "report.html",
            csrf=csrf,
            pid=review_pid,
            title=title,
            report=analyse(svc.export_answers(sm, review_pid)),
        )

    @app.get("/admin/reviews/{review_pid}/export.{fmt}")
    def admin_export(request: Request, review_pid: str, fmt: str) -> Response:
        admin_session(request)
        return _export(review_pid, fmt)

    def _export(review_pid: str, fmt: str) -> Response:
        if fmt not in ("csv", "parquet"):
            raise HttpError(404, "export formats: csv, parquet")
        df = svc.export_answers(sm, review_pid)
        if fmt == "csv":
            return Response(
                df.to_csv(index=False),
                media_type="text/csv; charset=utf-8",
                headers={"Content-Disposition": 'attachment; filename="answers.csv"'},
            )
        from pretextlab.storage.catalog import parquet_bytes

        return Response(
            parquet_bytes(df),
            media_type="application/vnd.apache.parquet",
            headers={"Content-Disposition": 'attachment; filename="answers.parquet"'},
        )

    # ------------------------------------------------------------------------------------ organiser API
    @app.post("/api/reviews", status_code=201)
    async def api_create(request: Request) -> Response:
        api_organiser(request)
        try:
            data = await request.json()
        except ValueError:
            raise HttpError(400, "body: expected a JSON review spec") from None
        if not isinstance(data, dict):
            raise HttpError(422, "body: expected a JSON object (a review spec)")
        from starlette.concurrency import run_in_threadpool

        spec = await run_in_threadpool(parse_spec, data, "body")  # `study:` reads the study folder
        review = await run_in_threadpool(svc.create_review, sm, spec, asset_root)
        return JSONResponse({"review": review.pid, "title": review.title}, status_code=201)

    @app.get("/api/reviews")
    def api_list(request: Request) -> dict[str, Any]:
        api_organiser(request)
        return {"reviews": [{"review": r.pid, "title": r.title, "status": r.status} for r in svc.list_reviews(sm)]}

    @app.post("/api/reviews/{review_pid}/invites", status_code=201)
    def api_invite(request: Request, review_pid: str, body: InviteRequest) -> dict[str, Any]:
        api_organiser(request)
        r, token = svc.invite(sm, review_pid, body.label)
        return {"reviewer": r.pid, "label": r.label, "link": f"{base_url(request)}/invite/{token}"}

    @app.post("/api/reviews/{review_pid}/reviewers/{reviewer_pid}/revoke")
    def api_revoke(request: Request, review_pid: str, reviewer_pid: str) -> dict[str, Any]:
        api_organiser(request)
        svc.revoke(sm, review_pid, reviewer_pid)
        return {"reviewer": reviewer_pid, "revoked": True}

    @app.post("/api/reviews/{review_pid}/close")
    def api_close(request: Request, review_pid: str) -> dict[str, Any]:
        api_organiser(request)
        svc.close_review(sm, review_pid)
        return {"review": review_pid, "status": "closed"}

    @app.get("/api/reviews/{review_pid}/progress")
    def api_progress(request: Request, review_pid: str) -> dict[str, Any]:
        api_organiser(request)
        return {"review": review_pid, "reviewers": svc.progress(sm, review_pid)}

    @app.get("/api/reviews/{review_pid}/report")
    def api_report(request: Request, review_pid: str) -> dict[str, Any]:
        api_organiser(request)
        from pretextlab.review.analysis import analyse

        return analyse(svc.export_answers(sm, review_pid))

    @app.get("/api/reviews/{review_pid}/export.{fmt}")
    def api_export(request: Request, review_pid: str, fmt: str) -> Response:
        api_organiser(request)
        return _export(review_pid, fmt)

    return app


def read_export(data: bytes, fmt: str) -> pd.DataFrame:
    """Parse an export download (tests, scripts)."""
    import pandas as pd

    from pretextlab.storage.catalog import parquet_frame

    return pd.read_csv(io.BytesIO(data)) if fmt == "csv" else parquet_frame(data)
