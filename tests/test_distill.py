"""Knowledge distillation: the loss against a hand computation, a frozen teacher, resume
equality, detectors' class logits."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from torch import nn

from prunecli.config.store import register_schemas
from prunecli.engine.distill import box_kd_loss, foreground_probability, kd_loss
from prunecli.engine.trainer import Trainer
from prunecli.errors import ConfigError

register_schemas()

# 6 optimizer steps an epoch, of 8 images each
SMALL = ["experiment=smoke", "data.train_size=48", "data.val_size=32", "data.batch_size=8",
         "data.image_size=16", "trainer.progress=false", "trainer.deterministic=true"]


def make_cfg(*overrides: str):
    with initialize_config_module(version_base="1.3", config_module="prunecli.conf"):
        return compose("train", overrides=[*SMALL, *overrides])


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "last.pt", weights_only=True)["model"]


@pytest.fixture(scope="module")
def dense_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained dense smoke model's state_dict: the teacher and the start of every run."""
    out = tmp_path_factory.mktemp("dense")
    Trainer(make_cfg("trainer.epochs=2"), out).fit()
    torch.save(_weights(out), out / "dense.pt")
    return out / "dense.pt"


# ---------------------------------------------------------------- the loss
def test_softmax_kd_matches_a_hand_computation() -> None:
    s = torch.tensor([[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]])
    t = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 3.0]])
    temp = 2.0
    expected = 0.0
    for srow, trow in zip(s.tolist(), t.tolist(), strict=True):
        zs = sum(math.exp(v / temp) for v in srow)
        zt = sum(math.exp(v / temp) for v in trow)
        for a, b in zip(srow, trow, strict=True):
            p, q = math.exp(b / temp) / zt, math.exp(a / temp) / zs
            expected += p * math.log(p / q)
    expected = temp**2 * expected / 2  # averaged over the rows
    assert kd_loss(s, t, temp, "softmax").item() == pytest.approx(expected, rel=1e-6)
    # PyTorch's own KL divergence agrees (batchmean over rows)
    ref = nn.functional.kl_div(torch.log_softmax(s / temp, -1), torch.log_softmax(t / temp, -1),
                               log_target=True, reduction="batchmean") * temp**2
    assert kd_loss(s, t, temp, "softmax").item() == pytest.approx(ref.item(), rel=1e-6)


def test_sigmoid_kd_is_a_binary_kl_per_column() -> None:
    s = torch.tensor([[[0.3, -2.0], [1.0, 0.0]]])  # 1 image, 2 boxes, 2 classes
    t = torch.tensor([[[1.0, -1.0], [-0.5, 2.0]]])
    temp = 1.5
    expected = 0.0
    for a, b in zip(s.flatten().tolist(), t.flatten().tolist(), strict=True):
        p, q = 1 / (1 + math.exp(-b / temp)), 1 / (1 + math.exp(-a / temp))
        expected += p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))
    expected = temp**2 * expected / 2  # summed over classes, averaged over the 2 boxes
    assert kd_loss(s, t, temp, "sigmoid").item() == pytest.approx(expected, rel=1e-6)


def test_kd_is_zero_with_zero_gradient_when_the_student_agrees() -> None:
    t = torch.randn(4, 5)
    for kind in ("softmax", "sigmoid"):
        s = t.clone().requires_grad_(True)
        loss = kd_loss(s, t, 4.0, kind)
        loss.backward()
        assert loss.item() == pytest.approx(0.0, abs=1e-6)
        assert s.grad.abs().max().item() < 1e-6


def test_kd_refuses_logits_of_another_shape() -> None:
    with pytest.raises(ConfigError, match="teacher's class logits have shape"):
        kd_loss(torch.zeros(2, 10), torch.zeros(2, 5), 2.0, "softmax")


# ---------------------------------------------------------------- in training
def test_no_teacher_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs a trained teacher"):
        Trainer(make_cfg("distill.enabled=true"), tmp_path).fit()


def test_teacher_is_frozen_and_gets_no_gradient(tmp_path: Path, dense_weights: Path) -> None:
    trainer = Trainer(make_cfg("distill.enabled=true", f"model.weights={dense_weights}",
                               "method=taylor", "cost.ratio=0.5", "method.prune_every=2",
                               "trainer.epochs=1"), tmp_path)
    results = trainer.fit()
    teacher = trainer.distiller.teacher
    assert not teacher.training
    dense = torch.load(dense_weights, weights_only=True)
    for name, p in teacher.named_parameters():
        assert not p.requires_grad and p.grad is None, name
        assert torch.equal(p.detach(), dense[name]), name
    for name, b in teacher.named_buffers():  # BN statistics too: the teacher runs in eval mode
        assert torch.equal(b, dense[name]), name
    kd = results["distill"]
    assert kd["alpha"] == 0.5 and kd["teacher"] == str(dense_weights)
    assert kd["teacher_ms_per_batch"] > 0
    epoch = [r for r in _jsonl(tmp_path) if r.get("kind") == "epoch"][-1]
    assert epoch["train_kd"] > 0 and math.isfinite(epoch["train_kd"])
    # the student was pruned; the teacher was not; the final model carries no hook
    assert results["macs"] < results["dense_macs"]
    assert not trainer.model._forward_hooks


