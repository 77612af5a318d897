"""Review app under load: 50 simulated reviewers answering 20 cases each over HTTP, SQLite and PostgreSQL.

    .venv/bin/python benchmarks/review.py                    # 50 reviewers x 20 cases, both databases
    .venv/bin/python benchmarks/review.py --reviewers 10 --db sqlite
    .venv/bin/python benchmarks/review.py --think-ms 2000   # each reviewer looks ~2 s at a case first

A real server (``python -m pretextlab.review.cli serve``, one uvicorn process) on 127.0.0.1; a review of
3 tiny encoders x 7 images (21 cases per reviewer); every reviewer is its own thread with its own
keep-alive client: open the invite link, then 20 times GET the next case page and POST an answer.
Every 5th answer is sent twice at once (a double submit). By default reviewers answer at once (no reading
time: the server is saturated, a stress test); ``--think-ms T`` makes each one look at a case for a random
0.5T..1.5T (seeded) before answering, as a clinician would. Reported per database: p50/p95/max of the
client-side latency of case pages and answers, the server-side time of the same requests (the app's
``Server-Timing`` header), the audit: answers stored vs sent (0 lost), duplicates (0), and the CPU
seconds the server and this load generator used while the reviewers ran (they share the machine's
cores), with the load average. ``--threads N`` passes the server's ``--threads``.
Figures go to .bench/review.json. PostgreSQL is Debian's, started as in tests/review_fixtures.py.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "tests"))

from review_fixtures import API_KEY, Postgres, Server, can_run_postgres, make_encoders, make_store  # noqa: E402

sys.path.insert(0, str(HERE.parent))
from harness import PeakPss, compare, print_figures, write_results  # noqa: E402

AUTH = {"Authorization": f"Bearer {API_KEY}"}
FIELDS = re.compile(r'name="(csrf|nonce)" value="([^"]+)"')


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu_s(pid: int, children: bool = True) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads) and, with ``children``, its live children."""
    import psutil

    procs = [psutil.Process(pid)]
    procs += procs[0].children(recursive=True) if children else []
    return sum(t.user + t.system for t in (p.cpu_times() for p in procs))


def _pct(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))] if v else float("nan")


def _answer_cases(
    c: httpx.Client,
    base: str,
    link: str,
    cases: int,
    think_ms: float,
    rng,
    page_ms: list,
    answer_ms: list,
    page_srv: list,
    answer_srv: list,
    errors: list,
) -> None:
    r = c.get(link.replace(base, ""), follow_redirects=False)
    if r.status_code != 303:
        errors.append(f"invite {r.status_code}")
    for k in range(cases):
        t = time.perf_counter()
        r = c.get("/r/", follow_redirects=True)
        page_ms.append((time.perf_counter() - t) * 1000)
        page_srv.append(float(r.headers.get("server-timing", "app;dur=nan").split("=")[1]))
        if "/r/case/" not in str(r.url):
            errors.append(f"no case at step {k}: {r.status_code}")
            break
        fields = dict(FIELDS.findall(r.text))
        url = r.url.path
        data = {**fields, "rating": str(1 + k % 5)}
        if think_ms:
            time.sleep(think_ms * rng.uniform(0.5, 1.5) / 1000)
        t = time.perf_counter()
        if k % 5 == 4:  # a double submit: two copies of one form at once
            results: list[int] = []
            th = threading.Thread(
                target=lambda results=results, url=url, data=data, c=c: results.append(
                    httpx.post(base + url, data=data, cookies=c.cookies).status_code
                )
            )
            th.start()
            a = c.post(url, data=data, follow_redirects=False)
            th.join()
            codes = sorted([a.status_code, *results])
            if codes != [303, 409]:
                errors.append(f"double submit gave {codes}")
        else:
            a = c.post(url, data=data, follow_redirects=False)
            if a.status_code != 303:
                errors.append(f"answer {a.status_code}")
        answer_ms.append((time.perf_counter() - t) * 1000)
        answer_srv.append(float(a.headers.get("server-timing", "app;dur=nan").split("=")[1]))


def _reviewer(
    base: str, link: str, cases: int, out: dict, lock: threading.Lock, think_ms: float = 0.0, seed: int = 0
) -> None:
    import random

    rng = random.Random(seed)
    page_ms, answer_ms, page_srv, answer_srv, errors = [], [], [], [], []
    # keep-alive shorter than uvicorn's 5 s, so a reading pause never reuses a connection the server is closing
    limits = httpx.Limits(keepalive_expiry=2.0)
    with httpx.Client(base_url=base, timeout=60, limits=limits) as c:
        try:
            _answer_cases(c, base, link, cases, think_ms, rng, page_ms, answer_ms, page_srv, answer_srv, errors)
        except httpx.HTTPError as exc:  # recorded, never a silently dead reviewer thread
            errors.append(f"{type(exc).__name__}: {exc}")
    sent = len(answer_ms)
    with lock:
        for key, vals in (
            ("page_ms", page_ms),
            ("answer_ms", answer_ms),
            ("page_server_ms", page_srv),
            ("answer_server_ms", answer_srv),
        ):
            out.setdefault(key, []).extend(vals)
        out["sent"] = out.get("sent", 0) + sent
        out.setdefault("errors", []).extend(errors)


