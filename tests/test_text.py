"""Text encoders: the built-in byte-level encoder, local Hugging Face encoders through hf:, the prompt cache."""

from __future__ import annotations

import sys

import pytest
import torch

from kinema import config as cfg
from kinema.errors import KinemaError
from kinema.models.checkpoint import load_model, save_model
from kinema.models.text import (
    ByteTokenizer,
    HFTextEncoder,
    TextEncoder,
    TextEncoderConfig,
    load_text_encoder,
    pad_tokens,
    text_small,
    text_tiny,
)

PROMPTS = ["a small red circle moving right", "a large blue square staying still and a small green triangle moving up", ""]
WORDS = sorted({w for p in PROMPTS for w in p.split()} | {"yellow", "left"})


def count_calls(module: torch.nn.Module) -> list[int]:
    calls = [0]
    module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


# ----------------------------------------------------------------------------- byte tokenizer


def test_byte_tokenizer_round_trip_padding_and_truncation():
    tok = ByteTokenizer(max_length=16)
    ids, mask = tok(["héllo", "", "a" * 40])
    assert ids.shape == (3, 16) and mask.dtype == torch.bool
    assert tok.decode(ids[0]) == "héllo"
    assert mask.sum(1).tolist() == [len("héllo".encode()) + 2, 2, 16]  # BOS + bytes + EOS, truncated to 16
    assert ids[1, :2].tolist() == [tok.BOS, tok.EOS] and (ids[1, 2:] == tok.PAD).all()
    assert ids[2, -1] == tok.EOS  # EOS survives truncation
    assert tok.decode(ids[2]) == "a" * 14


# ----------------------------------------------------------------------------- built-in encoder


def test_builtin_shapes_and_mask():
    enc = TextEncoder(text_tiny()).eval()
    tokens, mask = enc.encode(PROMPTS)
    lengths = [min(len(p.encode()) + 2, enc.config.max_length) for p in PROMPTS]
    assert tokens.shape == (3, max(lengths), enc.dim) and mask.shape == (3, max(lengths))
    assert mask.sum(1).tolist() == lengths
    assert (tokens[~mask] == 0).all()  # padded positions are zero
    assert tokens[mask].abs().sum(-1).min() > 0


def test_builtin_padding_content_changes_nothing():
    enc = TextEncoder(text_tiny()).eval()
    ids, mask = enc.tokenizer(PROMPTS)
    out = enc(ids, mask)
    garbage = ids.clone()
    garbage[~mask] = torch.randint(3, 259, (int((~mask).sum()),))
    torch.testing.assert_close(enc(garbage, mask), out, atol=1e-6, rtol=1e-6)
    # A prompt's tokens do not depend on the rest of its batch.
    alone, _ = enc.encode(PROMPTS[:1])
    torch.testing.assert_close(out[:1, : alone.shape[1]], alone, atol=1e-6, rtol=1e-6)


def test_builtin_save_load_round_trip(tmp_path):
    enc = TextEncoder(text_tiny(dim=48, num_heads=4)).eval()
    save_model(enc, tmp_path, "text")
    loaded = load_model(tmp_path, "text").eval()
    assert isinstance(loaded, TextEncoder) and loaded.config == enc.config
    for a, b in zip(enc.encode(PROMPTS), loaded.encode(PROMPTS)):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_builtin_trains_and_bf16():
    enc = TextEncoder(text_tiny()).train()
    tokens, mask = enc.encode(PROMPTS)
    tokens.square().mean().backward()
    assert all(p.grad is not None for p in enc.parameters())
    enc.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        low, _ = enc.encode(PROMPTS)
    ref, _ = enc.encode(PROMPTS)
    assert (low.float() - ref).abs().max() < 0.05 * ref.abs().max()


@pytest.mark.parametrize("field,value", [("dim", 0), ("num_heads", 3), ("max_length", 2), ("dropout", 1.5), ("cache_size", -1)])
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        text_tiny(**{field: value})


def test_config_json_round_trip():
    for config in (text_tiny(), text_small(), TextEncoderConfig()):
        assert cfg.from_dict(TextEncoderConfig, cfg.to_dict(config)) == config


