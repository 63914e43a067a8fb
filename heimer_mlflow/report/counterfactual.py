"""The report's "What changes the score" section: the counterfactual tests as the record holds
them, in numbers and plain sentences: what was replaced with what, the largest effect, whether
the map points at what the score uses, the checks as applied and the paired comparison with the
champion. A record from before the tests says so."""

from __future__ import annotations

from ..i18n import _, current_language
from ..interventions import OUTSIDE, format_p, paired_sentence, replacement_text
from ..meta import CONFIDENCE_PERCENT
from ..record import EvaluationRecord
from .sections import CounterfactualCheck, CounterfactualSection, DropRow, PairedDropRow
from .text import fmt_ci, fmt_num, recorded, text

# a drop of the mean probability this large means the score depends on what was replaced
SHORTCUT_DROP, REGION_DROP = 0.2, 0.05
# without a recorded check: the map is faithful when its most-relevant drop beats the random blob's by this much
FAITHFUL_MARGIN = 0.02


def counterfactual_section(record: EvaluationRecord, cam_name: str, positive: str,
                           negative: str) -> CounterfactualSection:
    cf = record.counterfactual
    if cf is None:
        return CounterfactualSection(False, _("This evaluation was made before heimer-mlflow ran counterfactual tests."))
    if not cf.computed:
        return CounterfactualSection(False, _("Not computed: {reason}.").format(reason=recorded(cf.reason)))
    # the recorded replacement is in the evaluation's language; another language words it anew
    replacement = cf.replacement if current_language() == "en" else replacement_text(negative)
    headline = _largest_effect(cf, positive, negative)
    sentences = [_("To test what the score depends on, the model scored {n} subjects it calls {positive} again with "
                   "parts of their scan replaced by {replacement}.").format(n=cf.n_subjects, positive=positive,
                                                                            replacement=replacement)]
    sentences += [s for s in (headline, _faithfulness(record, cam_name)) if s]
    return CounterfactualSection(
        available=True, n_subjects=cf.n_subjects, n_requested=cf.n_requested, forward_passes=cf.forward_passes,
        replacement=replacement, sentences=tuple(sentences), headline=headline, rows=_drop_rows(cf, cam_name),
        checks=_checks(record, cam_name), vs_champion=_vs_champion(cf),
        vs_sentence=paired_sentence(cf.vs_champion[0]) + "." if cf.vs_champion else "",
        champion_note=cf.champion_note or "", champion_version=cf.champion_version or "",
        seconds=fmt_num(cf.seconds, 1), steps=", ".join(f"{100 * s:g}%" for s in cf.steps),
    )


def _interval(e) -> str:
    if e.lower is None:
        return f"{e.value:.2f}"
    return _("{value} ({level}% interval {lower} to {upper})").format(value=f"{e.value:.2f}", level=CONFIDENCE_PERCENT,
                                                                      lower=f"{e.lower:.2f}", upper=f"{e.upper:.2f}")


def _what(name: str) -> str:
    return _("what lies outside the brain") if name == OUTSIDE else _("the {region}").format(
        region=name.replace("_", " "))


def _largest_effect(cf, positive: str, negative: str) -> str:
    """The sentence on the largest drop and what it means ("" when no drop was computable)."""
    largest = cf.largest_effect()
    if largest is None:
        return ""
    name, drop = largest
    meaning = (_("the score depends on something outside the brain, which a brain disease cannot explain")
               if name == OUTSIDE and drop.value >= SHORTCUT_DROP else
               _("the score depends on {what}").format(what=_what(name)) if drop.value >= REGION_DROP else
               _("no single region the test replaced moves the score much"))
    before = (cf.curves.get("morf") or {}).get("prob", [None])[0]
    if before is None:
        return _("Replacing {what} with the {negative} subjects' average lowers the mean probability of "
                 "{positive}, a drop of {drop}: {meaning}.").format(
            what=_what(name), negative=negative, positive=positive, drop=_interval(drop), meaning=meaning)
    return _("Replacing {what} with the {negative} subjects' average lowers the mean probability of "
             "{positive} from {before} to {after}, a drop of {drop}: {meaning}.").format(
        what=_what(name), negative=negative, positive=positive, before=f"{before:.2f}",
        after=f"{before - drop.value:.2f}", drop=_interval(drop), meaning=meaning)


