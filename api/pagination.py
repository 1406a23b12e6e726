from collections.abc import Sequence
from typing import Any

from django.db.models import QuerySet
from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request
from rest_framework.views import APIView


class Pagination(PageNumberPagination):
    page_size_query_param = "page_size"
    max_page_size = 500


class DeferredJoinPagination(Pagination):
    """For large tables: a page's ids are read through the index first, then only those rows are loaded with
    their joins, so page 1,000 of 100,000 features does not fetch and join the 50,000 rows before it."""

    def paginate_queryset(
        self, queryset: QuerySet[Any] | Sequence[Any], request: Request, view: APIView | None = None
    ) -> list[Any] | None:
        if not isinstance(queryset, QuerySet):
            return super().paginate_queryset(queryset, request, view)
        ids_page = super().paginate_queryset(queryset.values_list("pk", flat=True), request, view)
        if ids_page is None:
            return None
        ids = list(ids_page)
        rows = {row.pk: row for row in queryset.filter(pk__in=ids)}
        return [rows[pk] for pk in ids if pk in rows]
