"""xlab/captions/scst.py: the SCST loss against a slow written-out reference (each sample's CIDEr-D
reward, the greedy or the mean-of-others baseline, each sample's log-probability by a forward pass
of its own), the sign of the update (a sample that beats its baseline is made more likely, one that
loses less likely), and one step under a real Trainer whose data module hands the model its
tokenizer and references (`use_resource`) and whose logged reward, baseline and advantage are the
reference's. SCST without the references is refused."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from xlab.captions import CaptionDataModule, CaptionModel
from xlab.captions.synthetic import references as scene_references
from xlab.common.errors import XLabError
from xlab.common.tokenizer import Tokenizer
from xlab.inference import GenerationSettings

LENGTH = 6  # caption tokens decoded per sample
# scst_step logs; called here outside a Trainer, Lightning says it has nowhere to log to.
pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
TRAINING_REFERENCES = [scene_references(i, None) for i in range(60)]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.train([c for refs in TRAINING_REFERENCES for c in refs], vocab_size=300)


def scst_model(tokenizer, seed: int = 0, **settings) -> CaptionModel:
    torch.manual_seed(seed)
    args = dict(vocab_size=len(tokenizer), max_len=24, n_layer=1, n_head=2, n_embd=32, image_size=16, prefix_grid=2,
                conv_channels=8, scst=True, scst_samples=3, max_caption_tokens=LENGTH, metric_tokenizer="simple",
                caption_metrics=False, scst_temperature=1.5)
    model = CaptionModel(**{**args, **settings})
    model.use_resource("tokenizer", tokenizer)
    model.use_resource("references", lambda split: TRAINING_REFERENCES if split == "train" else [])
    model.on_fit_start()
    return model


def image_batch(tokenizer, images: int = 2, seed: int = 0) -> dict:
    pixels = torch.randint(0, 256, (images, 3, 16, 16), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    return {"pixels": pixels, "prompt": [[tokenizer.sos_id]] * images,
            "references": [scene_references(100 + i, None) for i in range(images)]}


def log_prob(model, prefix: torch.Tensor, prompt: list[int], tokens: list[int], eos: int) -> torch.Tensor:
    """log p(tokens, and the end token if they ended early | prefix, prompt), one forward pass."""
    sequence = [*prompt, *tokens, *([eos] if len(tokens) < LENGTH else [])]
    logits = model.prefixed_logits(prefix[None], torch.tensor([sequence[:-1]]))[0]
    logp = torch.log_softmax(logits.float(), -1)
    return sum(logp[i, sequence[i + 1]] for i in range(len(prompt) - 1, len(sequence) - 1))


def reference(model, batch: dict, rng: torch.Tensor):
    """(rewards, baselines, advantages, loss) the slow way, drawing the samples from RNG state `rng`."""
    hp, tok = model.hparams, model.tokenizer
    torch.set_rng_state(rng)
    prefix = model.encode(batch)
    sampling = GenerationSettings(output_length=LENGTH, eos_class=tok.eos_id, temperature=hp.scst_temperature,
                                  num_samples=hp.scst_samples)
    samples = [[t.tolist() for t in row] for row in model.caption(prefix.detach(), batch["prompt"], sampling)]
    rewards = torch.tensor([[float(model.reward([tok.decode(s)], [refs])[0]) for s in row]
                            for row, refs in zip(samples, batch["references"])])
    k = hp.scst_samples
    if hp.scst_baseline == "greedy":
        greedy = GenerationSettings(output_length=LENGTH, eos_class=tok.eos_id, temperature=0.0)
        best = model.caption(prefix.detach(), batch["prompt"], greedy)
        baselines = torch.tensor([[float(model.reward([tok.decode(b[0])], [refs])[0])] * k
                                  for b, refs in zip(best, batch["references"])])
    else:
        baselines = torch.tensor([[(sum(row) - row[j]) / (k - 1) for j in range(k)] for row in rewards.tolist()])
    advantages = rewards - baselines
    terms = [advantages[i, j] * log_prob(model, prefix[i], batch["prompt"][i], samples[i][j], tok.eos_id)
             for i in range(len(samples)) for j in range(k)]
    return samples, rewards, baselines, advantages, -sum(terms) / len(terms)


@pytest.mark.parametrize("baseline,samples", [("greedy", 1), ("greedy", 3), ("mean", 3)])
def test_the_loss_is_the_reference_policy_gradient(tokenizer, baseline, samples):
    from xlab.captions.scst import scst_step

    model = scst_model(tokenizer, scst_baseline=baseline, scst_samples=samples).train()
    batch = image_batch(tokenizer)
    rng = torch.get_rng_state()
    with torch.no_grad():
        drawn = reference(model, batch, rng)[0]
    # An untrained model's words match no scene: each image's first sample is made a reference.
    batch["references"] = [[tokenizer.decode(row[0]), *refs] for row, refs in zip(drawn, batch["references"])]
    drawn, rewards, baselines, advantages, expected = reference(model, batch, rng)
    assert all(r[0] > 0 for r in rewards.tolist())
    assert rewards.shape == (2, samples) and advantages.abs().sum() > 0  # the samples are scored apart
    if baseline == "mean":
        torch.testing.assert_close(baselines.sum(1), rewards.sum(1))  # each reward is counted k - 1 times
    torch.set_rng_state(rng)
    loss = scst_step(model, batch)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    # The gradient is the reference's too: the loss is differentiable through each sample's log-probability.
    params = [p for p in model.parameters() if p.requires_grad]
    mine = torch.autograd.grad(loss, params, allow_unused=True)
    theirs = torch.autograd.grad(expected, params, allow_unused=True)
    for a, b in zip(mine, theirs):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("wins", [True, False])
def test_a_sample_that_beats_its_baseline_becomes_more_likely(tokenizer, wins):
    model = scst_model(tokenizer, scst_baseline="greedy", scst_samples=1).train()
    batch = image_batch(tokenizer, images=1, seed=3)
    rng = torch.get_rng_state()
    with torch.no_grad():
        drawn, _, _, _, _ = reference(model, batch, rng)
        best = model.caption(model.encode(batch), batch["prompt"], GenerationSettings(
            output_length=LENGTH, eos_class=tokenizer.eos_id, temperature=0.0))[0][0].tolist()
    sample = drawn[0][0]
    assert sample != best and tokenizer.decode(sample).split() != tokenizer.decode(best).split()
    # The references are the sample's own words (it wins) or the greedy caption's (it loses).
    batch["references"] = [[tokenizer.decode(sample if wins else best)]]
    _, rewards, baselines, advantages, _ = reference(model, batch, rng)
    assert (float(advantages[0, 0]) > 0) == wins and float(advantages[0, 0]) != 0
    from xlab.captions.scst import scst_step

    prefix = model.encode(batch).detach()
    with torch.no_grad():
        before = float(log_prob(model, prefix[0], batch["prompt"][0], sample, tokenizer.eos_id))
    torch.set_rng_state(rng)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    scst_step(model, batch).backward()
    optimizer.step()
    with torch.no_grad():
        after = float(log_prob(model, model.encode(batch)[0], batch["prompt"][0], sample, tokenizer.eos_id))
    assert (after > before) == wins, (before, after)


def test_scst_needs_the_references_from_its_data(tokenizer):
    model = CaptionModel(vocab_size=len(tokenizer), max_len=24, n_layer=1, n_head=2, n_embd=32, image_size=16,
                         prefix_grid=2, conv_channels=8, scst=True)
    with pytest.raises(XLabError, match="SCST scores captions against the training references: train with a "
                                        "CaptionDataModule"):
        model.on_fit_start()
    with pytest.raises(XLabError, match="scst_samples=1: the mean-of-others baseline needs at least 2 samples"):
        CaptionModel(vocab_size=len(tokenizer), max_len=24, scst=True, scst_baseline="mean", scst_samples=1)


class Capture(L.Callback):
    """The RNG state, weights and batch an SCST step starts from, and what it logged."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.rng = torch.get_rng_state()
        self.state = {k: v.clone() for k, v in pl_module.state_dict().items()}
        self.batch = batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.logged = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
        self.loss = float(outputs["loss"] if isinstance(outputs, dict) else outputs)


