from django.urls import path
from rest_framework.routers import DefaultRouter

from api import views, views_online, views_provisioning, views_tokens, views_training

router = DefaultRouter()
router.register("environments", views.EnvironmentViewSet, basename="environment")
router.register("teams", views.TeamViewSet, basename="team")
router.register("components", views.ComponentViewSet, basename="component")
router.register("features", views.FeatureViewSet, basename="feature")
router.register("change-requests", views.ChangeRequestViewSet, basename="change-request")
router.register("provisioning-runs", views.ProvisioningRunViewSet, basename="provisioning-run")
router.register("audit-log", views.AuditLogViewSet, basename="audit-log")
router.register("backfills", views_provisioning.BackfillViewSet, basename="backfill")
router.register("tokens", views_tokens.ApiTokenViewSet, basename="token")
router.register("training-datasets", views_training.TrainingDatasetViewSet, basename="training-dataset")

urlpatterns = [
    path("environments/<str:name>/drift/", views_provisioning.DriftView.as_view(), name="environment-drift"),
    path("environments/<str:name>/costs/", views_provisioning.CostsView.as_view(), name="environment-costs"),
    path("online-features/", views_online.OnlineFeaturesView.as_view(), name="online-features"),
    path("provisioning-runs/<int:pk>/retry/", views_provisioning.RunRetryView.as_view(), name="provisioning-run-retry"),
    *router.urls,
]
