"""Reading a build's configuration must not cost a TensorFlow import (seconds, and gigabytes of wheels)."""

import subprocess
import sys

from tests.conftest import REPO


def test_importing_the_config_and_its_presets_imports_no_keras_or_tensorflow() -> None:
    code = ("import sys; from model_build.config import preset; preset('full'); preset('fast'); "
            "print(sorted(m for m in ('keras', 'tensorflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_student_config_keeps_its_name_in_the_stage_keys() -> None:
    """Stage keys hash the config's repr: moving the class out of student.py must not change it."""
    from model_build.config import preset

    assert repr(preset("full").student).startswith("StudentConfig(architecture='cnn', embed_dim=384,")