def _faithfulness(record: EvaluationRecord, cam_name: str) -> str:
    """Whether the map points at what the score uses: its most relevant voxels replaced against
    random blobs (and its least relevant voxels), as the recorded check judged it."""
    cf = record.counterfactual
    morf, lerf, random = (cf.estimate(k) for k in ("cf_drop_map_morf", "cf_drop_map_lerf", "cf_drop_random"))
    if not (morf is not None and random is not None and morf.computable and random.computable):
        return ""
    check = record.verdict.check("map_faithful")
    faithful = check.passed if check is not None and check.passed is not None else (
        morf.value - random.value > FAITHFUL_MARGIN)
    with_lerf = lerf is not None and lerf.computable
    if faithful:
        sentence = (_("Replacing the voxels the {cam} marks as most relevant (2, 5 and 10% of the brain) lowers it "
                      "by {morf} on average, against {random} for random blobs of the same size and {lerf} for its "
                      "least relevant voxels: the {cam} points at what the score uses.") if with_lerf else
                    _("Replacing the voxels the {cam} marks as most relevant (2, 5 and 10% of the brain) lowers it "
                      "by {morf} on average, against {random} for random blobs of the same size: the {cam} points "
                      "at what the score uses."))
    else:
        sentence = (_("Replacing the voxels the {cam} marks as most relevant (2, 5 and 10% of the brain) lowers it "
                      "by {morf} on average, against {random} for random blobs of the same size and {lerf} for its "
                      "least relevant voxels: the {cam} does not point at what the score uses.") if with_lerf else
                    _("Replacing the voxels the {cam} marks as most relevant (2, 5 and 10% of the brain) lowers it "
                      "by {morf} on average, against {random} for random blobs of the same size: the {cam} does "
                      "not point at what the score uses."))
    return sentence.format(cam=cam_name, morf=_interval(morf), random=f"{random.value:.2f}",
                           lerf=f"{lerf.value:.2f}" if with_lerf else "")


def _drop_rows(cf, cam_name: str) -> tuple[DropRow, ...]:
    """Every drop with its interval: outside the brain, each region, the map's steps, the random blob."""
    named = [(_("outside the brain"), "cf_drop_outside_brain")]
    named += [(r.replace("_", " "), f"cf_drop_{r}") for r in cf.region_names]
    named += [(_("{cam}: most relevant first (mean of the steps)").format(cam=cam_name), "cf_drop_map_morf"),
              (_("{cam}: least relevant first (mean of the steps)").format(cam=cam_name), "cf_drop_map_lerf"),
              (_("random blob in the brain (mean of the steps)"), "cf_drop_random"),
              (_("faithfulness (most minus least relevant first)"), "cf_faithfulness")]
    rows = []
    for name, key in named:
        drop = cf.estimate(key)
        if drop is None:
            rows.append(DropRow(name, _("n/a"), "", ""))
        elif drop.computable:
            rows.append(DropRow(name, fmt_num(drop.value, 3), fmt_ci(drop, "cf"), ""))
        else:
            rows.append(DropRow(name, _("n/a"), fmt_ci(drop, "cf"), recorded(text(drop.reason))))
    return tuple(rows)


def _checks(record: EvaluationRecord, cam_name: str) -> tuple[CounterfactualCheck, ...]:
    """The counterfactual checks of the verdict, each with its value and limit as applied."""
    checks = []
    for name, words in (("shortcut_confirmed", _("Shortcut test: mean drop when the outside of the brain is replaced")),
                        ("map_faithful", _("Faithfulness: {cam} most-relevant drop minus the random blob's").format(
                            cam=cam_name))):
        c = record.verdict.check(name)
        if c is None:
            continue
        limit = "" if c.limit is None else (_("below {limit}") if name == "shortcut_confirmed" else
                                            _("above {limit}")).format(limit=f"{c.limit:.2f}")
        result = _("not assessed") if c.passed is None else (_("pass") if c.passed else _("review"))
        checks.append(CounterfactualCheck(words, fmt_num(c.value, 3), limit, result))
    return tuple(checks)


def _vs_champion(cf) -> tuple[PairedDropRow, ...]:
    return tuple(PairedDropRow(name=_("outside the brain") if p.name == OUTSIDE else p.name.replace("_", " "),
                               n=p.n_pairs, this=fmt_num(p.this, 3), champion=fmt_num(p.champion, 3),
                               diff=f"{p.diff.value:+.3f} [{p.diff.lower:+.3f}, {p.diff.upper:+.3f}]",
                               p=format_p(p.p_holm))
                 for p in cf.vs_champion)
