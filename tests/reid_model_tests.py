"""The test suite every re-ID architecture runs (subclass ``ReIDModelTests``).

A subclass sets ``model_class``, ``processor_class`` and implements ``tiny_config(**overrides)``
(a config small enough for milliseconds per forward, with ``num_identities > 0``) and
``alternative_image_size`` (a non-default input size the model must accept).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoConfig, AutoImageProcessor, AutoModel, pipeline

from reid_transformers.modeling_utils import BNNeck

#: A 0.3 M-parameter trunk (one basic block per stage): the tests' models build in
#: milliseconds; the ResNet-50 defaults are tested where they matter (sizes, parity).
TINY_TRUNK = dict(layer_type="basic", depths=(1, 1, 1, 1), hidden_sizes=(16, 32, 64, 128),
                  stem_channels=16)


def dead_parameters(model: torch.nn.Module, tolerance: float = 0.0) -> list[str]:
    """Names of trainable parameters whose gradient (after ``backward``) is missing or no
    larger than ``tolerance`` everywhere: weights the loss does not reach."""
    return [
        name
        for name, p in model.named_parameters()
        if p.requires_grad and (p.grad is None or not p.grad.abs().max() > tolerance)
    ]


class ReIDModelTests:
    model_class: type
    processor_class: type
    alternative_image_size: tuple[int, int]

    def tiny_config(self, **overrides):
        raise NotImplementedError

    # ------------------------------------------------------------------ helpers
    def make_model(self, seed: int = 0, **overrides):
        torch.manual_seed(seed)
        return self.model_class(self.tiny_config(**overrides))

    def pixel_values(self, batch: int = 4, size=None, seed: int = 0) -> torch.Tensor:
        height, width = size or self.tiny_config().image_size
        return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))

    def labels(self, batch: int = 4) -> torch.Tensor:
        return torch.arange(batch) % self.tiny_config().num_identities

    def processor(self):
        height, width = self.tiny_config().image_size
        return self.processor_class(size={"height": height, "width": width})

    # ------------------------------------------------------------------ tests
    def test_output_fields_and_shapes(self):
        model = self.make_model().eval()
        out = model(self.pixel_values())
        assert out.embeddings.ndim == 2 and len(out.embeddings) == 4
        assert torch.equal(out.pooler_output, out.embeddings)
        assert out.loss is None
        assert out.logits is not None and all(
            logit.shape == (4, model.config.num_identities) for logit in out.logits
        )
        assert all(f.ndim == 2 and len(f) == 4 for f in out.features)
        assert list(out.keys())[0] == "embeddings"

    def test_forward_flags_default_to_the_config(self):
        model = self.make_model().eval()
        pixels, labels = self.pixel_values(), self.labels()
        with torch.no_grad():
            out = model(pixels, labels=labels)
            as_tuple = model(pixels, labels=labels, return_dict=False)
            assert out.hidden_states is None
            model.config.output_hidden_states = True
            assert model(pixels).hidden_states is not None
            model.config.return_dict = False
            assert isinstance(model(pixels), tuple)
        assert len(as_tuple) == len(out.to_tuple())
        assert torch.equal(as_tuple[0], out.embeddings)

    def test_feature_extractor_has_no_heads(self):
        model = self.make_model(num_identities=0).eval()
        out = model(self.pixel_values())
        assert out.logits is None and out.loss is None
        assert out.embeddings.shape[0] == 4
        with pytest.raises(ValueError, match="labels"):
            model(self.pixel_values(), labels=self.labels())

    def test_labels_of_the_wrong_shape_or_type_are_rejected(self):
        model = self.make_model().eval()
        with pytest.raises(ValueError, match=r"labels must be a \(4,\) integer tensor"):
            model(self.pixel_values(), labels=self.labels()[:3])
        with pytest.raises(ValueError, match="dtype torch.float32"):
            model(self.pixel_values(), labels=self.labels().float())

    def test_save_load_round_trip_is_bit_identical(self, tmp_path):
        model = self.make_model()
        model.train()
        model(self.pixel_values(seed=1), labels=self.labels())  # moves BN running statistics
        model.eval()
        expected = model(self.pixel_values()).embeddings
        model.save_pretrained(tmp_path)
        assert (tmp_path / "model.safetensors").is_file()
        reloaded = self.model_class.from_pretrained(tmp_path).eval()
        assert torch.equal(reloaded(self.pixel_values()).embeddings, expected)
        for (name, a), (_, b) in zip(
            model.state_dict().items(), reloaded.state_dict().items(), strict=True
        ):
            assert torch.equal(a, b), name

    def test_auto_classes_resolve(self, tmp_path):
        model = self.make_model()
        model.save_pretrained(tmp_path)
        self.processor().save_pretrained(tmp_path)
        assert type(AutoConfig.from_pretrained(tmp_path)) is type(model.config)
        assert type(AutoModel.from_pretrained(tmp_path)) is self.model_class
        assert type(AutoImageProcessor.from_pretrained(tmp_path)) is self.processor_class

    def test_pipeline_matches_direct_forward(self):
        model = self.make_model().eval()  # pipeline() does not call eval() itself
        processor = self.processor()
        extractor = pipeline("image-feature-extraction", model=model, image_processor=processor)
        rng = np.random.default_rng(0)
        height, width = self.tiny_config().image_size
        image = Image.fromarray(rng.integers(0, 255, (height * 2, width * 2, 3), dtype=np.uint8))
        direct = model(processor(image, return_tensors="pt")["pixel_values"]).embeddings
        pooled = torch.tensor(extractor(image, pool=True))
        unpooled = torch.tensor(extractor(image, pool=False))
        torch.testing.assert_close(pooled.reshape(direct.shape), direct, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(unpooled.reshape(direct.shape), direct, atol=1e-5, rtol=1e-5)

    def test_eager_and_sdpa_attention_agree(self):
        eager = self.make_model(attn_implementation="eager").eval()
        sdpa = self.make_model(attn_implementation="sdpa").eval()
        sdpa.load_state_dict(eager.state_dict())
        x = self.pixel_values()
        torch.testing.assert_close(
            sdpa(x).embeddings, eager(x).embeddings, atol=1e-5, rtol=1e-5
        )

    def test_gradient_checkpointing_matches_plain_backward(self):
        plain = self.make_model().train()
        checkpointed = copy.deepcopy(plain)
        checkpointed.activation_checkpointing_enable()  # gradient checkpointing in v5
        for model in (plain, checkpointed):
            torch.manual_seed(3)  # same dropout masks in both
            model(self.pixel_values(), labels=self.labels()).loss.backward()
        for (name, a), (_, b) in zip(
            plain.named_parameters(), checkpointed.named_parameters(), strict=True
        ):
            if a.grad is None:
                assert b.grad is None, name
                continue
            torch.testing.assert_close(b.grad, a.grad, atol=1e-5, rtol=1e-4, msg=name)

    def test_batch_size_one(self):
        model = self.make_model().eval()
        out = model(self.pixel_values(batch=1))
        assert out.embeddings.shape[0] == 1

    def test_non_default_input_size(self):
        model = self.make_model().eval()
        out = model(self.pixel_values(size=self.alternative_image_size))
        assert out.embeddings.ndim == 2 and out.embeddings.shape[0] == 4
        assert torch.isfinite(out.embeddings).all()

    def test_eval_is_deterministic_and_train_mode_trains(self):
        model = self.make_model().eval()
        x = self.pixel_values()
        buffers = {k: v.clone() for k, v in model.named_buffers()}
        assert torch.equal(model(x).embeddings, model(x).embeddings)
        for name, value in model.named_buffers():
            assert torch.equal(value, buffers[name]), f"eval forward changed buffer {name}"
        model.train()
        out = model(x, labels=self.labels())
        assert out.loss is not None and out.loss.ndim == 0 and out.loss.requires_grad

    def test_a_few_optimizer_steps_reduce_the_loss(self):
        model = self.make_model().train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        x, y = self.pixel_values(batch=8), self.labels(batch=8)
        losses = []
        for _ in range(8):
            torch.manual_seed(0)
            loss = model(x, labels=y).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        assert losses[-1] < losses[0], losses

    def test_fine_tuning_with_new_identities_keeps_the_trunk(self, tmp_path):
        model = self.make_model(num_identities=5)
        model.save_pretrained(tmp_path)
        config = AutoConfig.from_pretrained(tmp_path, num_identities=7)
        tuned = self.model_class.from_pretrained(
            tmp_path, config=config, ignore_mismatched_sizes=True
        )
        assert tuned.config.num_identities == 7
        out = tuned.eval()(self.pixel_values())
        assert all(logit.shape[-1] == 7 for logit in out.logits)
        trunk = {id(p) for block in tuned.unfreezable_blocks() for p in block.parameters()}
        old = dict(model.named_parameters())
        for name, param in tuned.named_parameters():
            if id(param) in trunk:
                assert torch.equal(param, old[name]), f"trunk weight {name} changed"

    def test_unfreezable_blocks_are_trunk_blocks_top_down(self):
        model = self.make_model()
        blocks = model.unfreezable_blocks()
        assert len(blocks) >= 2 and all(isinstance(b, torch.nn.Module) for b in blocks)
        block_params = [{id(p) for p in b.parameters()} for b in blocks]
        assert all(block_params) and not set.intersection(*block_params)
        in_blocks = set().union(*block_params)
        outside = [n for n, p in model.named_parameters() if id(p) not in in_blocks]
        assert outside, "embeddings, final norms and heads must stay outside the blocks"
        # Top-down: the first block is the one closest to the output.
        order = {id(m): i for i, m in enumerate(model.modules())}
        positions = [order[id(b)] for b in blocks]
        assert positions == sorted(positions, reverse=True)

    def test_bnneck_biases_are_frozen_and_refrozen_after_loading(self, tmp_path):
        model = self.make_model()
        necks = [m for m in model.modules() if isinstance(m, BNNeck)]
        if not necks:
            pytest.skip(f"{self.model_class.__name__} has no BNNeck head")
        assert all(not n.bn.bias.requires_grad for n in necks)
        model.save_pretrained(tmp_path)
        reloaded = self.model_class.from_pretrained(tmp_path)
        reloaded.freeze_bnneck_biases()
        assert all(
            not m.bn.bias.requires_grad for m in reloaded.modules() if isinstance(m, BNNeck)
        )
