"""A fast proxy of a behavior rate: one teacher-forced prompt pass per prompt, no generation.

For method sweeps (which translator, which strength) generating and judging 32 tokens per prompt per
configuration is the slow part. The proxy asks the recipient, in one llama.cpp prompt pass per prompt, how
likely the behavior's answer is::

    res = proxy_score(engine, "refusal", [pack], [2.0], prompts)     # prompts: EvalPrompt list (default ones)
    res.expected, res.unexpected, res.selectivity                    # mean log-probs and their difference
    res.per_prompt[0]                                                # every prompt's values

Per prompt (the chat-templated prompt ``p`` with the packs applied exactly as in generation: the edit lands on
the prompt rows its positions select, the answer tokens see it only through attention, as generated tokens see
it through the KV cache):

* ``target_logprob``: ``log Σ_k P(target_k | p)`` over the behavior's target texts, teacher-forced (refusal:
  the refusal adapters' training answer "I can't help with that."; pirate: "Arr matey!"); ``target_mean`` is
  the same per answer token (of the most likely target);
* ``start_logprob``: ``log P(first answer token ∈ S)``, ``S`` = the tokens spelling the first word of the
  behavior's start phrases (refusal: the refusal markers of the evaluation data, capitalized; french: French
  function words and openers; pirate: "Arr"), only words that are one token (:func:`start_token_ids`).

The behavior's ``primary`` metric (``target`` for refusal and pirate, ``start`` for french) gives
``ProxyResult.expected`` (mean over prompts where the behavior is expected), ``unexpected`` (mean over the
others, e.g. harmless prompts) and ``selectivity`` (their difference); ``*_prob`` are the same means of the
probabilities instead of the log-probabilities. Log-softmax in float64 from the engine's float32 logits.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Collection, Sequence

import numpy as np

from commandv.exporter.training.behaviors import PIRATE_PREFIX, REFUSAL_TEXT, EvalPrompt, get_behavior, refusal_markers
from commandv.runtime.edit.positions import Positions
from commandv.runtime.errors import CommandVError


class ProxyError(CommandVError, ValueError):
    """A proxy request that cannot be computed (unknown behavior, no prompts, packs with mixed positions)."""


_FRENCH_STARTS = ("Voici", "Bien", "Oui", "Bonjour", "Pour", "Le", "La", "Les", "Un", "Une", "Il", "Elle", "Je",
                  "Nous", "Vous", "Dans", "En", "Ce", "Cette", "Des", "Du", "De", "Est", "Merci", "Salut", "Chaque",
                  "Pouvez", "Voilà", "Selon", "Avec", "Sur", "Lorsque", "Quand", "Comme", "Si")


@dataclass(frozen=True)
class ProxySpec:
    """What the proxy measures for one behavior: teacher-forced ``targets``, first-token ``starts`` and which of
    the two is ``primary`` (``"target"`` or ``"start"``)."""

    behavior: str
    targets: tuple[str, ...]
    starts: tuple[str, ...]
    primary: str = "target"


def proxy_spec(behavior: str, targets: Sequence[str] | None = None, starts: Sequence[str] | None = None) -> ProxySpec:
    """The built-in spec of ``behavior``; ``targets`` replaces its target texts (and makes ``target`` primary),
    ``starts`` its start phrases."""
    get_behavior(behavior)  # unknown names: BehaviorError
    if behavior.startswith("refusal"):  # refusal and refusal-broad judge alike
        starts = tuple(m[:1].upper() + m[1:] for m in refusal_markers())
        spec = ProxySpec("refusal", (REFUSAL_TEXT,), starts, "target")
    elif behavior == "pirate":
        spec = ProxySpec("pirate", (PIRATE_PREFIX.strip(),), ("Arr",), "target")
    elif behavior == "french":
        spec = ProxySpec("french", (), _FRENCH_STARTS, "start")
    else:  # a behavior added later: no targets known, the caller gives them
        spec = ProxySpec(behavior, (), (), "target")
    if targets:
        spec = ProxySpec(spec.behavior, tuple(targets), spec.starts, "target")
    if starts:
        spec = ProxySpec(spec.behavior, spec.targets, tuple(starts), spec.primary)
    if spec.primary == "target" and not spec.targets:
        raise ProxyError(f"behavior {behavior!r} has no proxy target text: give one (--target)")
    return spec


def default_prompts(behavior: str, n: int = 64) -> list[EvalPrompt]:
    """``n`` of the behavior's held-out *tuning* prompts (``Behavior.eval_prompts``: refusal = HarmBench val +
    the validation rows of the harmless probes, never the test prompts the reports use): as many prompts where
    the behavior is not expected as half of ``n`` allows (refusal has 24), the rest where it is."""
    if n < 1:
        raise ProxyError(f"n must be >= 1, got {n}")
    ps = get_behavior(behavior).eval_prompts()
    exp = [p for p in ps if p.expect]
    unexp = [p for p in ps if not p.expect]
    k_un = min(len(unexp), n // 2) if exp else min(len(unexp), n)
    k_ex = min(len(exp), n - k_un)
    return exp[:k_ex] + unexp[:k_un]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """float64 log-softmax over the last axis."""
    x = np.asarray(logits, dtype=np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def _logsumexp(v: Sequence[float]) -> float:
    v = np.asarray(v, dtype=np.float64)
    if v.size == 0:
        return float("nan")
    m = float(v.max())
    return m if not math.isfinite(m) else m + float(np.log(np.exp(v - m).sum()))


def _tokenize(engine, text: str) -> list[int]:
    """Token ids of answer text (no special tokens, special-token text kept plain)."""
    return [int(t) for t in engine._tokenize(text, False)]


def start_token_ids(engine, words: Sequence[str]) -> list[int]:
    """Sorted unique tokens that spell the first word of a phrase in ``words`` as a whole (``"I can't"`` → the
    token ``I``; ``"Sorry, but"`` → ``Sorry``). A first word the tokenizer splits (``"Voici"`` → ``V`` + …) is
    left out: its first piece (``V``, ``A``, ``Com``) starts English answers just as well."""
    ids = set()
    for w in words:
        first = w.split()[0].rstrip(".,;:!?") if w.split() else ""
        toks = _tokenize(engine, first) if first else []
        if len(toks) == 1:
            ids.add(toks[0])
    return sorted(ids)


def edit_rows(packs, n_prompt: int) -> list[int]:
    """The prompt rows the entries of ``packs`` (loaded :class:`BehaviorPack` objects) edit in a prompt of
    ``n_prompt`` tokens (all entries must select the same rows: the teacher-forced pass replaces every entry's
    positions by them)."""
    rows = {tuple(Positions.parse(e.positions).indices(n_prompt)) for p in packs for e in p.entries}
    if len(rows) > 1:
        raise ProxyError("the packs' entries target different positions; the teacher-forced proxy needs one set")
    return list(next(iter(rows))) if rows else []


@dataclass
class ProxyResult:
    """The proxy of one configuration (packs at strengths) on ``prompts``; see the module docstring."""

    behavior: str
    metric: str  # the primary metric: "target" or "start"
    strengths: list[float]
    targets: list[str]
    n_start_tokens: int
    expected: float  # mean primary log-prob where the behavior is expected
    unexpected: float  # … where it is not (nan when there are no such prompts)
    expected_prob: float
    unexpected_prob: float
    n_expected: int
    n_unexpected: int
    seconds: float
    per_prompt: list[dict] = field(default_factory=list)

    @property
    def selectivity(self) -> float:
        """``expected − unexpected`` (log-prob difference; nan without unexpected prompts)."""
        return self.expected - self.unexpected

    def values(self, metric: str | None = None, expect: bool | None = None) -> np.ndarray:
        """Per-prompt values of ``metric`` (default the primary one: ``target_logprob`` / ``start_logprob``),
        optionally only where ``expect`` is True / False."""
        key = f"{metric or self.metric}_logprob" if (metric or self.metric) in ("target", "start") else metric
        return np.array([r[key] for r in self.per_prompt if expect is None or r["expect"] == expect], np.float64)

    def to_json(self) -> dict:
        d = asdict(self)
        d["selectivity"] = self.selectivity
        return d


def forced_logprobs(engine, prompt_ids: Sequence[int], answer_ids: Sequence[int], packs=(),
                    strengths=None) -> np.ndarray:
    """``[len(answer_ids), V]`` log-softmax of the distributions that predict each answer token, from one pass over
    prompt + answer with ``packs`` (loaded, :meth:`load_packs`) at ``strengths`` on the prompt rows their positions
    select (the answer sees the edit only through attention, as generated tokens do)."""
    n = len(prompt_ids)
    logits, _ = engine.prompt_pass(list(prompt_ids) + list(answer_ids), packs, strengths, all_logits=True,
                                   rows=edit_rows(packs, n))
    return log_softmax(logits[n - 1: n - 1 + len(answer_ids)])


def prompt_values(engine, prompt_ids: Sequence[int], target_ids: Sequence[Sequence[int]], start_ids: Sequence[int],
                  packs=(), strengths=None) -> dict:
    """The proxy values of one tokenized prompt: one pass per target (one pass if there is none).
    ``packs``: loaded packs (:meth:`load_packs`)."""
    out = {"target_logprobs": [], "target_tokens": []}
    first = None
    for tgt in (list(target_ids) or [[]]):
        if tgt:
            lp = forced_logprobs(engine, prompt_ids, tgt, packs, strengths)
            out["target_logprobs"].append(float(lp[np.arange(len(tgt)), list(tgt)].sum()))
            out["target_tokens"].append(len(tgt))
            first = lp[0] if first is None else first
        else:
            logits, _ = engine.prompt_pass(list(prompt_ids), packs, strengths)
            first = log_softmax(logits)
    tl = out["target_logprobs"]
    out["target_logprob"] = _logsumexp(tl) if tl else float("nan")
    out["target_mean"] = max(t / k for t, k in zip(tl, out["target_tokens"])) if tl else float("nan")
    out["start_logprob"] = _logsumexp(first[list(start_ids)]) if len(start_ids) else float("nan")
    out["top_token"] = int(np.argmax(first))
    return out


def proxy_score(engine, behavior: str, packs=(), strengths=None, prompts: Sequence[EvalPrompt] | None = None,
                targets: Sequence[str] | None = None, n: int = 64, starts: Sequence[str] | None = None) -> ProxyResult:
    """The proxy of ``packs`` at ``strengths`` (as the engine takes them) on ``prompts`` (default
    :func:`default_prompts` ``(behavior, n)``); ``engine``: a :class:`~commandv.runtime.engines.llama.engine.Recipient`
    (or another engine with ``encode``, ``prompt_pass(all_logits, rows)``, ``load_packs`` and ``_tokenize``)."""
    t0 = time.perf_counter()
    spec = proxy_spec(behavior, targets, starts)
    prompts = list(prompts) if prompts is not None else default_prompts(behavior, n)
    if not prompts:
        raise ProxyError("no prompts")
    packs = engine.load_packs(list(packs)) if packs else []
    tgt_ids = [_tokenize(engine, t) for t in spec.targets]
    if any(not t for t in tgt_ids):
        raise ProxyError(f"a target text tokenizes to nothing: {spec.targets!r}")
    start_ids = start_token_ids(engine, spec.starts)
    rows = []
    for p in prompts:
        v = prompt_values(engine, engine.encode(p.prompt), tgt_ids, start_ids, packs, strengths)
        rows.append({"prompt": p.prompt, "label": p.label, "expect": bool(p.expect), **v})
    key = f"{spec.primary}_logprob"

    def mean(expect: bool, prob: bool) -> float:
        xs = [r[key] for r in rows if r["expect"] == expect]
        if not xs:
            return float("nan")
        return float(np.mean(np.exp(xs))) if prob else float(np.mean(xs))

    s = [1.0] * len(packs) if strengths is None else ([float(strengths)] * len(packs)
                                                       if np.isscalar(strengths) else [float(x) for x in strengths])
    return ProxyResult(behavior=spec.behavior, metric=spec.primary, strengths=s, targets=list(spec.targets),
                       n_start_tokens=len(start_ids), expected=mean(True, False), unexpected=mean(False, False),
                       expected_prob=mean(True, True), unexpected_prob=mean(False, True),
                       n_expected=sum(r["expect"] for r in rows), n_unexpected=sum(not r["expect"] for r in rows),
                       seconds=time.perf_counter() - t0, per_prompt=rows)


def proxy_sweep(engine, behavior: str, pack, strengths: Sequence[float], prompts=None, targets=None, n: int = 64,
                baseline: bool = True) -> list[tuple[str, ProxyResult]]:
    """``[(label, result)]`` for the model off-shelf (``baseline``) and ``pack`` at each strength."""
    prompts = list(prompts) if prompts is not None else default_prompts(behavior, n)
    out = []
    if baseline or pack is None:
        out.append(("off-shelf", proxy_score(engine, behavior, [], None, prompts, targets)))
    if pack is not None:
        for s in strengths:
            out.append((f"pack@{s:g}", proxy_score(engine, behavior, [pack], [s], prompts, targets)))
    return out



@dataclass(frozen=True)
class ResponseCheck:
    """Does a model respond to a pack? The mean per-token log-probability of answers that show the behavior
    (the adapter's own training answers, :func:`~commandv.exporter.training.answers.training_answers`),
    teacher-forced after their prompts, without and with the pack: the adapter's training objective read on
    this model; and the fraction of those answers whose first token is the model's greedy choice (what decides
    how generation starts). One prompt pass per answer and configuration, no generation (:func:`response_check`)."""

    n: int  # answers
    strength: float
    off: float  # mean per-token log-prob (nats), the model alone
    on: float  # … with the pack
    first_off: float = float("nan")  # fraction of answers whose first token is the greedy choice, the model alone
    first_on: float = float("nan")  # … with the pack

    @property
    def delta(self) -> float:
        """``on − off`` (nats per answer token): how much likelier the pack makes the behavior's answers."""
        return self.on - self.off

    @property
    def first_delta(self) -> float:
        """``first_on − first_off``: how many more answers (a fraction) generation would start with the pack."""
        return self.first_on - self.first_off

    @property
    def weak(self) -> bool:
        """True when the pack moves too few answer starts to expect a measurable gain
        (:attr:`first_delta` under :data:`RESPONSE_MIN_FIRST_DELTA`)."""
        return not self.first_delta >= RESPONSE_MIN_FIRST_DELTA

    def to_json(self) -> dict:
        return {**asdict(self), "delta": self.delta, "first_delta": self.first_delta}


