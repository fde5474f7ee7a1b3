"""Continual-MAML (Caccia et al., 2020, OSAKA): fast adaptation on a stream, a switch test,
and meta-updates only while the task holds."""

from __future__ import annotations

import math
import statistics
from typing import Any, NamedTuple

import torch

from distmeta.algorithms.base import MetaAlgorithm
from distmeta.algorithms.inner import Params
from distmeta.algorithms.online.method import (
    Afresh,
    OnlineUpdate,
    adapted_afresh,
    cloned,
    loss_of,
    predict_with,
    scaled,
)
from distmeta.tasks.batch import TaskBatch

__all__ = ["CMAML"]

Batches = list[tuple[torch.Tensor, torch.Tensor]]


class _Hypothesis(NamedTuple):
    """What the switch test did not take at a batch: the fast weights and the current task's
    batches had it gone the other way."""

    weights: Params
    batches: Batches
    began: bool
    """The hypothesis is a switch at that batch (the test declared none). Otherwise the test
    declared one, and with a library it put the fast weights of the task it left last in it."""
    from_library: bool
    """The test's switch restarted from a remembered task, taken out of the library."""

    def copied(self) -> _Hypothesis:
        """The same hypothesis on copies of its weights (a state that must not alias them)."""
        return self._replace(weights=cloned(self.weights), batches=list(self.batches))


