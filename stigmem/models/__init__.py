from stigmem.models.access import PERMISSIONS, ApiKey
from stigmem.models.facts import CONTENT_FIELDS, Conflict, Fact, FactHead, ImmutableContentError
from stigmem.models.log import ConsumerCursor, Event
from stigmem.models.node import NodeClock, NodeIdentity

__all__ = [
    "CONTENT_FIELDS",
    "PERMISSIONS",
    "ApiKey",
    "Conflict",
    "ConsumerCursor",
    "Event",
    "Fact",
    "FactHead",
    "ImmutableContentError",
    "NodeClock",
    "NodeIdentity",
]
