"""Blinded clinician review of feature maps: serve the web app, create reviews, invite reviewers, report.

    pretextlab review serve  [--db review.sqlite] [--assets DIR|s3://...] [--host 127.0.0.1] [--port 8600]
    pretextlab review create [--db ...] SPEC.yaml [--title T]      prints the new review's id
    pretextlab review invite [--db ...] REVIEW NAME [--base-url URL] prints the reviewer's personal link (once)
    pretextlab review revoke [--db ...] REVIEW REVIEWER
    pretextlab review progress [--db ...] REVIEW
    pretextlab review close  [--db ...] REVIEW
    pretextlab review report [--db ...] REVIEW [--json F] [--csv F] [--parquet F]
                                          a review created from a study (spec field `study:`) also
                                          writes its section into the study folder (reviews/)

--db is a SQLite file (created and migrated on first use) or a postgresql:// URL. SPEC.yaml names the
encoders (folders, or registry addresses with `registry:`), the labelled `store`, the image panel
(`items:` or `sample:` + `seed:`), `map_types` (attention, pca, similarity) and `questions`; or, instead of
encoders and store, `study: STUDY_FOLDER` (the finished arms of one dataset and seed of a study).
The organiser's web login and /api/ use the API key in $PRETEXTLAB_API_KEY (or --admin-token-sha256).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

from pretextlab.core.errors import UserError

MIN_KEY_LENGTH = 16


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", parser_class=type(parser))
    sub.required = True

    def common(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "--db", default="review.sqlite", help="SQLite file or postgresql:// URL (default: review.sqlite)"
        )
        p.add_argument(
            "--assets",
            help="folder or s3:// prefix for rendered images and maps (default: <db>-assets beside a SQLite file)",
        )
        return p

    s = common(sub.add_parser("serve", help="run the web app (uvicorn)"))
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8600)
    s.add_argument("--base-url", help="public URL prefix for invite links (default: the request's)")
    s.add_argument("--admin-token-sha256", help="sha256 hex of an extra organiser token")
    s.add_argument(
        "--secure-cookies",
        choices=["auto", "always", "never"],
        default="auto",
        help="Secure cookie flag: auto = when the request came over https (default)",
    )
    s.add_argument("--login-per-minute", type=int, help="invite/organiser logins per client address per minute")
    s.add_argument("--answers-per-minute", type=int, help="answers per reviewer session per minute")
    s.add_argument("--threads", type=int, help="requests handled at once (default 8)")

    c = common(sub.add_parser("create", help="create a review from a spec file (renders the maps)"))
    c.add_argument("spec", metavar="SPEC", help="review spec (YAML or JSON)")
    c.add_argument("--title", help="override the spec's title")

    i = common(sub.add_parser("invite", help="invite a reviewer: prints the personal link once"))
    i.add_argument("review", metavar="REVIEW")
    i.add_argument("name", metavar="NAME", help="the reviewer's name (organiser-side only)")
    i.add_argument("--base-url", default="http://127.0.0.1:8600", help="public URL of the app")

    r = common(sub.add_parser("revoke", help="revoke a reviewer's invite and end their sessions"))
    r.add_argument("review", metavar="REVIEW")
    r.add_argument("reviewer", metavar="REVIEWER")

    for name, text in (("progress", "answers per reviewer"), ("close", "close the review: invites expire")):
        common(sub.add_parser(name, help=text)).add_argument("review", metavar="REVIEW")

    rep = common(sub.add_parser("report", help="mean ratings with CIs, Bradley-Terry, agreement; exports"))
    rep.add_argument("review", metavar="REVIEW")
    rep.add_argument("--json", metavar="FILE", help="write the report as JSON")
    rep.add_argument("--csv", metavar="FILE", help="write one row per answer as CSV")
    rep.add_argument("--parquet", metavar="FILE", help="write one row per answer as Parquet")


def _settings(args: argparse.Namespace, **extra):
    from pretextlab.review.settings import ReviewSettings

    fields = {k: v for k, v in extra.items() if v is not None}
    return ReviewSettings(db=args.db, assets=args.assets, **fields)


def _write(path: str, data: bytes) -> None:
    out = Path(path)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_bytes(data)
        tmp.replace(out)
    except OSError as exc:
        raise UserError(f"{path}: cannot write ({exc.strerror or exc})") from None


def _serve(args: argparse.Namespace) -> int:
    key = os.environ.get("PRETEXTLAB_API_KEY", "")
    if not key and not args.admin_token_sha256:
        raise UserError(
            "PRETEXTLAB_API_KEY is not set: export an organiser key "
            "(e.g. `export PRETEXTLAB_API_KEY=$(openssl rand -hex 24)`) or pass --admin-token-sha256"
        )
    if key and len(key) < MIN_KEY_LENGTH:
        raise UserError(f"PRETEXTLAB_API_KEY: the key is too short (use at least {MIN_KEY_LENGTH} characters)")
    if args.admin_token_sha256 and not (
        len(args.admin_token_sha256) == 64 and all(ch in "0123456789abcdef" for ch in args.admin_token_sha256)
    ):
        raise UserError("--admin-token-sha256: expected 64 lowercase hex characters (sha256sum of the token)")
    import uvicorn

    from pretextlab.review.app import create_app

    secure = {"auto": None, "always": True, "never": False}[args.secure_cookies]
    settings = _settings(
        args,
        base_url=args.base_url,
        admin_token_sha256=args.admin_token_sha256,
        secure_cookies=secure,
        login_per_minute=args.login_per_minute,
        answers_per_minute=args.answers_per_minute,
        threads=args.threads,
    )
    app = create_app(settings)
    print(f"review app on http://{args.host}:{args.port} (organiser: /admin)", flush=True)
    # no access log: invite links carry a secret in their path
    uvicorn.run(app, host=args.host, port=args.port, access_log=False, log_level="warning")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.action == "serve":
        return _serve(args)
    from pretextlab.review import service as svc
    from pretextlab.review.db import open_database

    settings = _settings(args)
    _, sm = open_database(settings.db)
    if args.action == "create":
        from pretextlab.review.spec import load_spec

        spec = load_spec(args.spec, {"title": args.title})
        review = svc.create_review(sm, spec, settings.asset_root())
        print(review.pid)
    elif args.action == "invite":
        reviewer, token = svc.invite(sm, args.review, args.name)
        print(f"reviewer {reviewer.pid} ({reviewer.label}): {args.base_url.rstrip('/')}/invite/{token}")
    elif args.action == "revoke":
        svc.revoke(sm, args.review, args.reviewer)
        print(f"revoked {args.reviewer}")
    elif args.action == "close":
        svc.close_review(sm, args.review)
        print(f"closed {args.review}")
    elif args.action == "progress":
        for row in svc.progress(sm, args.review):
            state = " (revoked)" if row["revoked"] else ""
            print(f"{row['reviewer']}  {row['label']:<30} {row['answered']:>5} / {row['total']}{state}")
    elif args.action == "report":
        from pretextlab.review.analysis import analyse, render_text
        from pretextlab.review.localisation import roi_scores
        from pretextlab.review.spec import ReviewSpec

        df = svc.export_answers(sm, args.review)
        with sm() as s:
            stored = ReviewSpec.model_validate(svc.get_review(s, args.review).spec)
        report = analyse(df, scores=roi_scores(stored))
        print(render_text(report))
        if args.json:
            _write(args.json, json.dumps(report, indent=1, allow_nan=False).encode())
        if args.csv:
            _write(args.csv, df.to_csv(index=False).encode())
        if args.parquet:
            from pretextlab.storage.catalog import parquet_bytes

            _write(args.parquet, parquet_bytes(df))
        if stored.study is not None:
            from pretextlab.review.study import write_study_section

            url = write_study_section(sm, args.review)
            print(
                f"\nstudy section: {url}\n(the study report shows it from its next run, or now with "
                "`pretextlab study STUDY.yaml --report`)"
            )
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m pretextlab.review.cli ...``: the same command outside the pretextlab CLI."""

    class _Parser(argparse.ArgumentParser):
        def error(self, message: str) -> None:  # type: ignore[override]
            self.print_usage(sys.stderr)
            self.exit(2, f"{self.prog}: error: {message}\n")

    parser = _Parser(
        prog="pretextlab review",
        description=(__doc__ or "").strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return int(run(args) or 0)
    except UserError as exc:
        print(f"pretextlab: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("pretextlab: interrupted", file=sys.stderr)
        return 130


def token_sha256(token: str) -> str:
    """The value for --admin-token-sha256."""
    return hashlib.sha256(token.encode()).hexdigest()


if __name__ == "__main__":
    sys.exit(main())
