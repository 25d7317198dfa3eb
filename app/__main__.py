"""``python -m app``: start the m3lab explorer."""
import sys

from app.main import main

sys.exit(main())