def test_copies_of_the_student_do_not_copy_the_teacher() -> None:
    """Slimming deep-copies the student: the copy's hook is inert and holds no teacher."""
    import copy

    from prunecli.engine.distill import Distiller
    from prunecli.tasks.classification import ClassificationTask

    student, teacher = nn.Linear(4, 3), nn.Linear(4, 3)
    task = ClassificationTask(make_cfg().data, num_classes=3)
    distiller = Distiller(teacher, task, alpha=0.5, temperature=2.0,
                          device=torch.device("cpu"), memory_format=torch.contiguous_format)
    distiller.attach(student)
    twin = copy.deepcopy(student)
    (hook,) = twin._forward_hooks.values()
    assert hook.distiller is None
    twin(torch.randn(2, 4)).sum().backward()  # a copy's forward does not reach the distiller
    assert distiller._captured is None
    x = torch.randn(2, 4)
    logits = student(x)
    loss = distiller.mix(nn.functional.cross_entropy(logits, torch.tensor([0, 1])), x, logits)
    assert loss.requires_grad and distiller._captured is None  # nothing kept after the step


def test_alpha_zero_trains_exactly_as_without_distillation(tmp_path: Path,
                                                          dense_weights: Path) -> None:
    """The term enters the objective and nothing else: alpha 0 is the plain run, bit for bit
    (and alpha 0.5 is not)."""
    common = (f"model.weights={dense_weights}", "method=taylor", "cost.ratio=0.5",
              "method.prune_every=2", "trainer.epochs=1")
    Trainer(make_cfg(*common), tmp_path / "plain").fit()
    Trainer(make_cfg(*common, "distill.enabled=true", "distill.alpha=0"), tmp_path / "a0").fit()
    Trainer(make_cfg(*common, "distill.enabled=true"), tmp_path / "a5").fit()
    plain, zero, half = (_weights(tmp_path / n) for n in ("plain", "a0", "a5"))
    assert all(torch.equal(plain[k], zero[k]) for k in plain)
    assert not all(torch.equal(plain[k], half[k]) for k in plain)


def test_resume_with_distillation_matches_an_unbroken_run(tmp_path: Path,
                                                          dense_weights: Path) -> None:
    common = ("distill.enabled=true", f"model.weights={dense_weights}", "method=smcp",
              "cost.ratio=0.5", "method.warmup_epochs=0.2", "method.ramp_epochs=1",
              "method.cooldown_epochs=1", "method.prune_every=2", "trainer.epochs=3")
    Trainer(make_cfg(*common), tmp_path / "full").fit()
    Trainer(make_cfg(*common, "trainer.stop_after_epoch=1"), tmp_path / "part").fit()
    Trainer(make_cfg(*common, f"resume={tmp_path / 'part'}"), tmp_path / "res").fit()
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "res")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_teacher_from_a_run_directory_and_slim_when_final(tmp_path: Path,
                                                          dense_weights: Path) -> None:
    """distill.teacher names a training run; the hook follows the student into its slimmed
    copy (slim_when_final), so distillation goes on after the swap."""
    teacher_run = dense_weights.parent
    results = Trainer(make_cfg("distill.enabled=true", f"distill.teacher={teacher_run}",
                               f"model.weights={dense_weights}", "method=taylor",
                               "cost.ratio=0.5", "method.prune_every=1",
                               "method.remove_per_step=0.25", "method.slim_when_final=true",
                               "trainer.epochs=2"), tmp_path).fit()
    assert results["slimmed_at_step"] is not None
    epochs = [r for r in _jsonl(tmp_path) if r.get("kind") == "epoch"]
    assert len(epochs) == 2 and epochs[-1]["train_kd"] > 0  # the slimmed epoch was distilled
    assert results["distill"]["teacher"].endswith("last.pt")


