"""The local cluster that jobs start (pretextlab.cluster.start_local_ray): its worker pool."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

# A fresh 2-CPU cluster: 4 half-CPU tasks at once (as the stream's read tasks run) need 4 worker
# processes; after 3 s idle (Ray kills idle workers past its soft limit after 1 s) the next 4 tasks find
# them again, so no process is started.
_PROBE = textwrap.dedent(
    """
    import json, os, shutil, tempfile, time
    import ray
    from pretextlab.cluster import start_local_ray

    start_local_ray(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)

    @ray.remote(num_cpus=0.5)
    def pid(barrier, i):
        # every task waits until all 4 are running (a file each), so none can reuse another's process
        open(os.path.join(barrier, str(i)), "w").close()
        deadline = time.monotonic() + 60
        while len(os.listdir(barrier)) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        return os.getpid()

    def burst():
        barrier = tempfile.mkdtemp()
        try:
            return sorted(set(ray.get([pid.remote(barrier, i) for i in range(4)])))
        finally:
            shutil.rmtree(barrier)

    first = burst()
    time.sleep(3.0)
    second = burst()
    ray.shutdown()
    print("PIDS " + json.dumps({"first": first, "second": second}))
    """
)


def test_the_local_cluster_keeps_idle_workers_for_fractional_tasks():
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_num_workers_soft_limit")}
    proc = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("PIDS "))
    pids = json.loads(line[5:])
    assert len(pids["first"]) == 4, pids  # four tasks ran at once, one process each
    # Ray's default would have killed 2 of the 4 idle workers (it keeps one per free CPU) and started new ones
    assert set(pids["second"]) <= set(pids["first"]), pids
