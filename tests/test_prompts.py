from __future__ import annotations

import pytest

from funnel_tl import FunnelError, load_prompts
from funnel_tl.prompts.sets import SEED_PROMPTS, prompts_sha256
from funnel_tl.prompts.tokens import make_batches, padding_fraction, tokenize


def test_seed_prompts_are_the_notebooks():
    assert len(SEED_PROMPTS) == 8
    assert SEED_PROMPTS[0] == "The capital of France is Paris, which is known for the Eiffel Tower."
    assert SEED_PROMPTS[-1] == "Mount Everest is the highest mountain on Earth, located in the Himalayas"


def test_batches_bucket_by_length_and_mask_padding():
    token_ids = [[1] * 5, [2] * 1, [3] * 9, [4] * 2]
    batches = list(make_batches(token_ids, batch_size=2, pad_token_id=0))
    assert [b.indices for b in batches] == [[1, 3], [0, 2]]
    first = batches[0]
    assert first.tokens.tolist() == [[2, 0], [4, 4]]
    assert first.attention_mask.tolist() == [[1, 0], [1, 1]]
    assert padding_fraction(batches) == pytest.approx(1 - 17 / (2 * 2 + 2 * 9))
    assert padding_fraction(make_batches(token_ids, batch_size=1)) == 0


def test_tokenize_is_the_tokenizers_own(tokenizer):
    assert tokenize(tokenizer, ["hello world"]) == [tokenizer("hello world")["input_ids"]]
    with pytest.raises(FunnelError, match="empty after tokenization"):
        tokenize(tokenizer, [""])


def test_sha_depends_on_order():
    assert prompts_sha256(["a", "b"]) != prompts_sha256(["b", "a"])


def test_list_input_is_checked():
    with pytest.raises(FunnelError, match="no prompts"):
        load_prompts([])


def test_missing_file_with_another_extension_is_named_as_a_file(tmp_path):
    """``--prompts data.csv`` (missing) is a file name: the message lists the formats, not the
    Python advice to wrap a prompt in a list, which stays for text given where a file was expected."""
    with pytest.raises(FunnelError, match=r"prompt file not found: \S*data\.csv; prompt files are \.txt") as caught:
        load_prompts(tmp_path / "data.csv")
    assert "pass it in a list" not in str(caught.value)
    with pytest.raises(FunnelError, match=r"pass it in a list, \['What is 2. And 3'\]"):
        load_prompts("What is 2. And 3")
    with pytest.raises(
        FunnelError, match=r"pass it in a list, \['Paris'\], or on the command line write it to a \.txt file"
    ):
        load_prompts("Paris")  # the same message reaches `funnel-tl run --prompts Paris`, where a list cannot be typed


# ---- built-in prompt sets -----------------------------------------------------------------------
def test_the_varied_set_is_three_kinds_of_english_in_the_stated_numbers():
    import collections
    import json

    from funnel_tl.prompts.sets import PROMPT_SET_DIR, PROMPT_SETS

    assert set(PROMPT_SETS) == {"seed", "varied"}
    records = [json.loads(line) for line in (PROMPT_SET_DIR / "varied.jsonl").read_text(encoding="utf-8").splitlines()]
    prompts = load_prompts("varied")
    assert prompts == [record["text"] for record in records]
    assert len(prompts) == 300 and len(set(prompts)) == 300
    sources = collections.Counter(record["source"].split("/")[0] for record in records)
    assert sources == {"devil": 120, "jargon": 120, "pydoc": 60}  # as prompt_sets/README.md says
    # Passages, not lines: 25 to 120 words each (scripts/build_prompt_sets.py).
    assert all(25 <= len(text.split()) <= 120 for text in prompts)


def test_the_python_passages_are_held_out_from_the_bundled_models_training():
    import json

    from funnel_tl.prompts.corpus import is_heldout
    from funnel_tl.prompts.sets import PROMPT_SET_DIR

    names = [json.loads(line)["source"] for line in (PROMPT_SET_DIR / "varied.jsonl").read_text().splitlines()]
    documents = {name.removeprefix("pydoc/").split("#")[0] for name in names if name.startswith("pydoc/")}
    assert documents and all(is_heldout(document) for document in documents)


def test_the_varied_set_fits_the_bundled_models_context():
    from transformers import AutoTokenizer

    from funnel_tl.models.loading import bundled_models

    tokenizer = AutoTokenizer.from_pretrained(bundled_models()["nano-8l"])
    lengths = [len(ids) for ids in tokenizer(load_prompts("varied"))["input_ids"]]
    assert max(lengths) <= 256  # the nano models' context: no --max-tokens-per-prompt needed


def test_the_varied_set_is_frozen():
    # The file is the set: a change to it must be deliberate (rebuild, then update this sha256).
    assert prompts_sha256(load_prompts("varied")) == VARIED_SHA256


VARIED_SHA256 = "36b6b9593b95f9dac0ab008f53c7cdc18de671fe5265ab67439a9cc9129932bc"
