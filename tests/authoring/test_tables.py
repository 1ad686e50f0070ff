"""The generated tables authoring reads instead of importing transformers: current with the installed
transformers, and task detection as transformers' own auto-model mappings say."""

from __future__ import annotations

import pytest

from authoring.tasks import detect_task
from generate_tables import (ARCHITECTURES, COMMAND, TOKENIZER_CLASSES, mapping_tasks, render_architectures,
                             render_tokenizer_classes)


@pytest.mark.parametrize("path, render", [(ARCHITECTURES, render_architectures), (TOKENIZER_CLASSES, render_tokenizer_classes)],
                         ids=lambda v: getattr(v, "name", ""))
def test_generated_table_is_current(path, render):
    if path.read_text(encoding="utf-8") != render():
        pytest.fail(f"{path.name} differs from what the installed transformers gives; regenerate it: {COMMAND}")


def test_detection_agrees_with_transformers_mappings():
    """Every architecture transformers maps to a pipeline task gets that task; one that several mappings list
    (BART: masked LM and sequence-to-sequence) gets one of theirs, by the generator's priority."""
    tasks = mapping_tasks()
    assert len(tasks) > 1000
    wrong = {arch: (detect_task({"architectures": [arch]}), options) for arch, options in tasks.items()
             if detect_task({"architectures": [arch]}) != options[0]}
    assert not wrong, f"{len(wrong)} architectures detected otherwise, e.g. {list(wrong.items())[:5]}; run {COMMAND}"
    single = [arch for arch, options in tasks.items() if len(options) == 1]
    assert len(single) > 0.9 * len(tasks)
