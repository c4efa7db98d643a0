"""``python -m resender.cli``: the same command as the ``resender`` console script."""

from resender.cli.main import main

raise SystemExit(main())
