from catalog.models.audit import AuditChainHead, AuditLogEntry
from catalog.models.change_request import Approval, ChangeRequest
from catalog.models.environment import AppliedRevision, Environment
from catalog.models.feature import Component, EntityType, Feature, FeatureVersion
from catalog.models.team import Team, TeamMembership

__all__ = [
    "AppliedRevision",
    "Approval",
    "AuditChainHead",
    "AuditLogEntry",
    "ChangeRequest",
    "Component",
    "EntityType",
    "Environment",
    "Feature",
    "FeatureVersion",
    "Team",
    "TeamMembership",
]
