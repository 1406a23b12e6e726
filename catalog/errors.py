from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Problem:
    """One located problem in a submission: `specs[2].features[17].name`, the rule that failed, and why."""

    path: str
    rule: str
    detail: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


class ApplicationError(Exception):
    """The one error type services raise; api/errors.py turns it into the common error body."""

    status = 400
    code = "invalid"

    def __init__(self, message: str, *, problems: list[Problem] | None = None, extra: dict[str, Any] | None = None):
        super().__init__(message)
        self.message = message
        self.problems = problems or []
        self.extra = extra or {}


class SpecValidationError(ApplicationError):
    status = 400
    code = "invalid_specs"


class PermissionDenied(ApplicationError):
    status = 403
    code = "permission_denied"


class NotFound(ApplicationError):
    status = 404
    code = "not_found"


class Conflict(ApplicationError):
    status = 409
    code = "conflict"
