"""A fake of the Vertex AI Feature Store v1 calls the vertex online store makes, at the network boundary.

One in-memory state served two ways in the test process, both on 127.0.0.1 ports of their own:
- REST over HTTP (http.server), what the clients send with transport="rest";
- gRPC (grpcio, insecure), for FeatureViewDirectWrite, a bidirectional stream REST does not offer.

It keeps what the real service keeps for these calls: resources by name (FeatureOnlineStore, FeatureView,
FeatureGroup, Feature), long-running operations returned already done (or left pending, to test the bounded
wait), 404 for missing resources and unknown entity ids, 409 for duplicates, 400 for IDs Vertex would refuse
and for feature views naming unregistered features. Lists come in pages (`page_size` a page unless the request
asks for fewer, at most 1000, with a next page token), as the real service may split them. BatchCreateFeatures
creates all of its features or, when one is invalid or exists, none (the real service's partial behaviour is not
documented). Resource names come back with a project number, as the real service answers. Faults are injected
with `fail(...)`. Every request is recorded in `requests`.

Not modelled: syncs from BigQuery (tests put values with `serve(...)`), IAM, etags, field validation beyond the
above, and whether Vertex itself lets an older direct write win (here the last write wins).
"""

import json
import re
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import grpc  # type: ignore[import-untyped]
from google.cloud import aiplatform_v1 as v1
from google.longrunning import operations_pb2  # type: ignore[import-untyped]
from google.protobuf import json_format  # type: ignore[import-untyped]

ID_PATTERN = re.compile(r"^[a-z_][a-z0-9_]*$")
ID_LIMITS = {"FeatureOnlineStore": 60, "FeatureView": 60, "FeatureGroup": 128, "Feature": 128}
COLLECTIONS = {
    "featureOnlineStores": "FeatureOnlineStore",
    "featureViews": "FeatureView",
    "featureGroups": "FeatureGroup",
    "features": "Feature",
    "operations": "Operation",
}
HTTP_TO_GRPC = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ALREADY_EXISTS,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    500: grpc.StatusCode.INTERNAL,
    503: grpc.StatusCode.UNAVAILABLE,
}
STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}


class FakeError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Call:
    method: str  # the RPC name, e.g. CreateFeatureGroup
    name: str  # the resource, parent or feature view the call is about
    body: dict[str, Any]
    transport: str  # "rest" or "grpc"


@dataclass
class Fault:
    status: int
    times: int
    method: str | None
    message: str


