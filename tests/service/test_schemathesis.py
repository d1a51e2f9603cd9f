"""Property-based tests of the HTTP API against its own ``/openapi.json`` (schemathesis).

The app runs in process on the test database and the shared Redis (under a key prefix
of its own, removed afterwards), with an admin token, so every operation is reachable.
schemathesis's ASGI transport runs the app's lifespan itself (once, at the first
request: the schema's own download) and its pytest plugin ends it when the test ends.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any, ParamSpec, cast

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.generation.stateful import APIStateMachine
from schemathesis.python import asgi

from service.app import create_app
from service.config import Settings

P = ParamSpec("P")
Case = schemathesis.Case[Any]

TOKEN = f"schemathesis-{uuid.uuid4().hex}"
MAX_EXAMPLES = 50
"""Examples per operation in the fuzzing phase (the coverage phase adds its own)."""
STATEFUL_EXAMPLES = 40
STATEFUL_STEPS = 8
_VALID_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")

HYPOTHESIS = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,  # nothing written into the checkout
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

# schemathesis's defaults for these two checks, which some operations extend below.
ACCEPTED: list[int | str] = ["2xx", "3xx", 401, 403, 404, 409, 429, "5xx"]
# A body over the size limit is refused (413) before it is parsed, valid or not: the
# schema cannot express a byte limit, so generated bodies of either kind may exceed it.
REJECTED: list[int | str] = [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429, "5xx"]
CONFIG: dict[str, Any] = {
    "auth": {"openapi": {"admin": {"bearer": TOKEN}}},
    "generation": {"allow-x00": False},
    "checks": {"negative_data_rejection": {"expected-statuses": REJECTED}},
    # The stateful test follows the document's own links, not links schemathesis infers.
    "phases": {"stateful": {"inference": {"algorithms": []}}},
    "operations": [
        {
            # A well-formed condition that does not hold is answered 412, as it should be;
            # so is an If-Match value that is not an entity tag at all (it cannot match).
            "include-operation-id": ["putResult", "deleteResult"],
            "checks": {
                "positive_data_acceptance": {"expected-statuses": [*ACCEPTED, 412, 413]},
                "negative_data_rejection": {"expected-statuses": [*REJECTED, 412]},
            },
        },
        {
            # Table names are the database's own, known only at run time: others are 422.
            "include-operation-id": "maintainDatabase",
            "checks": {"positive_data_acceptance": {"expected-statuses": [*ACCEPTED, 413, 422]}},
        },
    ],
}


@pytest.fixture
def api_schema(pg_url: str, redis_url: str, prefix: str) -> Iterator[schemathesis.BaseSchema]:
    """The served description, bound to a fresh app (its lifespan started by the load)."""
    app = create_app(
        Settings(database_url=pg_url, redis_url=redis_url, cache_prefix=prefix, admin_token=TOKEN)
    )
    config = schemathesis.Config.from_dict(CONFIG)
    try:
        yield schemathesis.openapi.from_asgi("/openapi.json", app, config=config)
    finally:
        # The plugin ends it too, but before the prefix's keys are removed, whatever the order.
        asgi.shutdown_lifespans()


def _parametrize(
    schema: Any,
) -> Callable[[Callable[P, None]], Callable[P, None]]:
    """``schema.parametrize()``, typed (schemathesis's decorator is not)."""
    return cast(Callable[[Callable[P, None]], Callable[P, None]], schema.parametrize())


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request: pytest.FixtureRequest) -> None:
    """schemathesis 4.32's ``from_fixture`` renames the test through ``node._nodeid``,
    which pytest 9.2 no longer has: give it one (it only labels the subtests)."""
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


schema = schemathesis.pytest.from_fixture("api_schema")


@_parametrize(schema)
@HYPOTHESIS
def test_every_operation_conforms(case: Case) -> None:
    """No 5xx; every status, content type, header and body as documented; every check."""
    response = case.call_and_validate()
    if response.status_code >= 400:
        assert response.headers["content-type"] == ["application/problem+json"]


def _scope_ids(machine: type[APIStateMachine]) -> type[APIStateMachine]:
    """``machine``, with the ids of each scenario made its own.

    Hypothesis requires a scenario to behave the same whenever its choices are replayed,
    so a PUT must not find what an earlier scenario (or test) left under the same id:
    a valid id a scenario draws gets a prefix of that scenario's (cut to 128 characters);
    ids that came through a link already have it, and invalid ids are left invalid.
    """

    prefix = [""]  # of the scenario running now (scenarios run one after the other)

    def setup(self: APIStateMachine) -> None:
        prefix[0] = f"sf{uuid.uuid4().hex[:10]}-"

    def before_call(self: APIStateMachine, case: Case) -> None:
        drawn = (case.path_parameters or {}).get("analysis_id")
        if (
            isinstance(drawn, str)
            and _VALID_ID.fullmatch(drawn)
            and drawn not in (".", "..")
            and not drawn.startswith(prefix[0])
        ):
            scoped = (prefix[0] + drawn)[:128]
            case.path_parameters = {**case.path_parameters, "analysis_id": scoped}

    return cast(
        type[APIStateMachine],
        type("ScopedWorkflow", (machine,), {"setup": setup, "before_call": before_call}),
    )


def test_stateful_links(api_schema: schemathesis.BaseSchema) -> None:
    """PUT, then through the document's links: GET (and revalidate: 304), HEAD,
    a conditional replace (If-Match: the ETag) and a conditional DELETE; every check."""
    machine = _scope_ids(api_schema.as_state_machine())
    machine.run(
        settings=settings(
            HYPOTHESIS,
            max_examples=STATEFUL_EXAMPLES,
            stateful_step_count=STATEFUL_STEPS,
            phases=[Phase.generate],  # as schemathesis runs state machines: no shrinking
        )
    )