RESPONSE_MIN_FIRST_DELTA = 0.1
"""Below this :attr:`ResponseCheck.first_delta` (fewer than one in ten more of the behavior's answers start as the
recipient's greedy choice with the pack) ``cmdv export`` warns that the recipient barely responds to the pack
(:attr:`ResponseCheck.weak`). Chosen in the gap between 0.03 and 0.125 of 26 evaluated packs; on the 30 of
``benchmarks/results/transfer_score.json`` it flags 18, of which 16 gained under 10 points."""


def answer_scores(engine, pairs: Sequence[tuple[str, str]], packs=(), strength: float = 1.0) -> np.ndarray:
    """``[len(pairs), 2]``: per answer, its mean per-token log-probability after its chat-templated prompt (nats),
    and 1.0 where its first token is the model's greedy choice after the prompt (else 0.0); the packs (loaded,
    :meth:`load_packs`) at ``strength`` on the prompt rows their positions select (as in generation)."""
    out = []
    for prompt, answer in pairs:
        tgt = _tokenize(engine, answer)
        if not tgt:
            raise ProxyError(f"an answer tokenizes to nothing: {answer[:40]!r}")
        lp = forced_logprobs(engine, engine.encode(prompt), tgt, packs, [strength] * len(packs) if packs else None)
        out.append((float(lp[np.arange(len(tgt)), tgt].mean()), float(int(np.argmax(lp[0])) == tgt[0])))
    return np.array(out, np.float64).reshape(len(out), 2)


