"""``python -m ladle`` runs the CLI."""

from __future__ import annotations

import sys

from .cli.cli import main

sys.exit(main())
