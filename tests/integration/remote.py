"""remote.py -- helpers shared by the inspect/control/events tests (not a test file).

`cli()` runs the real `celery -A pydiag ...` command (pydiag is the tiny test app module in this
directory; it reads its broker from CELERY_BROKER_URL), bounded in time.
"""

import os
import subprocess

from conftest import HERE, PYTHON, scaled


def cli(broker_url, *args, timeout=30):
    env = dict(os.environ, CELERY_BROKER_URL=broker_url, PYTHONPATH=HERE)
    env.pop("CELERY_RESULT_BACKEND", None)
    return subprocess.run([PYTHON, "-m", "celery", "-A", "pydiag", *args], cwd=HERE, env=env,
                          capture_output=True, text=True, timeout=scaled(timeout))


def only(replies):
    """The single node's value from a control reply list [{node: value}]."""
    assert len(replies) == 1, replies
    return next(iter(replies[0].values()))
