"""The django-q2 schedules of the node, created idempotently by ``runnode``.

Apps add theirs with ``register(...)`` from ``AppConfig.ready()``. Operators may edit the
interval of a schedule in the admin; ``ensure_schedules`` never overwrites an existing one.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ScheduleSpec:
    name: str
    func: str
    minutes: int


_specs: dict[str, ScheduleSpec] = {}


def register(name: str, func: str, minutes: int) -> None:
    _specs[name] = ScheduleSpec(name, func, minutes)


def ensure_schedules() -> list[str]:
    """Create the missing schedules; returns the names created."""
    from django_q.models import Schedule

    created = []
    for spec in _specs.values():
        _, made = Schedule.objects.get_or_create(
            name=spec.name,
            defaults={"func": spec.func, "schedule_type": Schedule.MINUTES, "minutes": spec.minutes, "repeats": -1},
        )
        if made:
            created.append(spec.name)
    return created


register("stigmem.heartbeat", "stigmem.tasks.heartbeat", minutes=1)
register("stigmem.sweep_logs", "stigmem.tasks.sweep_logs", minutes=1)
register("stigmem.prune_audit", "stigmem.tasks.prune_audit", minutes=1440)
