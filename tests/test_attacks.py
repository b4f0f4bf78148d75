"""Each attack's defining property, on the embedded digits data."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from gsdefense.attacks import build_attack
from gsdefense.data import load_dataset
from gsdefense.errors import ConfigError
from gsdefense.metrics import backdoor_test_set


@pytest.fixture(scope="module")
def digits():
    return load_dataset(OmegaConf.create({"name": "digits"}), seed=0)


def _attack(**node):
    return build_attack(OmegaConf.create(node))


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("ratio", [0.0, 0.05, 0.3])
def test_label_flip_replace_changes_exactly_round_ratio_n_labels_never_to_same_class(digits, ratio):
    attack = _attack(name="label_flip", poison_ratio=ratio)
    attack.validate(digits)
    out = attack.poison(digits, generator=_gen())
    n = len(digits.y_train)
    changed = out.y != digits.y_train
    assert int(changed.sum()) == round(ratio * n)
    assert torch.equal(changed, out.is_poison)
    assert torch.equal(out.x, digits.x_train)
    # all other classes are reachable, not just one
    if ratio == 0.3:
        assert len(set((out.y[changed] - digits.y_train[changed]).remainder(10).tolist())) == 9


def test_label_flip_append_adds_flipped_copies_and_keeps_clean_data(digits):
    attack = _attack(name="label_flip", poison_ratio=0.1, mode="append")
    attack.validate(digits)
    out = attack.poison(digits, generator=_gen())
    n, k = len(digits.y_train), round(0.1 * len(digits.y_train))
    assert len(out.y) == n + k and out.n_poison == k
    assert torch.equal(out.y[:n], digits.y_train) and torch.equal(out.x[:n], digits.x_train)
    appended = out.x[n:]
    # each appended image is a copy of a training image whose label differs
    match = (appended.flatten(1)[:, None] == digits.x_train.flatten(1)[None]).all(-1)
    src = match.float().argmax(1)
    assert match.any(1).all()
    assert (out.y[n:] != digits.y_train[src]).all()


def test_label_flip_to_target_class(digits):
    attack = _attack(name="label_flip", poison_ratio=0.1, target_class=3)
    attack.validate(digits)
    out = attack.poison(digits, generator=_gen())
    assert (out.y[out.is_poison] == 3).all() and (digits.y_train[out.is_poison] != 3).all()


BACKDOORS = [dict(name="badnets", patch_size=2, target_class=7), dict(name="blend", alpha=0.3, target_class=7)]


@pytest.mark.parametrize("node", BACKDOORS)
def test_backdoor_replace_modifies_only_poisoned_indices_and_relabels_to_target(digits, node):
    attack = _attack(poison_ratio=0.1, mode="replace", source="non_target", **node)
    attack.validate(digits)
    out = attack.poison(digits, generator=_gen())
    mask = out.is_poison
    assert out.n_poison == round(0.1 * len(digits.y_train))
    assert (out.y[mask] == 7).all()
    assert (digits.y_train[mask] != 7).all(), "poisons are drawn from non-target samples"
    assert torch.equal(out.x[~mask], digits.x_train[~mask]) and torch.equal(out.y[~mask], digits.y_train[~mask])
    assert not torch.equal(out.x[mask], digits.x_train[mask])


def _sources(attack, digits, appended: torch.Tensor) -> torch.Tensor:
    """For each appended poison, the training index whose triggered image it is."""
    triggered = attack.trigger(digits.x_train).flatten(1)
    match = (appended.flatten(1)[:, None] == triggered[None]).all(-1)
    assert match.any(1).all(), "every poison is a triggered training image"
    return match.float().argmax(1)


@pytest.mark.parametrize("ratio", [0.01, 0.1, 0.3])
@pytest.mark.parametrize("node", BACKDOORS)
def test_backdoor_append_keeps_every_clean_sample_and_adds_round_ratio_n_target_labelled_poisons(digits, node, ratio):
    attack = _attack(poison_ratio=ratio, **node)  # append from any class is the default (Hong et al., Chen et al.)
    assert (attack.cfg.mode, attack.cfg.source) == ("append", "any")
    attack.validate(digits)
    out = attack.poison(digits, generator=_gen())
    n, k = len(digits.y_train), round(ratio * len(digits.y_train))
    assert len(out.y) == n + k and out.n_poison == k and out.is_poison[n:].all() and not out.is_poison[:n].any()
    assert torch.equal(out.x[:n], digits.x_train) and torch.equal(out.y[:n], digits.y_train)
    assert (out.y[n:] == 7).all()
    src = _sources(attack, digits, out.x[n:])
    assert len(set(src.tolist())) == k  # distinct originals
    if ratio == 0.3:  # drawn from any class: the target class too
        assert (digits.y_train[src] == 7).any() and len(set(digits.y_train[src].tolist())) == 10


def test_backdoor_append_from_non_target_classes_only(digits):
    attack = _attack(name="badnets", poison_ratio=0.3, target_class=7, source="non_target")
    attack.validate(digits)
    out = attack.poison(digits, generator=_gen())
    n = len(digits.y_train)
    assert out.n_poison == round(0.3 * n) and len(out.y) == n + out.n_poison
    assert (digits.y_train[_sources(attack, digits, out.x[n:])] != 7).all()


def test_badnets_stamps_a_white_square_in_the_corner(digits):
    attack = _attack(name="badnets", patch_size=3, corner="bottom_right", target_class=0)
    attack.validate(digits)
    x = digits.x_test[:5]
    stamped = attack.trigger(x)
    assert (stamped[..., 5:, 5:] == 1.0).all()
    outside = torch.ones_like(x, dtype=torch.bool)
    outside[..., 5:, 5:] = False
    assert torch.equal(stamped[outside], x[outside])


def test_blend_follows_its_formula_and_pattern_is_fixed_by_seed(digits):
    attack = _attack(name="blend", alpha=0.2, test_alpha=0.5, pattern_seed=3)
    attack.validate(digits)
    again = _attack(name="blend", pattern_seed=3)
    again.validate(digits)
    assert torch.equal(attack.pattern, again.pattern)
    assert attack.pattern.shape == digits.input_shape
    x = digits.x_train[:4]
    torch.testing.assert_close(attack.blend(x, 0.2), 0.8 * x + 0.2 * attack.pattern)
    torch.testing.assert_close(attack.trigger(x), 0.5 * x + 0.5 * attack.pattern)
    replaced = _attack(name="blend", alpha=0.2, pattern_seed=3, mode="replace")
    replaced.validate(digits)
    out = replaced.poison(digits, generator=_gen())
    idx = out.is_poison.nonzero().squeeze(1)
    torch.testing.assert_close(out.x[idx], 0.8 * digits.x_train[idx] + 0.2 * attack.pattern)


def test_blend_trigger_from_image_file(tmp_path, digits):
    from PIL import Image

    Image.new("L", (16, 16), color=255).save(tmp_path / "white.png")
    attack = _attack(name="blend", trigger_path=str(tmp_path / "white.png"))
    attack.validate(digits)
    torch.testing.assert_close(attack.pattern, torch.ones(digits.input_shape))
    with pytest.raises(ConfigError, match="attack.trigger_path"):
        _attack(name="blend", trigger_path=str(tmp_path / "nope.png")).validate(digits)


@pytest.mark.parametrize("name", ["badnets", "blend"])
def test_test_triggers_exclude_target_class_images(digits, name):
    attack = _attack(name=name, target_class=2)
    attack.validate(digits)
    x_trig, y_trig = backdoor_test_set(attack, digits.x_test, digits.y_test)
    assert (y_trig != 2).all()
    assert len(y_trig) == int((digits.y_test != 2).sum())


def test_same_seed_same_poisons_other_seed_other_poisons(digits):
    attack = _attack(name="badnets")
    attack.validate(digits)
    a, b, c = (attack.poison(digits, generator=_gen(s)).x for s in (0, 0, 1))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize(
    "node, field",
    [
        (dict(name="badnets", poison_ratio=1.0), "attack.poison_ratio"),
        (dict(name="blend", poison_ratio=-0.1), "attack.poison_ratio"),
        (dict(name="badnets", target_class=10), "attack.target_class"),
        (dict(name="badnets", patch_size=9), "attack.patch_size"),
        (dict(name="blend", alpha=1.5), "attack.alpha"),
        (dict(name="label_flip", mode="swap"), "attack.mode"),
        (dict(name="badnets", mode="insert"), "attack.mode"),
        (dict(name="blend", source="target"), "attack.source"),
        (dict(name="blend", alpha=float("nan")), "attack.alpha"),
    ],
)
def test_invalid_attack_settings_name_the_field(digits, node, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        _attack(**node).validate(digits)