def _jsonl(run_dir: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- detectors
@pytest.mark.parametrize("name", ["ssd_tiny", "retinanet_resnet50_fpn", "fcos_resnet50_fpn"])
def test_detector_class_logits_are_torchvisions_head_outputs(name: str) -> None:
    """The logits and boxes distillation matches are exactly what torchvision's head computes
    (its ``cls_logits`` and ``bbox_regression``, in its (N, boxes, columns) layout)."""
    from prunecli.models import build_model

    cfg = {"name": name} if name == "ssd_tiny" else {"source": "torchvision_det", "name": name}
    torch.manual_seed(0)
    det = build_model(cfg, num_classes=3, in_chans=3).eval()
    size = det.input_size if name == "ssd_tiny" else 128
    x = det.normalise(torch.rand(2, 3, size, size))
    with torch.no_grad():
        maps = det.core(x)
        logits, kind = det.class_logits(maps)
        boxes = det.box_regressions(maps)
        feats = det.net.backbone(x)
        feats = list(feats.values()) if isinstance(feats, dict) else [feats]
        expected = det.net.head(feats)
    assert kind == ("softmax" if name == "ssd_tiny" else "sigmoid")
    torch.testing.assert_close(logits, expected["cls_logits"])
    torch.testing.assert_close(boxes, expected["bbox_regression"])
    # distilled in SSD's (10, 10, 5, 5) offset units: RetinaNet's (1, 1, 1, 1) offsets scaled
    # up to them, SSD's already in them, FCOS's distances (no weights) left as they are
    scale = {"retinanet_resnet50_fpn": torch.tensor([10.0, 10.0, 5.0, 5.0])}.get(name)
    assert (det.box_scale() is None) == (scale is None)
    torch.testing.assert_close(detection_task().box_regressions(det, maps),
                               boxes if scale is None else boxes * scale)


def test_faster_rcnn_distils_the_rpn_objectness() -> None:
    from torchvision.models.detection.rpn import concat_box_prediction_layers

    from prunecli.models import build_model

    det = build_model({"source": "torchvision_det",
                       "name": "fasterrcnn_mobilenet_v3_large_320_fpn"},
                      num_classes=3, in_chans=3).eval()
    x = det.normalise(torch.rand(1, 3, 320, 320))
    with torch.no_grad():
        maps = det.core(x)
        logits, kind = det.class_logits(maps)
        boxes = det.box_regressions(maps)
        levels = len(det.core.feature_names)
        objectness, deltas = concat_box_prediction_layers(list(maps[levels:2 * levels]),
                                                          list(maps[2 * levels:]))
    assert kind == "sigmoid"
    torch.testing.assert_close(logits.reshape(-1, 1), objectness)
    torch.testing.assert_close(boxes.reshape(-1, 4), deltas)
    scaled = detection_task().box_regressions(det, maps)  # the RPN codes with (1, 1, 1, 1)
    torch.testing.assert_close(scaled, boxes * torch.tensor([10.0, 10.0, 5.0, 5.0]))


def detection_task():
    from prunecli.tasks.detection import DetectionTask

    with initialize_config_module(version_base="1.3", config_module="prunecli.conf"):
        data = compose("train", overrides=["data=fashion_det"]).data
    return DetectionTask(data, num_classes=3)


def test_box_distillation_against_a_hand_computation() -> None:
    """Smooth L1 summed over the coordinates, averaged over the boxes the teacher holds for
    objects only; the foreground probability of softmax (background first) and sigmoid heads."""
    student = torch.tensor([[[0.0, 0, 0, 0], [1.0, 0, 0, 0], [3.0, 0, 0, 0], [0.2, 0, 0, 0]]])
    teacher = torch.zeros_like(student)
    # per box: 0, 0.5 (quadratic part), 2.5 (linear part), 0.02; boxes 0, 1 and 3 are objects
    fg = torch.tensor([[0.9, 0.6, 0.1, 0.5]])
    assert box_kd_loss(student, teacher, fg, 0.5).item() == pytest.approx((0 + 0.5 + 0.02) / 3)
    assert box_kd_loss(student, teacher, fg, 0.95).item() == 0.0  # no object: no term
    softmax = torch.tensor([[[0.0, math.log(3.0), -50.0]]])  # background 1/4
    assert foreground_probability(softmax, "softmax").item() == pytest.approx(0.75)
    sigmoid = torch.tensor([[[0.0, 2.0, -1.0]]])
    assert foreground_probability(sigmoid, "sigmoid").item() == pytest.approx(
        1 / (1 + math.exp(-2.0)))


@pytest.mark.parametrize("name", ["ssd_tiny", "fasterrcnn_mobilenet_v3_large_320_fpn"])
def test_detector_distillation_shares_only_the_class_loss_weight(name: str) -> None:
    """For a detector ``1 - alpha`` scales only the loss of the distilled scores (SSD's
    classification, Faster R-CNN's RPN objectness); box losses and the ROI heads keep their full
    weight, since distillation gives them no other signal."""
    from prunecli.engine.distill import Distiller
    from prunecli.models import build_model
    from prunecli.tasks.detection import DetectionTask

    cfg = {"name": name} if name == "ssd_tiny" else {"source": "torchvision_det", "name": name}
    torch.manual_seed(0)
    student = build_model(cfg, num_classes=3, in_chans=3).train()
    teacher = build_model(cfg, num_classes=3, in_chans=3).eval()
    with torch.no_grad():  # away from the initialisation (the RPN's scores start all equal)
        for p in teacher.parameters():
            p.add_(0.05 * torch.randn_like(p))
    size = student.input_size if name == "ssd_tiny" else 320
    with initialize_config_module(version_base="1.3", config_module="prunecli.conf"):
        data = compose("train", overrides=["data=fashion_det"]).data
    task = DetectionTask(data, num_classes=3)
    distiller = Distiller(teacher, task, alpha=0.3, temperature=2.0, device=torch.device("cpu"),
                          memory_format=torch.contiguous_format)
    distiller.attach(student)
    images = torch.rand(2, 3, size, size)
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 40.0, 50.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[10.0, 8.0, 30.0, 44.0]]), "labels": torch.tensor([2])}]
    loss, parts = task.loss(student, images, targets)
    with torch.no_grad():
        s_logits, kind = student.class_logits(distiller._captured)
        t_logits, _ = teacher.class_logits(teacher.core(teacher.normalise(images)))
    objective = distiller.mix(loss, images, parts)
    key = student.class_loss_keys[0]
    assert key in parts and len(parts) >= 2
    rest = sum(v for k, v in parts.items() if k != key)
    expected = 0.7 * parts[key] + 0.3 * kd_loss(s_logits, t_logits, 2.0, kind) + rest
    torch.testing.assert_close(objective, expected)

    # the box term is added on top with its own weight, on the teacher's object boxes (a
    # threshold at the median of its foreground probabilities: half the boxes)
    with torch.no_grad():
        t_maps = teacher.core(teacher.normalise(images))
        fg = foreground_probability(teacher.class_logits(t_maps)[0], kind)
    threshold = float(fg.median())
    boxed = Distiller(teacher, task, alpha=0.3, temperature=2.0, box_weight=4.0,
                      box_threshold=threshold, device=torch.device("cpu"),
                      memory_format=torch.contiguous_format)
    boxed.attach(student)
    loss, parts = task.loss(student, images, targets)
    with torch.no_grad():
        s_boxes = task.box_regressions(student, boxed._captured)  # scaled: tested above
        t_boxes = task.box_regressions(teacher, t_maps)
        box_term = box_kd_loss(s_boxes, t_boxes, fg, threshold)
        everywhere = box_kd_loss(s_boxes, t_boxes, fg, 1e-9)
    assert 0 < (fg >= threshold).sum() < fg.numel()
    assert not torch.isclose(box_term, everywhere)  # the selection matters
    class_part = 0.7 * parts[key] + 0.3 * kd_loss(student.class_logits(boxed._captured)[0],
                                                  t_logits, 2.0, kind)
    expected = class_part + sum(v for k, v in parts.items() if k != key) + 4.0 * box_term
    torch.testing.assert_close(boxed.mix(loss, images, parts), expected)


