"""The employee a front end acts for (`actor_id`), as the workflows' rules need them."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from api.errors import invalid
from domain.opportunity import Actor
from domain.types import Role
from store.models import Employee


async def resolve_actor(session: AsyncSession, actor_id: str) -> Actor:
    employee = await session.get(Employee, actor_id)
    if employee is None:
        raise invalid(f"no employee {actor_id!r}", field="actor_id")
    return Actor(id=employee.id, role=Role(employee.role))
