"""The software versions a unit's summary records come from package metadata: the
post-processing worker processes never import TensorFlow or ANTsPy just to read a version."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_versions_without_importing_tensorflow():
    code = ("import json, sys; from shiva_bids.pipelines.shiva import _versions; "
            "print(json.dumps([_versions(), 'tensorflow' in sys.modules, 'ants' in sys.modules]))")
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         check=True)
    versions, tf_loaded, ants_loaded = json.loads(run.stdout)
    assert not tf_loaded and not ants_loaded
    import ants
    import tensorflow as tf
    assert versions["tensorflow"] == tf.__version__
    assert versions["antspyx"] == ants.__version__
    import openvino
    assert openvino.__version__.startswith(versions["openvino"])


def test_an_absent_package_reads_as_unknown():
    from shiva_bids.models.engines import installed_version
    assert installed_version("no-such-distribution-shiva") == "?"
    assert installed_version("no-such-distribution-shiva", "numpy") != "?"
