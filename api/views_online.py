import re
from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from api.row_cache import RowCache
from catalog.entity_ids import entity_id
from catalog.models import Environment
from catalog.services import environment_get
from provisioning.online_read import MAX_ENTITIES, online_features_read, online_rows_as_dicts

MAX_FEATURES = 1000
ENVIRONMENTS = frozenset(Environment.Name.values)
_PLAIN_ID = re.compile(r"[A-Z][A-Z0-9]{0,31}_[0-9]{12}_[0-9]{1,4}").fullmatch
_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}").fullmatch


class EntityPartsSerializer(serializers.Serializer[Any]):
    symbol = serializers.RegexField(r"^[A-Z][A-Z0-9]{0,31}$")
    ts_minute = serializers.DateTimeField()
    dte = serializers.IntegerField(min_value=0, max_value=9999)


class OnlineReadSerializer(serializers.Serializer[Any]):
    environment = serializers.ChoiceField(choices=Environment.Name.choices)
    entity_ids = serializers.ListField(
        child=serializers.CharField(max_length=64), required=False, default=list, max_length=MAX_ENTITIES
    )
    entities = EntityPartsSerializer(many=True, required=False, default=list)
    features = serializers.ListField(child=serializers.CharField(max_length=128), min_length=1, max_length=MAX_FEATURES)


def plain_read(data: Any) -> tuple[str, list[str], list[str]] | None:
    """(environment, entity ids, features) of a request in the common shape, checked by hand: a known
    environment, entity ids and feature names that the serializer would take as they are (plain ASCII, nothing
    to trim), no `entities`. None for anything else: the serializer then checks it and words the errors. The
    serializer checks every character of every string, the larger part of a one-entity read's time."""
    if type(data) is not dict:
        return None
    environment, ids, features = data.get("environment"), data.get("entity_ids", []), data.get("features")
    if type(environment) is not str or environment not in ENVIRONMENTS or data.get("entities", []) != []:
        return None
    if type(ids) is not list or len(ids) > MAX_ENTITIES or type(features) is not list:
        return None
    if not 1 <= len(features) <= MAX_FEATURES:
        return None
    for value in ids:
        if type(value) is not str or _PLAIN_ID(value) is None:
            return None
    for name in features:
        if type(name) is not str or _PLAIN_NAME(name) is None:
            return None
    return environment, ids, features


# The environment of a read, its row checked at every read (a moved revision shows at once) without the ORM's
# query compilation.
environments: RowCache[Environment] = RowCache(
    Environment, "name", lambda name: Environment.objects.filter(name=name).first()
)


class OnlineFeaturesView(APIView):
    @extend_schema(request=OnlineReadSerializer, responses={200: OpenApiTypes.OBJECT})
    def post(self, request: Request) -> Response:
        """Latest online values by entity: ids (`NIFTY_202611270915_3`) or their parts; status present,
        missing or expired for every value."""
        plain = plain_read(request.data)
        if plain is not None:
            name, ids, features = plain
        else:
            data = OnlineReadSerializer(data=request.data)
            data.is_valid(raise_exception=True)
            name, features = data.validated_data["environment"], data.validated_data["features"]
            ids = list(data.validated_data["entity_ids"])
            ids += [entity_id(e["symbol"], e["ts_minute"], e["dte"]) for e in data.validated_data["entities"]]
        environment = environments.get(name) or environment_get(name)  # environment_get words the 404
        rows = online_features_read(environment=environment, entity_ids=ids, features=features)
        return Response({"results": online_rows_as_dicts(rows)})
