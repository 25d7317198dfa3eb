"""``python -m m3lab.training --config FILE`` (the entry point for torchrun)."""
import sys

from .cli import main

sys.exit(main())
