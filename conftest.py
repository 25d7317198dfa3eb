"""Root pytest setup, shared by tests/ and the notebooks run through nbmake."""
import os
from pathlib import Path

_shared = Path(__file__).resolve().parent.parent / "shared" / "data"
if "M3LAB_DATA_DIR" not in os.environ and (_shared / "xquad").is_dir():
    os.environ["M3LAB_DATA_DIR"] = str(_shared)
# Notebooks executed by the test run use their small CPU settings (see notebooks/README.md).
os.environ.setdefault("SMOKE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
