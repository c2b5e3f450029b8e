"""Employees: the referrers, recipients and managers needflow routes work to."""

from __future__ import annotations

from fastapi import APIRouter, Request

from api.deps import Admin, IdempotencyKey, ServicesDep
from api.errors import ApiError, invalid
from api.idempotency import idempotent
from api.schemas import EmployeeCreate, EmployeeOut
from api.views import employee_out
from domain.ids import resource_id
from store.models import Employee

router = APIRouter(prefix="/v1/employees", tags=["employees"])


@router.post("", status_code=201, response_model=EmployeeOut)
async def create_employee(
    body: EmployeeCreate, request: Request, svc: ServicesDep, who: Admin, key: IdempotencyKey = None
):
    async def create() -> EmployeeOut:
        async with svc.sessions.begin() as session:
            employee_id = body.id or resource_id("emp", who.id, key)
            if await session.get(Employee, employee_id) is not None:
                raise ApiError(409, "conflict", f"employee {employee_id!r} exists already", {"id": employee_id})
            if body.manager_id and await session.get(Employee, body.manager_id) is None:
                raise invalid(f"no employee {body.manager_id!r}", field="manager_id")
            data = body.model_dump(mode="json", exclude={"id"})
            employee = Employee(id=employee_id, **data)
            session.add(employee)
        return employee_out(employee)

    return await idempotent(request, svc, who, key, 201, create)
