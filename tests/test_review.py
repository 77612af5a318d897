"""Blinded clinician review (pretextlab.review): statistics against published/hand-computed values, every
refusal over HTTP, and the whole flow in a real browser (Playwright driving Debian's chromium) against
a real uvicorn server, on SQLite and on PostgreSQL (a throwaway server per test session)."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import free_port
from pretextlab.review.analysis import (
    analyse,
    bootstrap_ci,
    bradley_terry,
    icc_2_1,
    krippendorff_alpha,
    mean_ratings,
    pairwise_strengths,
)
from review_fixtures import (
    API_KEY,
    ENCODER_NAMES,
    FOLDERS,
    OBJECTIVES,
    STORE_NAME,
    Postgres,
    Server,
    can_run_postgres,
    make_encoders,
    make_store,
)

CHROMIUM = "/usr/bin/chromium"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def review_inputs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("review-inputs")
    encoders = make_encoders(root / "encoders")
    store = make_store(root)
    from pretextlab.storage import read_catalog

    items = [str(i) for i in read_catalog(store)["item_id"]]
    return {"encoders": encoders, "store": store, "items": items, "root": root}


@pytest.fixture(scope="session")
def postgres():
    reason = can_run_postgres()
    if reason:
        pytest.skip(reason)
    pg = Postgres(free_port())
    yield pg
    pg.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path) -> dict:
    """A fresh, empty database of each kind, plus an asset folder."""
    if request.param == "sqlite":
        db = str(tmp_path / "review.sqlite")
    else:
        db = request.getfixturevalue("postgres").new_database()
    return {"kind": request.param, "db": db, "assets": str(tmp_path / "assets")}


def forbidden_strings(inputs: dict) -> list[str]:
    """Everything that would unblind a reviewer or leak a file name: encoder names, objectives, folders,
    the store's and source file's names, item ids, and local paths."""
    return [
        *ENCODER_NAMES,
        *OBJECTIVES,
        *FOLDERS,
        STORE_NAME,
        str(inputs["root"]),
        *inputs["items"],
        "safetensors",
        "card.json",
        ".npz",
    ]


def spec(inputs: dict, **extra) -> dict:
    return {
        "title": f"{ENCODER_NAMES[0]} vs others",
        "encoders": inputs["encoders"],
        "store": inputs["store"],
        "sample": 6,
        "seed": 1,
        "map_types": ["attention"],
        **extra,
    }


# ---------------------------------------------------------------- statistics (pure)
KRIPPENDORFF_2011 = np.array(
    [  # Krippendorff (2011) "Computing Krippendorff's alpha-reliability", 4 observers x 12 units
        [1, 2, 3, 3, 2, 1, 4, 1, 2, np.nan, np.nan, np.nan],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, np.nan, 3],
        [np.nan, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, np.nan],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, np.nan],
    ]
)


def test_krippendorff_alpha_published_example_perfect_and_random():
    assert krippendorff_alpha(KRIPPENDORFF_2011, scale=5) == pytest.approx(0.815, abs=5e-4)  # the paper's ordinal alpha
    perfect = np.tile(np.array([1, 2, 3, 4, 5, 3, 2, 1, 5, 4], float), (3, 1))
    assert krippendorff_alpha(perfect, scale=5) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    random = rng.integers(1, 6, size=(3, 2000)).astype(float)
    assert abs(krippendorff_alpha(random, scale=5)) < 0.05
    assert np.isnan(krippendorff_alpha(np.full((2, 5), 3.0), scale=5))  # no variation: alpha undefined, not 1


def test_icc_2_1_matches_shrout_and_fleiss():
    # Shrout & Fleiss (1979), Table 2: 6 targets x 4 judges; ICC(2,1) = 0.29
    targets_by_judges = np.array(
        [[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]], dtype=float
    )
    assert icc_2_1(targets_by_judges.T) == pytest.approx(0.2898, abs=1e-4)
    same = np.tile(np.arange(1, 9, dtype=float), (3, 1))
    assert icc_2_1(same) == pytest.approx(1.0)
    with_gap = targets_by_judges.T.copy()
    with_gap[0, 0] = np.nan  # units not rated by everyone are left out
    assert icc_2_1(with_gap) == pytest.approx(icc_2_1(targets_by_judges[1:].T))


def test_bradley_terry_hand_computed():
    # two items, A preferred 3 times of 4: the MLE is P(A beats B) = 3/4, so strengths 0.75 / 0.25
    np.testing.assert_allclose(bradley_terry(np.array([[0, 3], [1, 0]])), [0.75, 0.25], atol=1e-9)
    wins = np.array([[0, 4, 3], [2, 0, 5], [1, 1, 0]], dtype=float)
    p = bradley_terry(wins)
    n = wins + wins.T
    expected_wins = [sum(n[i, j] * p[i] / (p[i] + p[j]) for j in range(3) if j != i) for i in range(3)]
    np.testing.assert_allclose(expected_wins, wins.sum(axis=1), rtol=1e-8)  # the likelihood equations hold
    assert p.sum() == pytest.approx(1.0)


def _answers(rows: list[tuple]) -> pd.DataFrame:
    cols = [
        "reviewer",
        "kind",
        "image",
        "encoder",
        "encoder_b",
        "map_type",
        "modality",
        "rating",
        "preference",
        "scale",
    ]
    return pd.DataFrame([dict(zip(cols, r, strict=True)) for r in rows], columns=cols)


def test_mean_ratings_pairwise_and_report_from_answers():
    rows = []
    for reviewer in ("r1", "r2"):
        for image in range(4):
            rows.append((reviewer, "likert", image, "E1", None, "attention", "us", 4 if image % 2 else 5, None, 5))
            rows.append((reviewer, "likert", image, "E2", None, "attention", "histo", 2, None, 5))
        rows.append((reviewer, "pairwise", 0, "E1", "E2", "attention", "us", None, "a", 5))
        rows.append((reviewer, "pairwise", 1, "E2", "E1", "attention", "us", None, "b", 5))
        rows.append((reviewer, "pairwise", 2, "E1", "E2", "attention", "us", None, "equal", 5))
    df = _answers(rows)
    means = mean_ratings(df, ["encoder"]).set_index("encoder")
    assert means.loc["E1", "mean"] == pytest.approx(4.5) and means.loc["E1", "n"] == 8
    assert (
        means.loc["E2", "mean"] == pytest.approx(2.0) and means.loc["E2", "ci_low"] == means.loc["E2", "ci_high"] == 2.0
    )
    assert means.loc["E1", "ci_low"] < 4.5 < means.loc["E1", "ci_high"]
    pw = pairwise_strengths(df).set_index("encoder")
    assert pw.loc["E1", "wins"] == 5 and pw.loc["E2", "wins"] == 1 and pw.loc["E1", "comparisons"] == 6
    assert pw.loc["E1", "strength"] == pytest.approx(5 / 6)
    report = analyse(df)
    assert report["agreement"]["reviewers"] == 2 and report["agreement"]["units"] == 8
    assert report["agreement"]["krippendorff_alpha_ordinal"] == pytest.approx(1.0)  # both reviewers agree exactly
    assert {(r["encoder"], r["modality"]) for r in report["by_encoder_modality"]} == {("E1", "us"), ("E2", "histo")}
    json.dumps(report, allow_nan=False)  # JSON-ready


def test_bootstrap_ci_is_seeded_and_narrows():
    rng = np.random.default_rng(1)
    small, large = rng.integers(1, 6, 20).astype(float), rng.integers(1, 6, 2000).astype(float)
    assert bootstrap_ci(small, seed=3) == bootstrap_ci(small, seed=3)
    lo, hi = bootstrap_ci(small)
    lo2, hi2 = bootstrap_ci(large)
    assert lo <= small.mean() <= hi and (hi2 - lo2) < (hi - lo) / 4
    assert all(np.isnan(bootstrap_ci(np.array([3.0]))))


# ---------------------------------------------------------------- HTTP refusals (in-process app, both databases)
@pytest.fixture
def client_factory(database, monkeypatch):
    from fastapi.testclient import TestClient

    from pretextlab.review.app import create_app
    from pretextlab.review.settings import ReviewSettings

    monkeypatch.setenv("PRETEXTLAB_API_KEY", API_KEY)

    def make(**settings):
        app = create_app(ReviewSettings(db=database["db"], assets=database["assets"], **settings))
        return app, TestClient(app, base_url=settings.get("base_url") or "http://testserver")

    return make


def _open_invite(client, link: str):
    path = link.split("://", 1)[1].split("/", 1)[1]
    return client.get("/" + path, follow_redirects=False)


def _form(page: str) -> dict:
    return dict(re.findall(r'name="(csrf|nonce)" value="([^"]+)"', page))


def test_http_refusals_and_nothing_lost(client_factory, review_inputs):
    from pretextlab.review import service as svc

    app, org = client_factory(login_per_minute=1000)
    assert org.post("/api/reviews", json=spec(review_inputs)).status_code == 401  # no organiser credential
    assert (
        org.post(
            "/api/reviews", json=spec(review_inputs), headers={"Authorization": "Bearer wrong-key-000000000"}
        ).status_code
        == 401
    )
    bad = org.post("/api/reviews", json={**spec(review_inputs), "map_types": ["heatmap"]}, headers=AUTH)
    assert bad.status_code == 422 and "map_types" in bad.json()["detail"]
    bad = org.post("/api/reviews", json={**spec(review_inputs), "colour": "red"}, headers=AUTH)
    assert bad.status_code == 422 and "colour" in bad.json()["detail"]
    assert org.post("/api/reviews", content=b"{not json", headers=AUTH).status_code == 400
    missing = org.post(
        "/api/reviews", json={**spec(review_inputs), "sample": None, "items": ["no-such-item"]}, headers=AUTH
    )
    assert missing.status_code == 422 and "no-such-item" in missing.json()["detail"]
    r = org.post("/api/reviews", json=spec(review_inputs, questions={"comment": True, "region": True}), headers=AUTH)
    assert r.status_code == 201, r.text
    review = r.json()["review"]
    assert org.get("/api/reviews/" + "a" * 32 + "/progress", headers=AUTH).status_code == 404
    links = [org.post(f"/api/reviews/{review}/invites", json={"label": n}, headers=AUTH).json() for n in ("ann", "bob")]

    from fastapi.testclient import TestClient

    ann, bob = TestClient(app), TestClient(app)
    opened = _open_invite(ann, links[0]["link"])
    assert opened.status_code == 303
    cookie = opened.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie and "secure" not in cookie  # plain http here
    assert _open_invite(bob, links[1]["link"]).status_code == 303
    assert TestClient(app).get("/r/").status_code == 401  # no session
    assert TestClient(app).get("/invite/" + "x" * 43, follow_redirects=False).status_code == 403  # made-up token

    first = ann.get("/r/", follow_redirects=True)
    case_a = first.url.path.rsplit("/", 1)[1]
    fields = _form(first.text)
    bob_case = bob.get("/r/", follow_redirects=True).url.path.rsplit("/", 1)[1]

    # forged CSRF token: refused, nothing stored
    forged = ann.post(f"/r/case/{case_a}", data={"csrf": "f" * 43, "nonce": fields["nonce"], "rating": "4"})
    assert forged.status_code == 403
    assert ann.post(f"/r/case/{case_a}", data={"nonce": fields["nonce"], "rating": "4"}).status_code == 403
    assert len(svc.export_answers(app.state.sessionmaker, review)) == 0
    # bad values: 422 with the field named
    bad = ann.post(f"/r/case/{case_a}", data={**fields, "rating": "9"})
    assert bad.status_code == 422 and "rating" in bad.text
    bad = ann.post(f"/r/case/{case_a}", data={**fields, "rating": "3", "region_x": "2", "region_y": "0.5"})
    assert bad.status_code == 422 and "region" in bad.text
    # a good answer, then the very same form again (double submit): stored once, the copy gets 409
    ok = ann.post(
        f"/r/case/{case_a}",
        data={**fields, "rating": "4", "region_x": "0.25", "region_y": "0.5"},
        follow_redirects=False,
    )
    assert ok.status_code == 303 and ok.headers["location"].startswith("/r/case/")
    again = ann.post(f"/r/case/{case_a}", data={**fields, "rating": "4"}, follow_redirects=False)
    assert again.status_code == 409
    # an edit from a freshly rendered form: a new version, the history keeps both
    edit_fields = _form(ann.get(f"/r/case/{case_a}").text)
    assert 'value="4" checked' in ann.get(f"/r/case/{case_a}").text
    edited = ann.post(
        f"/r/case/{case_a}",
        data={**edit_fields, "rating": "2", "comment": "edge only"},
        headers={"Accept": "application/json"},
    )
    assert edited.status_code == 200 and edited.json()["status"] == "updated"
    replay = ann.post(f"/r/case/{case_a}", data={**edit_fields, "rating": "5"}, headers={"Accept": "application/json"})
    assert replay.status_code == 409 and "already" in replay.json()["detail"]  # a replayed submission
    export = svc.export_answers(app.state.sessionmaker, review)
    assert len(export) == 1 and export["rating"].iloc[0] == 2 and export["version"].iloc[0] == 2
    history = svc.answer_history(app.state.sessionmaker, review)
    assert list(history["rating"]) == [4, 2] and list(history["version"]) == [1, 2]

    # another reviewer's case id: indistinguishable from no case
    assert ann.get(f"/r/case/{bob_case}").status_code == 404
    assert ann.get(f"/r/img/{bob_case}/map").status_code == 404
    assert ann.post(f"/r/case/{bob_case}", data={**_form(first.text), "rating": "3"}).status_code == 404
    assert bob.get(f"/r/img/{bob_case}/map").status_code == 200
    # traversal in an image id / slot: 404, never a file
    for path in (
        "/r/img/..%2F..%2F..%2Fetc%2Fpasswd/image",
        f"/r/img/{case_a}/..%2F..%2Fetc%2Fpasswd",
        f"/r/img/{case_a}/%2E%2E",
        "/r/img/../../etc/passwd",
        f"/r/img/{case_a}/map%00.png",
        "/static/..%2Fapp.py",
        "/static/%2E%2E%2Fsettings.py",
    ):
        resp = ann.get(path)
        assert resp.status_code == 404, (path, resp.status_code)
        assert b"root:" not in resp.content and b"import" not in resp.content
    png = ann.get(f"/r/img/{case_a}/image")
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert "content-disposition" not in png.headers and png.headers["x-content-type-options"] == "nosniff"
    assert "frame-ancestors 'none'" in first.headers["content-security-policy"]
    assert first.headers["referrer-policy"] == "no-referrer" and first.headers["cache-control"] == "no-store"

    # two copies of one form racing: exactly one stored
    race_fields = _form(ann.get("/r/", follow_redirects=True).text)
    race_case = ann.get("/r/", follow_redirects=True).url.path.rsplit("/", 1)[1]
    ctx = svc.reviewer_context(app.state.sessionmaker, ann.cookies.get("plr_session"))
    results: list = []

    def submit():
        try:
            results.append(
                svc.submit_answer(
                    app.state.sessionmaker, ctx, race_case, {"nonce": race_fields["nonce"], "rating": "3"}
                )[0]
            )
        except svc.AccessError as exc:
            results.append(exc.status)

    threads = [threading.Thread(target=submit) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sorted(map(str, results)) == ["409", "409", "409", "created"]
    assert len(svc.export_answers(app.state.sessionmaker, review)) == 2

    # revoked invite: the link and the session it opened stop working
    revoked = org.post(f"/api/reviews/{review}/reviewers/{links[1]['reviewer']}/revoke", headers=AUTH)
    assert revoked.status_code == 200
    assert bob.get("/r/").status_code == 401
    assert _open_invite(TestClient(app), links[1]["link"]).status_code == 403
    # closed review: invites expire (410), sessions end
    assert org.post(f"/api/reviews/{review}/close", headers=AUTH).status_code == 200
    assert _open_invite(TestClient(app), links[0]["link"]).status_code == 410
    assert ann.get("/r/").status_code == 401
    assert org.post(f"/api/reviews/{review}/invites", json={"label": "late"}, headers=AUTH).status_code == 409
    # HTML for browsers, JSON for the API; never a traceback
    html = TestClient(app).get("/r/case/nope")
    assert html.status_code == 401 and html.headers["content-type"].startswith("text/html")
    assert org.get(f"/api/reviews/{review}/export.xlsx", headers=AUTH).status_code == 404
    csv = pd.read_csv(io.BytesIO(org.get(f"/api/reviews/{review}/export.csv", headers=AUTH).content))
    assert len(csv) == 2 and set(csv["encoder"]) <= {f"{n} ({f})" for n, f in zip(ENCODER_NAMES, FOLDERS, strict=True)}


def test_login_rate_limit_secure_cookie_and_admin_csrf(client_factory, review_inputs):
    app, org = client_factory(login_per_minute=3, base_url="https://review.example.org")
    pid = org.post("/api/reviews", json=spec(review_inputs, sample=2), headers=AUTH).json()["review"]
    link = org.post(f"/api/reviews/{pid}/invites", json={"label": "cat"}, headers=AUTH).json()["link"]
    assert link.startswith("https://review.example.org/invite/")
    first = _open_invite(org, link)
    assert first.status_code == 303 and "secure" in first.headers["set-cookie"].lower()  # https: Secure cookie
    codes = [_open_invite(org, link).status_code for _ in range(3)]
    assert codes == [303, 303, 429]
    # organiser browser login: login-CSRF cookie + field; wrong key 401; forms need the session's CSRF token
    from fastapi.testclient import TestClient

    _, browser = client_factory(login_per_minute=100)
    page = browser.get("/admin/login").text
    csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    assert browser.post("/admin/login", data={"key": API_KEY, "csrf": "x" * 43}).status_code == 403
    assert browser.post("/admin/login", data={"key": "wrong-key-123456789", "csrf": csrf}).status_code == 401
    assert browser.post("/admin/login", data={"key": API_KEY, "csrf": csrf}, follow_redirects=False).status_code == 303
    assert browser.get("/admin").status_code == 200
    assert browser.post(f"/admin/reviews/{pid}/close", data={"csrf": "y" * 43}).status_code == 403
    assert TestClient(app).get(f"/admin/reviews/{pid}").status_code == 401


# ---------------------------------------------------------------- CLI
def test_cli_create_invite_report_and_errors(review_inputs, tmp_path, capsys, monkeypatch):
    import yaml

    from pretextlab.review.cli import main

    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec(review_inputs, sample=2)))
    db = str(tmp_path / "cli.sqlite")
    assert main(["create", "--db", db, str(spec_file)]) == 0
    review = capsys.readouterr().out.strip()
    assert main(["invite", "--db", db, review, "dr who", "--base-url", "https://rv.example"]) == 0
    assert "https://rv.example/invite/" in capsys.readouterr().out
    assert main(["progress", "--db", db, review]) == 0 and "0 / 6" in capsys.readouterr().out
    assert (
        main(["report", "--db", db, review, "--csv", str(tmp_path / "a.csv"), "--json", str(tmp_path / "r.json")]) == 0
    )
    assert "answers: 0" in capsys.readouterr().out and json.loads((tmp_path / "r.json").read_text())["answers"] == 0
    assert pd.read_csv(tmp_path / "a.csv").empty
    # user mistakes: one line naming the field or file, exit 2, no traceback
    spec_file.write_text(yaml.safe_dump({**spec(review_inputs), "sample": 0}))
    monkeypatch.delenv("PRETEXTLAB_API_KEY", raising=False)
    for args, word in (
        (["create", "--db", db, str(spec_file)], "sample"),
        (["report", "--db", db, "nope-nope-nope-nope"], "nope-nope-nope-nope"),
        (["create", "--db", str(tmp_path / "no" / "such" / "x.sqlite"), str(spec_file)], "does not exist"),
        (["create", "--db", db, str(tmp_path / "missing.yaml")], "missing.yaml"),
        (["serve", "--db", db], "PRETEXTLAB_API_KEY"),
    ):
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert word in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    # the module runs as a program too (python -m pretextlab.review.cli)
    out = subprocess.run(
        [sys.executable, "-m", "pretextlab.review.cli", "serve", "--db", db],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PRETEXTLAB_API_KEY": "short"},
    )
    assert out.returncode == 2 and "too short" in out.stderr and "Traceback" not in out.stderr


# ---------------------------------------------------------------- the whole flow in a real browser
def _browser_or_skip():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} missing (apt-get install -y chromium; .ci/run does)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright Python package is not installed (pip install -e .[test])")
    return sync_playwright


class NetworkLog:
    """Every URL, header and body a reviewer's browser received."""

    def __init__(self):
        self.entries: list[tuple[str, str]] = []

    def attach(self, context) -> None:
        context.on("response", self._record)

    def _record(self, response) -> None:
        try:
            body = response.body()
        except Exception:  # redirects have no body
            body = b""
        headers = json.dumps(response.all_headers())
        self.entries.append((response.url, headers + "\n" + body.decode("latin-1")))

    def leaks(self, forbidden: list[str]) -> list[str]:
        return [f"{word!r} in {url}" for url, text in self.entries for word in forbidden if word in url or word in text]


