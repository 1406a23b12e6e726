from collections.abc import Mapping
from typing import IO, Any

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

# Spec documents nest five levels deep; anything far deeper is not a submission.
MAX_JSON_DEPTH = 32


def _depth_exceeds(document: Any, limit: int) -> bool:
    stack = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list):
            if depth > limit:
                return True
            stack.extend((item, depth + 1) for item in (value.values() if isinstance(value, dict) else value))
    return False


class BoundedJSONParser(JSONParser):
    """JSON nested too deeply is a client error (400), not a RecursionError (500) here or further on."""

    def parse(
        self, stream: IO[Any], media_type: str | None = None, parser_context: Mapping[str, Any] | None = None
    ) -> Any:
        try:
            document = super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - the document is nested too deeply") from None
        if _depth_exceeds(document, MAX_JSON_DEPTH):
            raise ParseError(f"JSON parse error - the document is nested deeper than {MAX_JSON_DEPTH} levels")
        return document
