from stigmem.models.access import PERMISSIONS, ApiKey
from stigmem.models.audit import AuditEvent
from stigmem.models.facts import CONTENT_FIELDS, Conflict, Fact, FactHead, ImmutableContentError
from stigmem.models.gardens import Garden, GardenMember
from stigmem.models.jobs import Job
from stigmem.models.log import ConsumerCursor, Event
from stigmem.models.node import NodeClock, NodeIdentity
from stigmem.models.tombstones import TOMBSTONE_SCOPES, Tombstone, TombstoneRevocation

__all__ = [
    "CONTENT_FIELDS",
    "PERMISSIONS",
    "TOMBSTONE_SCOPES",
    "ApiKey",
    "AuditEvent",
    "Conflict",
    "ConsumerCursor",
    "Event",
    "Fact",
    "FactHead",
    "Garden",
    "GardenMember",
    "ImmutableContentError",
    "Job",
    "NodeClock",
    "NodeIdentity",
    "Tombstone",
    "TombstoneRevocation",
]
