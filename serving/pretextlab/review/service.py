"""Review operations on the database: create, invite, revoke, log in, queue, answer, progress, export, close.

Every write is one short transaction. An answer and its history row commit together before the next
case is shown; the answer's submission nonce is unique per reviewer (a database constraint), so a
double-submitted or replayed form can never write twice, even when both copies race.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import random
import shutil
import string
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import bindparam, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session as DbSession
from sqlalchemy.orm import sessionmaker
from sqlalchemy.sql.elements import BindParameter

from pretextlab.core.errors import UserError
from pretextlab.review import models as m
from pretextlab.review.security import PID_RE, hash_token, new_pid, new_token
from pretextlab.review.spec import ReviewSpec

if TYPE_CHECKING:
    import pandas as pd

_sysrand = random.SystemRandom()


class ReviewError(UserError):
    """An organiser request about a review that does not exist (404), is in the wrong state (409) or has a
    bad field (422); ``status`` is the HTTP status the app answers with."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


class AccessError(Exception):
    """A reviewer request that is refused: ``status`` is the HTTP status, ``message`` says why."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


# ----------------------------------------------------------------------------------------- organiser
def create_review(sm: sessionmaker, spec: ReviewSpec, asset_root: str) -> m.Review:
    """Render images and maps under ``asset_root/<random>``, then store the review in one transaction."""
    from pretextlab.review.assets import render_review  # torch + timm: only when a review is created

    pid = new_pid()
    folder = new_pid()
    from pretextlab.storage import fs as sfs

    root = sfs.join(asset_root, folder)
    try:
        rendered = render_review(spec, root)
    except BaseException:
        if not sfs.is_remote(root):
            shutil.rmtree(root, ignore_errors=True)
        raise
    with sm.begin() as s:
        review = m.Review(pid=pid, title=spec.title, status="open", spec=spec.model_dump(mode="json"), asset_root=root)
        s.add(review)
        s.flush()
        encs = [
            m.Encoder(review_id=review.id, position=j, name=e["name"], source=e["source"], objective=e["objective"])
            for j, e in enumerate(rendered.encoders)
        ]
        imgs = [m.Image(review_id=review.id, position=i, **im) for i, im in enumerate(rendered.images)]
        s.add_all(encs + imgs)
        s.flush()
        s.add_all(
            [
                m.MapAsset(image_id=imgs[i].id, encoder_id=encs[j].id, map_type=mt, asset=key)
                for (i, j, mt), key in rendered.maps.items()
            ]
        )
    return review


def get_review(s: DbSession, review_pid: str) -> m.Review:
    review = s.scalar(select(m.Review).where(m.Review.pid == review_pid)) if PID_RE.match(review_pid or "") else None
    if review is None:
        raise ReviewError(f"review {review_pid!r}: no such review", 404)
    return review


def list_reviews(sm: sessionmaker) -> list[m.Review]:
    with sm() as s:
        return list(s.scalars(select(m.Review).order_by(m.Review.created_at)))


def _letters(n: int) -> list[str]:
    letters = list(string.ascii_uppercase[:n])
    _sysrand.shuffle(letters)
    return letters


def invite(sm: sessionmaker, review_pid: str, label: str) -> tuple[m.Reviewer, str]:
    """A reviewer with a personal token (returned once, stored hashed), shuffled letters and a shuffled queue."""
    label = (label or "").strip()
    if not label or len(label) > 200:
        raise ReviewError("label: give the reviewer a name of 1-200 characters")
    token = new_token()
    with sm.begin() as s:
        review = get_review(s, review_pid)
        if review.status != "open":
            raise ReviewError(f"review {review_pid}: closed, no new invites", 409)
        encs = list(s.scalars(select(m.Encoder).where(m.Encoder.review_id == review.id).order_by(m.Encoder.position)))
        imgs = list(s.scalars(select(m.Image).where(m.Image.review_id == review.id).order_by(m.Image.position)))
        letters = dict(zip((str(e.id) for e in encs), _letters(len(encs)), strict=True))
        reviewer = m.Reviewer(
            pid=new_pid(), review_id=review.id, label=label, token_hash=hash_token(token), letters=letters
        )
        s.add(reviewer)
        s.flush()
        map_types = review.spec["map_types"]
        plan: list[tuple[str, int, str, int, int | None]] = [
            ("likert", im.id, mt, e.id, None) for im in imgs for e in encs for mt in map_types
        ]
        if review.spec["questions"].get("pairwise") and len(encs) > 1:
            for im in imgs:
                for mt in map_types:
                    for a, b in itertools.combinations(encs, 2):
                        a, b = (a, b) if _sysrand.random() < 0.5 else (b, a)
                        plan.append(("pairwise", im.id, mt, a.id, b.id))
        _sysrand.shuffle(plan)
        s.add_all(
            [
                m.Case(
                    pid=new_pid(),
                    reviewer_id=reviewer.id,
                    position=k,
                    kind=kind,
                    image_id=img,
                    map_type=mt,
                    encoder_id=ea,
                    encoder_b_id=eb,
                )
                for k, (kind, img, mt, ea, eb) in enumerate(plan)
            ]
        )
    return reviewer, token


def revoke(sm: sessionmaker, review_pid: str, reviewer_pid: str) -> None:
    """Revoke an invite: the link stops working and every session it opened ends now."""
    with sm.begin() as s:
        review = get_review(s, review_pid)
        r = s.scalar(select(m.Reviewer).where(m.Reviewer.pid == reviewer_pid, m.Reviewer.review_id == review.id))
        if r is None:
            raise ReviewError(f"reviewer {reviewer_pid!r}: not a reviewer of review {review_pid}", 404)
        r.revoked_at = m.utcnow()
        s.query(m.Session).filter(m.Session.reviewer_id == r.id).delete()


def close_review(sm: sessionmaker, review_pid: str) -> None:
    """Close: invites expire and reviewer sessions end; answers stay."""
    with sm.begin() as s:
        review = get_review(s, review_pid)
        if review.status == "closed":
            return
        review.status, review.closed_at = "closed", m.utcnow()
        ids = select(m.Reviewer.id).where(m.Reviewer.review_id == review.id)
        s.query(m.Session).filter(m.Session.reviewer_id.in_(ids)).delete(synchronize_session=False)


def progress(sm: sessionmaker, review_pid: str) -> list[dict[str, Any]]:
    with sm() as s:
        review = get_review(s, review_pid)
        rows = []
        for r in s.scalars(select(m.Reviewer).where(m.Reviewer.review_id == review.id).order_by(m.Reviewer.id)):
            total = s.scalar(select(func.count()).select_from(m.Case).where(m.Case.reviewer_id == r.id)) or 0
            done = s.scalar(select(func.count()).select_from(m.Answer).where(m.Answer.reviewer_id == r.id)) or 0
            last = s.scalar(select(func.max(m.Answer.updated_at)).where(m.Answer.reviewer_id == r.id))
            rows.append(
                {
                    "reviewer": r.pid,
                    "label": r.label,
                    "answered": int(done),
                    "total": int(total),
                    "revoked": r.revoked_at is not None,
                    "last_answer": last.isoformat() if last else None,
                }
            )
        return rows


EXPORT_COLUMNS = [
    "review",
    "reviewer",
    "reviewer_label",
    "case",
    "position",
    "kind",
    "image",
    "item_id",
    "modality",
    "label",
    "map_type",
    "encoder",
    "objective",
    "letter",
    "encoder_b",
    "objective_b",
    "letter_b",
    "rating",
    "scale",
    "preference",
    "preferred_encoder",
    "comment",
    "region_x",
    "region_y",
    "version",
    "created_at",
    "updated_at",
]


def export_answers(sm: sessionmaker, review_pid: str) -> pd.DataFrame:
    """One row per answer (latest version), with the unblinded encoder names, for the organiser only."""
    import pandas as pd

    with sm() as s:
        review = get_review(s, review_pid)
        encs = {e.id: e for e in s.scalars(select(m.Encoder).where(m.Encoder.review_id == review.id))}
        imgs = {i.id: i for i in s.scalars(select(m.Image).where(m.Image.review_id == review.id))}
        q = (
            select(m.Answer, m.Case, m.Reviewer)
            .join(m.Case, m.Answer.case_id == m.Case.id)
            .join(m.Reviewer, m.Case.reviewer_id == m.Reviewer.id)
            .where(m.Reviewer.review_id == review.id)
            .order_by(m.Reviewer.id, m.Case.position)
        )
        rows = []
        for a, c, r in s.execute(q).all():
            ea, eb, im = encs[c.encoder_id], encs.get(c.encoder_b_id) if c.encoder_b_id else None, imgs[c.image_id]
            pref = {"a": ea.name, "b": eb.name if eb else None, "equal": "equal"}.get(a.preference or "")
            rows.append(
                {
                    "review": review.pid,
                    "reviewer": r.pid,
                    "reviewer_label": r.label,
                    "case": c.pid,
                    "position": c.position,
                    "kind": c.kind,
                    "image": im.position,
                    "item_id": im.item_id,
                    "modality": im.modality,
                    "label": im.label,
                    "map_type": c.map_type,
                    "encoder": ea.name,
                    "objective": ea.objective,
                    "letter": r.letters.get(str(ea.id)),
                    "encoder_b": eb.name if eb else None,
                    "objective_b": eb.objective if eb else None,
                    "letter_b": r.letters.get(str(eb.id)) if eb else None,
                    "rating": a.rating,
                    "scale": int(review.spec["questions"]["scale"]),
                    "preference": a.preference,
                    "preferred_encoder": pref,
                    "comment": a.comment,
                    "region_x": a.region_x,
                    "region_y": a.region_y,
                    "version": a.version,
                    "created_at": a.created_at.isoformat(),
                    "updated_at": a.updated_at.isoformat(),
                }
            )
    df = pd.DataFrame(rows, columns=EXPORT_COLUMNS)
    df["rating"] = df["rating"].astype("Int64")
    for col in ("region_x", "region_y"):
        df[col] = df[col].astype("Float64")
    return df


def answer_history(sm: sessionmaker, review_pid: str) -> pd.DataFrame:
    """Every version of every answer (the audit trail)."""
    import pandas as pd

    with sm() as s:
        review = get_review(s, review_pid)
        q = (
            select(m.AnswerHistory, m.Case.pid, m.Reviewer.pid)
            .join(m.Answer, m.AnswerHistory.answer_id == m.Answer.id)
            .join(m.Case, m.Answer.case_id == m.Case.id)
            .join(m.Reviewer, m.Case.reviewer_id == m.Reviewer.id)
            .where(m.Reviewer.review_id == review.id)
            .order_by(m.AnswerHistory.id)
        )
        return pd.DataFrame(
            [
                {"reviewer": rp, "case": cp, "version": h.version, **h.values, "written_at": h.written_at.isoformat()}
                for h, cp, rp in s.execute(q).all()
            ]
        )


# ----------------------------------------------------------------------------------------- reviewer
@dataclass
class ReviewerContext:
    """The reviewer behind a session (plain values, detached from the database session)."""

    session_id: int
    csrf: str
    reviewer_id: int
    reviewer_pid: str
    review_id: int
    letters: dict[str, str]
    spec: dict[str, Any]
    asset_root: str


def _reviewer_state(review_status: str, revoked_at: Any, expires_at: Any, now: _dt.datetime) -> None:
    if revoked_at is not None:
        raise AccessError(403, "this invitation was revoked")
    if review_status != "open":
        raise AccessError(410, "this review is closed")
    if expires_at is not None and expires_at <= now:
        raise AccessError(410, "this invitation has expired")


def login(sm: sessionmaker, token: str, hours: float) -> str:
    """Exchange an invite token for a new session token (stored hashed) or raise AccessError."""
    now = m.utcnow()
    with sm.begin() as s:
        r = s.scalar(select(m.Reviewer).where(m.Reviewer.token_hash == hash_token(token)))
        if r is None:
            raise AccessError(403, "this invitation link is not valid")
        _reviewer_state(s.get(m.Review, r.review_id).status, r.revoked_at, r.expires_at, now)
        session_token = new_token()
        s.add(
            m.Session(
                token_hash=hash_token(session_token),
                role="reviewer",
                reviewer_id=r.id,
                csrf=new_token(),
                created_at=now,
                expires_at=now + _dt.timedelta(hours=hours),
            )
        )
    return session_token


def organiser_session(sm: sessionmaker, hours: float) -> str:
    now = m.utcnow()
    token = new_token()
    with sm.begin() as s:
        s.add(
            m.Session(
                token_hash=hash_token(token),
                role="organiser",
                reviewer_id=None,
                csrf=new_token(),
                created_at=now,
                expires_at=now + _dt.timedelta(hours=hours),
            )
        )
    return token


def session_for(sm: sessionmaker, token: str | None, role: str) -> tuple[int, str] | None:
    """(session id, csrf) of a live session of ``role``, or None."""
    if not token:
        return None
    with sm() as s:
        row = s.scalar(select(m.Session).where(m.Session.token_hash == hash_token(token)))
        if row is None or row.role != role or row.expires_at <= m.utcnow():
            return None
        return row.id, row.csrf


def end_session(sm: sessionmaker, token: str | None) -> None:
    if token:
        with sm.begin() as s:
            s.query(m.Session).filter(m.Session.token_hash == hash_token(token)).delete()


# The columns behind a reviewer session, in one query (plain rows: no ORM objects to build per request).
_CONTEXT = (
    select(
        m.Session.id,
        m.Session.csrf,
        m.Session.expires_at,
        m.Reviewer.id,
        m.Reviewer.pid,
        m.Reviewer.letters,
        m.Reviewer.revoked_at,
        m.Reviewer.expires_at,
        m.Review.id,
        m.Review.status,
        m.Review.spec,
        m.Review.asset_root,
    )
    .join(m.Reviewer, m.Session.reviewer_id == m.Reviewer.id)
    .join(m.Review, m.Reviewer.review_id == m.Review.id)
    .where(m.Session.token_hash == bindparam("token_hash"), m.Session.role == "reviewer")
)


def reviewer_context(sm: sessionmaker, token: str | None) -> ReviewerContext:
    """The reviewer of a session cookie, or AccessError (401 no/expired session, 403 revoked, 410 closed)."""
    if not token:
        raise AccessError(401, "no session: open your personal invitation link")
    now = m.utcnow()
    with sm() as s:  # one query: session, reviewer and review together
        row = s.execute(_CONTEXT, {"token_hash": hash_token(token)}).first()
    if row is None or row[2] <= now:
        raise AccessError(401, "your session has ended: open your personal invitation link again")
    sid, csrf, _, rid, rpid, letters, revoked_at, expires_at, review_id, status, spec, asset_root = row
    _reviewer_state(status, revoked_at, expires_at, now)
    return ReviewerContext(sid, csrf, rid, rpid, review_id, dict(letters), spec, asset_root)


_MAP_LABELS = {"attention": "Attention map", "pca": "Feature components map", "similarity": "Similarity map"}


# The statements of the pages every reviewer loads, built once (building one costs more than running it).
_RID: BindParameter[int] = bindparam("rid")
_PID: BindParameter[str] = bindparam("pid")
_CASE_VIEW = (
    select(
        m.Case.reviewer_id,
        m.Case.position,
        m.Case.kind,
        m.Case.map_type,
        m.Case.encoder_id,
        m.Case.encoder_b_id,
        m.Answer.id,
        m.Answer.rating,
        m.Answer.preference,
        m.Answer.comment,
        m.Answer.region_x,
        m.Answer.region_y,
    )
    .outerjoin(m.Answer, (m.Answer.case_id == m.Case.id) & (m.Answer.reviewer_id == _RID))
    .where(m.Case.pid == _PID)
)
_QUEUE_VIEW = select(
    select(func.count()).select_from(m.Case).where(m.Case.reviewer_id == _RID).scalar_subquery(),
    select(func.count()).select_from(m.Answer).where(m.Answer.reviewer_id == _RID).scalar_subquery(),
    *(
        select(m.Case.pid).where(m.Case.reviewer_id == _RID, m.Case.position == bindparam(at)).scalar_subquery()
        for at in ("prev", "next")
    ),
)
_NEXT_CASE = (
    select(m.Case.pid)
    .where(
        m.Case.reviewer_id == _RID,
        m.Case.id.not_in(select(m.Answer.case_id).where(m.Answer.reviewer_id == _RID)),
    )
    .order_by(m.Case.position)
    .limit(1)
)
_SLOT_IMAGE = (
    select(m.Case.reviewer_id, m.Image.asset).join(m.Image, m.Image.id == m.Case.image_id).where(m.Case.pid == _PID)
)
_SLOT_MAP = {
    slot: select(m.Case.reviewer_id, m.MapAsset.asset)
    .outerjoin(
        m.MapAsset,
        (m.MapAsset.image_id == m.Case.image_id)
        & (m.MapAsset.encoder_id == enc)
        & (m.MapAsset.map_type == m.Case.map_type),
    )
    .where(m.Case.pid == _PID)
    for slot, enc in (("map", m.Case.encoder_id), ("map-b", m.Case.encoder_b_id))
}
_SUBMIT_READ = (
    select(
        m.Case.id,
        m.Case.reviewer_id,
        m.Case.kind,
        m.Answer,
        select(m.AnswerHistory.id)
        .where(m.AnswerHistory.reviewer_id == _RID, m.AnswerHistory.nonce == bindparam("nonce"))
        .exists(),
    )
    .outerjoin(m.Answer, (m.Answer.case_id == m.Case.id) & (m.Answer.reviewer_id == _RID))
    .where(m.Case.pid == _PID)
)


def next_case_pid(sm: sessionmaker, ctx: ReviewerContext) -> str | None:
    """The first case of the queue without an answer (where a reviewer resumes), or None when done."""
    with sm() as s:
        return s.scalar(_NEXT_CASE, {"rid": ctx.reviewer_id})


def case_view(sm: sessionmaker, ctx: ReviewerContext, case_pid: str) -> dict[str, Any]:
    """Everything the rating page shows: blinded letters, slot URLs, progress, neighbours, the current answer.

    Two queries: the case with its answer, then the queue's size, the answers so far and the neighbours.
    """
    if not PID_RE.match(case_pid or ""):
        raise AccessError(404, "no such case in your queue")
    with sm() as s:
        c = s.execute(_CASE_VIEW, {"pid": case_pid, "rid": ctx.reviewer_id}).first()
        if c is None or c.reviewer_id != ctx.reviewer_id:  # another reviewer's case looks exactly like no case
            raise AccessError(404, "no such case in your queue")
        total, answered, prev_pid, next_pid = s.execute(
            _QUEUE_VIEW, {"rid": ctx.reviewer_id, "prev": c.position - 1, "next": c.position + 1}
        ).one()
    return {
        "pid": case_pid,
        "kind": c.kind,
        "position": c.position + 1,
        "total": int(total or 0),
        "answered": int(answered or 0),
        "prev": prev_pid,
        "next": next_pid,
        "letter": ctx.letters[str(c.encoder_id)],
        "letter_b": ctx.letters[str(c.encoder_b_id)] if c.encoder_b_id else None,
        "map_label": _MAP_LABELS[c.map_type],
        "answer": None
        if c.id is None
        else {
            "rating": c.rating,
            "preference": c.preference,
            "comment": c.comment,
            "region_x": c.region_x,
            "region_y": c.region_y,
        },
    }


def slot_asset(sm: sessionmaker, ctx: ReviewerContext, case_pid: str, slot: str) -> str:
    """The asset key behind slot ``image`` / ``map`` / ``map-b`` of one of the reviewer's own cases."""
    stmt = _SLOT_IMAGE if slot == "image" else _SLOT_MAP.get(slot)
    if stmt is None or not PID_RE.match(case_pid or ""):
        raise AccessError(404, "no such image")
    with sm() as s:
        row = s.execute(stmt, {"pid": case_pid}).first()
    if row is None or row.reviewer_id != ctx.reviewer_id:  # another reviewer's case looks exactly like no case
        raise AccessError(404, "no such case in your queue")
    if row.asset is None:  # map-b of a case with one map
        raise AccessError(404, "no such image")
    return row.asset


