"""What the registry should do with a version, in one sentence: the recommendation that the
version's description block (heimer_mlflow.summary) and the report's Model Facts page both
show, derived from the same evidence (the verdict and its decisive check, the AUC with its
interval, the comparison with the champion, the promotion gate). Torch-free, plain data in.

Three actions: ``promote``, ``do not promote`` and ``review first`` (a person must review the
evidence before the version may be promoted). In order:

1. a failed promotion gate: do not promote;
2. an AUC whose 95% interval reaches down to chance (0.5): do not promote;
3. an AUC significantly below the champion's (the difference's interval below 0): do not promote;
4. a verdict other than ``pass`` (the maps suggest a shortcut): review first, whatever the score,
   and the sentence says when a higher score than the champion does not outweigh it;
5. with a champion: promote when this version separates the classes better (interval above 0),
   or when it is not worse and the champion's own verdict was not ``pass``; else review first
   (no gain shown: promote only for another reason);
6. without a champion: promote (the checks passed and the AUC is above chance).
"""

from __future__ import annotations

from dataclasses import dataclass

from .i18n import N_, _
from .meta import CONFIDENCE_PERCENT
from .scalars import finite_float

PROMOTE, DO_NOT_PROMOTE, REVIEW_FIRST = "promote", "do not promote", "review first"
ACTION_WORDS = {PROMOTE: N_("Promote"), DO_NOT_PROMOTE: N_("Do not promote"), REVIEW_FIRST: N_("A person must review first")}
SHORT_WORDS = {PROMOTE: N_("promote"), DO_NOT_PROMOTE: N_("do not promote"), REVIEW_FIRST: N_("review before promoting")}


@dataclass(frozen=True)
class Recommendation:
    action: str  # promote / do not promote / review first
    why: str  # why, in one sentence (two at most), for a clinician; starts with a capital

    @property
    def sentence(self) -> str:
        """The action and why: ``Do not promote: its AUC ...``."""
        return f"{self.words}: {self.why[:1].lower()}{self.why[1:]}"

    @property
    def words(self) -> str:
        return _(ACTION_WORDS[self.action])

    @property
    def short(self) -> str:
        return _(SHORT_WORDS[self.action])


def interval(value, lower, upper, *, signed: bool = False, digits: int = 2, inline: bool = False) -> str:
    """``0.93 (95% CI 0.85 to 0.99)``, ``+0.07 (95% CI +0.00 to +0.14)``; ``inline``: ``+0.07, 95% CI
    +0.00 to +0.14`` (inside parentheses of its own); ``n/a`` without a value."""
    value, lower, upper = finite_float(value), finite_float(lower), finite_float(upper)
    if value is None:
        return _("n/a")
    f = f"{{:{'+' if signed else ''}.{digits}f}}"
    text = f.format(value)
    if lower is not None and upper is not None:
        ci = _("{level}% CI {lower} to {upper}").format(level=CONFIDENCE_PERCENT, lower=f.format(lower),
                                                         upper=f.format(upper))
        text += f", {ci}" if inline else f" ({ci})"
    return text


def p_text(p) -> str:
    p = finite_float(p)
    if p is None:
        return _("n/a")
    return "< 0.001" if p < 0.001 else f"{p:.2g}"


def recommend(*, verdict: str | None, verdict_reason: str | None, auc=None, auc_lower=None, auc_upper=None,
              champion: dict | None = None, gate: str | None = None, gate_failures=()) -> Recommendation:
    """The recommendation for the registry. ``champion``: the recorded comparison
    (``champion.Comparison.to_dict()``: champion_version, roc_auc_diff, roc_auc_diff_ci_lower/upper,
    delong_p, champion_verdict), or None when there was no champion to compare with. ``gate``:
    ``passed`` / ``failed`` / None (no rules), ``gate_failures`` the broken rules."""
    auc_v, auc_lo = finite_float(auc), finite_float(auc_lower)
    auc_words = interval(auc, auc_lower, auc_upper)
    passed = _("The checks passed and the promotion gate passed") if gate == "passed" else _("The checks passed")
    if gate == "failed":
        broken = "; ".join(str(f) for f in gate_failures) or _("a rule was broken")
        return Recommendation(DO_NOT_PROMOTE, _("The promotion gate failed ({broken}).").format(broken=broken))
    if auc_v is None:
        return Recommendation(REVIEW_FIRST, _("The AUC could not be computed on this data, "
                                              "so how well the model separates AD from CN is not known."))
    if auc_lo is not None and auc_lo <= 0.5:
        return Recommendation(DO_NOT_PROMOTE, _("Its AUC of {auc} does not rule out chance (0.5).").format(
            auc=auc_words))
    diff = lower = upper = None
    version = "?"
    if champion:
        diff, lower, upper = (finite_float(champion.get(k)) for k in ("roc_auc_diff", "roc_auc_diff_ci_lower",
                                                                 "roc_auc_diff_ci_upper"))
        version = champion.get("champion_version") or "?"
    vs = _("the champion v{version} (AUC difference {diff}, p = {p})").format(
        version=version, diff=interval(diff, lower, upper, signed=True, inline=True),
        p=p_text((champion or {}).get("delong_p")))
    if upper is not None and upper < 0:
        return Recommendation(DO_NOT_PROMOTE, _("It separates AD from CN worse than {vs}.").format(vs=vs))
    if verdict != "pass":
        why = (verdict_reason or _("the explainability checks were not passed")).strip().rstrip(".")
        sentence = _("The checks found that {why}; do not promote it until a person has reviewed where it looks.").format(
            why=f"{why[:1].lower()}{why[1:]}")
        if lower is not None and lower > 0:
            sentence += " " + _("It scores higher than {vs}, but a score that does not come from brain anatomy will "
                                "not "
                                "hold on data where that shortcut is absent.").format(vs=vs)
        return Recommendation(REVIEW_FIRST, sentence)
    if champion:
        if diff is None:
            note = champion.get("note") or _("the difference could not be computed")
            return Recommendation(REVIEW_FIRST, _("The checks passed, but the comparison with the champion v{version} "
                                                  "gave no AUC difference ({note}).").format(
                                                      version=version, note=note))
        if lower is not None and lower > 0:
            return Recommendation(PROMOTE, _("{passed} and it separates AD from CN better than {vs}.").format(
                passed=passed, vs=vs))
        if (champion.get("champion_verdict") or "pass") != "pass":
            return Recommendation(PROMOTE, _("{passed} where the champion's did not, and it is not shown to be worse "
                                             "than {vs}.").format(passed=passed, vs=vs))
        return Recommendation(REVIEW_FIRST, _("{passed}, but it is not shown to separate AD from CN better than {vs}; "
                                              "promote it only for another reason.").format(passed=passed, vs=vs))
    return Recommendation(PROMOTE, _("{passed} and its AUC is {auc}; there is no champion to compare with.").format(
        passed=passed, auc=auc_words))
