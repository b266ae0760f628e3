"""Text as it grows: incremental decoding, stop strings across token boundaries, tokens held back with their text."""

from __future__ import annotations

import itertools

import pytest

from adapterfleet.worker.logprobs import Logprob, TokenLogprobs
from adapterfleet.worker.text_stream import Decoder, Output, StopStrings
from tests.helpers.tokenizer import save_char_tokenizer


@pytest.fixture(scope="module")
def chars(tmp_path_factory):
    from transformers import AutoTokenizer

    path = save_char_tokenizer(tmp_path_factory.mktemp("chars"), 128)
    return AutoTokenizer.from_pretrained(str(path))


@pytest.fixture(scope="module")
def byte_level():
    """Byte-level BPE without merges: every UTF-8 byte is a token, so 'é' and '€' span 2 and 3 tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def test_incremental_decoding_equals_decoding_the_whole(chars, byte_level):
    for tok, text in ((chars, "Hello, world: 42 + 1 = 43!"), (byte_level, "héllo € wörld")):
        ids = tok(text)["input_ids"]
        d = Decoder(tok)
        seen = []
        for t in ids:
            d.add([t])
            seen.append(d.text)
            assert "\ufffd" not in d.text  # a character split over tokens waits for its last byte
        assert d.text == tok.decode(ids, skip_special_tokens=True) == text
        assert all(b.startswith(a) for a, b in itertools.pairwise(seen))  # text only ever grows


def test_stop_strings_are_found_across_boundaries_and_prefixes_are_held():
    stops = StopStrings(["END", "\n\n"])
    assert stops.find("abcEN", 0) is None and stops.may_start("abcEN")
    assert stops.find("abcEND", 5) == 3  # the stop began in text already checked
    assert stops.find("x\n\nEND", 0) == 1  # the earliest wins
    assert not stops.may_start("abcE.")


def lp(t: int) -> TokenLogprobs:
    return TokenLogprobs(Logprob(t, -0.5))


def test_output_holds_tokens_with_their_text_and_cuts_at_the_stop(chars):
    ids = chars("ab STOP cd")["input_ids"]
    out = Output(chars, StopStrings(["STOP"]))
    sent = []
    for t in ids:  # as the service does: the stream ends with the first finished piece
        piece = out.add([t], False, "", lp(t))
        if piece is not None:
            sent.append(piece)
            if piece.finished:
                break
    assert "".join(p.text for p in sent) == "ab "
    assert sent[-1].finished and sent[-1].finish_reason == "stop"
    tokens = [t for p in sent for t in p.token_ids]
    assert tokens == ids[: len("ab STOP")]  # the tokens that made the stop string are reported with the last piece
    assert [x.chosen.token_id for p in sent for x in p.logprobs] == tokens
    assert sent[-1].completion_tokens == len(tokens)
    for p in sent[:-1]:  # every earlier piece: its text is exactly the text of its tokens
        assert chars.decode(list(p.token_ids)) == p.text


def test_a_prefix_that_does_not_become_a_stop_is_released(chars):
    out = Output(chars, StopStrings(["STOP"]))
    ids = chars("aSTaSTOb")["input_ids"]
    pieces = [out.add([t], i == len(ids) - 1, "length" if i == len(ids) - 1 else "", None)
              for i, t in enumerate(ids)]
    assert [None if p is None else p.text for p in pieces] == ["a", None, None, "STa", None, None, None, "STOb"]
    assert pieces[1] is None and pieces[2] is None  # "S", "ST": may start "STOP"
    assert pieces[3] is not None and pieces[3].text == "STa" and list(pieces[3].token_ids) == ids[1:4]
    assert pieces[-1].finished and pieces[-1].finish_reason == "length"


def test_a_resumed_stream_continues_its_text_and_count(chars):
    resumed = chars("hello ")["input_ids"]
    out = Output(chars, StopStrings(["lo w"]), resumed)
    piece = out.add(chars("w")["input_ids"], False, "", None)
    assert piece is not None and piece.finished and piece.text == ""  # the stop began in the resumed text
    assert piece.completion_tokens == len(resumed) + 1


def test_without_a_tokenizer_tokens_pass_at_once():
    out = Output(None, StopStrings([]))
    piece = out.add([5], False, "", None)
    assert piece is not None and piece.token_ids == [5] and piece.text == "" and piece.completion_tokens == 1