def test_browser_flow_blinded_resumable_keyboard_export(database, review_inputs, tmp_path):
    sync_playwright = _browser_or_skip()
    server = Server(database["db"], database["assets"], free_port()).start()
    forbidden = forbidden_strings(review_inputs)
    shots = Path(os.environ.get("PRETEXTLAB_REVIEW_SHOTS") or tmp_path)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            browser_context = browser.new_context

            def new_context():  # generous timeouts: the machine may be shared and loaded
                ctx = browser_context()
                ctx.set_default_timeout(60_000)
                return ctx

            browser.new_context = new_context
            # organiser: log in, create 3 encoders x 6 images, invite 2 reviewers, all through the pages
            org = browser.new_context().new_page()
            org.goto(f"{server.url}/admin/login")
            org.fill("input[name=key]", API_KEY)
            org.click("button[type=submit]")
            org.fill("input[name=title]", "three encoders")
            org.fill("textarea[name=encoders]", "\n".join(review_inputs["encoders"]))
            org.fill("input[name=store]", review_inputs["store"])
            org.fill("input[name=sample]", "6")
            org.click("#create button[type=submit]", no_wait_after=True)  # renders 18 maps (+ imports torch)
            org.wait_for_url(re.compile(r"/admin/reviews/"), timeout=240_000)
            review = org.url.rsplit("/", 1)[1]
            links = []
            for name in ("reviewer one", "reviewer two"):
                org.fill("#invite input[name=label]", name)
                org.click("#invite button[type=submit]")
                links.append(org.input_value("#invite-link"))
            assert len(set(links)) == 2

            # reviewer 1: rates 9 of 18 with the mouse, closes the browser
            net = NetworkLog()
            ctx1 = browser.new_context()
            net.attach(ctx1)
            page = ctx1.new_page()
            page.goto(links[0])
            letters = set()
            for i in range(9):
                assert page.text_content("#progress-text").startswith(f"{i} of 18")
                letters.add(page.text_content("#letter"))
                assert not net.leaks(forbidden) and not [w for w in forbidden if w in page.content()]
                if i == 0:
                    page.screenshot(path=str(shots / "review-rating-page.png"))
                page.check(f"input[name=rating][value='{1 + i % 5}']")
                page.click("#submit")
                page.wait_for_load_state()
            assert letters <= {"A", "B", "C"}
            resume_at = page.url
            ctx1.close()

            server.stop()  # the server restarts; nothing is lost
            server.start()

            ctx1b = browser.new_context()  # "another device": no cookie from before
            net.attach(ctx1b)
            page = ctx1b.new_page()
            page.goto(links[0])
            assert page.url == resume_at
            assert page.text_content("#progress-text").startswith("9 of 18")
            for i in range(9, 18):
                page.check(f"input[name=rating][value='{1 + i % 5}']")
                page.click("#submit")
                page.wait_for_load_state()
            page.wait_for_selector("#done")
            assert page.text_content("#progress-text").strip() == "18 of 18 answered"
            ctx1b.close()

            # reviewer 2: keyboard only (digits rate and continue, arrows move back and forth)
            ctx2 = browser.new_context()
            net.attach(ctx2)
            page = ctx2.new_page()
            page.goto(links[1])
            for i in range(18):
                url = page.url
                if i == 5:  # back to the previous case and forward again with the arrows
                    page.keyboard.press("ArrowLeft")
                    page.wait_for_url(lambda u, url=url: u != url)
                    assert page.is_checked(f"input[name=rating][value='{5 - (i - 1) % 5}']")  # its stored answer
                    page.keyboard.press("ArrowRight")
                    page.wait_for_url(url)
                page.keyboard.press(str(5 - i % 5))
                if i < 17:
                    page.wait_for_url(lambda u, url=url: u != url)
                    assert page.text_content("#progress-text").startswith(f"{i + 1} of 18")
            page.wait_for_selector("#done")
            ctx2.close()
            assert not net.leaks(forbidden), net.leaks(forbidden)[:5]
            assert any("/r/img/" in url for url, _ in net.entries)  # the log really holds the images

            # organiser: progress, report page, export
            org.goto(f"{server.url}/admin/reviews/{review}")
            assert [c.strip() for c in org.locator("#progress td.count").all_text_contents()] == ["18 / 18", "18 / 18"]
            org.click("#report")
            assert org.text_content("#answers").strip() == "36 answers"
            org.screenshot(path=str(shots / "review-report-page.png"), full_page=True)
            browser.close()

        def get(path: str) -> bytes:
            req = urllib.request.Request(f"{server.url}{path}", headers=AUTH)
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.read()

        for fmt, reader in (("csv", pd.read_csv), ("parquet", pd.read_parquet)):
            df = reader(io.BytesIO(get(f"/api/reviews/{review}/export.{fmt}")))
            assert len(df) == 36 and df.groupby("reviewer").size().tolist() == [18, 18]
            assert not df.duplicated(["reviewer", "case"]).any()
            assert df.groupby("reviewer")["encoder"].nunique().tolist() == [3, 3]
            assert df.groupby("reviewer")["image"].nunique().tolist() == [6, 6]
        by_label = df.set_index("reviewer_label")
        assert sorted(by_label.loc["reviewer two", "rating"].tolist()) == sorted([5 - i % 5 for i in range(18)])
        assert sorted(by_label.loc["reviewer one", "rating"].tolist()) == sorted([1 + i % 5 for i in range(18)])
    finally:
        server.stop()


