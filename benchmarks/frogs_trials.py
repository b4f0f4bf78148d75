"""(d) Poison Frogs retraining trials: batched (stacked members) vs one after another.

    python benchmarks/frogs_trials.py [--targets 10] [--max-poisons 10] [--pretrain-epochs 10] [--retrain-epochs 10]
                                      [--mode oneshot multipoison] [--dp dpsgd none] [--clip 1] [--noise 1]
                                      [--max-members 64] [--threads 1] [--device cpu] [--set KEY=VALUE ...]

Hong et al. Fig. 5/6 on the embedded digits data (``dataset=digits model=mlp attack=poison_frogs scenario=retrain``,
9 ← 7, every poison kept so that each target has ``--max-poisons`` trials, default optimizer and dp settings unless
given), timing ``PoisonFrogs.evaluate`` alone: pretraining, the clean reference and the crafted poisons are cached
by a warm-up call first, so every arm times only the retraining trials and their judging.
Arms, each over all targets:

- ``before``: the previous path, each trial a ``loop.train`` over its defended retraining set (Poisson over clean +
  poisons with their own q), every epoch run, targets one after another;
- ``alone``: ``TrialRunner.retrain`` one trial after another (the trial engine with one member; a trial stops
  at its first successful epoch): the batched arm's exact sequential twin;
- ``batched``: ``TrialRunner.retrain_sequences``, up to ``--max-members`` trials per stacked model.

Prints the seconds, the trials and retraining epochs the verdicts rest on, the epochs trained (batched: with the
speculative trials after a target's first success), and the speed-ups; ``same`` says whether the batched verdicts
(success, epoch, poisons used, trials, ε, epochs) equal ``alone``'s.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gsdefense.attacks.base import PoisonedSet  # noqa: E402
from gsdefense.cache import cache_key, noise_seed  # noqa: E402
from gsdefense.phases import TrialRunner, pretrained  # noqa: E402
from gsdefense.plan import prepare  # noqa: E402
from gsdefense.references import reference_accuracy  # noqa: E402
from gsdefense.scenario import retrain_optimizer  # noqa: E402
from gsdefense.training.loop import train  # noqa: E402

warnings.filterwarnings("ignore", message="Optimal order")


class Alone(TrialRunner):
    """Each sequence's trials one after another through ``retrain``, stopping at the first success."""

    def retrain_sequences(self, sequences, *, until=None):
        out = []
        for trials in sequences:
            out.append([])
            for t in trials:
                out[-1].append(self.retrain(t.x, t.y, evaluate=t.evaluate, desc=t.desc, until=until))
                if out[-1][-1].stopped_epoch is not None:
                    break
        return out


class CraftOnly(TrialRunner):
    """Runs no trial: a warm-up that fills the caches (pretrained model, reference, crafted poisons)."""

    def retrain_sequences(self, sequences, *, until=None):
        return [[] for _ in sequences]


class Before(Alone):
    """The previous ``TrialRunner.retrain``: ``loop.train`` on the defended retraining set, all epochs."""

    def retrain(self, x_extra, y_extra, *, evaluate=None, desc="trial", until=None):
        data = self.plan.data
        n = len(data.y_train)
        poisoned = PoisonedSet(torch.cat([data.x_train, x_extra]), torch.cat([data.y_train, y_extra]),
                               torch.arange(n + len(y_extra)) >= n)  # fmt: skip
        kept, _ = self.plan.defense.apply(poisoned, data=data)
        x, y = kept.x, kept.y
        optimizer = retrain_optimizer(self.plan.optimizer, self.plan.scenario)
        result = train(self.pretrained_model().train(), x, y, optimizer_cfg=optimizer, dp=self.dp,
                       seed=self.plan.seed, evaluate=evaluate, desc=desc, noise_seed=self.trial_noise_seed(desc),
                       accountant_history=self.pre.accountant_history if self.dp else None)  # fmt: skip
        hit = next((row for row in result.history if until is not None and until(row)), None)
        result.stopped_epoch = hit["epoch"] if hit is not None else None
        return result


