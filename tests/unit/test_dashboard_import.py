"""The API process loads optuna-dashboard without scikit-learn (service/routes/dashboard.py)."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import sys
from droptune.service.routes.dashboard import _import_dashboard_wsgi
wsgi = _import_dashboard_wsgi()
assert callable(wsgi)
assert "sklearn" not in sys.modules, sorted(m for m in sys.modules if m.startswith("sklearn"))
import sklearn.ensemble  # refused only while the dashboard loaded, not for good
assert sys.modules["sklearn.ensemble"] is not None
print("ok")
"""


def test_the_dashboard_loads_without_scikit_learn_and_leaves_it_importable() -> None:
    r = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
