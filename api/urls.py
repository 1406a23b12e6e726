from rest_framework.routers import DefaultRouter

from api import views

router = DefaultRouter()
router.register("environments", views.EnvironmentViewSet, basename="environment")
router.register("teams", views.TeamViewSet, basename="team")
router.register("components", views.ComponentViewSet, basename="component")
router.register("features", views.FeatureViewSet, basename="feature")
router.register("change-requests", views.ChangeRequestViewSet, basename="change-request")
router.register("provisioning-runs", views.ProvisioningRunViewSet, basename="provisioning-run")
router.register("audit-log", views.AuditLogViewSet, basename="audit-log")

urlpatterns = router.urls