# ---------------------------------------------------------------- behind a proxy prefix, and as a Ray Serve application
def test_pages_and_redirects_follow_the_root_path(client_factory, review_inputs):
    from fastapi.testclient import TestClient

    app, org = client_factory()
    pid = org.post("/api/reviews", json=spec(review_inputs, sample=1), headers=AUTH).json()["review"]
    link = org.post(f"/api/reviews/{pid}/invites", json={"label": "p"}, headers=AUTH).json()["link"]
    proxied = TestClient(app, root_path="/review")
    opened = proxied.get("/invite/" + link.rsplit("/", 1)[1], follow_redirects=False)
    assert opened.status_code == 303 and opened.headers["location"] == "/review/r/"
    case = proxied.get("/r/", follow_redirects=False).headers["location"]
    assert case.startswith("/review/r/case/")
    html = proxied.get(case.removeprefix("/review")).text
    assert 'src="/review/r/img/' in html and 'href="/review/static/review.css"' in html
    assert 'action="/review/r/case/' in html


def test_case_images_are_cached_and_revalidate_with_304_only_for_their_reviewer(client_factory, review_inputs):
    import anyio.to_thread
    from fastapi.testclient import TestClient

    app, org = client_factory(threads=3)
    body = spec(review_inputs, sample=1, questions={"pairwise": True})
    pid = org.post("/api/reviews", json=body, headers=AUTH).json()["review"]
    links = [org.post(f"/api/reviews/{pid}/invites", json={"label": n}, headers=AUTH).json()["link"] for n in "ab"]
    with TestClient(app) as a, TestClient(app) as b:
        # --threads: the requests served at once, and as many pooled database connections
        assert a.portal.call(lambda: anyio.to_thread.current_default_thread_limiter().total_tokens) == 3
        assert app.state.engine.pool.size() == 3
        _open_invite(a, links[0])
        _open_invite(b, links[1])
        seen = {}
        while "/r/case/" in str((page := a.get("/r/", follow_redirects=True)).url):
            kind = "pairwise" if 'name="preference"' in page.text else "likert"
            seen.setdefault(kind, page.url.path.replace("/case/", "/img/"))
            a.post(page.url.path, data={**_form(page.text), "rating": "3", "preference": "a"})
        likert, pairwise = seen["likert"], seen["pairwise"]
        for url in (f"{likert}/image", f"{likert}/map", f"{pairwise}/map", f"{pairwise}/map-b"):
            first = a.get(url)
            assert first.status_code == 200 and first.content[:8] == b"\x89PNG\r\n\x1a\n", url
            etag = first.headers["etag"]
            assert first.headers["cache-control"] == "private, max-age=86400, immutable"
            again = a.get(url, headers={"If-None-Match": etag})
            assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag
            assert a.get(url, headers={"If-None-Match": f'W/{etag}, "other"'}).status_code == 304
            assert a.get(url, headers={"If-None-Match": '"stale"'}).content == first.content
            # another reviewer's case stays a 404, whatever the validator it sends
            assert b.get(url, headers={"If-None-Match": etag}).status_code == 404
            assert b.get(url, headers={"If-None-Match": "*"}).status_code == 404
        assert a.get(f"{likert}/map-b").status_code == 404  # a Likert case has one map
        assert a.get(f"{likert}/image").headers["etag"] != a.get(f"{likert}/map").headers["etag"]


