"""The image-to-image oracle: transformers 4.57's ImageToImagePipeline (transformers 5 removed it).

Run by the test suite with the Python of the Optimum environment (tests/models/helpers.optimum_python(), which has
transformers 4.57); nothing it computes is checked in:

    python tests/oracles/image_to_image.py MODEL_FOLDER OUT_FOLDER IMAGE...

Each image (a path) goes through the pipeline alone and its output is saved as OUT_FOLDER/<n>.png, n its position;
an image the pipeline refuses gets OUT_FOLDER/<n>.error holding the error. The pipeline gets transformers 4.57's
Swin2SRImageProcessor with the folder's padding (transformers 5 saves it as size_divisor, which 4.57 calls pad_size).
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path


def main() -> int:
    import transformers
    from transformers import Swin2SRForImageSuperResolution, Swin2SRImageProcessor, pipeline

    if not transformers.__version__.startswith("4."):
        print(f"needs transformers 4.x (the last with the image-to-image pipeline), found {transformers.__version__}",
              file=sys.stderr)
        return 2
    transformers.logging.set_verbosity_error()
    warnings.simplefilter("ignore")
    folder, out = Path(sys.argv[1]), Path(sys.argv[2])
    config = json.loads((folder / "preprocessor_config.json").read_text())
    processor = Swin2SRImageProcessor(do_rescale=config.get("do_rescale", True),
                                      rescale_factor=config.get("rescale_factor", 1 / 255), do_pad=config.get("do_pad", True),
                                      pad_size=config.get("size_divisor") or config.get("pad_size") or 8)
    model = Swin2SRForImageSuperResolution.from_pretrained(folder).eval()
    upscaler = pipeline("image-to-image", model=model, image_processor=processor, device="cpu")
    for n, path in enumerate(sys.argv[3:]):
        try:
            upscaler(path).save(out / f"{n}.png")
        except Exception as exc:  # noqa: BLE001 - the error is the oracle's answer for that image
            (out / f"{n}.error").write_text(f"{type(exc).__name__}: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
