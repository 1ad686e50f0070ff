"""The runtime module the tests exercise: the installed file, or a vendored copy.

Set ONNXMETA_RUNTIME_FILE=/path/to/onnxmeta_runtime.py to run the runtime tests against a copy.
"""

import importlib.util
import os

_path = os.environ.get("ONNXMETA_RUNTIME_FILE")
if _path:
    _spec = importlib.util.spec_from_file_location("onnxmeta_runtime_under_test", _path)
    rt = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(rt)
else:
    import onnxmeta_runtime as rt

__all__ = ["rt"]