@pytest.mark.slow
def test_review_app_as_a_second_serve_application(ray_session, review_inputs, tmp_path):
    import httpx
    from ray import serve

    from pretextlab.review.cli import token_sha256
    from pretextlab.serving.review_app import build_review_app

    admin = "serve-admin-token-0123456789abcdef"
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(
            build_review_app(
                {
                    "db": str(tmp_path / "serve.sqlite"),
                    "assets": str(tmp_path / "assets"),
                    "admin_token_sha256": token_sha256(admin),
                    "num_cpus": 0.1,
                }
            ),
            name="pretextlab-review",
            route_prefix="/review",
        )
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300) as c:
            assert c.get("/review/healthz").json() == {"status": "ok"}
            assert c.post("/review/api/reviews", json=spec(review_inputs, sample=1)).status_code == 401
            auth = {"Authorization": f"Bearer {admin}"}
            pid = c.post("/review/api/reviews", json=spec(review_inputs, sample=1), headers=auth).json()["review"]
            link = c.post(f"/review/api/reviews/{pid}/invites", json={"label": "s"}, headers=auth).json()["link"]
            assert link.startswith(f"http://127.0.0.1:{port}/review/invite/")
            page = c.get(link, follow_redirects=True)
            assert page.status_code == 200 and "/review/r/case/" in str(page.url)
            img = re.search(r'src="(/review/r/img/[^"]+/map)"', page.text).group(1)
            assert c.get(img).content[:4] == b"\x89PNG"
    finally:
        serve.delete("pretextlab-review")
        serve.shutdown()


