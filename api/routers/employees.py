"""Employees: the referrers, recipients and managers needflow routes work to.

Routing reads the employees from the store at routing time (its team cache is keyed by
`team_version`, which the database raises on every write to employees: activities/referral.py,
migration 0013), so a PATCH of capacity, products or territory applies to the next routing
and changes no referral already routed.
Deactivating (`active: false`) is api/deactivation.py's.
"""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Request
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from api.deactivation import deactivate
from api.deps import Admin, IdempotencyKey, ServicesDep
from api.errors import ApiError, invalid, not_found
from api.idempotency import idempotent, keyed_done
from api.schemas import EmployeeCreate, EmployeeOut, EmployeeUpdate, EmployeeUpdated
from api.views import employee_out
from domain.ids import resource_id
from store.models import ApiKey, Employee

router = APIRouter(prefix="/v1/employees", tags=["employees"])


@router.post("", status_code=201, response_model=EmployeeOut)
async def create_employee(
    body: EmployeeCreate, request: Request, svc: ServicesDep, who: Admin, key: IdempotencyKey = None
):
    async def create() -> EmployeeOut:
        async with svc.sessions.begin() as session:
            employee_id = body.id or resource_id("emp", who.id, key)
            if not body.id and (done := await keyed_done(session, Employee, employee_id, key)) is not None:
                return employee_out(done)  # an earlier attempt committed it, then failed to answer
            if await session.get(Employee, employee_id) is not None:
                raise ApiError(409, "conflict", f"employee {employee_id!r} exists already", {"id": employee_id})
            if body.manager_id and await session.get(Employee, body.manager_id) is None:
                raise invalid(f"no employee {body.manager_id!r}", field="manager_id")
            data = body.model_dump(mode="json", exclude={"id"})
            employee = Employee(id=employee_id, **data)
            session.add(employee)
            await session.flush()
            return employee_out(employee)  # inside the transaction: no answer, no row

    return await idempotent(request, svc, who, key, 201, create)


async def _check_manager(session: AsyncSession, employee_id: str, manager_id: str) -> None:
    """A manager must exist, be active and not report, however indirectly, to the
    employee: a cycle would leave a chain of managers with nobody at its top."""
    if manager_id == employee_id:
        raise invalid("an employee cannot be their own manager", field="manager_id")
    manager = await session.get(Employee, manager_id)
    if manager is None:
        raise invalid(f"no employee {manager_id!r}", field="manager_id")
    if not manager.active:
        raise invalid(f"employee {manager_id} is inactive", field="manager_id")
    seen = {manager_id}
    above = manager.manager_id
    while above is not None and above not in seen:
        if above == employee_id:
            raise invalid(
                f"{manager_id} reports to {employee_id} already: that would be a cycle of managers",
                field="manager_id",
            )
        seen.add(above)
        row = await session.get(Employee, above)
        above = row.manager_id if row is not None else None


@router.patch("/{employee_id}", response_model=EmployeeUpdated)
async def update_employee(employee_id: str, body: EmployeeUpdate, svc: ServicesDep, who: Admin):
    """Change what is sent. Safe to repeat: the same PATCH again changes nothing more, and
    finishes a deactivation that an earlier attempt left half-done."""
    changes = body.model_dump(mode="json", exclude_unset=True)
    keys_revoked = 0
    async with svc.sessions.begin() as session:
        employee = await session.get(Employee, employee_id, with_for_update=True)
        if employee is None:
            raise not_found("employee", employee_id)
        if changes.get("manager_id") is not None:
            await _check_manager(session, employee_id, changes["manager_id"])
        for field, value in changes.items():
            setattr(employee, field, value)
        if body.active is False:  # deactivation, step 1: in the same commit as `active`
            revoked = await session.execute(
                update(ApiKey)
                .where(ApiKey.employee_id == employee_id, ApiKey.revoked_at.is_(None))
                .values(revoked_at=datetime.now(UTC))
            )
            keys_revoked = revoked.rowcount
    out = employee_out(employee)
    report = await deactivate(svc, employee, who, keys_revoked) if body.active is False else None
    return EmployeeUpdated(**out.model_dump(), deactivation=report)
