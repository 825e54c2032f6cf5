import os
import subprocess
import sys

import pytest

from restpg_dspy import allocator
from restpg_dspy.allocator import JEMALLOC_CONF, allocator_env, find_jemalloc

JEMALLOC = find_jemalloc()
needs_jemalloc = pytest.mark.skipif(JEMALLOC is None, reason="no libjemalloc on this machine (make setup installs it)")


def test_system_or_an_already_preloaded_jemalloc_changes_nothing(monkeypatch):
    monkeypatch.setattr(allocator, "find_jemalloc", lambda: "/opt/lib/libjemalloc.so.2")
    assert allocator_env({"RESTPG_ALLOCATOR": "system"}) is None
    assert allocator_env({"LD_PRELOAD": "/somewhere/libjemalloc.so.2"}) is None


def test_a_machine_without_jemalloc_keeps_glibc(monkeypatch):
    monkeypatch.setattr(allocator, "find_jemalloc", lambda: None)
    assert allocator_env({}) is None


def test_jemalloc_goes_first_and_the_callers_settings_stay(monkeypatch):
    monkeypatch.setattr(allocator, "find_jemalloc", lambda: "/opt/lib/libjemalloc.so.2")
    env = allocator_env({"LD_PRELOAD": "/opt/lib/libother.so", "PATH": "/bin"})
    assert env == {
        "LD_PRELOAD": "/opt/lib/libjemalloc.so.2 /opt/lib/libother.so",
        "MALLOC_CONF": JEMALLOC_CONF,
        "PATH": "/bin",
    }
    assert allocator_env({"MALLOC_CONF": "narenas:1"})["MALLOC_CONF"] == "narenas:1"


SCRIPT = """
import sys
from restpg_dspy.allocator import restart_with_jemalloc
restart_with_jemalloc()
print(sum("jemalloc" in line for line in open("/proc/self/maps")) > 0, sys.argv[1:])
"""


@needs_jemalloc
@pytest.mark.parametrize(("setting", "loaded"), [("jemalloc", "True"), ("system", "False")])
def test_a_process_starts_again_with_jemalloc_loaded_unless_told_not_to(tmp_path, setting, loaded):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF")}
    env["RESTPG_ALLOCATOR"] = setting
    done = subprocess.run(
        [sys.executable, str(script), "--flag", "value"], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.split() == [loaded, "['--flag',", "'value']"]