@pytest.mark.parametrize("with_chromium", [False, True])
def test_ci_installs_chromium_and_postgresql_from_debian_only_when_missing(tmp_path: Path, with_chromium: bool):
    import shutil

    repo = tmp_path / "repo"
    (repo / ".ci").mkdir(parents=True)
    shutil.copy(Path(__file__).resolve().parents[1] / ".ci" / "run", repo / ".ci" / "run")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("bash", "id", "env", "dirname", "python3.11"):
        if shutil.which(tool):
            (bindir / tool).symlink_to(shutil.which(tool))
    log = tmp_path / "calls.log"
    for tool in ["apt-get", "make", "sudo", "kubectl"] + (["chromium"] if with_chromium else []):
        (bindir / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> {log}\n')
        (bindir / tool).chmod(0o755)
    run = subprocess.run(
        ["bash", str(repo / ".ci" / "run")],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": str(bindir), "HOME": str(tmp_path)},
    )
    assert run.returncode == 0, run.stderr
    calls = log.read_text().splitlines()
    assert calls[-1] == "make test", calls
    installs = " ".join(c for c in calls if c.startswith("apt-get") and " install " in c)
    assert ("chromium" in installs) is (not with_chromium), calls
    has_postgres = bool(list(Path("/usr/lib/postgresql").glob("*/bin/initdb")))
    assert ("postgresql" in installs) is (not has_postgres), calls
    assert "kubernetes-client" not in installs  # kubectl is on PATH here


@pytest.mark.parametrize("overlay", ["k8s/base", "k8s/overlays/dev", "k8s/overlays/prod"])
def test_k8s_review_deployment_runs_the_review_cli_with_its_secret(overlay: str):
    import argparse
    import shutil

    import yaml

    from pretextlab.review.cli import add_arguments

    if not shutil.which("kubectl"):
        pytest.skip("kubectl missing (Debian's kubernetes-client; .ci/run installs it)")
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run(["kubectl", "kustomize", str(repo / overlay)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    dep = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "pretextlab-review")
    svc = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "pretextlab-review")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["command"] == ["python", "-m", "pretextlab.review.cli", "serve"]
    env = {e["name"]: e.get("valueFrom") for e in c["env"]}
    assert env["PRETEXTLAB_REVIEW_DB"]["secretKeyRef"]["name"] == "pretextlab-review-db"
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "pretextlab-env")
    assert cm["data"]["PRETEXTLAB_REVIEW_ASSETS"].startswith("s3://")
    assert "pretextlab-api" in [r["secretRef"]["name"] for r in c["envFrom"] if "secretRef" in r]
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    values = {"PRETEXTLAB_REVIEW_DB": "postgresql://u@db/review", "PRETEXTLAB_REVIEW_ASSETS": "s3://b/assets"}
    args = parser.parse_args(
        [c["command"][-1], *(re.sub(r"\$\((\w+)\)", lambda m: values[m.group(1)], a) for a in c["args"])]
    )
    assert (args.db, args.assets, args.port) == ("postgresql://u@db/review", "s3://b/assets", 8600)
    assert c["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": 8600}
    assert (
        svc["spec"]["ports"][0]["port"] == 8600
        and svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    )


