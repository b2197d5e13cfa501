"""Training runs under faults: kills at every save point, re-runs, resumes, tampered state.

Every kill is injected at an exact step: a forked child wraps the function that performs the
save (or one rename of it) and sends itself SIGKILL there, so no ``finally`` or ``except``
runs, as after a power cut. The parent then resumes the run in-process and compares it with an
uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import pickle
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from reid_transformers import hub as hub_module
from reid_transformers import utils
from reid_transformers.data import load_reid_dataset
from reid_transformers.training import ReIDTrainer
from reid_transformers.training import state as state_module
from reid_transformers.training import trainer as trainer_module

from .test_trainer import arguments, crash_in_second_epoch
from .test_training_state import PicklePayload

RUN_FILES = ["best", "last", "metrics.jsonl", "state", "training_args.json"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Forked children and this process must sum floats with the same thread count, or a
    resumed run differs from an uninterrupted one in the last bits (and forked children
    deadlock in OpenMP with more threads)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def read_log(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


def without_timings(log: list[dict]) -> list[dict]:
    return [{k: v for k, v in record.items() if k != "seconds"} for record in log]


def assert_same_weights(got_file: Path, expected_file: Path) -> None:
    got, expected = load_file(got_file), load_file(expected_file)
    assert got.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=1e-6, rtol=1e-5, msg=key)


# ------------------------------------------------------------------ an existing run
def test_rerunning_into_a_run_is_refused_and_overwrite_replaces_it(tmp_path, data, caplog):
    ReIDTrainer(arguments(tmp_path, epochs=1), data=data).train()
    best = (tmp_path / "best" / "model.safetensors").read_bytes()
    log = (tmp_path / "metrics.jsonl").read_text()
    with pytest.raises(
        FileExistsError,
        match=r"already holds a training run \(best, last, metrics.jsonl, state, "
        r"training_args.json\).*--resume.*another --output_dir.*--overwrite_output_dir",
    ):
        ReIDTrainer(arguments(tmp_path, epochs=1, seed=1), data=data).train()
    assert (tmp_path / "best" / "model.safetensors").read_bytes() == best
    assert (tmp_path / "metrics.jsonl").read_text() == log
    with pytest.raises(ValueError, match="--resume and --overwrite_output_dir"):
        ReIDTrainer(arguments(tmp_path, resume=True, overwrite_output_dir=True), data=data)

    (tmp_path / "notes.txt").write_text("not part of the run")
    with caplog.at_level(logging.WARNING, logger=trainer_module.__name__):
        ReIDTrainer(arguments(tmp_path, epochs=1, seed=1, overwrite_output_dir=True),
                    data=data).train()
    deleted = [r.getMessage() for r in caplog.records if "--overwrite_output_dir" in r.getMessage()]
    assert len(deleted) == 1 and all(name in deleted[0] for name in RUN_FILES)
    assert (tmp_path / "best" / "model.safetensors").read_bytes() != best  # seed 1's model
    assert len([r for r in read_log(tmp_path) if "mAP" in r]) == 1  # one run in the log
    assert (tmp_path / "notes.txt").read_text() == "not part of the run"


# ------------------------------------------------------------------ one log line per event
def test_a_resumed_run_logs_every_epoch_once(tmp_path, data, monkeypatch):
    crashing = ReIDTrainer(arguments(tmp_path, epochs=3, blockwise_unfreezing=True,
                                     unfreeze_every=1), data=data)
    real_log = crashing._log

    def log_then_crash(record):
        real_log(record)
        if record["epoch"] == 2 and "mAP" in record:
            raise KeyboardInterrupt("killed once epoch 2's evaluation is logged")

    monkeypatch.setattr(crashing, "_log", log_then_crash)
    with pytest.raises(KeyboardInterrupt):
        crashing.train()
    with (tmp_path / "metrics.jsonl").open("a") as handle:
        handle.write('{"epoch": 2, "step": 1')  # a line cut short by a kill
    ReIDTrainer(arguments(tmp_path, epochs=3, blockwise_unfreezing=True, unfreeze_every=1,
                          resume=True), data=data).train()
    events = [(r["epoch"], tuple(sorted(k for k in r if k in ("mAP", "train_loss",
                                                               "trainable_blocks"))))
              for r in read_log(tmp_path)]
    assert events == [
        (epoch, kind) for epoch in (1, 2, 3)
        for kind in (("trainable_blocks",), ("train_loss",), ("mAP",))
    ]


# ------------------------------------------------------------------ never unpickle

ACCELERATE_PICKLES = ["custom_checkpoint_0.pkl", "custom_checkpoint_1.pkl",
                      "random_states_0.pkl", "optimizer.bin", "scheduler.bin", "sampler.bin",
                      "scaler.pt", "pytorch_model.bin"]


def _interrupted_run(output_dir: Path, data, monkeypatch) -> None:
    """Two epochs planned, killed in the second: state/ holds epoch 1."""
    crash_in_second_epoch(ReIDTrainer(arguments(output_dir, eval_every=0), data=data), monkeypatch)


@pytest.mark.parametrize("tampered", [["custom_checkpoint_0.pkl"], ACCELERATE_PICKLES])
def test_a_tampered_pickle_in_state_is_never_executed(tmp_path, data, monkeypatch, tampered):
    _interrupted_run(tmp_path / "run", data, monkeypatch)
    marker = tmp_path / "executed"
    for name in tampered:
        (tmp_path / "run" / "state" / name).write_bytes(pickle.dumps(PicklePayload(marker)))
    try:
        ReIDTrainer(arguments(tmp_path / "run", eval_every=0, resume=True), data=data).train()
    finally:  # checked first: a resume that fails after running the pickle still ran it
        assert not marker.exists(), "a pickle in state/ was executed"
    assert (tmp_path / "run" / "last" / "model.safetensors").is_file()


def test_a_state_in_accelerate_pickles_is_refused_unread(tmp_path, data, monkeypatch):
    _interrupted_run(tmp_path, data, monkeypatch)
    state = tmp_path / "state"
    for file in state.iterdir():
        file.unlink()
    marker = tmp_path / "executed"
    save_file({"weight": torch.zeros(1)}, state / "model.safetensors")
    for name in ACCELERATE_PICKLES[:3] + ["optimizer.bin"]:
        (state / name).write_bytes(pickle.dumps(PicklePayload(marker)))
    with pytest.raises(ValueError, match=r"state.* lacks trainer_state.json.*pickles.*not loaded"):
        ReIDTrainer(arguments(tmp_path, eval_every=0, resume=True), data=data).train()
    assert not marker.exists()


def test_the_saved_state_is_json_and_safetensors(tmp_path, data, monkeypatch):
    _interrupted_run(tmp_path, data, monkeypatch)
    files = sorted(p.name for p in (tmp_path / "state").iterdir())
    assert files == ["model.safetensors", "optimizer.json", "optimizer.safetensors",
                     "rng-0.json", "rng-0.safetensors", "trainer_state.json"]
    state = json.loads((tmp_path / "state" / "trainer_state.json").read_text())
    assert state["epoch"] == 1 and state["global_step"] > 0 and state["num_processes"] == 1
    # Damage that no kill can cause (the files are swapped in whole) still gets one clear line.
    weights = tmp_path / "state" / "optimizer.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"state/optimizer.safetensors cannot be loaded"):
        ReIDTrainer(arguments(tmp_path, eval_every=0, resume=True), data=data).train()


# ------------------------------------------------------------------ fine-tuning a checkpoint
def test_fine_tuning_evaluates_the_checkpoint_first_and_keeps_it_if_nothing_beats_it(
    tmp_path, data, monkeypatch
):
    ReIDTrainer(arguments(tmp_path / "base", epochs=2, eval_every=0), data=data).train()
    checkpoint = tmp_path / "base" / "last"
    tuning = ReIDTrainer(
        arguments(tmp_path / "tuned", model=str(checkpoint), model_overrides=None, epochs=2),
        data=data,
    )
    real_evaluate = tuning.evaluate
    calls = []

    def every_epoch_worse(*args, **kwargs):
        metrics = real_evaluate(*args, **kwargs)
        calls.append(metrics["mAP"])
        if len(calls) > 1:  # whatever training did, pretend it made things worse
            metrics["mAP"] = calls[0] / 2
        return metrics

    monkeypatch.setattr(tuning, "evaluate", every_epoch_worse)
    tuning.train()
    evaluations = [r for r in read_log(tmp_path / "tuned") if "mAP" in r]
    assert [(r["epoch"], r["step"]) for r in evaluations][0] == (0, 0)
    assert evaluations[0]["mAP"] == pytest.approx(calls[0]) and calls[0] > 0
    assert_same_weights(tmp_path / "tuned" / "best" / "model.safetensors",
                        checkpoint / "model.safetensors")
    assert tuning.best_evaluation["epoch"] == 0
    assert tuning.last_evaluation["epoch"] == 2


def test_training_a_new_model_does_not_evaluate_before_the_first_epoch(tmp_path, data):
    trainer = ReIDTrainer(arguments(tmp_path, epochs=1), data=data)
    trainer.train()
    assert [r["epoch"] for r in read_log(tmp_path) if "mAP" in r] == [1]
    assert trainer.best_evaluation["epoch"] == trainer.last_evaluation["epoch"] == 1


# ------------------------------------------------------------------ time budget, arguments file
def test_max_minutes_ends_the_run_cleanly_with_checkpoints_and_cards(tmp_path, data,
                                                                     monkeypatch):
    trainer = ReIDTrainer(arguments(tmp_path, epochs=5, max_minutes=2.5), data=data)
    assert len(trainer.sampler) > 3
    # A clock that moves one minute per optimizer step: the budget runs out at step 3.
    monkeypatch.setattr(trainer_module, "monotonic", lambda: 60.0 * trainer.state.global_step)
    metrics = trainer.train()
    assert trainer.state.global_step == 3
    log = read_log(tmp_path)
    assert log[-1]["step"] == 3 and log[-1]["mAP"] == metrics["mAP"]
    for name in ("best", "last"):
        assert (tmp_path / name / "model.safetensors").is_file()
        assert "mAP" in (tmp_path / name / "README.md").read_text()
    assert json.loads((tmp_path / "state" / "trainer_state.json").read_text())["global_step"] == 3
    assert trainer.last_evaluation == {"epoch": 1, "step": 3, "metrics": metrics}
    assert trainer.best_evaluation == trainer.last_evaluation
    with pytest.raises(ValueError, match="max_minutes must be >= 0"):
        ReIDTrainer(arguments(tmp_path / "other", max_minutes=-1), data=data)


def test_the_resolved_arguments_are_saved_without_the_token_and_reload(tmp_path, data):
    from reid_transformers.training import parse_arguments

    args = arguments(tmp_path, epochs=1, hub_token="hf_secret", milestones=[1])
    ReIDTrainer(args, data=data).train()
    saved = tmp_path / "training_args.json"
    assert "hf_secret" not in saved.read_text()
    values = json.loads(saved.read_text())
    assert values["epochs"] == 1 and values["image_size"] == [32, 16]
    reloaded = parse_arguments([str(saved)])
    assert reloaded == arguments(tmp_path, epochs=1, milestones=[1])


# ------------------------------------------------------------------ kills at every save point
def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _count(counter: dict, key: str) -> int:
    counter[key] = counter.get(key, 0) + 1
    return counter[key]


def _install_kill(point: str) -> None:
    """In this (forked) process, SIGKILL at save point ``point`` = ``folder:stage:n``: the
    n-th time ``folder`` (state, best or last) reaches ``stage``."""
    folder, stage, nth = point.split(":")
    nth = int(nth)
    staging = f".{folder}.staging"
    counter: dict[str, int] = {}
    if stage == "write":  # state/: the model is written to staging, the optimizer is next
        real_save_file = state_module.save_file

        def save_file(tensors, path, *args, **kwargs):
            if Path(path).parent.name == staging and Path(path).name == "optimizer.safetensors":
                if _count(counter, stage) == nth:
                    _die()
            return real_save_file(tensors, path, *args, **kwargs)

        state_module.save_file = save_file
    elif stage == "card":  # weights and configs staged, the model card is being written
        real_card = hub_module.save_model_card

        def save_model_card(card, directory, *args, **kwargs):
            if Path(directory).name == staging and _count(counter, stage) == nth:
                Path(directory, "README.md").write_text(str(card)[:100])  # half written
                _die()
            return real_card(card, directory, *args, **kwargs)

        hub_module.save_model_card = save_model_card  # what the trainer's save_card calls
    elif stage == "rename":  # the rename that publishes staging (two-rename path: the old
        # version has already moved to its backup name, so the folder is missing)
        utils._exchange = lambda *_: False
        real_replace = os.replace

        def replace(source, destination):
            if Path(source).name == staging and _count(counter, stage) == nth:
                _die()
            real_replace(source, destination)

        utils.os.replace = replace
    elif stage == "exchanged":  # the atomic exchange done, the old version not yet deleted
        real_exchange = utils._exchange

        def exchange(first, second):
            swapped = real_exchange(first, second)
            if Path(second).name == folder and _count(counter, stage) == nth:
                _die()
            return swapped

        utils._exchange = exchange
    else:
        raise ValueError(f"unknown stage {stage!r}")


_real_evaluate = ReIDTrainer.evaluate


def _rising_evaluate(self):
    """The real evaluation, with an mAP that grows with every step: best/ is replaced at every
    epoch, so the kill points in the second best/ save exist whatever the arithmetic of the
    machine."""
    metrics = _real_evaluate(self)
    metrics["mAP"] = self.state.global_step / 1000
    return metrics


def _train_until_killed(output_dir: str, data, point: str) -> None:
    torch.set_num_threads(1)
    ReIDTrainer.evaluate = _rising_evaluate
    _install_kill(point)
    ReIDTrainer(arguments(output_dir, epochs=3), data=data).train()


def _train(output_dir: Path, data, **flags) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ReIDTrainer, "evaluate", _rising_evaluate)
        ReIDTrainer(arguments(output_dir, epochs=3, **flags), data=data).train()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data):
    # Both runs live in a folder named "run": the card's model name is the folder's.
    output_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    _train(output_dir, data)
    return output_dir


#: Kill point -> what it leaves in output_dir besides the run's files (checked, so a kill
#: that lands elsewhere fails the test).
KILL_POINTS = {
    # epoch 2's state half written (epochs 0 and 1 saved before)
    "state:write:3": {".state.staging"},
    # epoch 2's state swap: state/ moved away, the new one not yet in
    "state:rename:3": {".state.old-*", ".state.staging"},
    # epoch 2's state swapped in, epoch 1's copy (now at the staging name) not deleted
    "state:exchanged:2": {".state.staging"},
    # the second best/ (epoch 2) staged, its card half written
    "best:card:2": {".best.staging"},
    # the second best/ swap: best/ moved away, the new one not yet in
    "best:rename:2": {".best.old-*", ".best.staging"},
    # the second best/ swapped in, the first not deleted
    "best:exchanged:1": {".best.staging"},
    # last/ staged, its card half written
    "last:card:1": {".last.staging"},
    # last/ complete, about to be renamed into place
    "last:rename:1": {".last.staging"},
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_a_kill_at_any_save_point_resumes_to_the_uninterrupted_result(
    tmp_path, data, uninterrupted, point
):
    tmp_path = tmp_path / "run"
    child = multiprocessing.get_context("fork").Process(
        target=_train_until_killed, args=(str(tmp_path), data, point)
    )
    child.start()
    child.join(300)
    assert child.exitcode == -signal.SIGKILL, f"the run was not killed at {point}"
    left = {p.name.split("-")[0] + "-*" if ".old-" in p.name else p.name
            for p in tmp_path.iterdir() if p.name.startswith(".")}
    assert left == KILL_POINTS[point]
    if point in ("state:rename:3", "best:rename:2"):  # the window the recovery closes
        assert not (tmp_path / point.split(":")[0]).exists()

    _train(tmp_path, data, resume=True)
    for name in ("last", "best"):
        assert_same_weights(tmp_path / name / "model.safetensors",
                            uninterrupted / name / "model.safetensors")
        assert (tmp_path / name / "README.md").read_text() == (
            uninterrupted / name / "README.md").read_text()
    assert without_timings(read_log(tmp_path)) == without_timings(read_log(uninterrupted))
    assert sorted(p.name for p in tmp_path.iterdir()) == RUN_FILES  # no leftovers


def test_a_kill_before_the_first_state_says_how_to_go_on(tmp_path, data):
    child = multiprocessing.get_context("fork").Process(
        target=_train_until_killed, args=(str(tmp_path), data, "state:write:1")
    )
    child.start()
    child.join(300)
    assert child.exitcode == -signal.SIGKILL
    with pytest.raises(FileNotFoundError, match="before its first state.*--overwrite_output_dir"):
        _train(tmp_path, data, resume=True)
    _train(tmp_path, data, overwrite_output_dir=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == RUN_FILES


# ------------------------------------------------------------------ DDP with blockwise unfreezing
def _blockwise_worker(root: str, output_dir: str) -> None:
    from accelerate.state import AcceleratorState

    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    AcceleratorState._reset_state(True)  # the fork inherits this process's one-rank state
    data = load_reid_dataset("market1501", root, progress=False)
    # Epochs 1-2 train the top block, epoch 3 also the next one; the third stays frozen. The
    # run is killed before epoch 3 and resumed, so the release happens in the resumed run.
    flags = dict(epochs=3, eval_every=0, blockwise_unfreezing=True, unfreeze_every=2,
                 initially_unfrozen=1)
    crashing = ReIDTrainer(arguments(output_dir, **flags), data=data)
    rank = crashing.accelerator.process_index
    model = crashing.unwrapped_model
    names = {id(p): n for n, p in model.named_parameters()}
    blocks = [[names[id(p)] for p in block.parameters()] for block in model.unfreezable_blocks()]
    initial = {k: v.clone().contiguous() for k, v in model.state_dict().items()}
    real_epoch = crashing._train_epoch

    def crash_before_the_release(epoch):
        if epoch == 2:
            raise KeyboardInterrupt("simulated crash")
        real_epoch(epoch)

    crashing._train_epoch = crash_before_the_release
    try:
        crashing.train()
    except KeyboardInterrupt:
        pass
    resumed = ReIDTrainer(arguments(output_dir, resume=True, **flags), data=data)
    resumed.train()
    assert resumed.state.epoch == 3
    save_file({k: v.contiguous() for k, v in resumed.unwrapped_model.state_dict().items()},
              f"{output_dir}/rank{rank}.safetensors")
    if rank == 0:
        save_file(initial, f"{output_dir}/initial.safetensors")
        Path(output_dir, "blocks.json").write_text(json.dumps(blocks))


def test_two_processes_train_blockwise_resume_and_keep_identical_weights(tmp_path, data):
    from accelerate import debug_launcher

    root = str(data["query"][0]["path"]).rsplit("/query/", 1)[0]
    debug_launcher(_blockwise_worker, args=(root, str(tmp_path)), num_processes=2)
    ranks = [load_file(tmp_path / f"rank{r}.safetensors") for r in range(2)]
    initial = load_file(tmp_path / "initial.safetensors")
    top, released, frozen = json.loads((tmp_path / "blocks.json").read_text())
    for key in ranks[0]:
        assert torch.equal(ranks[0][key], ranks[1][key]), f"ranks differ in {key}"
    assert any(not torch.equal(ranks[0][k], initial[k]) for k in top)
    assert any(not torch.equal(ranks[0][k], initial[k]) for k in released)
    assert all(torch.equal(ranks[0][k], initial[k]) for k in frozen)
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == [
        "model.safetensors", "optimizer.json", "optimizer.safetensors", "rng-0.json",
        "rng-0.safetensors", "rng-1.json", "rng-1.safetensors", "trainer_state.json",
    ]
