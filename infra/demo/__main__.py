"""`python -m infra.demo`: see `infra.demo.run`."""

from infra.demo.run import main

raise SystemExit(main())
