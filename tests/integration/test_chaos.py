"""test_chaos.py -- one small round of scripts/chaos: kill -9 main, executors and Redis under load.

On both brokers: on AMQP the tasks come from the session's rabbitmq-server, which the chaos
also restarts (stop_app + start_app), and Redis holds only the results.

500 mixed tasks (diag and model tasks) drain from a Redis with append-only persistence while
the main process, executors and Redis are killed with SIGKILL at random moments (each at
least once) and brought back. Every task must reach a final state with the right value (or
the WorkerLostError of a task whose executor was killed); none may be lost. The tasks run
twice (at-least-once: their ack was lost) are counted and shown. `make chaos` runs the full
5 rounds of 3,000.
"""

import os
import random
from importlib.machinery import SourceFileLoader

from conftest import REPO, both_brokers, celeriac_bin_dir, celeriac_only

chaos = SourceFileLoader("chaos", os.path.join(REPO, "scripts", "chaos")).load_module()


@celeriac_only
@both_brokers
def test_chaos_round_loses_nothing(tmp_path, broker, request):
    seed = int(os.environ.get("CELERIAC_CHAOS_SEED", random.randrange(1 << 30)))
    rabbit = request.getfixturevalue("rabbit_server") if broker == "amqp" else None
    lines = []
    counts = chaos.run_round(celeriac_bin_dir(), 500, 2, random.Random(seed), str(tmp_path),
                             log=lines.append, rabbit=rabbit)
    report = f"seed {seed}: " + ", ".join(f"{k} {v}" for k, v in counts.items())
    print(report)
    assert counts["lost"] == 0, report + "\n" + "\n".join(lines)
    assert counts["wrong"] == 0, report + "\n" + "\n".join(lines)
    assert counts["ok"] + counts["failed-by-kill"] == counts["tasks"]
    assert counts["killed-main"] and counts["killed-redis"] and counts["killed-executor"], report
    assert counts.get("killed-broker", 1), report
