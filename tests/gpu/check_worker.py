"""check_worker.py -- check h of tests/gpu/check.py: the worker end to end (tests/integration/test_gpu.py).

Runs the pytest with the bundle's programs, redis-server and Celery client: bin/celeriac
--device cuda, the stock client, and /proc/PID/maps of the main process free of CUDA.
"""
import os
import re
import subprocess
import sys

from gpucommon import REPO, Fail, Missing, Skip, log


def child_h(ctx, dev, logf):
    env = dict(ctx["bin_env"])
    env["CELERIAC_GPU_TEST_DEVICE"] = "cpu" if dev == "cpu" else "cuda"
    # the test's own alarm (conftest) fires before this check's limit, so its logs come back
    env.setdefault("CELERIAC_TEST_TIMEOUT", str(int(max(60, ctx["child_timeout"] - 35))))
    xml = os.path.join(ctx["work"], "h-junit.xml")
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-s", "-rfEs", "-x",
           f"--junitxml={xml}", "tests/integration/test_gpu.py"]
    log("$ " + " ".join(cmd))
    r = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, errors="replace", timeout=max(30, ctx["child_timeout"] - 15))
    log(r.stdout[-60000:])
    last = [l for l in r.stdout.strip().splitlines() if re.search(r"passed|failed|skipped|error", l)]
    tail = last[-1] if last else r.stdout.strip()[-150:]
    if r.returncode == 0 and "passed" in tail:
        info = re.findall(r"^GPU-E2E: (.*)$", r.stdout, re.M)
        return tail.strip("= ") + (" | " + info[-1] if info else "")
    if r.returncode == 0 and "skipped" in tail:
        why = re.findall(r"SKIPPED \[\d+\] [^:]+:\d+: (.*)", r.stdout)
        raise Skip("test_gpu.py skipped: " + (why[0] if why else tail))
    fails = re.findall(r"^(?:E\s+|FAILED .*? - )(.*)$", r.stdout, re.M)
    miss = [f for f in fails if "missing:" in f]
    if miss:
        raise Missing(miss[0].split("missing:", 1)[1].strip()[:150])
    raise Fail(tail.strip("= ") + (": " + fails[0][:150] if fails else ""))