def answer_logprobs(engine, pairs: Sequence[tuple[str, str]], packs=(), strength: float = 1.0) -> np.ndarray:
    """``[len(pairs)]`` mean per-token log-probabilities of each answer (the first column of :func:`answer_scores`)."""
    return answer_scores(engine, pairs, packs, strength)[:, 0]


def response_check(engine, pairs: Sequence[tuple[str, str]], pack, strength: float = 1.0,
                   off: np.ndarray | None = None) -> tuple[ResponseCheck, np.ndarray]:
    """:class:`ResponseCheck` of ``pack`` (object or file) at ``strength`` (a multiplier of the strengths the pack
    stores, as in generation) on ``pairs`` ``[(prompt, answer)]``, through ``engine`` (a llama.cpp
    :class:`~commandv.runtime.engines.llama.engine.Recipient`). ``off``: the model's own
    :func:`answer_scores` ``[n, 2]`` on the same pairs from an earlier call (reused). Returns ``(check, off)``."""
    if not pairs:
        raise ProxyError("no answers to score")
    off = answer_scores(engine, pairs) if off is None else off
    on = answer_scores(engine, pairs, engine.load_packs([pack]), float(strength))
    return ResponseCheck(n=len(pairs), strength=float(strength), off=float(off[:, 0].mean()),
                         on=float(on[:, 0].mean()), first_off=float(off[:, 1].mean()),
                         first_on=float(on[:, 1].mean())), off


