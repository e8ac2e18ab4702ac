"""Retry and cancel from the console: only with ``--allow-actions``, only from its own pages,
always in history with the signed-in user as actor.

Acting on every job that matches a filter takes two steps, as ``outbox jobs retry`` does: the
console first shows how many match and how many of them the action takes, and acts only when
that is confirmed, and then only on jobs that were there when it was shown (ids up to the
highest one counted): jobs that arrived since are left alone.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING
from uuid import UUID

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, QueryParams
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from outbox import operator
from outbox.console.guard import TOKEN_FIELD, TOKEN_HEADER, actor, forged
from outbox.console.pages import job_filter
from outbox.errors import InvalidJob

if TYPE_CHECKING:
    from outbox.console.app import Console

#: What each action is called, what it does, and which states it takes.
VERBS: dict[str, tuple[str, Callable[..., operator.Action], tuple[str, ...]]] = {
    "retry": ("revived", operator.revive, operator.REVIVABLE),
    "cancel": ("cancelled", operator.cancel, operator.CANCELLABLE),
}
_FILTER_FIELDS = ("state", "queue", "type", "key", "since")


def routes(console: Console) -> list[Route]:
    async def checked(request: Request) -> FormData:
        """The form of an allowed action from this console's own page, or a refusal."""
        if not console.config.allow_actions:
            raise HTTPException(
                403, "This console is read-only: actions need `outbox ui --allow-actions`."
            )
        form = await request.form()
        sent = form.get(TOKEN_FIELD) or request.headers.get(TOKEN_HEADER)
        why = forged(request, console.config.secret, sent if isinstance(sent, str) else None)
        if why is not None:
            raise HTTPException(403, f"Refused as a cross-site request: {why}.")
        return form

    async def on_job(request: Request) -> Response:
        name = action_name(request)
        form = await checked(request)
        verb, action, _ = VERBS[name]
        uuid: UUID = request.path_params["uuid"]
        reason = _reason(form)

        def act() -> operator.Action:
            with console.acting() as connection:
                done = action(connection, [uuid], actor=actor(request), reason=reason)
                connection.commit()
                return done

        done = await run_in_threadpool(act)
        return console.render(
            request, "action.html", title=f"{verb.capitalize()}", verb=verb,
            done=done, matched=None, back=f"{console.config.base_path}/jobs/{uuid}",
        )  # fmt: skip

    async def on_filter(request: Request) -> Response:
        name = action_name(request)
        form = await checked(request)
        verb, action, eligible = VERBS[name]
        params = QueryParams([(k, v) for k, v in form.multi_items() if k in _FILTER_FIELDS])
        where = job_filter(params)
        if where.empty:
            raise InvalidJob("choose jobs with a filter first: the console never acts on all")
        back = f"{console.config.base_path}/jobs?{params}"
        upto, reason, confirmed = form.get("upto"), _reason(form), form.get("confirm") == "yes"
        sent = form.get("counted")
        if confirmed and not (isinstance(upto, str) and upto.isdigit() and isinstance(sent, str)):
            # without them, jobs the confirmation page never counted could be taken
            raise InvalidJob(
                "the confirmation does not say which jobs it counted (upto and counted): "
                "confirm from the console's page"
            )

        def act() -> Response:
            with console.acting() as connection:
                matched = operator.list_jobs(connection, where, limit=None)
                connection.rollback()
                if isinstance(upto, str) and upto.isdigit():
                    matched = [row for row in matched if row["id"] <= int(upto)]
                chosen = [row["uuid"] for row in matched if row["state"] in eligible]
                others = Counter(row["state"] for row in matched if row["state"] not in eligible)
                digest = counted(console.config.secret, name, chosen)
                changed = confirmed and not hmac.compare_digest(digest, str(sent))
                if not confirmed or changed or not chosen:
                    return console.render(
                        request, "confirm.html", title=f"Confirm: {verb}",
                        verb=verb, action=name, matched=len(matched),
                        chosen=len(chosen), others=dict(others), eligible=eligible,
                        upto=max((row["id"] for row in matched), default=0), counted=digest,
                        changed=changed, fields=list(params.multi_items()), back=back,
                    )  # fmt: skip
                done = operator.act_in_batches(
                    connection, action, chosen, actor=actor(request), reason=reason,
                    prepare=console.limit,
                )  # fmt: skip
                return console.render(
                    request, "action.html", title=verb.capitalize(), verb=verb, done=done,
                    matched=len(matched), back=back,
                )  # fmt: skip

        return await run_in_threadpool(act)

    # one route per verb, not a path parameter: "/jobs/{action}" would also match every
    # malformed job uuid, and answer a GET of /jobs/not-a-uuid with 405 instead of 404
    return [
        route
        for name in VERBS
        for route in (
            Route(f"/jobs/{{uuid:uuid}}/{name}", on_job, methods=["POST"], name=f"{name}_job"),
            Route(f"/jobs/{name}", on_filter, methods=["POST"], name=f"{name}_filter"),
        )
    ]


def counted(secret: bytes, action: str, uuids: Sequence[UUID]) -> str:
    """What a confirmation page counted, signed: the action acts only if the jobs it would
    take now are exactly these (a job that changed state, or one with a lower id committed
    since, makes the console count again and ask again)."""
    listed = ",".join(sorted(str(u) for u in uuids))
    return hmac.new(secret, f"counted:{action}:{listed}".encode(), hashlib.sha256).hexdigest()


def _reason(form: FormData) -> str | None:
    reason = form.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        return None
    if len(reason) > 1000:
        raise InvalidJob("the reason is longer than 1000 characters")
    if "\x00" in reason:
        raise InvalidJob("the reason holds a NUL character, which history cannot keep")
    return reason.strip()


def action_name(request: Request) -> str:
    """The verb a route was made for: the last part of its path."""
    name = request.url.path.rstrip("/").rpartition("/")[2]
    if name not in VERBS:  # pragma: no cover - only the verbs have routes
        raise HTTPException(404, f"No action {name!r}: the console retries and cancels.")
    return name
