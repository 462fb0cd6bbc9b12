"""--cores N means N: a job's libraries use the threads its rule declares, whatever they are."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

CHILD = """
import json, sys
import numpy, scipy.linalg, SimpleITK, torch  # BLAS and OpenMP pools loaded before the job starts
from types import SimpleNamespace
from medseg.pipeline.job import job, thread_settings

class Named(dict):
    def items(self):
        return super().items()

smk = SimpleNamespace(log=[], threads=int(sys.argv[1]), params=Named(), wildcards=Named(), rule="probe", input=[],
                      config={})
with job(smk):
    print(json.dumps(thread_settings()))
"""


@pytest.mark.parametrize("threads", [1, 2])
def test_a_job_uses_its_rules_threads_in_every_library(threads):
    r = subprocess.run([sys.executable, "-c", CHILD, str(threads)], capture_output=True, text=True, timeout=120,
                       env={"MEDSEG_TRACKING": "0", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "7"})
    assert r.returncode == 0, r.stderr[-2000:]
    settings = json.loads(r.stdout.strip().splitlines()[-1])
    assert settings["torch"] == settings["sitk"] == settings["omp_env"] == threads
    assert settings["torch_interop"] == threads
    pools = {k: v for k, v in settings.items() if ":" in k}
    assert pools and all(v == threads for v in pools.values()), pools  # every BLAS / OpenMP pool loaded
