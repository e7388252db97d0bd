"""`python -m tests.conformance ...`: same as `python tests/conformance/runner.py ...`."""

from .runner import main

raise SystemExit(main())
