"""The GPT model: causality, KV-cache equivalence, tied/padded vocabulary, optimizer groups,
presets, safetensors round trip, and the loss of a fresh model."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from model.errors import CookError
from model.gpt import GPT, GPTConfig, sample_next
from model.presets import PRESETS, get_preset

pytestmark = pytest.mark.timeout(120)


def small(rope: bool = False, **kw) -> GPT:
    torch.manual_seed(0)
    cfg = dict(block_size=16, vocab_size=100, n_layer=2, n_head=2, n_embd=32, rope=rope)
    cfg.update(kw)
    return GPT(GPTConfig(**cfg)).eval()


@pytest.mark.parametrize("rope", [False, True])
def test_causality(rope):
    """Changing tokens after position t never changes the logits at or before t."""
    model = small(rope)
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, 100, (3, 16), generator=g)
    with torch.no_grad():
        base, _ = model(idx)
        for t in (0, 5, 10, 14):
            changed = idx.clone()
            changed[:, t + 1:] = torch.randint(0, 100, (3, 15 - t), generator=g)
            logits, _ = model(changed)
            torch.testing.assert_close(logits[:, : t + 1], base[:, : t + 1], atol=1e-6, rtol=0)
            assert not torch.allclose(logits[:, t + 1:], base[:, t + 1:])


@pytest.mark.parametrize("rope", [False, True])
def test_kv_cache_forward_matches_full_forward(rope):
    """Prefill + one-token decode + a multi-token chunk through the cache == one full forward."""
    from model.gpt import KVCache

    model = small(rope)
    idx = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full, _ = model(idx)
        cache = KVCache(model.config.n_layer, model.config.block_size)
        a, _ = model(idx[:, :5], kv_cache=cache, start_pos=0)
        b, _ = model(idx[:, 5:6], kv_cache=cache, start_pos=5)
        c, _ = model(idx[:, 6:], kv_cache=cache, start_pos=6)
    torch.testing.assert_close(torch.cat([a, b, c], dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("rope", [False, True])
@pytest.mark.parametrize("new_tokens", [8, 30])  # 30 runs past block_size 16
def test_cached_generation_equals_uncached(rope, new_tokens):
    model = small(rope)
    prompt = torch.randint(0, 100, (2, 5), generator=torch.Generator().manual_seed(3))
    greedy = model.generate(prompt, new_tokens, temperature=0, use_cache=True)
    assert torch.equal(greedy, model.generate(prompt, new_tokens, temperature=0, use_cache=False))
    assert greedy.shape == (2, 5 + new_tokens)
    assert torch.equal(greedy[:, :5], prompt)
    for kw in (dict(), dict(top_k=10), dict(top_p=0.8), dict(temperature=0.7, top_k=20, top_p=0.9)):
        a = model.generate(prompt, new_tokens, use_cache=True, generator=torch.Generator().manual_seed(7), **kw)
        b = model.generate(prompt, new_tokens, use_cache=False, generator=torch.Generator().manual_seed(7), **kw)
        assert torch.equal(a, b), kw
        c = model.generate(prompt, new_tokens, use_cache=True, generator=torch.Generator().manual_seed(7), **kw)
        assert torch.equal(a, c), "a fixed generator seed must reproduce the same tokens"


def test_generate_long_prompt_and_mode_restored():
    model = small().train()
    prompt = torch.randint(0, 100, (1, 40))  # longer than block_size: only the last 16 are seen
    out = model.generate(prompt, 5, temperature=0)
    assert out.shape == (1, 45)
    assert torch.equal(out[:, 40:], model.generate(prompt[:, -16:], 5, temperature=0)[:, 16:])
    assert model.training, "generate must restore training mode"


def test_generate_stops_at_eot():
    model = small()
    prompt = torch.randint(0, 100, (1, 4))
    first = model.generate(prompt, 1, temperature=0)[0, -1].item()
    out = model.generate(prompt, 20, temperature=0, eot_id=first)
    assert out.shape == (1, 5) and out[0, -1].item() == first


def test_sampling_filters():
    logits = torch.tensor([[5.0, 4.0, 3.0, -1.0, -2.0]])
    g = torch.Generator().manual_seed(0)
    assert sample_next(logits, temperature=0).item() == 0
    picks = {sample_next(logits, top_k=2, generator=g).item() for _ in range(200)}
    assert picks <= {0, 1} and len(picks) == 2
    # p(0) ~ 0.66: top_p 0.5 keeps only the first token, top_p 0.9 keeps the first two
    assert {sample_next(logits, top_p=0.5, generator=g).item() for _ in range(100)} == {0}
    assert {sample_next(logits, top_p=0.9, generator=g).item() for _ in range(300)} == {0, 1}


def test_top_p_exact_tie_keeps_the_fewest_tokens():
    """Top-p keeps the fewest most likely tokens whose mass reaches top_p: when the first k already sum to exactly
    top_p, the (k+1)-th is dropped (it used to be kept). Equal logits give exact float probabilities (1/2, 1/4)."""
    g = torch.Generator().manual_seed(0)
    halves = torch.tensor([[0.0, 0.0]])  # p = 0.5, 0.5: the first alone reaches 0.5
    assert {sample_next(halves, top_p=0.5, generator=g).item() for _ in range(200)} == {0}  # ties: lower id first
    quarters = torch.zeros(3, 4)  # p = 0.25 each, three rows at once
    picks = sample_next(quarters.repeat(100, 1), top_p=0.5, generator=g)
    assert set(picks.flatten().tolist()) == {0, 1}
    # just above the tie, one more token is needed and kept
    assert {sample_next(halves, top_p=0.5 + 1e-6, generator=g).item() for _ in range(200)} == {0, 1}


@pytest.mark.parametrize("kw", [dict(temperature=-1), dict(top_k=0), dict(top_p=0.0), dict(top_p=1.5)])
def test_bad_sampling_arguments(kw):
    with pytest.raises(CookError):
        small().generate(torch.zeros(1, 2, dtype=torch.long), 3, **kw)


def test_tied_and_padded_vocab():
    model = small(vocab_size=100)
    assert model.config.padded_vocab_size == 128
    assert model.transformer.wte.weight is model.lm_head.weight
    assert model.lm_head.weight.shape == (128, 32)
    idx = torch.randint(0, 100, (2, 8))
    logits, loss = model(idx, idx)
    assert logits.shape == (2, 8, 100)
    assert model(idx)[0].shape == (2, 8, 100)
    assert model(idx, last_only=True)[0].shape == (2, 1, 100)
    # make the padded rows the most likely ids: they must still never be picked
    with torch.no_grad():
        model.lm_head.weight[100:] = 10 * model.transformer.ln_f.weight.sign()
    out = model.generate(idx[:, :3], 20, temperature=2.0, generator=torch.Generator().manual_seed(0))
    assert int(out.max()) < 100
    assert int(model.generate(idx[:, :3], 5, temperature=0).max()) < 100
    # the loss is finite and padded columns get no gradient
    _, loss = model(idx, idx)
    loss.backward()
    assert torch.isfinite(loss)
    assert model.lm_head.weight.grad[100:].abs().sum() == 0


def test_loss_of_fresh_model_is_about_ln_vocab():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, vocab_size=1000, n_layer=2, n_head=2, n_embd=64))
    idx = torch.randint(0, 1000, (4, 32))
    targets = torch.randint(0, 1000, (4, 32))
    _, loss = model(idx, targets)
    assert abs(loss.item() - math.log(1000)) < 0.1
    targets[:, :16] = -1  # ignored positions
    _, loss2 = model(idx, targets)
    assert abs(loss2.item() - math.log(1000)) < 0.15


def test_a_few_steps_learn():
    model = small().train()
    opt = model.configure_optimizer(0.0, 3e-3, (0.9, 0.95), "cpu")
    idx = torch.randint(0, 100, (4, 16), generator=torch.Generator().manual_seed(0))
    first = None
    for _ in range(30):
        _, loss = model(idx[:, :-1], idx[:, 1:])
        first = first if first is not None else loss.item()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    assert loss.item() < first - 1.0


def test_weight_decay_groups():
    model = small(bias=True)
    opt = model.configure_optimizer(0.1, 1e-3, (0.9, 0.95), "cpu")
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    assert len(no_decay["params"]) > 0
    n_opt = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n_opt == sum(p.numel() for p in model.parameters())  # the tied weight counted once


def test_gpt2_124m_param_count():
    """nanoGPT (bias=False, vocab 50304) reports 123.59M; GPT-2 small with biases is 123.69M."""
    config, train = get_preset("gpt2-124m", 50257)
    assert config.padded_vocab_size == 50304
    with torch.device("meta"):
        model = GPT(config)
    assert model.num_params() == 123_587_328
    assert model.num_params(non_embedding=False) == 123_587_328 + 1024 * 768
    with torch.device("meta"):
        assert GPT(GPTConfig(**{**config.to_dict(), "bias": True})).num_params() == 123_689_472
    assert train["grad_accum"] == 40 and train["batch_size"] == 12 and train["betas"] == (0.9, 0.95)


def test_config_validation_and_dict_round_trip():
    with pytest.raises(CookError, match="n_embd 512 is not divisible by n_head 18"):
        GPTConfig(n_embd=512, n_head=18)
    with pytest.raises(CookError):
        GPTConfig(n_layer=0)
    with pytest.raises(CookError):
        GPTConfig(dropout=1.0)
    with pytest.raises(CookError, match="unknown model config keys: colour"):
        GPTConfig.from_dict({"colour": 1})
    cfg = GPTConfig(block_size=8, vocab_size=77, n_layer=1, n_head=1, n_embd=8, rope=True)
    assert GPTConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.padded_vocab_size == 128


def test_presets():
    for name in PRESETS:
        config, train = get_preset(name, 50257)
        assert config.vocab_size == 50257
        for key in ("batch_size", "grad_accum", "learning_rate", "min_lr", "warmup_iters",
                    "weight_decay", "grad_clip", "eval_interval", "eval_iters"):
            assert key in train, (name, key)
        assert train["eval_interval"] >= 100 and train["eval_iters"] >= 100
    bench, _ = get_preset("bench", 50304)
    assert (bench.n_layer, bench.n_head, bench.n_embd, bench.block_size) == (4, 4, 256, 256)
    seed, train = get_preset("seed", 50257)
    assert (seed.n_layer, seed.n_head, seed.n_embd, seed.block_size, seed.dropout) == (12, 8, 512, 256, 0.2)
    assert train["batch_size"] == 10 and train["learning_rate"] == 3e-4
    with pytest.raises(CookError, match="tiny, bench, seed, gpt2-124m"):
        get_preset("huge", 100)


@pytest.mark.parametrize("rope", [False, True])
def test_safetensors_round_trip(tmp_path, rope):
    model = small(rope, bias=True)
    path = tmp_path / "model.safetensors"
    sd = model.state_dict_for_save()
    assert "lm_head.weight" not in sd and "transformer.wte.weight" in sd
    assert not any("rope" in k for k in sd)
    save_file(sd, str(path))  # refuses shared tensors: must not raise
    other = small(rope, bias=True)
    torch.manual_seed(99)
    for p in other.parameters():
        torch.nn.init.normal_(p)
    other.load_state_dict_from_save(load_file(str(path)))
    assert other.transformer.wte.weight is other.lm_head.weight
    idx = torch.randint(0, 100, (2, 10))
    torch.testing.assert_close(other(idx)[0], model(idx)[0], atol=0, rtol=0)
    with pytest.raises(CookError, match="does not match"):
        small(rope, bias=True, n_embd=64).load_state_dict_from_save(load_file(str(path)))
