"""``python -m m3lab.experiments cross-device ...``: the process side of :func:`launch_cross_device`."""
import sys

from .launch import _main

sys.exit(_main())
