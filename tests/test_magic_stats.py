import json

import pytest

from clearglass.errors import ClearglassError
from clearglass.magic.schema import load_concepts
from clearglass.magic.stats import dataset_stats, format_stats
from tiny_magic import write_tiny_magic


def test_stats_counts(tmp_path):
    stats = dataset_stats(load_concepts(write_tiny_magic(tmp_path, concepts=4, images_per_concept=3, held_out=1)))
    json.dumps(stats)
    assert stats["concepts"] == 5 and stats["held_out_concepts"] == 1
    assert stats["splits"]["train"] == {"concepts": 4, "images": 12, "old_captions": 24, "new_captions": 24}
    assert stats["splits"]["test"]["images"] == 0
    assert stats["group_size"]["histogram"] == {"0": 1, "2-4": 4}
    assert stats["hard_negatives"]["coverage"] == 1.0
    assert stats["distinct_per_level"] == {"level1": 4, "level2": 2, "level3": 1, "level4": 0}
    text = format_stats(stats)
    assert "concepts: 5 (1 held out)" in text and "2-4: 4" in text


def test_duplicate_concepts_are_an_error_naming_both_records(tmp_path):
    concepts = load_concepts(write_tiny_magic(tmp_path, concepts=3, images_per_concept=1, held_out=0))
    concepts.append(concepts[1])
    with pytest.raises(ClearglassError, match=r"m.json: concept records 1 and 3 are both 'concept1': expected unique"):
        dataset_stats(concepts, "m.json")