@dataclass(frozen=True)
class PackResponse:
    """What ``cmdv export`` reports on a transferred pack (:func:`pack_response`): the recipient's
    :class:`ResponseCheck` and the same check of the adapter on its donor (None when the donor is not GGUF)."""

    recipient: ResponseCheck
    donor: ResponseCheck | None

    @property
    def share(self) -> float:
        """The recipient's log-prob gain over the donor's (nan without a donor check or with a donor gain ≤ 0)."""
        if self.donor is None or not self.donor.delta > 0:
            return float("nan")
        return self.recipient.delta / self.donor.delta

    def line(self) -> str:
        """One line for a terminal."""
        s = (f"recipient response: the adapter's own training answers ({self.recipient.n}, teacher-forced, no "
             f"generation) are {self.recipient.delta:+.2f} nats/token likelier with the pack "
             f"({self.recipient.off:.2f} → {self.recipient.on:.2f}); their first token is the greedy choice for "
             f"{round(self.recipient.first_off * self.recipient.n)} → "
             f"{round(self.recipient.first_on * self.recipient.n)} of {self.recipient.n}")
        if self.donor is not None:
            s += f"; on the donor with the adapter {self.donor.delta:+.2f}"
            if math.isfinite(self.share):
                s += f" (share {self.share:.2f})"
        return s

    def to_json(self) -> dict:
        return {"recipient": self.recipient.to_json(), "donor": self.donor.to_json() if self.donor else None,
                "share": self.share}