def test_migrations_build_exactly_the_models_schema_and_rerun_cleanly(database):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy import inspect

    from pretextlab.review.db import make_engine, migrate
    from pretextlab.review.models import Base

    engine = make_engine(database["db"])
    migrate(engine)
    migrate(engine)  # every start runs it: a second run is a no-op
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == [], diff
        assert MigrationContext.configure(conn).get_current_revision() == "0001"
    tables = set(inspect(engine).get_table_names())
    assert {"reviews", "encoders", "cases", "reviewers", "sessions", "answers", "answer_history"} <= tables
    engine.dispose()


def test_pairwise_comment_and_region_answers_reach_export_and_report(client_factory, review_inputs):
    from fastapi.testclient import TestClient

    app, org = client_factory()
    body = spec(review_inputs, sample=1, questions={"pairwise": True, "comment": True, "region": True})
    pid = org.post("/api/reviews", json=body, headers=AUTH).json()["review"]
    assert org.post(f"/api/reviews/{pid}/invites", json={"label": ""}, headers=AUTH).status_code == 422
    link = org.post(f"/api/reviews/{pid}/invites", json={"label": "pw"}, headers=AUTH).json()["link"]
    c = TestClient(app)
    _open_invite(c, link)
    kinds = []
    while True:
        page = c.get("/r/", follow_redirects=True)
        if "/r/case/" not in str(page.url):
            break
        case = page.url.path
        fields = _form(page.text)
        if 'name="preference"' in page.text:
            kinds.append("pairwise")
            assert 'src="' + case.replace("/case/", "/img/") + '/map-b"' in page.text  # two maps side by side
            assert c.post(case, data={**fields, "preference": "left"}).status_code == 422
            r = c.post(case, data={**fields, "preference": "a"}, follow_redirects=False)
        else:
            kinds.append("likert")
            r = c.post(
                case,
                data={**fields, "rating": "4", "comment": "apex", "region_x": "0.5", "region_y": "0.25"},
                follow_redirects=False,
            )
        assert r.status_code == 303, r.text
    assert sorted(kinds) == ["likert"] * 3 + ["pairwise"] * 3  # 3 encoders x 1 image, and the 3 pairs
    df = pd.read_csv(io.BytesIO(org.get(f"/api/reviews/{pid}/export.csv", headers=AUTH).content))
    pw = df[df["kind"] == "pairwise"]
    assert (pw["preferred_encoder"] == pw["encoder"]).all() and pw["letter_b"].notna().all()
    lik = df[df["kind"] == "likert"]
    assert (lik["comment"] == "apex").all() and (lik["region_x"] == 0.5).all() and (lik["region_y"] == 0.25).all()
    report = org.get(f"/api/reviews/{pid}/report", headers=AUTH).json()
    assert sum(r["comparisons"] for r in report["pairwise"]) == 6 and len(report["pairwise"]) == 3


def test_sessions_expire_and_registry_addresses_work(client_factory, review_inputs, tmp_path):
    import time

    from fastapi.testclient import TestClient

    from pretextlab.models.encoder_io import load_encoder
    from pretextlab.registry import EncoderRegistry

    reg = EncoderRegistry(str(tmp_path / "registry"), cache_dir=tmp_path / "cache")
    for folder, name in zip(review_inputs["encoders"][:2], ("reg-one", "reg-two"), strict=True):
        model, card = load_encoder(folder)
        reg.register(model, card, name=name)
    app, org = client_factory(session_hours=6 / 3600)  # sessions of six seconds
    body = {
        **spec(review_inputs, sample=1),
        "registry": str(tmp_path / "registry"),
        "encoders": ["reg-one", "reg-two:latest"],
    }
    created = org.post("/api/reviews", json=body, headers=AUTH)
    assert created.status_code == 201, created.text
    pid = created.json()["review"]
    bad = org.post("/api/reviews", json={**body, "encoders": ["reg-none"]}, headers=AUTH)
    assert bad.status_code == 422 and "reg-none" in bad.json()["detail"]
    link = org.post(f"/api/reviews/{pid}/invites", json={"label": "x"}, headers=AUTH).json()["link"]
    c = TestClient(app)
    opened_at = time.monotonic()
    _open_invite(c, link)
    assert c.get("/r/", follow_redirects=False).status_code == 303 or time.monotonic() - opened_at > 5
    time.sleep(max(0.0, 6.5 - (time.monotonic() - opened_at)))
    token = c.cookies.get("plr_session")
    assert c.get("/r/", follow_redirects=False).status_code == 401  # the session expired
    replayed = TestClient(app).get("/r/", headers={"cookie": f"plr_session={token}"}, follow_redirects=False)
    assert token and replayed.status_code == 401  # also when the browser keeps sending the old cookie
    assert _open_invite(c, link).status_code == 303  # the invite still opens a new one
    names = set(pd.read_csv(io.BytesIO(org.get(f"/api/reviews/{pid}/export.csv", headers=AUTH).content)).columns)
    assert "encoder" in names


