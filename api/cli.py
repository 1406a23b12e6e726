"""`fcc`: the command-line client CI uses to plan and submit catalog spec changes.

It talks to a running console over the REST API only, so it must not import Django: CI machines install
the package but run no server.

Exit codes (docs/ci/README.md):
  0   success (the plan was printed; for submit, the change request was created or there was nothing to do)
  1   the specs are invalid: a file is missing or does not parse, or the console rejected them
  2   --fail-on-breaking was given and the plan has a breaking change
  3   the console could not be used: connection failure, timeout, bad token, permission, server error
  64  usage error: a bad option, or no URL or token given (the EX_USAGE of sysexits.h)
"""

import argparse
import datetime
import json
import os
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, NoReturn

import requests
import yaml

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_BREAKING = 2
EXIT_UNAVAILABLE = 3
EXIT_USAGE = 64

DEFAULT_TIMEOUT_SECONDS = 30.0
API_PREFIX = "/api/v1"


class UsageError(Exception):
    """A bad command line; main() prints it with the usage and exits 64, never argparse's 2 (that means breaking)."""


class SpecFileError(Exception):
    """A spec file that cannot be read or parsed; exit 1."""


class ConsoleError(Exception):
    """The console could not be used (unreachable, auth, server error); exit 3."""


class InvalidSpecs(Exception):
    """The console rejected the submission with located problems; exit 1."""

    def __init__(self, message: str, problems: list[dict[str, str]]) -> None:
        super().__init__(message)
        self.message = message
        self.problems = problems


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        raise UsageError(f"{self.prog}: error: {message}")


def _version() -> str:
    try:
        return metadata.version("feature-catalog-console")
    except metadata.PackageNotFoundError:
        return "unknown"


# ---------------------------------------------------------------------------------------------------------
# Spec files


def _spec_paths(paths: Sequence[str]) -> list[Path]:
    """Files as given; directories expand to their *.yaml files in name order (as the console's loader does)."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.glob("*.yaml") if p.is_file())
            if not found:
                raise SpecFileError(f"{path}: the directory has no *.yaml spec files")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise SpecFileError(f"{path}: no such file or directory")
    # The same file named twice (a directory and one of its files) would be one component submitted twice.
    unique: dict[Path, Path] = {}
    for file in files:
        unique.setdefault(file.resolve(), file)
    return list(unique.values())


def _non_json_value(value: Any, where: str) -> str | None:
    """The location of the first value JSON cannot carry (YAML turns an unquoted 2024-01-01 into a date)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{where}: key {key!r} is not a string"
            found = _non_json_value(item, f"{where}.{key}" if where else key)
            if found:
                return found
        return None
    if isinstance(value, list):
        for i, item in enumerate(value):
            found = _non_json_value(item, f"{where}[{i}]")
            if found:
                return found
        return None
    if value is None or isinstance(value, str | bool | int | float):
        return None
    if isinstance(value, datetime.date):
        return f"{where}: {value} was read as a date; quote it to make it a string"
    return f"{where}: a {type(value).__name__} value is not allowed in a spec"


def load_specs(paths: Sequence[str]) -> tuple[list[Path], list[dict[str, Any]]]:
    """Each file is one spec document (one component)."""
    files = _spec_paths(paths)
    documents: list[dict[str, Any]] = []
    for file in files:
        try:
            # From the open file, so YAML's error marks name it.
            with file.open(encoding="utf-8") as handle:
                document = yaml.safe_load(handle)
        except yaml.YAMLError as exc:
            raise SpecFileError(f"{file}: not valid YAML: {exc}") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise SpecFileError(f"{file}: cannot read the file: {exc}") from exc
        if document is None:
            raise SpecFileError(f"{file}: the file is empty; a spec file holds one component spec")
        if not isinstance(document, dict):
            kind = type(document).__name__
            raise SpecFileError(
                f"{file}: a spec file holds one mapping (component, entity_type, owner, features), not a {kind}"
            )
        problem = _non_json_value(document, "")
        if problem:
            raise SpecFileError(f"{file}: {problem}")
        documents.append(document)
    return files, documents


# ---------------------------------------------------------------------------------------------------------
# The console


