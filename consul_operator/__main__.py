"""``python -m consul_operator`` is the ``operator`` command."""

from consul_operator.cli.main import main

raise SystemExit(main())
