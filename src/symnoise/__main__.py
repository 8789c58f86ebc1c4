"""``python -m symnoise`` (also what ``torchrun -m symnoise train ...`` runs on every rank)."""

from .cli.main import main

raise SystemExit(main())
