"""`python -m devstack`: the whole local stack (see devstack/stack.py)."""

from devstack.stack import main

raise SystemExit(main())
