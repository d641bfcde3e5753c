import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from embcache.cache.tokenize import KERAS_FILTERS, TokenizerSettings, make_tokenizer

tokenize = make_tokenizer()


def keras_reference():
    try:
        from keras.src.legacy.preprocessing.text import text_to_word_sequence
    except ImportError:  # pragma: no cover - older or newer Keras layouts
        from tensorflow.keras.preprocessing.text import text_to_word_sequence
    return text_to_word_sequence


def test_known_outputs():
    assert tokenize("Hello, World!") == ["hello", "world"]
    assert tokenize("It's a dog's-life\tyes\nno") == ["it's", "a", "dog's", "life", "yes", "no"]
    assert tokenize("  multiple   spaces ") == ["multiple", "spaces"]
    # Keras splits on " " only: \r and non-breaking spaces stay inside tokens.
    assert tokenize("a\rb c\u00a0d") == ["a\rb", "c\u00a0d"]
    assert tokenize("e-mail: x@y.com") == ["e", "mail", "x", "y", "com"]
    assert tokenize("") == []
    assert tokenize("ÉCOLE Über") == ["école", "über"]


def test_settings_are_recorded_and_respected():
    s = TokenizerSettings(lower=False, filters="!", split=" ")
    assert make_tokenizer(s)("Hi! There.") == ["Hi", "There."]
    assert TokenizerSettings.from_dict(s.to_dict()) == s
    assert TokenizerSettings().filters == KERAS_FILTERS


REFERENCE = keras_reference()


@pytest.mark.slow
@settings(deadline=None, max_examples=300)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=200))
def test_parity_with_keras(text):
    assert tokenize(text) == REFERENCE(text)