def test_every_shapes_caption_fits():
    longest = "a large yellow triangle staying still and a small purple triangle staying still"
    assert len(longest.encode()) + 2 <= text_small().max_length


# ----------------------------------------------------------------------------- the cache


def test_repeated_prompts_do_not_rerun_the_model():
    enc = TextEncoder(text_tiny(cache_size=3)).eval()
    calls = count_calls(enc)
    with torch.no_grad():
        first = enc.encode(PROMPTS[:2])
        assert calls[0] == 1
        again = enc.encode(PROMPTS[:2])
        assert calls[0] == 1  # served from the cache
        for a, b in zip(first, again):
            torch.testing.assert_close(a, b, atol=0, rtol=0)
        tokens, _ = enc.encode([PROMPTS[1], "new prompt", PROMPTS[1]])  # one new, one repeated twice
        assert calls[0] == 2
        torch.testing.assert_close(tokens[0], tokens[2])
        enc.cache_size = 0  # off: every call runs the model
        enc.encode(PROMPTS[:1])
        assert calls[0] == 3
    # Cached or not, the result is the same.
    enc.clear_cache()
    enc.cache_size = 3
    with torch.no_grad():
        cached = enc.encode(PROMPTS)
        enc.cache_size = 0
        fresh = enc.encode(PROMPTS)
    for a, b in zip(cached, fresh):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_cache_is_bounded_lru():
    enc = TextEncoder(text_tiny(cache_size=2)).eval()
    calls = count_calls(enc)
    with torch.no_grad():
        for p in ["a", "b", "a", "c"]:  # "b" is the least recently used when "c" arrives
            enc.encode([p])
        assert calls[0] == 3 and list(enc._cache) == ["a", "c"]
        enc.encode(["a"])
        assert calls[0] == 3
        enc.encode(["b"])
        assert calls[0] == 4


def test_cache_not_used_when_gradients_are_needed_and_invalidated_by_training():
    enc = TextEncoder(text_tiny())
    calls = count_calls(enc)
    enc.train()
    enc.encode(PROMPTS[:1])
    enc.encode(PROMPTS[:1])
    assert calls[0] == 2  # training mode: never cached
    enc.eval()
    tokens, _ = enc.encode(PROMPTS[:1])
    enc.encode(PROMPTS[:1])
    assert calls[0] == 4 and tokens.requires_grad  # grad mode with trainable weights: never cached

    opt = torch.optim.AdamW(enc.parameters(), lr=1e-2)
    with torch.no_grad():
        before, _ = enc.encode(PROMPTS[:1])
        enc.encode(PROMPTS[:1])
    assert calls[0] == 5
    enc.train()
    enc.encode(PROMPTS[:1])[0].square().mean().backward()
    opt.step()
    enc.eval()
    with torch.no_grad():
        after, _ = enc.encode(PROMPTS[:1])  # the step changed the weights: recomputed
        assert calls[0] == 7
        assert not torch.allclose(after, before)
        enc.load_state_dict(TextEncoder(text_tiny()).state_dict())
        enc.encode(PROMPTS[:1])
        assert calls[0] == 8

    frozen = TextEncoder(text_tiny()).eval().requires_grad_(False)
    frozen_calls = count_calls(frozen)
    frozen.encode(PROMPTS[:1])
    frozen.encode(PROMPTS[:1])  # frozen: cached even with grad mode on
    assert frozen_calls[0] == 1


def test_pad_tokens():
    tokens, mask = torch.randn(2, 3, 4), torch.tensor([[True, True, False], [True, True, True]])
    padded, padded_mask = pad_tokens(tokens, mask, 5)
    assert padded.shape == (2, 5, 4) and padded_mask.tolist()[0] == [True, True, False, False, False]
    assert torch.equal(padded[:, :3], tokens) and (padded[:, 3:] == 0).all()
    with pytest.raises(ValueError):
        pad_tokens(tokens, mask, 2)


# ----------------------------------------------------------------------------- load_text_encoder and hf:


