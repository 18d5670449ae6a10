from pathlib import Path

import pytest

from clearglass.magic.labelers import LabelFailure, make_labeler
from clearglass.magic.labelers.wordnet import LEXNAMES, lexnames_text, wordnet_data_dir
from clearglass.magic.leak import leaked_words
from clearglass.magic.sources import SourceItem


@pytest.fixture(scope="module")
def labeler(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("CLEARGLASS_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield make_labeler("wordnet")
    mp.undo()


def item(*captions):
    return SourceItem("x.jpg", Path("/x.jpg"), list(captions))


def test_lexnames_standard_file():
    lines = lexnames_text().splitlines()
    assert len(LEXNAMES) == 45 and lines[0] == "00\tadj.all\t3" and lines[3] == "03\tnoun.Tops\t1"
    assert lines[44] == "44\tadj.ppl\t3" and lines[29] == "29\tverb.body\t2"


def test_data_dir_holds_real_files(tmp_path):
    corpus = wordnet_data_dir(cache=tmp_path) / "corpora" / "wordnet"
    assert (corpus / "lexnames").read_text() == lexnames_text()
    assert not (corpus / "data.noun").is_symlink() and (corpus / "data.noun").stat().st_size > 10_000_000


def test_chain_rule_on_real_wordnet(labeler):
    [dog, rooster] = labeler.label_many([item("a dog running in the park", "a brown dog with a ball"),
                                         item("just a rooster", "a rooster on a fence")])
    assert dog.levels == ("canine", "mammal", "animal", "whole")
    assert rooster.levels == ("chicken", "bird", "animal", "whole")
    assert "turkey" in rooster.hard_negatives and "chicken" not in rooster.hard_negatives
    for label in (dog, rooster):
        assert not any(leaked_words(c, label.levels) for c in label.new_captions)


def test_plants_in_captions_are_labelled_as_food(labeler):
    banana, apple, tree, dog = labeler.label_many([
        item("a banana on a plate", "two bananas"), item("a red apple on a table"),
        item("a tall tree in a field"), item("a dog running in the park")])
    assert banana.levels == ("edible fruit", "produce", "food", "solid")  # not banana.n.01, a herb
    assert apple.levels[:3] == ("edible fruit", "produce", "food")  # the food path, not pome -> plant part
    assert "vegetable" in banana.hard_negatives  # siblings along the food path
    assert tree.levels[0] == "woody plant" and "plant" in tree.levels  # no food sense: stays a plant
    assert dog.levels[0] == "canine"  # a first sense that is no plant never becomes food (frank.n.02)


def test_head_noun_is_the_most_frequent(labeler):
    [label] = labeler.label_many([item("a bus next to a car", "a red bus", "buses on the street")])
    assert label.levels[0] == "public transport"


def test_no_physical_noun_is_a_failure(labeler):
    [failure] = labeler.label_many([item("it is very good", "just there")])
    assert isinstance(failure, LabelFailure) and "physical" in failure.reason
