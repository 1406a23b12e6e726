from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from catalog import views as console_views

console_patterns = [
    path("features/", console_views.feature_list, name="feature-list"),
    path("features/<str:env>/<str:name>/", console_views.feature_detail, name="feature-detail"),
    path("components/", console_views.component_list, name="component-list"),
    path("components/<str:key>/", console_views.component_detail, name="component-detail"),
    path("teams/", console_views.team_list, name="team-list"),
    path("teams/<str:slug>/", console_views.team_detail, name="team-detail"),
    path("change-requests/", console_views.change_request_list, name="change-request-list"),
    path("change-requests/<int:pk>/", console_views.change_request_detail, name="change-request-detail"),
    path("change-requests/<int:pk>/approve/", console_views.change_request_approve, name="change-request-approve"),
    path("change-requests/<int:pk>/reject/", console_views.change_request_reject, name="change-request-reject"),
    path("change-requests/<int:pk>/replan/", console_views.change_request_replan, name="change-request-replan"),
    path("change-requests/<int:pk>/promote/", console_views.change_request_promote, name="change-request-promote"),
    path("runs/", console_views.run_list, name="run-list"),
    path("runs/<int:pk>/", console_views.run_detail, name="run-detail"),
    path("runs/<int:pk>/progress/", console_views.run_progress, name="run-progress"),
    path("runs/<int:pk>/retry/", console_views.run_retry, name="run-retry"),
    path("backfills/", console_views.backfill_list, name="backfill-list"),
    path("backfills/start/", console_views.backfill_start, name="backfill-start"),
    path("backfills/<int:pk>/", console_views.backfill_detail, name="backfill-detail"),
    path("backfills/<int:pk>/progress/", console_views.backfill_progress, name="backfill-progress"),
    path("backfills/<int:pk>/cancel/", console_views.backfill_cancel, name="backfill-cancel"),
    path("training-datasets/", console_views.training_dataset_list, name="training-dataset-list"),
    path("training-datasets/request/", console_views.training_dataset_request, name="training-dataset-request"),
    path("training-datasets/<int:pk>/", console_views.training_dataset_detail, name="training-dataset-detail"),
    path(
        "training-datasets/<int:pk>/progress/",
        console_views.training_dataset_progress,
        name="training-dataset-progress",
    ),
    path("training-datasets/<int:pk>/result/", console_views.training_dataset_result, name="training-dataset-result"),
    path("lineage/", console_views.lineage, name="lineage"),
    path("costs/", console_views.costs, name="costs"),
    path("drift/", console_views.drift, name="drift"),
    path("drift/<str:env>/run/", console_views.drift_run, name="drift-run"),
]

urlpatterns = [
    path("", console_views.home, name="home"),
    path("healthz", console_views.healthz, name="healthz"),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("api/v1/", include("api.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("", include((console_patterns, "console"))),
]

# Under /api/ these answer with the API's error body; elsewhere with Django's pages.
handler400 = "api.errors.handler400"
handler404 = "api.errors.handler404"
handler500 = "api.errors.handler500"