def test_detector_distillation_trains(tmp_path: Path) -> None:
    """A detector distils from a trained detector (distill.teacher): the class and box KD terms
    are finite and positive, and the run ends with its mAP."""
    det = ("model=ssd_tiny", "data=fashion_det", "data.train_size=32", "data.val_size=8",
           "data.batch_size=8", "trainer.progress=false", "trainer.epochs=1", "optim.lr=0.01")
    with initialize_config_module(version_base="1.3", config_module="prunecli.conf"):
        teacher_cfg = compose("train", overrides=list(det))
        Trainer(teacher_cfg, tmp_path / "teacher").fit()
        cfg = compose("train", overrides=[*det, "distill.enabled=true",
                                          f"distill.teacher={tmp_path / 'teacher'}",
                                          "method=taylor", "cost.ratio=0.3",
                                          "method.prune_every=1",
                                          "distill.box_threshold=0.05"])
    results = Trainer(cfg, tmp_path / "student").fit()
    epoch = [r for r in _jsonl(tmp_path / "student") if r.get("kind") == "epoch"][-1]
    assert epoch["train_kd"] > 0 and math.isfinite(epoch["train_kd"])
    assert epoch["train_kd_box"] > 0 and math.isfinite(epoch["train_kd_box"])
    # the detection defaults: the box term on, the class-score term off (still measured)
    assert results["distill"]["box_weight"] == 2.0 and results["distill"]["alpha"] == 0.0
    assert "map" in results and results["distill"]["teacher_ms_per_batch"] > 0
