"""Tests for AAformer's optimal-transport patch-to-part assignment."""

from __future__ import annotations

import math

import pytest
import torch

from reid_transformers.models.aaformer.optimal_transport import (
    assign_patches,
    assignment_mask,
    sinkhorn_log,
)


def _scores(*shape: int, low: float = -1.0, high: float = 1.0, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=generator) * (high - low) + low


def _reference_sinkhorn(scores: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """Textbook exp-space Sinkhorn-Knopp in float64: rows to 1/P, then columns to 1/N."""
    num_parts, num_patches = scores.shape[-2:]
    plan = torch.exp(scores.double() / epsilon)
    for _ in range(iterations):
        plan = plan / plan.sum(dim=-1, keepdim=True) / num_parts
        plan = plan / plan.sum(dim=-2, keepdim=True) / num_patches
    return plan


def _marginal_errors(log_plan: torch.Tensor) -> tuple[float, float]:
    plan = log_plan.double().exp()
    num_parts, num_patches = plan.shape[-2:]
    row_error = (plan.sum(-1) - 1 / num_parts).abs().max().item()
    col_error = (plan.sum(-2) - 1 / num_patches).abs().max().item()
    return row_error, col_error


def _assert_valid_partition(assignments: torch.Tensor, num_parts: int) -> None:
    """Every patch has exactly one part in range and every part has at least one patch."""
    assert assignments.dtype == torch.long
    assert int(assignments.min()) >= 0 and int(assignments.max()) < num_parts
    counts = torch.nn.functional.one_hot(assignments, num_parts).sum(dim=-2)
    assert bool((counts >= 1).all()), f"empty part, counts {counts.tolist()}"


# --------------------------------------------------------------------------- sinkhorn_log


@pytest.mark.parametrize("epsilon", [0.5, 0.05])
def test_sinkhorn_marginals_converge_with_iterations(epsilon: float) -> None:
    scores = _scores(4, 3, 128, seed=1)
    schedule = [1, 3, 10, 50, 200]
    row_errors = []
    for iterations in schedule:
        row_error, col_error = _marginal_errors(sinkhorn_log(scores, epsilon, iterations))
        row_errors.append(row_error)
        # Columns are normalised last, so they are exact after every iteration count.
        assert col_error < 1e-6
    assert all(
        later <= earlier for earlier, later in zip(row_errors[:-1], row_errors[1:], strict=True)
    )
    assert row_errors[0] > 1e-3  # one iteration is visibly unbalanced: the test can fail
    assert row_errors[-1] < 1e-5
    if epsilon == 0.5:
        assert row_errors[schedule.index(50)] < 1e-5


def test_sinkhorn_matches_float64_exp_space_reference() -> None:
    scores = _scores(2, 5, 3, 20, seed=2)
    for iterations in (1, 3, 7):
        log_plan = sinkhorn_log(scores, epsilon=0.5, iterations=iterations)
        reference = _reference_sinkhorn(scores, 0.5, iterations)
        assert log_plan.shape == scores.shape
        assert log_plan.dtype == torch.float32
        torch.testing.assert_close(log_plan.double(), reference.log(), rtol=0, atol=1e-5)


def test_sinkhorn_float64_input_stays_float64() -> None:
    scores = _scores(3, 10, seed=3).double()
    log_plan = sinkhorn_log(scores, epsilon=0.2, iterations=4)
    assert log_plan.dtype == torch.float64
    torch.testing.assert_close(log_plan, _reference_sinkhorn(scores, 0.2, 4).log())


def test_sinkhorn_is_finite_where_exp_space_overflows() -> None:
    scores = _scores(2, 12, 3, 128, low=90.0, high=110.0, seed=4)  # scores / eps ~ 2000
    assert not torch.isfinite(torch.exp(scores / 0.05)).all()  # the naive way overflows
    log_plan = sinkhorn_log(scores, epsilon=0.05, iterations=3)
    assert torch.isfinite(log_plan).all()
    _, col_error = _marginal_errors(log_plan)
    assert col_error < 1e-6
    # The plan only depends on differences of scores: shifting everything by 100 changes nothing.
    shifted = sinkhorn_log(scores - 100.0, epsilon=0.05, iterations=3)
    torch.testing.assert_close(log_plan, shifted, rtol=0, atol=2e-2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_sinkhorn_upcasts_half_precision(dtype: torch.dtype) -> None:
    scores = _scores(2, 3, 16, low=-5.0, high=5.0, seed=5).to(dtype)
    log_plan = sinkhorn_log(scores, epsilon=0.05, iterations=3)
    assert log_plan.dtype == torch.float32
    assert torch.isfinite(log_plan).all()
    torch.testing.assert_close(log_plan, sinkhorn_log(scores.float(), 0.05, 3))


def test_sinkhorn_is_deterministic() -> None:
    scores = _scores(8, 12, 3, 128, seed=6)
    assert torch.equal(sinkhorn_log(scores), sinkhorn_log(scores.clone()))


def test_sinkhorn_follows_caller_grad_mode() -> None:
    scores = _scores(2, 3, 8, seed=7).requires_grad_()
    with torch.no_grad():
        assert not sinkhorn_log(scores).requires_grad
    log_plan = sinkhorn_log(scores, epsilon=0.5)
    assert log_plan.requires_grad
    (log_plan.exp() * torch.arange(8.0)).sum().backward()
    assert scores.grad is not None and torch.isfinite(scores.grad).all()
    assert scores.grad.abs().sum() > 0


def test_sinkhorn_is_invariant_to_per_part_offsets() -> None:
    # Row rescaling absorbs a constant added to one part's scores: OT ignores part "loudness".
    scores = _scores(4, 3, 32, seed=8)
    offsets = torch.tensor([3.0, -2.0, 0.5]).unsqueeze(-1)
    torch.testing.assert_close(
        sinkhorn_log(scores + offsets, 0.5, 5), sinkhorn_log(scores, 0.5, 5), atol=1e-5, rtol=0
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"scores": torch.zeros(5)}, r"shape \(5,\)"),
        ({"scores": torch.zeros(3, 4, dtype=torch.long)}, "torch.int64"),
        ({"scores": torch.zeros(0, 4)}, r"shape \(0, 4\)"),
        ({"scores": [[0.0, 1.0]]}, "list"),
        ({"scores": torch.zeros(2, 4), "epsilon": 0.0}, "epsilon.*0.0"),
        ({"scores": torch.zeros(2, 4), "epsilon": -0.1}, "epsilon.*-0.1"),
        ({"scores": torch.zeros(2, 4), "epsilon": math.inf}, "epsilon.*inf"),
        ({"scores": torch.zeros(2, 4), "iterations": 0}, "iterations.*0"),
        ({"scores": torch.zeros(2, 4), "iterations": 2.0}, "iterations.*2.0"),
        ({"scores": torch.zeros(2, 4), "iterations": True}, "iterations.*True"),
    ],
)
def test_sinkhorn_rejects_bad_input(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        sinkhorn_log(**kwargs)


# --------------------------------------------------------------------------- assign_patches


@pytest.mark.parametrize("method", ["optimal_transport", "nearest"])
@pytest.mark.parametrize("shape", [(3, 128), (4, 12, 2, 128), (5, 3, 3, 7)])
def test_assign_patches_is_a_partition_on_random_input(method: str, shape: tuple) -> None:
    scores = torch.randn(*shape, generator=torch.Generator().manual_seed(9)) * 5
    assignments = assign_patches(scores, method=method)
    assert assignments.shape == (*shape[:-2], shape[-1])
    _assert_valid_partition(assignments, shape[-2])


def test_assign_patches_fills_empty_parts_when_all_patches_prefer_one_part() -> None:
    scores = _scores(6, 4, 3, 40, seed=10)
    scores[..., 0, :] += 100.0  # every patch prefers part 0 by far
    for method in ("optimal_transport", "nearest"):
        assignments = assign_patches(scores, method=method)
        _assert_valid_partition(assignments, 3)
    # "nearest" leaves parts 1 and 2 empty. Part 1 (repaired first) gets its best patch; part 2
    # gets its best patch other than that one, which is now the only patch of part 1.
    assignments = assign_patches(scores, method="nearest")
    counts = torch.nn.functional.one_hot(assignments, 3).sum(dim=-2)
    assert torch.equal(counts[..., 1:], torch.ones_like(counts[..., 1:]))
    best_1 = scores[..., 1, :].argmax(dim=-1, keepdim=True)
    best_2 = scores[..., 2, :].scatter(-1, best_1, -math.inf).argmax(dim=-1, keepdim=True)
    assert bool((assignments.gather(-1, best_1) == 1).all())
    assert bool((assignments.gather(-1, best_2) == 2).all())


def test_assign_patches_fallback_never_steals_the_only_patch_of_a_part() -> None:
    # Patch 0 is the only patch of part 0 and also part 2's favourite; part 2 is empty.
    scores = torch.tensor(
        [
            [9.0, 0.0, 0.0, 0.0],  # part 0: wins patch 0 only
            [0.0, 5.0, 5.0, 5.0],  # part 1: wins patches 1-3
            [8.0, 1.0, 3.0, 2.0],  # part 2: wins nothing; best donor patch is 2
        ]
    )
    assignments = assign_patches(scores, method="nearest")
    assert assignments.tolist() == [0, 1, 2, 1]
    _assert_valid_partition(assignments, 3)


def test_assign_patches_handles_as_many_parts_as_patches() -> None:
    scores = _scores(16, 3, 3, seed=11)
    scores[..., 1, :] += 50.0  # everything prefers part 1: two parts start empty
    for method in ("optimal_transport", "nearest"):
        assignments = assign_patches(scores, method=method)
        _assert_valid_partition(assignments, 3)
        # With N == P the partition must be a permutation.
        assert torch.equal(assignments.sort(dim=-1).values, torch.arange(3).expand_as(assignments))


def test_assign_patches_single_part_takes_everything() -> None:
    assignments = assign_patches(_scores(2, 1, 9, seed=12))
    assert torch.equal(assignments, torch.zeros(2, 9, dtype=torch.long))


def test_nearest_equals_argmax_of_scores_when_no_part_is_empty() -> None:
    scores = torch.randn(8, 12, 3, 128, generator=torch.Generator().manual_seed(13))
    expected = scores.argmax(dim=-2)
    assert bool((torch.nn.functional.one_hot(expected, 3).sum(-2) > 0).all())  # no fallback
    assert torch.equal(assign_patches(scores, method="nearest"), expected)


def test_optimal_transport_equals_argmax_of_plan_and_balances_parts() -> None:
    scores = _scores(8, 12, 3, 128, seed=14)
    scores = scores + torch.tensor([0.6, 0.0, -0.6]).unsqueeze(-1)  # part 0 dominates raw scores
    assignments = assign_patches(scores, epsilon=0.05, iterations=3)
    plan_argmax = sinkhorn_log(scores, 0.05, 3).argmax(dim=-2)
    assert torch.equal(assignments, plan_argmax)
    ot_counts = torch.nn.functional.one_hot(assignments, 3).sum(-2).float()
    nearest_counts = torch.nn.functional.one_hot(scores.argmax(-2), 3).sum(-2).float()
    # Raw argmax crowds part 0; OT removes the per-part offset and spreads patches evenly.
    assert nearest_counts[..., 0].mean() > 80
    assert (ot_counts - 128 / 3).abs().max() < 25


def test_assign_patches_is_deterministic_and_ignores_grad() -> None:
    scores = _scores(4, 12, 3, 128, seed=15).requires_grad_()
    first = assign_patches(scores)
    assert not first.requires_grad
    assert torch.equal(first, assign_patches(scores.detach().clone()))


def test_assign_patches_accepts_half_precision() -> None:
    scores = _scores(4, 2, 64, low=-10.0, high=10.0, seed=16)
    for dtype in (torch.float16, torch.bfloat16):
        assignments = assign_patches(scores.to(dtype))
        _assert_valid_partition(assignments, 2)
        assert torch.equal(assignments, assign_patches(scores.to(dtype).float()))


@pytest.mark.parametrize(
    ("scores", "kwargs", "match"),
    [
        (torch.zeros(4, 3), {}, "4 parts.*3 patches"),
        (torch.zeros(7), {}, r"shape \(7,\)"),
        (torch.zeros(2, 5, dtype=torch.int32), {}, "torch.int32"),
        (torch.zeros(2, 5), {"method": "greedy"}, "'greedy'"),
        (torch.zeros(2, 5), {"epsilon": 0.0}, "epsilon.*0.0"),
        (torch.zeros(2, 5), {"iterations": 0}, "iterations.*0"),
        (torch.zeros(2, 5), {"method": "nearest", "iterations": -1}, "iterations.*-1"),
    ],
)
def test_assign_patches_rejects_bad_input(scores: torch.Tensor, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        assign_patches(scores, **kwargs)


# --------------------------------------------------------------------------- assignment_mask


def test_assignment_mask_values_shape_and_dtype() -> None:
    assignments = torch.tensor([[0, 2, 1, 2], [1, 1, 0, 2]])
    mask = assignment_mask(assignments, 3, torch.float16)
    assert mask.shape == (2, 3, 4)
    assert mask.dtype == torch.float16
    inf = -math.inf
    assert mask[0].tolist() == [[0, inf, inf, inf], [inf, inf, 0, inf], [inf, 0, inf, 0]]
    assert mask[1].tolist() == [[inf, inf, 0, inf], [0, 0, inf, inf], [inf, inf, inf, 0]]
    # Every patch column is visible to exactly one part.
    assert torch.equal((mask == 0).sum(dim=-2), torch.ones(2, 4, dtype=torch.long))


def test_assignment_mask_restricts_attention_to_assigned_patches() -> None:
    scores = torch.randn(2, 4, 3, 16, generator=torch.Generator().manual_seed(17))
    assignments = assign_patches(scores)
    mask = assignment_mask(assignments, 3, torch.float32)
    weights = torch.softmax(torch.randn(2, 4, 3, 16) + mask, dim=-1)
    assert torch.isfinite(weights).all()  # no part row is fully masked
    belongs = torch.nn.functional.one_hot(assignments, 3).transpose(-1, -2).bool()
    assert bool((weights[~belongs] == 0).all())
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 3))


@pytest.mark.parametrize(
    ("assignments", "num_parts", "dtype", "match"),
    [
        (torch.tensor([0, 3, 1]), 3, torch.float32, r"\[0, 3\).*\[0, 3\]"),
        (torch.tensor([-1, 0]), 2, torch.float32, r"\[-1, 0\]"),
        (torch.tensor([0.0, 1.0]), 2, torch.float32, "torch.float32"),
        (torch.tensor(1), 2, torch.float32, r"shape \(\)"),
        (torch.tensor([0, 1]), 0, torch.float32, "num_parts.*0"),
        (torch.tensor([0, 1]), 2, torch.int64, "torch.int64"),
    ],
)
def test_assignment_mask_rejects_bad_input(
    assignments: torch.Tensor, num_parts: int, dtype: torch.dtype, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        assignment_mask(assignments, num_parts, dtype)
