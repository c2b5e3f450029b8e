"""needflow's command-line client, for people and scripts: `python starter.py COMMAND ...`.

Commands:

  api-key create --name NAME --scopes a,b [--employee EMPLOYEE_ID]
      Register a new API key in the database (DATABASE_URL / NEEDFLOW_DATA_DIR) and print
      it once: only its SHA-256 is stored. Scopes: events:write, crm:write, reports:read,
      admin (keys, employees, the outbox), crm:act-as (name any employee as the actor).
      With --employee the key acts as that employee and no one else.

  api-key list
      Every key: id, name, scopes, employee, active or revoked (never the key itself).

  api-key revoke KEY_ID
      Revoke a key: it answers 401 from its next request on.

  event send --type TYPE (--opportunity ID | --customer ID) [--id EVT_ID]
             [--data JSON | --set key=value ...] [--occurred-at ISO]
      Send a backend event to POST /v1/events, as the mobile app, the mortgage team or
      core banking would, and print the result (applied / duplicate) and the stage.

  timeline OPPORTUNITY_ID
      An opportunity's stage and status, its checkpoints as a table (stage, entered at,
      trigger, actor, evidence) and its e-signature request, if any.

  referral show REFERRAL_ID
      A referral's status, assignee, lead score (with its top factors), referrer score,
      priority and its history as a table (status, at, actor, assignee, note).

  import FILE
      Import a book of business from an old CRM (POST /v1/imports, an admin key): the
      file is the JSON the API takes. Prints what was created and what was already there
      (unchanged), kind by kind; a refused import prints every problem with its path,
      and nothing is written. Importing the same file again changes nothing.

  demo [--run-id ID] [--only rachel|kiara]
      Play two stories against the running stack. Rachel's (seed 000): her checking
      account (interested, SMS authorisation, account opened), then her mortgage from
      interested to closed_won, signed on the local signing page; prints her customer
      journey. Then Kiara's referral (seed 003): Ryan, a wealth advisor, refers her
      mortgage need; routing picks Bob, a mortgage broker, who is e-mailed, accepts, sees
      her in his list and converts her into a customer with a mortgage opportunity; Ryan's
      referrer score before and after. The referral's employees work in a state made up
      for the run (CA-<run id>), so routing only ever sees this run's Bob.
      Every step carries an Idempotency-Key (events an id) derived from the run id, so a
      retried step, or the whole demo re-run with the same --run-id, duplicates nothing.

Every command except `api-key create` talks to a running stack (`make run`) over HTTP:
the API at --api, else NEEDFLOW_API_URL, else http://127.0.0.1:<NEEDFLOW_API_PORT>; the
key from --key, else NEEDFLOW_API_KEY, else NEEDFLOW_DEV_API_KEY, else the dev key file
the dev stack writes (<NEEDFLOW_DATA_DIR>/dev-api-key).

Exit codes: 0 done; 1 the API refused or could not be reached; 2 wrong usage or setup.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from cli.main import run
from config import Settings


def main(argv: Sequence[str] | None = None, settings: Settings | None = None,
         environ: Mapping[str, str] | None = None) -> int:  # fmt: skip
    """Run one command line (default: sys.argv) and return its exit code. The code lives
    in `cli/`; the first paragraph of this module's docstring heads --help."""
    return run(argv, settings, environ, description=__doc__.split("\n\n")[0])


if __name__ == "__main__":
    raise SystemExit(main())