def test_one_step_under_a_trainer_logs_the_reference_numbers(tmp_path):
    data = CaptionDataModule(captions=[{"kind": "synthetic_shapes", "images": 40, "styles": [], "plain": True}],
                             image_size=16, vocab_size=300, batch_size=4, cache_dir=str(tmp_path / "cache"),
                             every_reference=False)
    data.prepare_data()
    settings = dict(vocab_size=data.vocab_size, max_len=48, n_layer=1, n_head=2, n_embd=32, image_size=16,
                    prefix_grid=2, conv_channels=8, max_caption_tokens=LENGTH, metric_tokenizer="simple",
                    caption_metrics=False)
    trainer = dict(accelerator="cpu", devices=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False)
    # A few cross-entropy steps first, so that the samples use the scenes' words and earn rewards.
    torch.manual_seed(0)
    warm = CaptionModel(**settings, learning_rate=0.02, warmup_steps=1)
    L.Trainer(max_steps=80, **trainer).fit(warm, datamodule=data)
    model = CaptionModel(**settings, scst=True, scst_samples=3, scst_baseline="mean", scst_temperature=1.0)
    model.load_state_dict(warm.state_dict())
    capture = Capture()
    L.Trainer(max_steps=1, callbacks=[capture], **trainer).fit(model, datamodule=data)
    assert model.tokenizer is data.tokenizer and model.reward is not None  # handed over by the data module
    before = CaptionModel(**settings, scst=True, scst_samples=3, scst_baseline="mean", scst_temperature=1.0)
    before.load_state_dict(capture.state)
    before.use_resource("tokenizer", data.tokenizer)
    before.reward = model.reward
    _, rewards, baselines, advantages, loss = reference(before.train(), capture.batch, capture.rng)
    loss = float(loss.detach())
    assert int((advantages != 0).any(1).sum()) >= 2  # samples of two images earned different rewards
    logged = capture.logged
    assert logged["train/reward"] == pytest.approx(float(rewards.mean()), abs=1e-6)
    assert logged["train/baseline"] == pytest.approx(float(baselines.mean()), abs=1e-6)
    assert logged["train/advantage"] == pytest.approx(float(advantages.mean()), abs=1e-6)
    assert logged["train/scst_loss"] == pytest.approx(loss, rel=1e-5, abs=1e-7)
    assert capture.loss == pytest.approx(loss, rel=1e-5, abs=1e-7)