# ---------------------------------------------------------------- ratings vs automatic localisation
def test_localisation_agreement_is_spearman_over_rated_units():
    from scipy.stats import spearmanr

    from pretextlab.review.analysis import localisation_agreement

    rng = np.random.default_rng(0)
    units = [(e, f"img{i}") for e in ("A", "B") for i in range(8)]
    auroc = {u: float(rng.uniform(0.3, 1.0)) for u in units}
    scores = pd.DataFrame(
        [{"encoder": e, "item_id": i, "map_type": "attention", "auroc": auroc[(e, i)], "hit": 1.0} for e, i in units]
    )
    rows = []  # two reviewers; the rating rises with the map's AUROC (plus disagreement between them)
    for r, shift in (("r1", 0), ("r2", 1)):
        for e, i in units:
            rating = int(np.clip(round(1 + 4 * auroc[(e, i)]) - shift * (i == "img3"), 1, 5))
            rows.append(
                {"reviewer": r, "kind": "likert", "encoder": e, "item_id": i, "map_type": "attention", "rating": rating}
            )
    answers = pd.DataFrame(rows)
    got = localisation_agreement(answers, scores, seed=0, n_boot=500)
    mean = answers.groupby(["encoder", "item_id"])["rating"].mean()
    want = spearmanr([mean[u] for u in units], [auroc[u] for u in units]).statistic
    assert got["units"] == 16 and got["spearman_rho"] == pytest.approx(want) and want > 0.8
    assert got["ci_low"] <= got["spearman_rho"] <= got["ci_high"] <= 1.0
    # a pairwise answer, a map type without a score, and too few units give no correlation, not an error
    flat = localisation_agreement(answers[answers["item_id"] == "img0"], scores, seed=0, n_boot=50)
    assert flat["units"] == 2 and flat["spearman_rho"] is None


def _roi_store(root: Path) -> str:
    """16 local-label ultrasound phantoms at 32 px with ROI masks (catalog column 'roi'), written without Ray."""
    from pretextlab.jobs.bench_data import write_sources
    from pretextlab.phantoms import generate
    from pretextlab.storage import discover, write_item
    from pretextlab.storage.catalog import rebuild_catalog

    ps = generate("ultrasound", n=16, size=32, locality=1.0, noise=0.5, seed=2)
    npz, roi, csv, _ = write_sources(ps, root / "src", "phantom-ultrasound", 2)
    dest = root / "store"
    for plan in discover([str(npz), str(roi)], modality="ultrasound").plans:
        assert write_item(plan, str(dest)).status == "ingested"
    rebuild_catalog(str(dest), str(csv))
    return str(dest)