def test_load_builtin_presets_and_bad_specs():
    enc = load_text_encoder("text_tiny", dtype=torch.bfloat16)
    assert isinstance(enc, TextEncoder) and enc.config == text_tiny() and enc.pos.dtype == torch.bfloat16
    assert load_text_encoder("builtin").config == text_small()
    with pytest.raises(KinemaError, match="unknown text encoder 'clip'.*hf:PATH"):
        load_text_encoder("clip")
    with pytest.raises(KinemaError, match="no such folder"):
        load_text_encoder("hf:/definitely/not/here")
    with pytest.raises(KinemaError, match="needs a folder"):
        load_text_encoder("hf:")
    with pytest.raises(KinemaError, match="list of prompt strings"):
        enc.encode("a red circle")


def test_missing_transformers_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    with pytest.raises(KinemaError, match=r'pip install "kinema\[hf\]"'):
        load_text_encoder(f"hf:{tmp_path}")


def _save_tokenizer(folder, *, bos: bool) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "</s>", "<s>"]
    vocab = {w: i for i, w in enumerate(specials + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    template = "<s> $A </s>" if bos else "$A </s>"
    tok.post_processor = processors.TemplateProcessing(single=template, special_tokens=[("<s>", 3), ("</s>", 2)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", eos_token="</s>", bos_token="<s>")
    fast.save_pretrained(folder)


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    vocab = 4 + len(WORDS)
    t5 = tmp_path_factory.mktemp("t5")
    config = transformers.T5Config(vocab_size=vocab, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, pad_token_id=0, eos_token_id=2, decoder_start_token_id=0)  # fmt: skip
    transformers.T5EncoderModel(config).save_pretrained(t5)
    _save_tokenizer(t5, bos=False)
    clip = tmp_path_factory.mktemp("clip")
    config = transformers.CLIPTextConfig(vocab_size=vocab, hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=16, pad_token_id=0, bos_token_id=3, eos_token_id=2)  # fmt: skip
    transformers.CLIPTextModel(config).save_pretrained(clip)
    _save_tokenizer(clip, bos=True)
    return {"t5": (t5, 32, 1), "clip": (clip, 24, 2)}


@pytest.mark.parametrize("kind", ["t5", "clip"])
def test_hf_encoder_shapes_mask_frozen(hf_folders, kind):
    folder, dim, specials = hf_folders[kind]
    enc = load_text_encoder(f"hf:{folder}")
    assert isinstance(enc, HFTextEncoder) and enc.dim == dim
    tokens, mask = enc.encode(PROMPTS)
    lengths = [len(p.split()) + specials for p in PROMPTS]
    assert tokens.shape == (3, max(lengths), dim) and mask.sum(1).tolist() == lengths
    assert tokens.dtype == torch.float32 and not tokens.requires_grad
    assert (tokens[~mask] == 0).all() and tokens[mask].abs().sum(-1).min() > 0
    assert all(not p.requires_grad for p in enc.parameters())
    enc.train()  # a parent module's train() must not switch dropout on
    assert not enc.training and not enc.model.training

    # Same as running the HF model directly, one prompt at a time.
    ref_model = enc.model
    for i, prompt in enumerate(PROMPTS):
        batch = enc.tokenizer([prompt], return_tensors="pt")
        with torch.no_grad():
            ref = ref_model(**batch).last_hidden_state[0]
        torch.testing.assert_close(tokens[i, : lengths[i]], ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["t5", "clip"])
def test_hf_encoder_dtype_and_cache(hf_folders, kind):
    folder, dim, _ = hf_folders[kind]
    enc = load_text_encoder(f"hf:{folder}", dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in enc.parameters())
    calls = count_calls(enc.model)
    tokens, _ = enc.encode(PROMPTS)
    assert tokens.dtype == torch.bfloat16 and calls[0] == 1
    again, _ = enc.encode(list(reversed(PROMPTS)))  # cached, even with grad mode on: the encoder is frozen
    assert calls[0] == 1
    torch.testing.assert_close(again[0, :], tokens[2, : again.shape[1]], atol=0, rtol=0)


def test_hf_bad_folders(tmp_path):
    pytest.importorskip("transformers")
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(KinemaError, match="gpt2.*not a supported text encoder"):
        load_text_encoder(f"hf:{tmp_path}")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(KinemaError, match=f"hf:{empty}"):
        load_text_encoder(f"hf:{empty}")
