"""``python -m consul_operator`` is the ``operator`` command."""

from consul_operator.main import main

raise SystemExit(main())
