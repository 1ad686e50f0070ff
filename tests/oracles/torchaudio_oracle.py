"""The torchaudio oracle: what transformers computes when torchaudio is installed.

transformers' audio pipelines resample {"raw", "sampling_rate"} inputs with torchaudio.functional.resample, and
ASTFeatureExtractor uses torchaudio's Kaldi filter bank when torchaudio is importable. torchaudio is not installed
beside torch 2.13 (no release matches it); the test suite runs this script with a --target install of it on
PYTHONPATH (tests/models/audio_models.torchaudio_site()); nothing it computes is checked in:

    PYTHONPATH=<torchaudio folder> python tests/oracles/torchaudio_oracle.py WORK_FOLDER

WORK_FOLDER holds signals.npz (named float32 arrays) and requests.json, a list of
{"name": ..., "op": "resample", "signal": ..., "orig": rate, "new": rate} or
{"name": ..., "op": "ast", "signal": ..., "config": {ASTFeatureExtractor arguments}};
the answers are written to WORK_FOLDER/answers.npz under each request's name.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> int:
    import numpy as np
    import torch
    from torchaudio import functional

    folder = Path(sys.argv[1])
    requests = json.loads((folder / "requests.json").read_text())
    answers = {}
    with np.load(folder / "signals.npz") as signals:
        for request in requests:
            signal = signals[request["signal"]]
            if request["op"] == "resample":
                answers[request["name"]] = functional.resample(torch.from_numpy(signal), request["orig"], request["new"]).numpy()
            else:
                from transformers import ASTFeatureExtractor
                from transformers.utils import is_speech_available

                if not is_speech_available():
                    print("transformers does not see torchaudio", file=sys.stderr)
                    return 2
                extractor = ASTFeatureExtractor(**request["config"])
                answers[request["name"]] = extractor(signal, sampling_rate=extractor.sampling_rate, return_tensors="np")["input_values"]
    np.savez(folder / "answers.npz", **answers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