def _clean_answer(ctx: ReviewerContext, kind: str, form: dict[str, Any]) -> dict[str, Any]:
    q = ctx.spec["questions"]
    values: dict[str, Any] = {"rating": None, "preference": None, "comment": None, "region_x": None, "region_y": None}
    if kind == "likert":
        try:
            rating = int(str(form.get("rating", "")).strip())
        except ValueError:
            raise AccessError(422, f"rating: choose a value from 1 to {q['scale']}") from None
        if not 1 <= rating <= int(q["scale"]):
            raise AccessError(422, f"rating: choose a value from 1 to {q['scale']}")
        values["rating"] = rating
    else:
        pref = str(form.get("preference", "")).strip()
        if pref not in ("a", "b", "equal"):
            raise AccessError(422, "preference: choose the left map, the right map or 'equal'")
        values["preference"] = pref
    comment = str(form.get("comment") or "").strip()
    if comment:
        if not q.get("comment"):
            raise AccessError(422, "comment: this review takes no comments")
        if len(comment) > 2000:
            raise AccessError(422, "comment: at most 2000 characters")
        values["comment"] = comment
    rx, ry = str(form.get("region_x") or "").strip(), str(form.get("region_y") or "").strip()
    if rx or ry:
        if not q.get("region"):
            raise AccessError(422, "region: this review asks for no region")
        try:
            x, y = float(rx), float(ry)
        except ValueError:
            raise AccessError(422, "region: region_x and region_y must both be numbers in [0, 1]") from None
        if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
            raise AccessError(422, "region: region_x and region_y must both be in [0, 1]")
        values["region_x"], values["region_y"] = x, y
    return values


