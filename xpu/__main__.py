"""``python -m xpu``: the device doctor (see :mod:`xpu.doctor`)."""

from .doctor import main

raise SystemExit(main())
