"""`python -m tortoise.webui`: the same as the `turtle` command."""
from tortoise.webui import main

raise SystemExit(main())
