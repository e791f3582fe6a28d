"""A check of our own beside schemathesis' built-in ones (loaded through SCHEMATHESIS_HOOKS).

`positive_data_acceptance` is configured to let a schema-valid request be refused with the
statuses of our domain refusals (422 `invalid_phone`, `invalid_code`, 409 `verification_locked`,
...), because whether a number exists or a code is right is no property of the request's shape.
This check takes back what that allows too much: a schema-valid request must never be refused
as *malformed* (`invalid_request`, `malformed_json`, `invalid_query`, `unsupported_media_type`).
If it is, the document promised a shape the service does not accept.

Exempt are the fields whose rule spans other fields or the brand, documented in their schema:
`amount` (decimal places depend on the currency), `phone` (required unless the brand has a
customer directory) and `callback_url` (https to a public host, the brand's allow-list).
"""
import schemathesis

MALFORMED = {"invalid_request", "malformed_json", "invalid_query", "unsupported_media_type"}
CROSS_FIELD = {"amount", "phone", "callback_url"}
PREFIX = "urn:orderguard:problem:"


@schemathesis.check
def schema_valid_requests_are_never_refused_as_malformed(ctx, response, case):
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return None
    if response.status_code < 400 or "problem+json" not in response.headers.get(
        "content-type", [""]
    )[0]:
        return None
    problem = response.json()
    cause = str(problem.get("type", "")).removeprefix(PREFIX)
    if cause in MALFORMED and problem.get("field") not in CROSS_FIELD:
        raise AssertionError(
            f"a schema-valid request was refused as {cause}: {problem.get('detail')}"
        )
    return None
