"""The OpenAPI document describes the error answers too: every error has the one body of api/errors.py.

Each operation documents the errors it can give: 401 (no or a bad token) and 403 (a role that may not do it)
everywhere, 400 where it reads input (a body or filters), 404 where it names an object (a path parameter) or
pages a list (a page past the end), 415 where it reads a body. Operations that can conflict
with the state they act on add 409 themselves (`responses={409: CONFLICT}`). Every operation can also answer
406 (an Accept header that excludes JSON) and 503 with a Retry-After header (the database unavailable for a
moment: api/errors.py), which `retry_after_header` adds to the document.
"""

from typing import Any

from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers

# Object ids in URLs: digits only, so `/change-requests/null/approve/` matches no route (a 404) instead of
# reaching a view that reads the id as a number. Documented as an integer (ids are 64-bit).
ID_PATTERN = "[0-9]+"
ID_SCHEMA = {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}
# Component keys and team slugs, as the catalog's rules allow them.
COMPONENT_KEY_PATTERN = "[a-z][a-z0-9_]{0,15}"
TEAM_SLUG_PATTERN = "[a-z][a-z0-9-]{0,62}"


class ProblemSerializer(serializers.Serializer[Any]):
    path = serializers.CharField(help_text="Where: `specs[2].features[17].name`, a field, or `request`.")
    rule = serializers.CharField(help_text="The rule that failed: `required`, `pattern`, `duplicate_name`, ...")
    detail = serializers.CharField()


class ErrorSerializer(serializers.Serializer[Any]):
    """The body of every error; some add context (a 409 on approval: `base_revision`, `current_revision`)."""

    code = serializers.CharField(help_text="`invalid`, `invalid_specs`, `not_found`, `permission_denied`, ...")
    message = serializers.CharField()
    # A field named like Serializer.errors: the serializer's metaclass takes it out of the class attributes.
    errors = ProblemSerializer(many=True)  # type: ignore[assignment]


def error(description: str) -> OpenApiResponse:
    return OpenApiResponse(ErrorSerializer, description=description)


INVALID = error("The request is invalid: every problem, located.")
UNAUTHENTICATED = error("No token, or an invalid, expired or revoked one.")
FORBIDDEN = error("The caller's role does not allow this.")
NOT_FOUND = error("No such object, or a page past the last one.")
CONFLICT = error("The object's state does not allow this now (the reason says what to do).")
UNSUPPORTED_MEDIA_TYPE = error("The body is not of a media type the operation reads.")
NOT_ACCEPTABLE = error("The Accept header excludes JSON, the only media type the API answers in.")
UNAVAILABLE = error("The database is unavailable for a moment (restarting, failing over): retry after Retry-After.")
RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying.",
        "schema": {"type": "integer", "minimum": 0},
    }
}


def retry_after_header(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """drf-spectacular postprocessing hook: every 503 answer carries a Retry-After header."""
    for path in result.get("paths", {}).values():
        for operation in path.values():
            answer = operation.get("responses", {}).get("503") if isinstance(operation, dict) else None
            if answer is not None:
                answer["headers"] = dict(RETRY_AFTER)
    return result


class ConsoleAutoSchema(AutoSchema):
    def _resolve_path_parameters(self, variables: Any) -> list[dict[str, Any]]:
        parameters: list[dict[str, Any]] = super()._resolve_path_parameters(variables)  # type: ignore[no-untyped-call]
        for parameter in parameters:
            if parameter["schema"].get("pattern") == f"^{ID_PATTERN}$":
                parameter["schema"] = dict(ID_SCHEMA)
        return parameters

    def _get_response_bodies(self, direction: Any = "response") -> dict[str, Any]:
        responses: dict[str, Any] = super()._get_response_bodies(direction)
        if direction != "response":
            return responses
        errors = {"401": UNAUTHENTICATED, "403": FORBIDDEN, "406": NOT_ACCEPTABLE, "503": UNAVAILABLE}
        reads_body = self.method in ("POST", "PUT", "PATCH") and self.get_request_serializer() is not None
        parameters = self._get_parameters()
        where = {parameter["in"] for parameter in parameters}
        filters = {p["name"] for p in parameters if p["in"] == "query"} - {"page", "page_size"}
        if reads_body or filters:
            errors["400"] = INVALID
        if reads_body:
            errors["415"] = UNSUPPORTED_MEDIA_TYPE
        if "path" in where or self._is_list_view():
            errors["404"] = NOT_FOUND
        for code, response in errors.items():
            if code not in responses:
                responses[code] = self._get_response_for_code(  # type: ignore[no-untyped-call]
                    response, code, direction=direction
                )
        return dict(sorted(responses.items()))
