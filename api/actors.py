"""Who a command is made for: the employee behind `actor_id`, as the workflows' rules
need them, and the key it came through (`via`, recorded beside the actor).

A key bound to an employee acts as that employee and no one else: `actor_id` may be left
out, and naming anyone else is 403. A key bound to no one (a front end that signs its own
users in) must name the employee and needs `crm:act-as` to do so. An inactive employee
acts on nothing.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from api.deps import Principal
from api.errors import ApiError, invalid
from domain.opportunity import Actor
from domain.types import Role
from store.models import Employee

ACT_AS = "crm:act-as"


def actor_id_for(who: Principal, actor_id: str | None) -> str:
    """The employee `who` may act as here, or the contract's refusal (no I/O)."""
    if who.employee_id is not None:
        if actor_id is not None and actor_id != who.employee_id:
            raise ApiError(
                403,
                "forbidden",
                f"this API key acts only as {who.employee_id}",
                {"actor_id": actor_id, "key_employee_id": who.employee_id},
            )
        return who.employee_id
    if actor_id is None:
        raise invalid("name the employee this is done for in actor_id", field="actor_id")
    if ACT_AS not in who.scopes:
        raise ApiError(
            403,
            "forbidden",
            f"this API key is bound to no employee: naming one in actor_id needs the scope {ACT_AS!r}",
            {"required_scope": ACT_AS},
        )
    return actor_id


async def resolve_actor(session: AsyncSession, who: Principal, actor_id: str | None) -> Actor:
    employee_id = actor_id_for(who, actor_id)
    employee = await session.get(Employee, employee_id)
    if employee is None:
        raise invalid(f"no employee {employee_id!r}", field="actor_id")
    if not employee.active:
        raise ApiError(403, "forbidden", f"employee {employee_id} is inactive", {"actor_id": employee_id})
    return Actor(id=employee.id, role=Role(employee.role), via=who.name)