def submit_answer(
    sm: sessionmaker, ctx: ReviewerContext, case_pid: str, form: dict[str, Any]
) -> tuple[str, str | None]:
    """Store one answer in its own transaction: ("created" | "updated" | "unchanged", the pid of the first
    unanswered case of the queue, where the reviewer goes next, or None when every case is answered).

    Raises AccessError 409 when this submission (its nonce) was already stored: a double submit or a replay.
    """
    nonce = str(form.get("nonce") or "")
    if not PID_RE.match(nonce):
        raise AccessError(400, "nonce: missing or malformed submission id (reload the page)")
    try:
        with sm.begin() as s:
            # one read: the case, its answer (if any) and whether this submission was already stored
            found = (
                s.execute(_SUBMIT_READ, {"pid": case_pid, "rid": ctx.reviewer_id, "nonce": nonce}).first()
                if PID_RE.match(case_pid or "")
                else None
            )
            if found is None or found.reviewer_id != ctx.reviewer_id:  # another reviewer's case: no case
                raise AccessError(404, "no such case in your queue")
            case_id, _, kind, a, already = found
            values = _clean_answer(ctx, kind, form)
            if already or (a is not None and a.nonce == nonce):
                raise AccessError(409, "this answer was already recorded")
            now = m.utcnow()
            if a is None:
                a = m.Answer(
                    reviewer_id=ctx.reviewer_id,
                    case_id=case_id,
                    nonce=nonce,
                    version=1,
                    created_at=now,
                    updated_at=now,
                    **values,
                )
                s.add(a)
                status = "created"
            else:
                old = {k: getattr(a, k) for k in values}
                if old == values:
                    status = "unchanged"
                else:
                    for k, v in values.items():
                        setattr(a, k, v)
                    a.version, a.nonce, a.updated_at = a.version + 1, nonce, now
                    status = "updated"
            s.flush()
            if status != "unchanged":
                s.add(
                    m.AnswerHistory(
                        answer_id=a.id,
                        reviewer_id=ctx.reviewer_id,
                        version=a.version,
                        nonce=nonce,
                        values=values,
                        written_at=now,
                    )
                )
    except IntegrityError:  # the same form raced itself: the other copy won and is stored once
        raise AccessError(409, "this answer was already recorded") from None
    return status, next_case_pid(sm, ctx)
