from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from catalog.entity_ids import entity_id
from catalog.models import Environment
from catalog.services import environment_get
from provisioning.online_read import MAX_ENTITIES, online_features_read


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
    features = serializers.ListField(child=serializers.CharField(max_length=128), min_length=1, max_length=1000)


class OnlineFeaturesView(APIView):
    @extend_schema(request=OnlineReadSerializer, responses={200: OpenApiTypes.OBJECT})
    def post(self, request: Request) -> Response:
        """Latest online values by entity: ids (`NIFTY_202611270915_3`) or their parts; status present,
        missing or expired for every value."""
        data = OnlineReadSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        ids = list(data.validated_data["entity_ids"])
        ids += [entity_id(e["symbol"], e["ts_minute"], e["dte"]) for e in data.validated_data["entities"]]
        rows = online_features_read(
            environment=environment_get(data.validated_data["environment"]),
            entity_ids=ids,
            features=data.validated_data["features"],
        )
        return Response({"results": [row.as_dict() for row in rows]})
