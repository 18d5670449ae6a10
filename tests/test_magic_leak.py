from clearglass.magic.leak import concept_words, leaked_words, strip_words, word_forms


def test_concept_words_drop_function_words():
    assert concept_words("Food and Drink") == {"food", "drink"}
    assert concept_words("arts and crafts") == {"arts", "crafts"}


def test_plural_and_singular_forms_match():
    assert {"fruits", "fruit"} <= word_forms("fruit")
    assert "berries" in word_forms("berry") and "berry" in word_forms("berries")
    assert "animal" in word_forms("animals")
    assert leaked_words("Two Fruits and a FOOD tray", ("fruit", "food and drink", None, None)) == ["fruits", "food"]


def test_word_boundaries():
    levels = ("fruit", "food and drink", None, None)
    assert leaked_words("grapefruit on seafood", levels) == []
    assert leaked_words("a fruit-bowl", levels) == ["fruit"]
    assert leaked_words("anything", (None, None, None, None)) == []


def test_strip_words():
    assert strip_words("a mammal and a bird", ("mammal", None, None, None)) == "a and a bird"