class CMAML:
    """Continual-MAML: predict with fast weights, test for a switch, meta-update when none.

    Description:
        Each batch is predicted by the current fast weights. Once its labels are revealed, fast
        weights are also adapted afresh from the meta-parameters on it (the algorithm's inner
        loop; the meta-parameters' own weights where that loop overshoots or diverges, as
        :func:`~distmeta.algorithms.online.method.adapted_afresh` says); if the current
        fast weights' loss on the batch exceeds the fresh ones' loss (on the same batch) by
        more than ``gamma``, a switch is declared: the fast weights restart from the fresh
        ones and the meta-parameters are left alone, since the previous
        batch belongs to another task. Fast weights whose loss is not finite (prolonged
        adaptation that diverged) restart the same way. Otherwise the batch is the query set
        of a meta-learning task whose support set is the previous batch: its meta-gradient
        (the algorithm's, e.g. second-order MAML) is returned, scaled by
        ``1 - exp(-lambda * loss)`` with the prediction's loss (OSAKA's update modulation: what
        the model already predicts well barely moves it), and the fast weights keep adapting
        on the new batch (``prolonged``) or are adapted afresh from the meta-parameters on it.
        With a ``memory`` of more than one batch, the fast weights adapt on the task's last
        ``memory`` batches since the detected switch together (prolonged, or afresh from the
        meta-parameters), not on the newest alone (GrBAL adapts on its recent transitions the
        same way): a task that holds for many steps is fitted on more of its data. Prolonged
        steps that raise the fast weights' loss on their own support set (the inner rate
        overshooting on a steep task) are rejected, and an adaptation afresh from the
        meta-parameters on that set replaces the fast weights if it fits it better. With
        ``prolong_lr``, those prolonged steps are Adam's at that rate (from a fresh Adam state
        at each batch, keeping the iterate that fits the batches best, so that they are never
        rejected whole) instead of the inner rule's: the inner rule and its rate are what the
        start was meta-trained to adapt with in a few steps, while fitting a task over the
        many batches it lasts, out-of-distribution tasks above all, is ordinary training
        (on the sinusoid stream Adam's per-coordinate steps fitted the frequency mode's tasks
        sooner: BENCHMARKS.md, "Streams", stop 37).

        With a ``library`` of past tasks (tasks that come back: a robot's regimes), the fast
        weights of each task left at a detected switch are kept (the ``library`` most recently
        used ones), and a remembered task's weights adapted on the new batch are a candidate
        restart beside the fresh ones: the switch test compares the current fast weights with
        the candidate that fits the batch best, and a task seen before starts from where its
        last visit ended instead of from the meta-parameters (MOCA's and the task-library
        methods' idea, applied to C-MAML's restart).

        With ``revise``, every switch test gets a second look on the next batch: the
        hypothesis it did not take (a switch there, or none) kept its own fast weights, and
        both sets predict the next batch before they see it. Where the other hypothesis's
        loss is below ``revise`` times the fast weights', the learner goes on from it. The
        test itself compares weights that have not seen the batch with weights adapted on
        it, and errs both ways where tasks are hard to fit: a switch to a task close to the
        old one stays under ``gamma`` (found one batch late here), and a task fitted poorly
        after a few batches looks like another task (withdrawn here).

        With ``fitted_test``, ``gamma``'s test compares the weights adapted afresh on the
        batch with the fast weights adapted further on it (with the current task's latest
        ``memory`` batches), both having seen it, instead of with the fast weights before
        they see it: a task fitted poorly after its first batch predicts its second badly,
        and before it looked like a switch there (the frequency mode); the task's batches
        fitted together fit it. A switch still shows: the old task's batches pull the fit
        away from the new one.

        With ``jump``, a switch is also declared where the fast weights' loss on the batch
        exceeds ``jump`` times its level on the current task (the median of their losses on
        its latest ``memory`` batches) and a restart fits the batch better: the switch to a
        close task is found at once when the task before it was fitted well, without
        lowering ``gamma`` for tasks fitted poorly.

        Learned per-parameter inner rates (OSAKA's optional ones) are the algorithm's
        ``metasgd`` inner rule.

        Told the switches (``told_switches``), it uses them instead of its test: the oracle,
        which bounds what switch detection can gain.

    Args:
        algorithm: The meta-learning algorithm (inner loop and meta-gradient).
        gamma: Switch threshold on the loss difference.
        lambda_: Update modulation (large: every update in full).
        prolonged: Keep adapting the fast weights while no switch is detected.
        steps: Inner steps of each adaptation (``None``: the algorithm's own).
        memory: Batches of the current task that the fast weights adapt on.
        library: Past tasks whose fast weights are remembered (0: none).
        revise: Ratio of the second look at each switch test (``None``: none).
        prolong_lr: Adam's rate for the prolonged steps (``None``: the inner rule's steps).
        prolong_steps: Steps of each prolonged adaptation (``None``: as ``steps``).
        jump: Ratio of the second switch test, on the fast weights' loss against its level
            on the current task (``None``: ``gamma``'s test alone).
        fitted_test: ``gamma``'s test takes the fast weights' loss on the batch after they
            adapt on it with the task's latest batches, not before.
        told_switches: Use the true switches (the oracle).

    References:
        Caccia, Rodriguez, Ostapenko, Normandin, Lin, Caccia, Laradji, Rish, Lacoste,
        Vazquez, Charlin. Online Fast Adaptation and Knowledge Accumulation (OSAKA): a New
        Approach to Continual Learning. NeurIPS 2020.

    Example:
        >>> learner = CMAML(run.algorithm, gamma=1.0, lambda_=1.0)
        >>> prediction = learner.predict(meta, batch.x)
        >>> update = learner.observe(meta, batch.x, batch.y)  # update.gradient, detected_switch
    """

    meta_learned = True

    def __init__(
        self,
        algorithm: MetaAlgorithm,
        gamma: float,
        lambda_: float,
        prolonged: bool = True,
        steps: int | None = None,
        told_switches: bool = False,
        memory: int = 1,
        library: int = 0,
        revise: float | None = None,
        prolong_lr: float | None = None,
        prolong_steps: int | None = None,
        jump: float | None = None,
        fitted_test: bool = False,
    ):
        if not lambda_ > 0:
            raise ValueError(f"lambda must be positive, got {lambda_}")
        if memory < 1:
            raise ValueError(f"memory must hold at least one batch, got {memory}")
        if library < 0:
            raise ValueError(f"library must hold zero or more tasks, got {library}")
        self.algorithm, self.gamma, self.lambda_ = algorithm, float(gamma), float(lambda_)
        self.prolonged, self.steps, self.told_switches = prolonged, steps, told_switches
        if revise is not None and not revise > 0:
            raise ValueError(f"revise is a positive ratio or None, got {revise}")
        if prolong_lr is not None and not prolong_lr > 0:
            raise ValueError(f"prolong_lr is a positive rate or None, got {prolong_lr}")
        if prolong_steps is not None and prolong_steps < 1:
            raise ValueError(f"prolong_steps is a positive count or None, got {prolong_steps}")
        if jump is not None and not jump > 1:
            raise ValueError(f"jump is a ratio above 1 or None, got {jump}")
        self.jump, self.fitted_test = jump, fitted_test
        self.prolong_lr = prolong_lr
        if prolong_steps is None:
            prolong_steps = algorithm.inner_steps if steps is None else steps
        self.prolong_steps = prolong_steps
        self.memory, self.library, self.revise = memory, library, revise
        self.alternative: _Hypothesis | None = None
        """The hypothesis about the previous batch that the switch test did not take,
        checked on the next batch when ``revise`` is set."""
        self.fast: Params | None = None
        self.recent: Batches = []
        """The current task's latest batches (at most ``memory``), oldest first."""
        self.known: list[Params] = []
        """Fast weights of past tasks (at most ``library``), least recently used first."""
        self.levels: list[float] = []
        """The fast weights' losses on the current task's latest batches they predicted
        (at most ``memory``; not the batch that began the task): the level a ``jump`` is
        measured against."""

    def predict(self, meta: Params | None, x: torch.Tensor) -> torch.Tensor:
        return predict_with(self.algorithm, self.fast, meta, x)

    def observe(
        self, meta: Params | None, x: torch.Tensor, y: torch.Tensor, switch: bool | None = None
    ) -> OnlineUpdate:
        algorithm = self.algorithm
        fresh = adapted_afresh(algorithm, meta, x, y, self.steps)
        if not self.recent or self.fast is None:  # the stream's first batch
            self.fast, self.recent, self.alternative = fresh.weights, [(x, y)], None
            self.levels = []
            return OnlineUpdate(detected_switch=False)
        loss = loss_of(algorithm, self.fast, x, y)
        revised = None
        if self.alternative is not None:
            loss, revised = self._revised(loss, x, y)
            if revised is not None:  # the task's batches are another hypothesis's now
                self.levels = []
        # Fast weights that diverged (a non-finite loss) are restarted like after a switch:
        # their loss can say nothing about the task, and it would scale the meta-update.
        lost = not math.isfinite(loss)
        held = [*self.recent, (x, y)][-self.memory :]
        # The fast weights adapted further on the task's batches if it holds, computed once
        # for the fitted test, the second look and the task going on.
        continued = None
        restart = None
        if switch is None:  # the test: does another start fit the batch better by gamma?
            restart = self._best_restart(meta, fresh, x, y)
            tested = loss
            if self.fitted_test and not lost:
                continued = self._adapted(meta, self.fast, fresh, held)
                tested = loss_of(algorithm, continued, x, y)
            detected = lost or tested - restart[1] > self.gamma or self._jumped(loss, restart[1])
        else:  # told the truth (the oracle): a restart is needed only at a switch
            detected = bool(switch)
        if detected or lost:
            start, _, remembered = restart or self._best_restart(meta, fresh, x, y)
            if self.revise is not None and switch is None and not lost:
                if continued is None:
                    continued = self._adapted(meta, self.fast, fresh, held)
                self.alternative = _Hypothesis(
                    continued,
                    held,
                    began=False,
                    from_library=remembered is not None,
                )
            if remembered is not None:
                del self.known[remembered]
            if not lost and self.library:
                self.known = [*self.known, self.fast][-self.library :]
            self.fast, self.recent, self.levels = start, [(x, y)], []
            return OnlineUpdate(None, detected, revised)
        before_x, before_y = self.recent[-1]
        task = TaskBatch(before_x[None], before_y[None], x[None], y[None])
        mean, _ = algorithm.meta_gradient(meta, task)
        gradient = scaled(mean, 1.0 - math.exp(-self.lambda_ * loss))
        self.recent = held
        self.levels = [*self.levels, loss][-self.memory :]
        if continued is None:
            continued = self._adapted(meta, self.fast, fresh, held)
        self.fast = continued
        if self.revise is not None and switch is None and self.fast is not fresh.weights:
            self.alternative = _Hypothesis(fresh.weights, [(x, y)], began=True, from_library=False)
        return OnlineUpdate(gradient, detected, revised)

    def _jumped(self, loss: float, restart_loss: float) -> bool:
        """The second switch test (``jump``): the fast weights' loss on the batch is more than
        ``jump`` times the median of their losses on the current task's latest batches, and
        a restart fits the batch better. A switch between two tasks that both fit well
        (two small sinusoids) raises the loss far above its level while staying under
        ``gamma``, an absolute difference set high enough not to fire within tasks that fit
        poorly (the frequency mode)."""
        if self.jump is None or not self.levels:
            return False
        return loss > self.jump * statistics.median(self.levels) and loss > restart_loss

    def _revised(self, loss: float, x: torch.Tensor, y: torch.Tensor) -> tuple[float, bool | None]:
        """The second look at the previous batch's switch test, on this batch: the fast
        weights of the hypothesis the test took and those of the one it did not (a switch
        there, or none) both predict this batch, which neither has seen. If the other one's
        loss is below ``revise`` times the fast weights', the fast weights and the current
        task's batches become the other hypothesis's: a switch the test missed (a new task
        close enough to the old one that the difference stayed under ``gamma``) is found one
        batch late, and one it declared wrongly (a task fitted so poorly that adapting on
        the batch itself looked like another task) is withdrawn. The library follows: the
        task left at a switch found late is remembered, and a withdrawn switch takes back
        what it did to the library. Returns the fast weights' loss on this batch and the
        revision (``True``: the previous batch began a task after all, ``False``: it did
        not, ``None``: the test stands)."""
        other_hypothesis, self.alternative = self.alternative, None
        other = loss_of(self.algorithm, other_hypothesis.weights, x, y)
        if not other < self.revise * loss:
            return loss, None
        if self.library:
            known = self.known if other_hypothesis.began else self.known[:-1]
            left = other_hypothesis.began or other_hypothesis.from_library
            self.known = [*known, self.fast][-self.library :] if left else known
        self.fast, self.recent = other_hypothesis.weights, other_hypothesis.batches
        return other, other_hypothesis.began

    def _best_restart(
        self, meta: Params | None, fresh: Afresh, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[Params, float, int | None]:
        """Of the weights adapted afresh on ``(x, y)`` and each remembered task's weights
        adapted further on it, the one with the lowest loss on it: the weights, that loss,
        and the remembered task's place in the library (``None`` for the fresh weights).
        Both kinds are scored on the batch they adapted on, so neither is favoured."""
        algorithm = self.algorithm
        best, best_loss, place = fresh.weights, fresh.loss, None
        for index, weights in enumerate(self.known):
            adapted = algorithm.adapt_further(meta, weights, x, y, self.steps)
            adapted_loss = loss_of(algorithm, adapted, x, y)
            if adapted_loss < best_loss:
                best, best_loss, place = adapted, adapted_loss, index
        return best, best_loss, place

    def _adapted(
        self,
        meta: Params | None,
        fast: Params,
        fresh: Afresh,
        batches: Batches,
    ) -> Params:
        """The fast weights ``fast`` after more inner steps on the current task's ``batches``
        (``prolonged``), unless those steps raised their loss on them: the inner rate
        overshot (plain SGD on a task steeper than the ones it was meta-trained for, e.g. a
        sinusoid's amplitude 5-10), and going on would diverge within a few batches. The
        steps are then rejected, and of ``fast`` and the weights adapted afresh from the
        meta-parameters on the batches the one with the lower loss on them is kept. Without
        ``prolonged``, the weights adapted afresh. ``fresh`` is the weights adapted afresh on
        the newest batch alone, with their loss on it (reused where ``batches`` is that
        batch). Adam's prolonged steps (``prolong_lr``) are never rejected: their best
        iterate, ``fast`` included, is kept, so ``fast`` is not scored here a second time."""
        algorithm = self.algorithm
        x = torch.cat([batch_x for batch_x, _ in batches])
        y = torch.cat([batch_y for _, batch_y in batches])
        if self.prolonged and self.prolong_lr is not None:
            return self._prolong(meta, fast, x, y)[0]
        if self.prolonged:
            before = loss_of(algorithm, fast, x, y)
            further, further_loss = self._prolong(meta, fast, x, y)
            if further_loss <= before:
                return further
        afresh = fresh if len(batches) == 1 else adapted_afresh(algorithm, meta, x, y, self.steps)
        if not self.prolonged:
            return afresh.weights
        return afresh.weights if afresh.loss < before else fast

    def _prolong(
        self, meta: Params | None, fast: Params, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[Params, float]:
        """``fast`` after the ``prolong_steps`` prolonged steps on ``(x, y)``, with their loss
        on it: the inner rule's steps, or with ``prolong_lr`` Adam's (its state fresh: nothing
        to carry between batches or processes). Adam's adaptation keeps its best iterate, the
        one of ``fast`` and the weights after each step with the lowest loss on ``(x, y)``: a
        step that overshoots (from a fresh Adam state the first step is a full ``prolong_lr``
        in every coordinate) costs the steps after it, not the progress before it. Rejected
        whole, it left a task fitted poorly for good where its later batches kept
        overshooting (BENCHMARKS.md, "Streams", stop 42)."""
        algorithm = self.algorithm
        if self.prolong_lr is None:
            further = algorithm.adapt_further(meta, fast, x, y, self.prolong_steps)
            return further, loss_of(algorithm, further, x, y)
        weights = {name: p.detach().clone().requires_grad_() for name, p in fast.items()}
        optimizer = torch.optim.Adam(weights.values(), lr=self.prolong_lr)
        best, best_loss = fast, math.inf
        with torch.enable_grad():
            for _ in range(self.prolong_steps):
                optimizer.zero_grad()
                loss = algorithm.loss_fn(algorithm.forward(weights, x), y)
                value = loss.item()
                if value < best_loss:  # the iterate before this step
                    best = {name: p.detach().clone() for name, p in weights.items()}
                    best_loss = value
                loss.backward()
                optimizer.step()
        final = {name: p.detach() for name, p in weights.items()}
        final_loss = loss_of(algorithm, final, x, y)
        return (final, final_loss) if final_loss < best_loss else (best, best_loss)

    def state_dict(self) -> dict[str, Any]:
        return {
            "fast": cloned(self.fast),
            "recent": list(self.recent),
            "known": [cloned(weights) for weights in self.known],
            "levels": list(self.levels),
            "alternative": None if self.alternative is None else self.alternative.copied(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.fast, self.recent = cloned(state["fast"]), list(state["recent"])
        self.known = [cloned(weights) for weights in state["known"]]
        self.levels = list(state["levels"])
        alternative = state["alternative"]
        self.alternative = None if alternative is None else _Hypothesis(*alternative).copied()