@dataclass
class VertexFake:
    project_number: str = "123456789012"
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)
    # feature view name -> entity id -> feature -> FeatureValue (JSON)
    values: dict[str, dict[str, dict[str, dict[str, Any]]]] = field(default_factory=dict)
    operations: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[Call] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    pending_operations: bool = False
    page_size: int = 100
    _lock: threading.RLock = field(default_factory=threading.RLock)
    _project_id: str = ""
    _http: ThreadingHTTPServer | None = None
    _grpc: Any = None
    http_endpoint: str = ""
    grpc_endpoint: str = ""

    # Test helpers ----------------------------------------------------------------------------------------------

    def fail(self, status: int, *, times: int = 1, method: str | None = None, message: str = "") -> None:
        """The next `times` calls (of `method`, if given) answer `status`."""
        text = message or {
            403: "Permission 'aiplatform.featureGroups.create' denied on resource (or it may not exist).",
            429: "Quota exceeded.",
            503: "The service is currently unavailable.",
        }.get(status, "injected fault")
        with self._lock:
            self.faults.append(Fault(status, times, method, text))

    def calls(self, method: str | None = None) -> list[Call]:
        with self._lock:
            return [c for c in self.requests if method is None or c.method == method]

    def get(self, name: str) -> dict[str, Any] | None:
        with self._lock:
            return self.resources.get(name)

    def serve(self, view: str, entity_id: str, values: dict[str, tuple[Any, datetime]]) -> None:
        """What a sync from BigQuery would leave in the online store for one entity."""
        with self._lock:
            stored = self.values.setdefault(view, {}).setdefault(entity_id, {})
            for name, (value, when) in values.items():
                stored[name] = _feature_value(value, when)

    # Servers --------------------------------------------------------------------------------------------------

    def start(self) -> "VertexFake":
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._http.daemon_threads = True
        threading.Thread(
            target=self._http.serve_forever, kwargs={"poll_interval": 0.05}, name="vertex-fake-http", daemon=True
        ).start()
        self.http_endpoint = f"http://127.0.0.1:{self._http.server_port}"
        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        self._grpc.add_generic_rpc_handlers(_grpc_handlers(self))
        port = self._grpc.add_insecure_port("127.0.0.1:0")
        self._grpc.start()
        self.grpc_endpoint = f"http://127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        if self._grpc is not None:
            self._grpc.stop(grace=None)

    # The service ----------------------------------------------------------------------------------------------

    def call(self, method: str, name: str, body: dict[str, Any], transport: str, **args: Any) -> dict[str, Any]:
        with self._lock:
            self.requests.append(Call(method, name, body, transport))
            for fault in self.faults:
                if fault.times > 0 and fault.method in (None, method):
                    fault.times -= 1
                    raise FakeError(fault.status, fault.message)
            name = self._canonical(name)
            if method == "BatchCreateFeatures":
                return self._batch_create(name, body)
            if method.startswith("Create"):
                return self._create(method.removeprefix("Create"), name, args["resource_id"], body)
            if method == "GetOperation":
                return self._operation_get(name)
            if method.startswith("Get"):
                return self._resource(name)
            if method.startswith("Update"):
                return self._update(method.removeprefix("Update"), name, body, args.get("mask") or "")
            if method.startswith("List"):
                return self._list(name, args["collection"], args.get("page_size"), args.get("page_token"))
            if method == "FetchFeatureValues":
                return self._fetch(name, body)
            if method == "FeatureViewDirectWrite":
                return self._direct_write(name, body)
            raise FakeError(400, f"the fake does not know {method}")

    def _canonical(self, name: str) -> str:
        # Names come back with the project number; a client may send either form.
        parts = name.split("/")
        if len(parts) > 1 and parts[0] == "projects":
            if parts[1] == self.project_number:
                parts[1] = self._project_id or parts[1]
            else:
                self._project_id = parts[1]
        return "/".join(parts)

    def _public(self, name: str) -> str:
        parts = name.split("/")
        if len(parts) > 1 and parts[0] == "projects":
            parts[1] = self.project_number
        return "/".join(parts)

    def _resource(self, name: str) -> dict[str, Any]:
        resource = self.resources.get(name)
        if resource is None:
            raise FakeError(404, f"{name} not found.")
        return {**resource, "name": self._public(name)}

    def _create(self, kind: str, parent: str, resource_id: str, body: dict[str, Any]) -> dict[str, Any]:
        name = self._creatable(kind, parent, resource_id, body)
        self._store(kind, name, body)
        return self._operation(name, kind)

    def _creatable(self, kind: str, parent: str, resource_id: str, body: dict[str, Any]) -> str:
        """The new resource's name, or the error the service answers for it."""
        limit = ID_LIMITS[kind]
        if not ID_PATTERN.match(resource_id) or len(resource_id) > limit:
            raise FakeError(400, f"{kind} ID {resource_id!r} must match ^[a-z_][a-z0-9_]*$, at most {limit} chars.")
        if "/" in parent.split("/locations/", 1)[1] and parent not in self.resources:
            raise FakeError(404, f"{parent} not found.")
        collection = next(c for c, k in COLLECTIONS.items() if k == kind)
        name = f"{parent}/{collection}/{resource_id}"
        if name in self.resources:
            raise FakeError(409, f"{kind} {name} already exists.")
        self._check(kind, name, body)
        return name

    def _store(self, kind: str, name: str, body: dict[str, Any]) -> None:
        now = _now()
        self.resources[name] = {**body, "createTime": now, "updateTime": now, "etag": "e1"}
        if kind == "FeatureOnlineStore":
            self.resources[name]["state"] = "STABLE"

    def _batch_create(self, parent: str, body: dict[str, Any]) -> dict[str, Any]:
        requests = body.get("requests", [])
        if not requests:
            raise FakeError(400, "requests must not be empty.")
        names: list[tuple[str, dict[str, Any]]] = []
        for request in requests:
            if self._canonical(request.get("parent") or parent) != parent:
                raise FakeError(400, f"parent {request['parent']} of a child request does not match {parent}.")
            feature = request.get("feature", {})
            name = self._creatable("Feature", parent, request.get("featureId", ""), feature)
            if name in dict(names):
                raise FakeError(400, f"Feature {name} is twice in the batch.")
            names.append((name, feature))
        for name, feature in names:
            self._store("Feature", name, feature)
        op_name = f"{parent}/operations/{len(self.operations) + 1}"
        operation: dict[str, Any] = {"name": self._public(op_name), "done": not self.pending_operations}
        if not self.pending_operations:
            operation["response"] = {
                "@type": "type.googleapis.com/google.cloud.aiplatform.v1.BatchCreateFeaturesResponse",
                "features": [self._resource(name) for name, _ in names],
            }
        self.operations[op_name] = operation
        return operation

    def _check(self, kind: str, name: str, body: dict[str, Any]) -> None:
        if kind == "FeatureOnlineStore" and "bigtable" in body:
            scaling = body["bigtable"].get("autoScaling", {})
            low, high = int(scaling.get("minNodeCount", 0)), int(scaling.get("maxNodeCount", 0))
            cpu = int(scaling.get("cpuUtilizationTarget", 50))
            if low < 1 or high < low or high > 10 * low or not 10 <= cpu <= 80:
                raise FakeError(400, f"invalid Bigtable autoscaling {scaling}.")
        if kind == "FeatureView" and "featureRegistrySource" in body:
            location = name.split("/featureOnlineStores/")[0]
            for group in body["featureRegistrySource"].get("featureGroups", []):
                group_name = f"{location}/featureGroups/{group['featureGroupId']}"
                if group_name not in self.resources:
                    raise FakeError(400, f"FeatureGroup {group_name} does not exist.")
                for feature_id in group.get("featureIds", []):
                    if f"{group_name}/features/{feature_id}" not in self.resources:
                        raise FakeError(400, f"Feature {feature_id} does not exist in {group_name}.")

    def _update(self, kind: str, name: str, body: dict[str, Any], mask: str) -> dict[str, Any]:
        current = self.resources.get(name)
        if current is None:
            raise FakeError(404, f"{name} not found.")
        updated = json.loads(json.dumps(current))
        paths = [_camel(p) for p in mask.split(",") if p] or [k for k in body if k != "name"]
        for path in paths:
            _copy_path(body, updated, path.split("."))
        self._check(kind, name, updated)
        updated["updateTime"] = _now()
        self.resources[name] = updated
        return self._operation(name, kind)

    def _list(self, parent: str, collection: str, page_size: Any = None, page_token: Any = None) -> dict[str, Any]:
        if "/" in parent.split("/locations/", 1)[1] and parent not in self.resources:
            raise FakeError(404, f"{parent} not found.")
        prefix = f"{parent}/{collection}/"
        found = [
            {**r, "name": self._public(n)}
            for n, r in sorted(self.resources.items())
            if n.startswith(prefix) and "/" not in n[len(prefix) :]
        ]
        size = min(int(page_size or 0) or self.page_size, self.page_size, 1000)
        if page_token and not str(page_token).isdigit():
            raise FakeError(400, f"invalid page token {page_token!r}.")
        start = int(page_token or 0)
        page: dict[str, Any] = {collection: found[start : start + size]}
        if start + size < len(found):
            page["nextPageToken"] = str(start + size)
        return page

    def _operation(self, name: str, kind: str) -> dict[str, Any]:
        op_name = f"{name}/operations/{len(self.operations) + 1}"
        operation: dict[str, Any] = {"name": self._public(op_name), "done": not self.pending_operations}
        if not self.pending_operations:
            operation["response"] = {
                "@type": f"type.googleapis.com/google.cloud.aiplatform.v1.{kind}",
                **self._resource(name),
            }
        self.operations[op_name] = operation
        return operation

    def _operation_get(self, name: str) -> dict[str, Any]:
        operation = self.operations.get(name)
        if operation is None:
            raise FakeError(404, f"{name} not found.")
        return operation

    def _fetch(self, view: str, body: dict[str, Any]) -> dict[str, Any]:
        resource = self.resources.get(view)
        if resource is None:
            raise FakeError(404, "Requested entity was not found.")
        key = body.get("dataKey", {}).get("key")
        stored = self.values.get(view, {}).get(key)
        if stored is None:
            # What Bigtable online serving answers for an entity id it does not hold.
            raise FakeError(404, "Requested entity was not found.")
        names = [f for g in resource["featureRegistrySource"]["featureGroups"] for f in g["featureIds"]]
        # A feature the entity has no value for comes back as an empty FeatureValue.
        return {"keyValues": {"features": [{"name": n, "value": stored.get(n, {})} for n in names]}}

    def _direct_write(self, view: str, body: dict[str, Any]) -> dict[str, Any]:
        if view not in self.resources:
            raise FakeError(404, f"{view} not found.")
        written = []
        for item in body.get("dataKeyAndFeatureValues", []):
            stored = self.values.setdefault(view, {}).setdefault(item["dataKey"]["key"], {})
            for feature in item.get("features", []):
                stored[feature["name"]] = feature["value"]
            written.append({"dataKey": item["dataKey"], "onlineStoreWriteTime": _now()})
        return {"status": {"code": 0}, "writeResponses": written}


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _camel(path: str) -> str:
    return ".".join(re.sub(r"_([a-z])", lambda m: m.group(1).upper(), part) for part in path.split("."))