def _plan(args, mode: str, dp: str, cache: str):
    from hydra import compose, initialize_config_dir

    overrides = ["dataset=digits", "model=mlp", "attack=poison_frogs", "scenario=retrain", f"attack.mode={mode}",
                 f"attack.n_targets={args.targets}", f"attack.max_poisons={args.max_poisons}",
                 "attack.target_true_class=9", "attack.base_class=7", f"attack.max_iters={args.max_iters}",
                 f"scenario.pretrain_epochs={args.pretrain_epochs}", f"scenario.retrain_epochs={args.retrain_epochs}",
                 "attack.max_feature_distance=null", f"dp={dp}", f"cache_dir={cache}", "telemetry.enabled=false",
                 f"threads={args.threads}", f"device={args.device}", *args.set]  # fmt: skip
    if dp == "dpsgd":
        overrides += [f"dp.clip={args.clip}", f"dp.noise={args.noise}"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return prepare(compose("config", overrides=overrides))


def _arm(cls, plan, out: Path, args) -> tuple[float, dict, list]:
    scenario = plan.scenario
    dp = plan.dp if scenario.retrain_private else None
    pre = pretrained(plan, dp=plan.dp if scenario.pretrain_private else None)
    runner = cls(plan=plan, pre=pre, dp=dp, acc_ref=reference_accuracy(plan, dp=None).clean_acc,
                 noise_seed=noise_seed(cache_key("bench", {})), max_members=args.max_members)  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    metrics = plan.attack.evaluate(data=plan.data, context=plan.context, trials=runner, output_dir=out)
    seconds = time.perf_counter() - start
    rows = (out / "targets.csv").read_text().splitlines()
    verdicts = [",".join(r.split(",")[:6]) for r in rows]  # target, n_poisons, success, used, trials, epoch
    metrics["trained"] = runner.n_epochs_trained or metrics["n_trial_epochs"]  # batched: speculative epochs too
    return seconds, metrics, [*verdicts, metrics["epsilon"], metrics["n_trials"], metrics["n_trial_epochs"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=10)
    parser.add_argument("--max-poisons", type=int, default=10)
    parser.add_argument("--max-iters", type=int, default=1000)
    parser.add_argument("--pretrain-epochs", type=int, default=10)
    parser.add_argument("--retrain-epochs", type=int, default=10)
    parser.add_argument("--mode", nargs="+", default=["oneshot", "multipoison"])
    parser.add_argument("--dp", nargs="+", default=["dpsgd", "none"])
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--noise", type=float, default=1.0)
    parser.add_argument("--set", nargs="*", default=[], help="more config overrides, e.g. attack.beta=0.1")
    parser.add_argument("--max-members", type=int, default=64)
    parser.add_argument("--arms", nargs="+", default=["before", "alone", "batched"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch={torch.__version__} device={args.device} threads={args.threads} digits/mlp targets={args.targets} "
          f"max_poisons={args.max_poisons} epochs={args.pretrain_epochs}+{args.retrain_epochs} "
          f"clip={args.clip} noise={args.noise} max_members={args.max_members}")  # fmt: skip
    print(f"{'mode':<12} {'dp':<6} {'arm':<8} {'seconds':>8} {'trials':>7} {'epochs':>7} {'trained':>8} {'asr':>5} "
          f"{'same':>5} {'vs before':>10} {'vs alone':>9}")  # fmt: skip
    arms = {"before": Before, "alone": Alone, "batched": TrialRunner}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.mode:
            for dp in args.dp:
                plan = _plan(args, mode, dp, f"{tmp}/cache")
                _arm(CraftOnly, plan, Path(tmp) / "warm", args)
                times, verdicts = {}, {}
                for arm in args.arms:
                    seconds, m, verdicts[arm] = _arm(arms[arm], plan, Path(tmp) / f"{mode}-{dp}-{arm}", args)
                    times[arm] = seconds
                    ratio = {ref: f"{times[ref] / seconds:.2f}" if ref in times else "-" for ref in ("before", "alone")}
                    same = (
                        "-" if arm != "batched" or "alone" not in verdicts else str(verdicts[arm] == verdicts["alone"])
                    )
                    print(f"{mode:<12} {dp:<6} {arm:<8} {seconds:>8.2f} {m['n_trials']:>7} {m['n_trial_epochs']:>7} "
                          f"{m['trained']:>8} {m['asr']:>5.2f} {same:>5} {ratio['before']:>10} {ratio['alone']:>9}",
                          flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
