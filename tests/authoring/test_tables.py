"""The generated tables authoring reads instead of importing transformers: current with the installed
transformers, and task detection as transformers' own auto-model mappings say."""

from __future__ import annotations

import pytest

from authoring.tasks import ARCHITECTURE_OVERRIDES, detect_task
from runtime_under_test import rt
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
             if detect_task({"architectures": [arch]}) != options[0] and arch not in ARCHITECTURE_OVERRIDES}
    assert not wrong, f"{len(wrong)} architectures detected otherwise, e.g. {list(wrong.items())[:5]}; run {COMMAND}"
    single = [arch for arch, options in tasks.items() if len(options) == 1]
    assert len(single) > 0.9 * len(tasks)


# Where the runtime answers a task transformers' mappings do not give the class: CLAP's two towers as zero-shot audio
# classification (transformers maps ClapModel to feature extraction only, yet its zero-shot pipeline runs it), a
# VisionEncoderDecoderModel as image-to-text (transformers 5 maps it to image-text-to-text, whose pipeline cannot run it;
# the runtime answers to both names).
OVERRIDDEN = {"ClapModel": ["feature-extraction"], "VisionEncoderDecoderModel": ["image-text-to-text"]}


def test_overrides_are_the_known_ones_and_tasks_the_runtime_runs():
    tasks = mapping_tasks()
    assert {arch: tasks.get(arch) for arch in ARCHITECTURE_OVERRIDES} == OVERRIDDEN
    for arch, task in ARCHITECTURE_OVERRIDES.items():
        assert task in rt.TASKS
        assert detect_task({"architectures": [arch]}) == task
    assert rt.TASK_ALIASES["image-text-to-text"] == "image-to-text"
