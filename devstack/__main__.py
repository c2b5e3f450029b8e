"""`python -m devstack`: the whole local stack (see devstack/__init__.py)."""

from devstack import main

raise SystemExit(main())