class Console:
    def __init__(self, *, url: str, token: str, timeout: float) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        self.session.headers.update(
            {"Authorization": f"Token {token}", "Accept": "application/json", "User-Agent": f"fcc/{_version()}"}
        )

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        endpoint = f"{self.url}{API_PREFIX}{path}"
        try:
            response = self.session.post(endpoint, json=body, timeout=self.timeout, allow_redirects=False)
        except requests.Timeout as exc:
            raise ConsoleError(f"no answer from {endpoint} within {self.timeout:g} s") from exc
        except requests.ConnectionError as exc:
            raise ConsoleError(f"cannot reach the console at {self.url}: {_reason(exc)}") from exc
        except requests.RequestException as exc:
            raise ConsoleError(f"request to {endpoint} failed: {exc}") from exc
        return self._body(response, endpoint)

    def _body(self, response: requests.Response, endpoint: str) -> dict[str, Any]:
        status = response.status_code
        if 300 <= status < 400:
            # Never follow: a redirected POST becomes a GET, and the token would go wherever Location points.
            location = response.headers.get("Location", "?")
            raise ConsoleError(f"{endpoint} redirects (HTTP {status}) to {location}; pass the console's final URL")
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            if status >= 500:
                raise ConsoleError(f"the console failed with HTTP {status} at {endpoint}; see its logs")
            kind = response.headers.get("Content-Type", "no content type")
            raise ConsoleError(
                f"unexpected HTTP {status} ({kind}) from {endpoint}; is {self.url} the console's base URL?"
            )
        if status in (200, 201):
            return data
        message = str(data.get("message") or data.get("detail") or "")
        if status == 400 and isinstance(data.get("errors"), list):
            problems = [p for p in data["errors"] if isinstance(p, dict)]
            raise InvalidSpecs(
                message or "the console rejected the specs", [{k: str(v) for k, v in p.items()} for p in problems]
            )
        if status == 401:
            raise ConsoleError(f"the console rejected the token (HTTP 401): {message}; check FCC_TOKEN")
        if status == 403:
            raise ConsoleError(f"the token's user may not do this (HTTP 403): {message}")
        if status == 404:
            raise ConsoleError(f"not found (HTTP 404) at {endpoint}: {message}")
        if status == 409:
            raise ConsoleError(f"conflict (HTTP 409): {message}; plan again and retry")
        raise ConsoleError(f"the console answered HTTP {status} at {endpoint}: {message or 'no message'}")


def _reason(exc: requests.ConnectionError) -> str:
    # requests nests the cause (urllib3 MaxRetryError -> NewConnectionError); its last line is the readable bit.
    text = str(exc.args[0]) if exc.args else str(exc)
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    if reason is not None:
        text = str(reason)
    return text.rsplit(": ", 1)[-1].rstrip(")'\"") or text


# ---------------------------------------------------------------------------------------------------------
# Output


def _problem_line(problem: dict[str, str], files: Sequence[Path]) -> str:
    path = problem.get("path", "request")
    detail = problem.get("detail", "")
    rule = problem.get("rule", "invalid")
    # Some details already start with their path; do not say it twice.
    detail = detail.removeprefix(f"{path}: ")
    line = f"{path}: {detail} [{rule}]"
    if path.startswith("specs["):
        index = path[len("specs[") :].split("]", 1)[0]
        if index.isdigit() and int(index) < len(files):
            line += f" (in {files[int(index)]})"
    return line


def _print_invalid(error: InvalidSpecs, files: Sequence[Path]) -> None:
    print(f"error: {error.message}", file=sys.stderr)
    for problem in error.problems:
        print(f"  {_problem_line(problem, files)}", file=sys.stderr)


def _plan_of(body: dict[str, Any]) -> dict[str, Any]:
    plan = body.get("plan")
    if not isinstance(plan, dict) or not isinstance(plan.get("is_breaking"), bool):
        raise ConsoleError("the console's answer has no plan; is the client older than the console?")
    return plan


# ---------------------------------------------------------------------------------------------------------
# Commands


