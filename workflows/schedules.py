"""needflow's scheduled work, as Temporal Schedules (listed under Schedules in the Web UI).

`ensure_schedules` creates each schedule needflow needs, or leaves one that exists as it
is (a paused schedule stays paused; a schedule changed in the Web UI keeps its change).
The worker calls it when it starts (`worker.py`), because the worker is what every
deployment runs, against the dev server or a real cluster alike, and it knows the task
queue the scheduled workflows must run on. To apply a new `NEEDFLOW_DAILY_REVIEW_AT`
to an existing schedule, delete the schedule (Web UI or `temporal schedule delete
--schedule-id needflow-daily-review`) and restart the worker.

The schedules
-------------
- `needflow-daily-review`: every day at `NEEDFLOW_DAILY_REVIEW_AT` (UTC, default 06:00),
  `DailyReviewWorkflow` (`workflows/daily.py`): the practice audit e-mails each manager
  the new exceptions of their team, and the lead model is rebuilt from the decided
  referrals. Overlap: skip (a run still going when the next is due means the next is
  skipped, not queued); a run missed while the cluster was down is still taken if the
  cluster is back within a day (catch-up window).

Not a schedule: the e-mail sender (`workflows/mail.py`) is a long-running workflow the
worker starts, woken by every commit that records mail, because mail must go out within
moments of being recorded and its retries fall due at times of their own; a schedule only
runs on its clock.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleCalendarSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleRange,
    ScheduleSpec,
    ScheduleState,
)

from config import Settings
from domain.daily import DailyReviewInput
from workflows.daily import DailyReviewWorkflow

log = logging.getLogger("needflow.schedules")

DAILY_REVIEW_SCHEDULE_ID = "needflow-daily-review"
DAILY_REVIEW_SUMMARY = (
    "Daily review: the practice audit e-mails each manager the new exceptions of their team "
    "(those that arose in the 24 hours before the run), and the lead model is rebuilt from "
    "the decided referrals."
)


def daily_review_schedule(task_queue: str, settings: Settings) -> Schedule:
    """The daily review's schedule: `DailyReviewWorkflow` on `task_queue`, every day at
    `settings.daily_review_at` UTC, overlapping runs skipped."""
    hour, minute = (int(part) for part in settings.daily_review_at.split(":"))
    return Schedule(
        action=ScheduleActionStartWorkflow(
            DailyReviewWorkflow.run,
            DailyReviewInput(),
            # Each run's id is this plus its scheduled time (the server appends it).
            id=DAILY_REVIEW_SCHEDULE_ID,
            task_queue=task_queue,
            execution_timeout=timedelta(hours=6),
            static_summary="Daily practice audit e-mails and lead model rebuild",
            static_details=DAILY_REVIEW_SUMMARY,
        ),
        spec=ScheduleSpec(
            calendars=[
                ScheduleCalendarSpec(
                    hour=[ScheduleRange(hour)],
                    minute=[ScheduleRange(minute)],
                    comment=f"daily at {settings.daily_review_at} UTC",
                )
            ],
            time_zone_name="UTC",
        ),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP, catchup_window=timedelta(days=1)),
        state=ScheduleState(note=DAILY_REVIEW_SUMMARY),
    )


async def ensure_schedules(
    client: Client, task_queue: str, settings: Settings, *, daily_review_id: str = DAILY_REVIEW_SCHEDULE_ID
) -> list[str]:
    """Create needflow's schedules that do not exist yet; leave existing ones as they are.
    Returns the ids of the schedules it created (none when all existed)."""
    created: list[str] = []
    try:
        await client.create_schedule(
            daily_review_id,
            daily_review_schedule(task_queue, settings),
            memo={"description": DAILY_REVIEW_SUMMARY},
        )
        created.append(daily_review_id)
        log.info("created schedule %s (daily at %s UTC on %s)", daily_review_id, settings.daily_review_at, task_queue)
    except ScheduleAlreadyRunningError:
        log.info("schedule %s exists; left as it is", daily_review_id)
    return created