def _copy_path(source: dict[str, Any], target: dict[str, Any], path: list[str]) -> None:
    head, rest = path[0], path[1:]
    if not rest:
        if head in source:
            target[head] = json.loads(json.dumps(source[head]))
        else:
            target.pop(head, None)
        return
    _copy_path(source.get(head, {}), target.setdefault(head, {}), rest)


def _feature_value(value: Any, when: datetime) -> dict[str, Any]:
    if isinstance(value, bool):
        encoded: dict[str, Any] = {"boolValue": value}
    elif isinstance(value, int):
        encoded = {"int64Value": str(value)}
    elif isinstance(value, float):
        encoded = {"doubleValue": value}
    else:
        encoded = {"stringValue": str(value)}
    encoded["metadata"] = {"generateTime": when.astimezone(UTC).isoformat().replace("+00:00", "Z")}
    return encoded


# REST --------------------------------------------------------------------------------------------------------


def _rest_route(verb: str, path: str, query: dict[str, str], body: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """(RPC name, resource name, extra arguments) for one REST request."""
    # The operations client polls under /ui/ (the first of its HTTP rules); everything else is /v1/.
    path = path.removeprefix("/v1/").removeprefix("/ui/")
    if path.endswith(":fetchFeatureValues") and verb == "POST":
        return "FetchFeatureValues", path.removesuffix(":fetchFeatureValues"), {}
    if path.endswith("/features:batchCreate") and verb == "POST":
        return "BatchCreateFeatures", path.removesuffix("/features:batchCreate"), {}
    parts = path.split("/")
    if len(parts) % 2 == 1:  # a collection
        collection = parts[-1]
        kind = COLLECTIONS.get(collection)
        parent = "/".join(parts[:-1])
        if kind is None:
            raise FakeError(404, f"no collection {collection}")
        if verb == "POST":
            id_param = kind[0].lower() + kind[1:] + "Id"
            return f"Create{kind}", parent, {"resource_id": query.get(id_param, "")}
        if verb == "GET":
            paging = {"page_size": query.get("pageSize"), "page_token": query.get("pageToken")}
            return f"List{kind}s", parent, {"collection": collection, **paging}
    else:
        kind = COLLECTIONS.get(parts[-2])
        if kind is None:
            raise FakeError(404, f"no collection {parts[-2]}")
        if verb == "GET":
            return f"Get{kind}", path, {}
        if verb == "PATCH":
            return f"Update{kind}", path, {"mask": query.get("updateMask", "")}
    raise FakeError(404, f"the fake does not serve {verb} {path}")


def _handler_for(fake: VertexFake) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            # Headers and body go out in two writes: without this, Nagle and delayed ACKs add 40 ms a call.
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def _serve(self) -> None:
            url = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else {}
            try:
                method, name, args = _rest_route(self.command, url.path, query, body)
                payload, status = fake.call(method, name, body, "rest", **args), 200
            except FakeError as error:
                status = error.status
                payload = {
                    "error": {"code": status, "message": error.message, "status": STATUS_NAMES.get(status, "UNKNOWN")}
                }
            out = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        do_GET = do_POST = do_PATCH = _serve

        def log_message(self, format: str, *args: Any) -> None:
            return

    return Handler


# gRPC --------------------------------------------------------------------------------------------------------


def _to_dict(message: Any) -> dict[str, Any]:
    data: dict[str, Any] = type(message).to_dict(
        message, preserving_proto_field_name=False, use_integers_for_enums=True
    )
    return data


def _grpc_handlers(fake: VertexFake) -> list[Any]:
    operation = (operations_pb2.Operation, lambda d: json_format.ParseDict(d, operations_pb2.Operation()))

    def plain(cls: Any) -> tuple[Any, Callable[[dict[str, Any]], Any]]:
        return cls, lambda d: cls.from_json(json.dumps(d))

    def create(kind: str, request_cls: Any) -> Any:
        key = kind[0].lower() + kind[1:]

        def args(r: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any]]:
            return r["parent"], r.get(key, {}), {"resource_id": r.get(f"{key}Id", "")}

        return f"Create{kind}", request_cls, args, operation

    def get(kind: str, request_cls: Any, response_cls: Any) -> Any:
        return f"Get{kind}", request_cls, lambda r: (r["name"], {}, {}), plain(response_cls)

    def update(kind: str, request_cls: Any) -> Any:
        key = kind[0].lower() + kind[1:]

        def args(r: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any]]:
            return r[key]["name"], r[key], {"mask": r.get("updateMask", "")}

        return f"Update{kind}", request_cls, args, operation

    def listing(kind: str, collection: str, request_cls: Any, response_cls: Any) -> Any:
        def args(r: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any]]:
            paging = {"page_size": r.get("pageSize"), "page_token": r.get("pageToken")}
            return r["parent"], {}, {"collection": collection, **paging}

        return f"List{kind}s", request_cls, args, plain(response_cls)

    services = {
        "google.cloud.aiplatform.v1.FeatureRegistryService": [
            create("FeatureGroup", v1.CreateFeatureGroupRequest),
            get("FeatureGroup", v1.GetFeatureGroupRequest, v1.FeatureGroup),
            update("FeatureGroup", v1.UpdateFeatureGroupRequest),
            create("Feature", v1.CreateFeatureRequest),
            get("Feature", v1.GetFeatureRequest, v1.Feature),
            update("Feature", v1.UpdateFeatureRequest),
            listing("Feature", "features", v1.ListFeaturesRequest, v1.ListFeaturesResponse),
            (
                "BatchCreateFeatures",
                v1.BatchCreateFeaturesRequest,
                lambda r: (r["parent"], r, {}),
                operation,
            ),
        ],
        "google.cloud.aiplatform.v1.FeatureOnlineStoreAdminService": [
            create("FeatureOnlineStore", v1.CreateFeatureOnlineStoreRequest),
            get("FeatureOnlineStore", v1.GetFeatureOnlineStoreRequest, v1.FeatureOnlineStore),
            update("FeatureOnlineStore", v1.UpdateFeatureOnlineStoreRequest),
            create("FeatureView", v1.CreateFeatureViewRequest),
            get("FeatureView", v1.GetFeatureViewRequest, v1.FeatureView),
            update("FeatureView", v1.UpdateFeatureViewRequest),
            listing("FeatureView", "featureViews", v1.ListFeatureViewsRequest, v1.ListFeatureViewsResponse),
        ],
        "google.cloud.aiplatform.v1.FeatureOnlineStoreService": [
            (
                "FetchFeatureValues",
                v1.FetchFeatureValuesRequest,
                lambda r: (r["featureView"], r, {}),
                plain(v1.FetchFeatureValuesResponse),
            ),
        ],
    }

    def unary(method: str, request_cls: Any, args: Any, response: Any) -> Any:
        response_cls, build = response

        def behaviour(request: Any, context: Any) -> Any:
            name, body, extra = args(_to_dict(request))
            try:
                return build(fake.call(method, name, body, "grpc", **extra))
            except FakeError as error:
                context.abort(HTTP_TO_GRPC.get(error.status, grpc.StatusCode.UNKNOWN), error.message)

        serializer = getattr(response_cls, "serialize", None) or (lambda m: m.SerializeToString())
        return grpc.unary_unary_rpc_method_handler(
            behaviour, request_deserializer=request_cls.deserialize, response_serializer=serializer
        )

    def direct_write(requests: Iterator[Any], context: Any) -> Iterator[Any]:
        for request in requests:
            body = _to_dict(request)
            try:
                answer = fake.call("FeatureViewDirectWrite", body.get("featureView", ""), body, "grpc")
            except FakeError as error:
                context.abort(HTTP_TO_GRPC.get(error.status, grpc.StatusCode.UNKNOWN), error.message)
            yield v1.FeatureViewDirectWriteResponse.from_json(json.dumps(answer))

    handlers = []
    for service, methods in services.items():
        table = {m[0]: unary(*m) for m in methods}
        if service.endswith("FeatureOnlineStoreService"):
            table["FeatureViewDirectWrite"] = grpc.stream_stream_rpc_method_handler(
                direct_write,
                request_deserializer=v1.FeatureViewDirectWriteRequest.deserialize,
                response_serializer=v1.FeatureViewDirectWriteResponse.serialize,
            )
        handlers.append(grpc.method_handlers_generic_handler(service, table))
    handlers.append(
        grpc.method_handlers_generic_handler(
            "google.longrunning.Operations",
            {
                "GetOperation": grpc.unary_unary_rpc_method_handler(
                    lambda request, context: _grpc_get_operation(fake, request, context),
                    request_deserializer=operations_pb2.GetOperationRequest.FromString,
                    response_serializer=lambda m: m.SerializeToString(),
                )
            },
        )
    )
    return handlers


def _grpc_get_operation(fake: VertexFake, request: Any, context: Any) -> Any:
    try:
        answer = fake.call("GetOperation", request.name, {}, "grpc")
    except FakeError as error:
        context.abort(HTTP_TO_GRPC.get(error.status, grpc.StatusCode.UNKNOWN), error.message)
    return json_format.ParseDict(answer, operations_pb2.Operation())