def test_report_correlates_ratings_with_the_maps_localisation_on_roi_masks(review_inputs, tmp_path, capsys):
    """A review of a store with ROI masks: `review report` scores each rated attention map on its image's
    ROI and reports Spearman's rho between the mean ratings and those scores."""
    import yaml
    from scipy.stats import spearmanr

    from pretextlab.review import service as svc
    from pretextlab.review.cli import main
    from pretextlab.review.db import open_database
    from pretextlab.review.localisation import roi_scores
    from pretextlab.review.spec import ReviewSpec

    store = _roi_store(tmp_path)
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec({**review_inputs, "store": store}, sample=8)))
    db = str(tmp_path / "roi.sqlite")
    assert main(["create", "--db", db, str(spec_file)]) == 0
    review = capsys.readouterr().out.strip()
    _engine, sm = open_database(db)
    _reviewer, token = svc.invite(sm, review, "dr roi")
    ctx = svc.reviewer_context(sm, svc.login(sm, token, 1.0))
    n = 0
    while (case := svc.next_case_pid(sm, ctx)) is not None:
        svc.submit_answer(sm, ctx, case, {"nonce": f"n{n:030d}", "rating": str(1 + n % 5)})
        n += 1
    assert main(["report", "--db", db, review, "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    loc = json.loads((tmp_path / "r.json").read_text())["localisation"]
    scores = roi_scores(ReviewSpec.model_validate(yaml.safe_load(spec_file.read_text())))
    answers = svc.export_answers(sm, review)
    units = answers.merge(scores, on=["encoder", "item_id", "map_type"])
    assert loc["units"] == len(units) >= 3  # the panel images whose mask is neither empty nor full, x 3 encoders
    assert loc["spearman_rho"] == pytest.approx(spearmanr(units["rating"], units["auroc"]).statistic)
    assert f"over {loc['units']} encoder x image units" in out


# ---------------------------------------------------------------- a review linked to a study
STUDY_ARMS = ["armqalphak5", "armqbetak6"]  # distinctive: any of them in a reviewer's page would unblind


def _finished_study(root: Path, store: str, monkeypatch) -> tuple[Path, object]:
    """A finished one-dataset study of two arms (+ random init) on the review store, without training:
    every cell's "pretrained" encoder is a random-init backbone registered under the cell's name; the cells
    are evaluated for real (run_cell), so the study folder is what `pretextlab study` leaves."""
    import dataclasses

    import yaml

    from pretextlab.jobs import study as js
    from pretextlab.study import load_study

    cfg = {
        "name": "studyqrevz9",
        "datasets": [{"name": "dsqstripesz8", "store": store, "modality": "ultrasound"}],
        "arms": [{"name": STUDY_ARMS[0], "objective": "ijepa"}, {"name": STUDY_ARMS[1], "objective": "mae"}],
        "seeds": [0],
        "steps": 1,
        "backbone": {"arch": "vit_tiny", "img_size": 32, "patch_size": 8, "depth": 1},
        "pretrain": {"train": {"batch_size": 4, "num_workers": 1}},
        "evaluate": {"n_bootstrap": 20, "shots": [1], "fewshot_repeats": 1, "alignment_images": 0},
        "storage": str(root / "studies"),
        "registry": str(root / "registry"),
    }
    path = root / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    plan = js.plan_study(load_study(path), str(path))
    seeds = {c.id: k for k, c in enumerate(plan.cells)}
    monkeypatch.setattr(js, "_trained_encoder", lambda c, so: (js._baseline_encoder(c, 10 + seeds[c.name], so), {}))
    js._write_json(f"{plan.uri}/{js.STUDY_FILE}", {"name": cfg["name"], "fingerprint": plan.fingerprint}, None)
    for c in plan.cells:
        rec = js.run_cell(dataclasses.asdict(c), plan.uri, plan.cfg.evaluate, None)
        assert rec["status"] == "complete", rec.get("traceback")
    return path, plan


def test_study_report_has_the_linked_reviews_section_with_arms_named_only_there(
    review_inputs, tmp_path, monkeypatch, capsys
):
    import argparse

    from fastapi.testclient import TestClient

    from pretextlab.jobs import study as js
    from pretextlab.review.app import create_app
    from pretextlab.review.cli import main
    from pretextlab.review.settings import ReviewSettings

    study_yaml, plan = _finished_study(tmp_path, review_inputs["store"], monkeypatch)
    study_dir = Path(plan.uri)
    cells = {json.loads(p.read_text())["encoder"]: json.loads(p.read_text()) for p in (study_dir / "cells").glob("*")}
    monkeypatch.setenv("PRETEXTLAB_API_KEY", API_KEY)
    db = str(tmp_path / "review.sqlite")
    org = TestClient(create_app(ReviewSettings(db=db, assets=str(tmp_path / "assets"))))
    # a bad link is a 422 naming the field; a good one fills in the study's finished arms
    bad = org.post("/api/reviews", json={"title": "t", "study": str(tmp_path / "nope"), "sample": 3}, headers=AUTH)
    assert bad.status_code == 422 and "study" in bad.json()["detail"]
    body = {"title": "Stripes panel", "study": {"uri": plan.uri}, "sample": 4, "seed": 2}
    body["questions"] = {"pairwise": True}
    resp = org.post("/api/reviews", json=body, headers=AUTH)
    assert resp.status_code == 201, resp.text
    review = resp.json()["review"]

    forbidden = [*STUDY_ARMS, "random-init", "studyqrevz9", "dsqstripesz8", "registry", str(tmp_path), *cells]
    seen: list[str] = []
    for who in range(2):
        client = TestClient(org.app)
        link = org.post(f"/api/reviews/{review}/invites", json={"label": f"dr {who}"}, headers=AUTH).json()["link"]
        r = _open_invite(client, link)
        seen += [r.headers.get("location", ""), json.dumps(dict(r.headers))]
        k = 0
        while True:
            page = client.get("/r/", follow_redirects=True)
            seen += [str(page.url), page.text, json.dumps(dict(page.headers))]
            if "/r/case/" not in str(page.url):
                break
            for src in re.findall(r'src="([^"]+)"', page.text):
                img = client.get(src)
                seen += [src, json.dumps(dict(img.headers))]
            form = {**_form(page.text), "rating": str(1 + (3 * k + who) % 5)}
            if 'name="preference"' in page.text:
                form = {**_form(page.text), "preference": "abab"[k % 3] if k % 3 < 2 else "equal"}
            assert client.post(page.url.path, data=form, follow_redirects=False).status_code == 303
            k += 1
        assert k == 24  # 3 encoders x 4 images (Likert) + 3 pairs x 4 images (pairwise)
    leaks = [f for f in forbidden if any(f in s for s in seen)]
    assert leaks == []  # the reviewers' pages, URLs, headers and images never name an arm

    csv = tmp_path / "answers.csv"
    assert main(["report", "--db", db, review, "--csv", str(csv)]) == 0
    assert f"study section: {study_dir / 'reviews' / review}.json" in capsys.readouterr().out
    args = argparse.Namespace(
        config=str(study_yaml), overrides=[], report=True, choose=False, address=None, num_cpus=None
    )
    assert js.run(args) == 0

    # hand computation from the exported answers: encoder -> arm through the study's own cell records
    answers = pd.read_csv(csv)
    likert = answers[answers["kind"] == "likert"].assign(arm=lambda d: d["encoder"].map(lambda e: cells[e]["arm"]))
    want = likert.groupby("arm")["rating"].agg(["mean", "size"])
    assert set(want.index) == {"random-init", *STUDY_ARMS} and (want["size"] == 8).all()
    results = json.loads((study_dir / "results.json").read_text())
    (section,) = results["clinician_reviews"]
    assert section["review"] == review and section["reviewers"] == 2 and section["analysis"]["answers"] == 48
    got = {r["encoder"]: r for r in section["analysis"]["by_encoder"]}
    for arm, row in want.iterrows():
        assert got[arm]["mean"] == pytest.approx(row["mean"]) and got[arm]["n"] == row["size"]
        assert got[arm]["ci_low"] <= row["mean"] <= got[arm]["ci_high"]
    assert {r["encoder"] for r in section["analysis"]["pairwise"]} == set(want.index)
    assert section["analysis"]["agreement"]["reviewers"] == 2
    assert "dr 0" not in json.dumps(section)  # no reviewer names in the study folder
    md = (study_dir / "report.md").read_text()
    html = (study_dir / "report.html").read_text()
    assert "## Clinician review: Stripes panel" in md and "Clinician review: Stripes panel" in html
    for arm, row in want.iterrows():
        assert f"| {arm} | 8 | {row['mean']:.2f} [" in md
        assert f"<td>{arm}</td><td>8</td><td>{row['mean']:.2f} [" in html
    assert "Bradley-Terry" in md and "Krippendorff's alpha (ordinal)" in md and "| attention | 24 |" in md
    assert "http://" not in html and "https://" not in html


def test_study_report_section_renders_localisation_and_leaves_out_absent_parts():
    from pretextlab.study.report import clinician_review_html, clinician_review_markdown

    row = {"n": 4, "mean": 3.5, "ci_low": 2.75, "ci_high": 4.25}
    review = {
        "review": "r" * 32,
        "title": "T <b>",
        "status": "closed",
        "dataset": "ds",
        "seed": 0,
        "reviewers": 2,
        "images": 2,
        "analysis": {
            "answers": 8,
            "scale": 5,
            "by_encoder": [{"encoder": "mae", **row}, {"encoder": "random-init", **row, "mean": 1.5}],
            "by_encoder_map_type": [{"encoder": "mae", "map_type": "attention", **row}],
            "by_map_type": [{"map_type": "attention", **row}],
            "pairwise": [],
            "agreement": {"reviewers": 2, "units": 4, "krippendorff_alpha_ordinal": 0.5, "icc_2_1": None},
            "localisation": {"units": 4, "spearman_rho": 0.8, "ci_low": 0.2, "ci_high": 1.0, "score": "auroc"},
        },
    }
    md = "\n".join(clinician_review_markdown([review]))
    assert "| mae | 4 | 3.50 [2.75, 4.25] |" in md and "| random-init | 4 | 1.50 [2.75, 4.25] |" in md
    assert "Spearman rho 0.80 [0.20, 1.00]" in md and "ICC(2,1) -" in md and "Pairwise preference" not in md
    html = "\n".join(clinician_review_html([review]))
    assert "T &lt;b&gt;" in html and "<b>" not in html.replace("T &lt;b&gt;", "")
    assert clinician_review_markdown([]) == [] and clinician_review_html([]) == []
