"""Task lookup by name: a broken task module fails loudly for that task alone (issue 16, item 12)."""
from __future__ import annotations

import subprocess
import sys
import textwrap

# Runs in a fresh interpreter so that no task is registered or imported yet. The finder makes
# `frozenlm.tasks.motion` fail to import, as a missing optional dependency or a bug would.
SCRIPT = textwrap.dedent("""
    import importlib.abc, sys
    class Broken(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "frozenlm.tasks.motion":
                raise ImportError("No module named 'some_dependency' (simulated)")
    sys.meta_path.insert(0, Broken())
    from frozenlm.engine import get_task
    try:
        get_task("motion")
    except ImportError as e:
        print("motion:ImportError:", e)
    except KeyError as e:
        print("motion:KeyError:", e)
    try:
        print("vqa:", type(get_task("vqa")).__name__)
    except Exception as e:
        print("vqa:", type(e).__name__, e)
""")


def test_a_broken_task_module_names_its_error_and_hides_no_other_task():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300).stdout
    assert "motion:ImportError:" in out and "some_dependency" in out and "frozenlm.tasks.motion" in out, out
    assert "vqa: VQATask" in out, out


def test_unknown_task_lists_the_known_ones():
    import pytest
    from frozenlm.engine import get_task, registered_tasks
    with pytest.raises(KeyError, match="known tasks") as e:
        get_task("imgae")
    assert "image" in str(e.value)
    assert {"image", "video", "pointcloud", "motion", "vqa", "retrieval", "sqa3d"} <= set(registered_tasks())


def test_every_run_gets_a_fresh_task_object_and_user_tasks_must_be_classes():
    import pytest
    from frozenlm.engine import get_task, register_task
    from frozenlm.engine.task import task_schema
    a, b = get_task("sqa3d"), get_task("sqa3d")
    assert type(a) is type(b) and a is not b  # no state shared between runs

    @register_task("test_user_task")
    class UserTask:
        primary_metric, config_keys = "acc", ("data.n",)

    assert isinstance(get_task("test_user_task"), UserTask) and get_task("test_user_task") is not get_task("test_user_task")
    assert task_schema("test_user_task").allows("data.n") and not task_schema("test_user_task").allows("data.m")
    with pytest.raises(TypeError, match="decorates a task class"):
        register_task("test_instance")(UserTask())