def pack_response(donor: str, recipient: str, adapter, pack, n: int = 32, strength: float = 1.0,
                  exclude: Collection[str] = ()) -> PackResponse | None:
    """The response check of ``pack`` (the fold of ``adapter``, a loaded
    :class:`~commandv.exporter.adapters.folder.Adapter`) on the GGUF ``recipient`` at ``strength``, beside the
    adapter's own on the ``donor`` (a GGUF donor only), on ``n`` of the adapter's training answers
    (:func:`~commandv.exporter.training.answers.training_answers`) whose prompts are not in ``exclude`` (pass
    the prompts the translators were fitted on: a check on them flatters packs fitted on behavior prompts). None
    when the adapter folder does not hold them (a pyreft adapter trained elsewhere)."""
    from commandv.exporter.adapters.self_pack import model_adapter_pack
    from commandv.exporter.training.answers import training_answers
    from commandv.runtime.engines.llama.engine import Recipient
    from commandv.runtime.models.ref import resolve_model

    pairs = training_answers(adapter, n, exclude)
    if not pairs:
        return None
    def check(model: str, the_pack, s: float) -> ResponseCheck:
        eng = Recipient(model, n_ctx=2048)
        try:
            return response_check(eng, pairs, the_pack, s)[0]
        finally:
            eng.close()

    on_donor = None
    if resolve_model(donor).kind == "gguf":
        on_donor = check(donor, model_adapter_pack(donor, adapter, "donor+adapter"), 1.0)
    return PackResponse(recipient=check(recipient, pack, strength), donor=on_donor)