def _cmd_plan(args: argparse.Namespace, console: Console, files: list[Path], specs: list[dict[str, Any]]) -> int:
    body = console.post("/change-requests/plan/", {"environment": args.env, "specs": specs})
    plan = _plan_of(body)
    print(json.dumps(body, indent=2, sort_keys=True) if args.json else str(body.get("text", "")))
    if args.fail_on_breaking and plan["is_breaking"]:
        print("error: the plan has breaking changes (--fail-on-breaking)", file=sys.stderr)
        return EXIT_BREAKING
    return EXIT_OK


def _cmd_submit(args: argparse.Namespace, console: Console, files: list[Path], specs: list[dict[str, Any]]) -> int:
    if args.fail_on_breaking:
        # Plan first: a breaking change is refused before anything is written.
        planned = console.post("/change-requests/plan/", {"environment": args.env, "specs": specs})
        if _plan_of(planned)["is_breaking"]:
            print(json.dumps(planned, indent=2, sort_keys=True) if args.json else str(planned.get("text", "")))
            print("error: the plan has breaking changes (--fail-on-breaking); nothing was submitted", file=sys.stderr)
            return EXIT_BREAKING
    body = {"environment": args.env, "title": args.title, "description": args.description, "specs": specs}
    result = console.post("/change-requests/", body)
    plan = _plan_of(result)
    change_request = result.get("change_request")
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print(str(result.get("text", "")))
        if isinstance(change_request, dict):
            cr_id = change_request.get("id")
            state = change_request.get("state", "?")
            print(f"Change request {cr_id} ({state}): {console.url}{API_PREFIX}/change-requests/{cr_id}/")
        else:
            print("No changes: nothing was submitted.")
    if args.fail_on_breaking and plan["is_breaking"]:
        # The environment moved between the plan and the submission: the change request exists, but say so.
        print("error: the submitted plan has breaking changes (--fail-on-breaking)", file=sys.stderr)
        return EXIT_BREAKING
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="fcc",
        description="Plan and submit Feature Catalog Console spec changes (for CI).",
        epilog="Exit codes: 0 ok, 1 invalid specs, 2 breaking (with --fail-on-breaking), "
        "3 console unreachable/auth/server error, 64 usage error.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    common = _Parser(add_help=False)
    common.add_argument("--url", default=os.environ.get("FCC_URL"), help="console base URL (default: $FCC_URL)")
    common.add_argument("--token", default=os.environ.get("FCC_TOKEN"), help="API token (default: $FCC_TOKEN)")
    common.add_argument("--env", required=True, help="environment to plan against: dev, staging or prod")
    common.add_argument("--fail-on-breaking", action="store_true", help="exit 2 when the plan has a breaking change")
    common.add_argument("--json", action="store_true", help="print the console's JSON answer instead of the text")
    common.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT_SECONDS, help="seconds to wait for the console (default: 30)"
    )
    common.add_argument("paths", nargs="+", metavar="PATH", help="spec files, or directories of *.yaml spec files")

    plan = commands.add_parser("plan", parents=[common], help="validate specs and print the plan; writes nothing")
    plan.set_defaults(handler=_cmd_plan)
    submit = commands.add_parser("submit", parents=[common], help="submit specs as a change request")
    submit.add_argument("--title", default="", help="change request title (default: chosen by the console)")
    submit.add_argument("--description", default="", help="change request description")
    submit.set_defaults(handler=_cmd_submit)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if not args.url:
            raise UsageError("fcc: error: no console URL: pass --url or set FCC_URL")
        if not args.url.startswith(("http://", "https://")):
            raise UsageError(f"fcc: error: --url must start with http:// or https://, got {args.url!r}")
        if not args.token:
            raise UsageError("fcc: error: no API token: pass --token or set FCC_TOKEN")
        if args.timeout <= 0:
            raise UsageError("fcc: error: --timeout must be positive")
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as exc:  # --help and --version
        return exc.code if isinstance(exc.code, int) else EXIT_OK

    files: list[Path] = []
    try:
        files, specs = load_specs(args.paths)
        console = Console(url=args.url, token=args.token, timeout=args.timeout)
        code: int = args.handler(args, console, files, specs)
    except SpecFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except InvalidSpecs as exc:
        _print_invalid(exc, files)
        return EXIT_INVALID
    except ConsoleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    return code


if __name__ == "__main__":
    sys.exit(main())