def run_one(
    kind: str,
    db: str,
    inputs: dict,
    reviewers: int,
    cases: int,
    work: Path,
    think_ms: float = 0.0,
    threads: int | None = None,
) -> dict:
    server = Server(
        db,
        str(work / f"assets-{kind}"),
        _free_port(),
        extra=(
            "--login-per-minute",
            "100000",
            "--answers-per-minute",
            "100000",
            *(("--threads", str(threads)) if threads else ()),
        ),
    ).start()
    try:
        with httpx.Client(base_url=server.url, timeout=600, headers=AUTH) as org:
            spec = {
                "title": "bench",
                "encoders": inputs["encoders"],
                "store": inputs["store"],
                "sample": 7,
                "map_types": ["attention"],
            }
            review = org.post("/api/reviews", json=spec).raise_for_status().json()["review"]
            links = [
                org.post(f"/api/reviews/{review}/invites", json={"label": f"r{i}"}).raise_for_status().json()["link"]
                for i in range(reviewers)
            ]
            out: dict = {}
            lock = threading.Lock()
            threads = [
                threading.Thread(target=_reviewer, args=(server.url, link, cases, out, lock, think_ms, i))
                for i, link in enumerate(links)
            ]
            with PeakPss() as mem:  # this process tree: the reviewers' threads and the server process
                cpu0 = _cpu_s(server.proc.pid), _cpu_s(os.getpid(), children=False)
                t0 = time.perf_counter()
                [t.start() for t in threads]
                [t.join() for t in threads]
                wall = time.perf_counter() - t0
                cpu1 = _cpu_s(server.proc.pid), _cpu_s(os.getpid(), children=False)
            import io

            import pandas as pd

            df = pd.read_parquet(io.BytesIO(org.get(f"/api/reviews/{review}/export.parquet").content))
        per = df.groupby("reviewer").size()
        result = {
            "db": kind,
            "reviewers": reviewers,
            "cases_each": cases,
            "think_ms": think_ms,
            "threads": threads,
            "wall_s": round(wall, 2),
            "answers_per_s": round(out["sent"] / wall, 1),
            "answers_sent": out["sent"],
            "answers_stored": len(df),
            "lost": int(reviewers * cases - len(df)),
            "duplicated": int(df.duplicated(["reviewer", "case"]).sum()),
            "reviewers_complete": int((per == cases).sum()),
            "errors": out["errors"][:10],
            "peak_mib": round(mem.peak_mib, 1),
            # CPU seconds used while the reviewers ran: the server (with any worker processes) and this
            # load generator (its threads, without the server), which shares the machine's cores with it
            "server_cpu_s": round(cpu1[0] - cpu0[0], 2),
            "client_cpu_s": round(cpu1[1] - cpu0[1], 2),
            "load_average": [round(x, 2) for x in os.getloadavg()],
        }
        for key in ("page_ms", "answer_ms", "page_server_ms", "answer_server_ms"):
            vals = [v for v in out[key] if v == v]
            result[key] = {
                "p50": round(statistics.median(vals), 1),
                "p95": round(_pct(vals, 0.95), 1),
                "max": round(max(vals), 1),
                "n": len(vals),
            }
        return result
    finally:
        server.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reviewers", type=int, default=50)
    ap.add_argument("--cases", type=int, default=20, help="answers per reviewer (at most 21)")
    ap.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    ap.add_argument("--think-ms", type=float, default=0.0, help="mean reading time per case (default 0: none)")
    ap.add_argument("--threads", type=int, help="the server's --threads (default: the server's own default)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="review-bench-"))
    inputs = {"encoders": make_encoders(work / "encoders"), "store": make_store(work)}
    results = []
    if args.db in ("sqlite", "both"):
        results.append(
            run_one(
                "sqlite",
                str(work / "bench.sqlite"),
                inputs,
                args.reviewers,
                args.cases,
                work,
                args.think_ms,
                args.threads,
            )
        )
    if args.db in ("postgresql", "both"):
        reason = can_run_postgres()
        if reason:
            print(f"postgresql skipped: {reason}")
        else:
            pg = Postgres(_free_port())
            try:
                results.append(
                    run_one(
                        "postgresql",
                        pg.new_database(),
                        inputs,
                        args.reviewers,
                        args.cases,
                        work,
                        args.think_ms,
                        args.threads,
                    )
                )
            finally:
                pg.stop()
    for r in results:
        print(
            f"{r['db']:<10} {r['reviewers']} reviewers x {r['cases_each']} cases (think {r['think_ms']:g} ms) "
            f"in {r['wall_s']} s "
            f"({r['answers_per_s']} answers/s); stored {r['answers_stored']}/{r['answers_sent']}, "
            f"lost {r['lost']}, duplicated {r['duplicated']}, errors {len(r['errors'])}; "
            f"CPU server {r['server_cpu_s']} s, load generator {r['client_cpu_s']} s; load {r['load_average']}"
        )
        for key in ("page_ms", "answer_ms", "page_server_ms", "answer_server_ms"):
            print(f"    {key:<17} p50 {r[key]['p50']:>7} ms   p95 {r[key]['p95']:>7} ms   max {r[key]['max']:>7} ms")
    figures = []
    for r in results:
        figures.append(
            compare(
                f"review ({r['db']}): {r['reviewers']} reviewers x {r['cases_each']} cases, answers/s",
                "answers/s",
                [r["answers_per_s"]],
                None,
                note=f"lost {r['lost']}, duplicated {r['duplicated']}; peak PSS {r['peak_mib']:.0f} MiB",
            )
        )
        figures.append(
            compare(
                f"review ({r['db']}): answer latency p50 seen by the client",
                "ms",
                [r["answer_ms"]["p50"]],
                "the server-side time of the same answers (Server-Timing p50)",
                [r["answer_server_ms"]["p50"]],
                better="lower",
            )
        )
    write_results("review", figures, results=results)
    print_figures(figures)
    return 0 if all(r["lost"] == 0 and r["duplicated"] == 0 and not r["errors"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
