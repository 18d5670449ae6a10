from pathlib import Path

import pytest

from clearglass.errors import ClearglassError
from clearglass.magic.labelers import ConceptLabel, Labeler, LabelFailure, make_labeler
from clearglass.magic.sources import SourceItem


def item(captions, hierarchy=("fruit", "food and drink")):
    return SourceItem("images/x.png", Path("/x.png"), captions, hierarchy)


def test_levels_are_the_source_hierarchy_and_captions_lose_chain_words():
    labeler = make_labeler("truth")
    assert isinstance(labeler, Labeler) and labeler.name == "truth"
    [label] = labeler.label_many([item(["a banana", "a banana and other fruits"])])
    assert label == ConceptLabel(("fruit", "food and drink", None, None), ["a banana", "a banana and other"])


def test_only_chain_words_is_a_failure_and_no_hierarchy_is_an_error():
    labeler = make_labeler("truth")
    assert isinstance(labeler.label_many([item(["Fruit", "food"])])[0], LabelFailure)
    with pytest.raises(ClearglassError, match="needs the source's concept chain: .*--csv-level-keys COL"):
        labeler.label_many([item(["a cat"], None)])


def test_a_caption_written_from_the_concept_keeps_its_words():
    """A template caption cut to its bare template would be one text for every concept: it stays whole."""
    templated = SourceItem("images/x.png", Path("/x.png"), ["a picture of a fruit"], ("fruit", "food and drink"),
                           names_concept=True)
    [label, plain] = make_labeler("truth").label_many([templated, item(["a picture of a fruit"])])
    assert label.new_captions == ["a picture of a fruit"] and plain.new_captions == ["a picture of a"]


def test_unknown_labeler():
    with pytest.raises(ClearglassError, match="unknown labeler"):
        make_labeler("oracle")
