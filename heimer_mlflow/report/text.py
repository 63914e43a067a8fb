"""The report's words: how numbers are written, what each metric and figure means, the
glossary, and the PDF's file name. Plain data and functions, no I/O."""

from __future__ import annotations

import json
import math
import re

from ..i18n import N_, _, current_language
from ..meta import CONFIDENCE_PERCENT
from ..metrics import Estimate

MAX_TEXT = 4000  # registry text (description, tag values) longer than this is cut, with a note
MAX_TAGS = 200


PERCENT = {"accuracy", "balanced_accuracy", "sensitivity", "specificity", "ppv", "npv"}
METRIC_LABELS = {
    "roc_auc": (N_("AUC (area under the ROC curve)"), N_("how well scores separate AD from CN; 0.5 is chance, 1 is perfect")),
    "roc_auc_delong": (N_("AUC, DeLong interval"), N_("the same AUC with an analytic interval")),
    "accuracy": (N_("Accuracy"), N_("share of all subjects classified correctly")),
    "balanced_accuracy": (N_("Balanced accuracy"), N_("mean of sensitivity and specificity")),
    "sensitivity": (N_("Sensitivity"), N_("share of AD subjects called AD")),
    "specificity": (N_("Specificity"), N_("share of CN subjects called CN")),
    "ppv": (N_("Positive predictive value (PPV)"), N_("share of AD calls that are AD")),
    "npv": (N_("Negative predictive value (NPV)"), N_("share of CN calls that are CN")),
    "f1": (N_("F1 score"), N_("harmonic mean of PPV and sensitivity")),
    "brier_score": (N_("Brier score"), N_("mean squared error of the probabilities; lower is better")),
    "log_loss": (N_("Log loss"), N_("penalty for confident wrong probabilities; lower is better")),
    "expected_calibration_error": (N_("Expected calibration error (ECE)"),
                                   N_("mean gap between predicted and observed; lower is better")),
    "calibration_slope": (N_("Calibration slope"), N_("1 is ideal; below 1: over-confident, above 1: under-confident")),
    "calibration_intercept": (N_("Calibration intercept"), N_("0 is ideal")),
}


def _is_finite(number) -> bool:
    return number is not None and math.isfinite(number)


def fmt_value(number: float | None, name: str = "", digits: int = 2) -> str:
    """A figure's value: a percentage for the proportions, else ``digits`` decimals; n/a if none."""
    if not _is_finite(number):
        return _("n/a")
    if name in PERCENT:
        return f"{number * 100:.0f}%"
    return f"{number:.{digits}f}"


def fmt_ci(est: Estimate | None, name: str = "") -> str:
    """'0.73 to 0.93' (percentages for the proportions), '-' without an interval."""
    if est is None or not (_is_finite(est.lower) and _is_finite(est.upper)):
        return "-"
    if name in PERCENT:
        return _("{lower} to {upper}").format(lower=f"{est.lower * 100:.0f}%", upper=f"{est.upper * 100:.0f}%")
    return _("{lower} to {upper}").format(lower=f"{est.lower:.2f}", upper=f"{est.upper:.2f}")


def fmt_est(est: Estimate | None, name: str = "") -> str:
    """'0.85 (95% CI 0.73 to 0.93)', or 'not computable: reason'."""
    if est is None or not _is_finite(est.value):
        reason = recorded(est.reason if est is not None else None) or _("no value")
        return _("not computable: {reason}").format(reason=reason)
    ci = fmt_ci(est, name)
    value = fmt_value(est.value, name)
    return value if ci == "-" else _("{value} ({level}% CI {ci})").format(value=value, level=CONFIDENCE_PERCENT, ci=ci)


def fmt_num(number: float | None, digits: int = 2) -> str:
    return _("n/a") if not _is_finite(number) else f"{number:.{digits}f}"


def fmt_pct(number: float | None, digits: int = 0) -> str:
    return _("n/a") if not _is_finite(number) else f"{number * 100:.{digits}f}%"


def text(value) -> str:
    """Any JSON value as display text (escaping is the template's job)."""
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        return ", ".join(text(v) for v in value) or "-"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def clip(words: str, limit: int = MAX_TEXT) -> str:
    if len(words) <= limit:
        return words
    return f"{words[:limit]} ... " + _("[cut: {n} more characters]").format(n=len(words) - limit)


def _safe_file_part(value, fallback: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", str(value or "")).strip("._-")[:100]
    return cleaned or fallback


def report_file_name(name, version, lang: str = "en") -> str:
    """``<model-name>-v<version>.pdf``, file-name safe (``model-v-.pdf`` when unregistered);
    ``<model-name>-v<version>-ko.pdf`` in Korean."""
    suffix = "" if lang == "en" else f"-{lang}"
    return f"{_safe_file_part(name, 'model')}-v{_safe_file_part(version, '-')}{suffix}.pdf"


# --------------------------------------------------------------------------------------------
# Figures: what each shows and what to look for
# --------------------------------------------------------------------------------------------

# name: (title, caption, size); size (a CSS class, see report.css): small | medium | wide | brain (brain
# views, at the full text width). {pos}/{neg}: the classes; {cam}: the primary map's name (Grad-CAM or HiResCAM);
# {level}: the intervals' confidence level (meta.CONFIDENCE_PERCENT).
FIGURES: dict[str, tuple[str, str, str]] = {
    "training_curves": (N_("Training curves"),
        N_("Accuracy and loss per epoch on the training and validation data, from the model's training run. "
        "Look for validation curves that follow the training curves: a widening gap means over-fitting."), "wide"),
    "roc": (N_("ROC curve"),
        N_("Sensitivity against 1 - specificity for every threshold; the AUC with its {level}% interval is in the legend "
        "and the dot is the operating threshold. The further the curve bows to the top left, the better; the "
        "diagonal is chance."), "small"),
    "score_histogram": (N_("Prediction scores per true class"),
        N_("The model's probability of {pos} for subjects who are {pos} and who are {neg} (colours in the legend), with "
        "the threshold. "
        "Look for two well separated humps; overlap around the threshold is where the errors are."), "small"),
    "confusion_matrix": (N_("Confusion matrix"),
        N_("Counts of true and predicted classes at the threshold. The diagonal holds the correct calls; "
        "the off-diagonal cells are the false positives and false negatives."), "small"),
    "calibration": (N_("Calibration (reliability) curve"),
        N_("Observed share of {pos} against the predicted probability, in bins. Points on the diagonal mean the "
        "probabilities can be read at face value; below it the model is over-confident about {pos}."), "small"),
    "decision_curve": (N_("Decision curve"),
        N_("Net benefit of acting on the model's calls compared with treating everyone or no one, across "
        "threshold probabilities. The model is useful where its curve lies above both reference lines."), "small"),
    "subgroups": (N_("Results per subgroup"),
        N_("Sensitivity, specificity and AUC with {level}% intervals per subgroup. Look for subgroups whose "
        "intervals lie clearly below the others: the model may not work as well for them."), "wide"),
    "group_cam": (N_("Group-mean {cam} and the {pos} - {neg} difference"),
        N_("Where the model looks, averaged over each true class, and the difference between the classes "
        "(red: more attention in {pos}, blue: more in {neg}). Plausible maps highlight the hippocampus and the "
        "ventricles; attention on the skull, the edges or the background suggests a shortcut."), "brain"),
    "gallery_TP": (N_("Case gallery: most confident true positives"),
        N_("{cam} over the MRI of the {pos} subjects the model was most sure about and right. "
        "Look for attention inside the brain, in the same regions as the group map."), "brain"),
    "gallery_TN": (N_("Case gallery: most confident true negatives"),
        N_("{cam} of the {neg} subjects the model was most sure about and right."), "brain"),
    "gallery_FP": (N_("Case gallery: false positives"),
        N_("{neg} subjects the model called {pos}, most confident first. Look for what drew the model's attention: "
        "an artefact, an unusual anatomy, or the regions it uses for true {pos} cases."), "brain"),
    "gallery_FN": (N_("Case gallery: false negatives"),
        N_("{pos} subjects the model called {neg}, most confident first. Look for whether the typical regions "
        "received little attention."), "brain"),
    "cam_outside_brain": (N_("{cam} outside the brain per subject"),
        N_("The share of each subject's {cam} that lies outside the brain (the brain mask given to the evaluation; with a named "
        "MNI-space atlas, the MNI152 template's brain; else the scan's non-background voxels), per true class. Most of the "
        "attention should be inside the brain; high shares point to a shortcut."), "small"),
    "region_gain": (N_("{cam} per atlas region relative to its volume"),
        N_("How much of the {cam} inside the brain falls in each atlas region, divided by the region's share of "
        "the brain volume. "
        "A gain above 1 means the region draws more attention than its size alone would give it."), "wide"),
    "sanity": (N_("Randomisation sanity check"),
        N_("Spearman correlation between each subject's {cam} from the trained model and from the same "
        "network with randomised weights. Low values are good: the maps depend on what the model learned."), "medium"),
    "cf_deletion_curves": (N_("Deletion curves: what the {cam} marks, replaced"),
        N_("Mean probability of {pos} over the re-scored subjects as the share of the brain's volume replaced by the "
        "{neg} subjects' average grows: the {cam}'s most relevant voxels first (MoRF), its least relevant voxels in "
        "the brain first (LeRF), and a random blob of the same size in the brain. Shaded: {level}% intervals. A faithful "
        "map makes MoRF fall faster than both."), "medium"),
    "cf_region_drops": (N_("What changes the score: each region replaced"),
        N_("How much the mean probability of {pos} falls when a region (or everything outside the brain) is replaced "
        "by the {neg} subjects' average there, with {level}% intervals. A large drop outside the brain means the score "
        "depends on something a brain disease cannot explain."), "wide"),
    "feature_maps": (N_("Feature maps per group"),
        N_("Mean activation of the most discriminative channels of the layer, for {pos} and {neg}, and their "
        "difference drawn over the cohort's mean MRI. Look for differences inside the brain, in anatomically "
        "meaningful places."), "brain"),
    "feature_channel_differences": (N_("Feature map differences per channel"),
        N_("{pos} - {neg} difference of the mean activation for the channels that separate the groups best "
        "over the cohort's mean MRI (red positive, blue negative, symmetric scale; small differences are not "
        "drawn, so the anatomy shows). The layer's grid is coarse: each square is one feature-map cell."), "brain"),
    "input_difference": (N_("Raw data baseline: mean difference and t-map"),
        N_("Voxel-wise mean difference of the preprocessed images ({pos} - {neg}) and the voxel-wise t statistic, "
        "over the cohort's mean MRI (small values not drawn), slices through the largest |t| inside the head. "
        "This is what differs in the data itself; compare it with the model's maps above. When the largest "
        "difference lies outside the head (a scanner or site marker), the figure says where."), "brain"),
    "champion_comparison": (N_("Where each model looks: this version and the champion"),
        N_("Each model's mean map of the {pos} group over the cohort's mean MRI, one row per model, slices through "
        "each map's own peak. Each row has its own colour scale: the places compare, the raw values do not. "
        "A model that scores from anatomy looks inside the brain; one that scores from a marker looks at it."),
        "brain"),
}
# Figures renamed for what they show (former name -> name): the case galleries show the primary map,
# HiResCAM by default, and were named gradcam_TP.png, ... before. A re-render reads
# a run logged before under its old names; EvaluationResult.artifacts keeps the old keys as well.
FORMER_FIGURE_NAMES = {f"gradcam_{outcome}": f"gallery_{outcome}" for outcome in ("TP", "TN", "FP", "FN")}
EXTRA_FIGURE_SIZE = "wide"  # a figure the report does not know, at the full text width
FIGURE_SECTIONS = {
    "performance": ["training_curves", "roc", "score_histogram", "confusion_matrix", "calibration",
                    "decision_curve", "subgroups"],
    "explain_group": ["group_cam"],
    "explain_gallery": ["gallery_TP", "gallery_TN", "gallery_FP", "gallery_FN"],
    "explain_checks": ["cam_outside_brain", "region_gain", "sanity"],
    "explain_counterfactual": ["cf_deletion_curves", "cf_region_drops"],
    "features": ["feature_maps", "feature_channel_differences", "input_difference"],
}


CAM_EXPLAINED = {
    "gradcam": N_("Grad-CAM weights each channel of the layer by its gradient averaged over the whole image, so it "
               "marks every place where a channel the model relies on is active, whether or not the score used "
               "that place."),
    "hirescam": N_("HiResCAM multiplies gradient and activation at each place before adding up the channels, so it "
                "marks only the places the model's score actually used."),
}


GLOSSARY = [
    (N_("Counterfactual test"), N_("The model scores a subject again with one region of the scan replaced by the average "
                            "of the control subjects' scans there; the fall in its probability of AD shows how much the "
                            "score depends on that region.")),
    (N_("MoRF / LeRF"), N_("Most / least relevant first: the map's most (least) relevant voxels are replaced first. A "
                    "faithful map makes the score fall fast under MoRF and slowly under LeRF.")),
    (N_("AUC"), N_("Area under the ROC curve: the chance that a randomly chosen AD subject gets a higher score than a "
            "randomly chosen CN subject. 0.5 is chance, 1.0 perfect separation.")),
    (N_("ROC curve"), N_("Receiver operating characteristic: sensitivity against 1 - specificity over all thresholds.")),
    (N_("Sensitivity"), N_("Share of AD subjects the model calls AD (true positive rate, recall).")),
    (N_("Specificity"), N_("Share of CN subjects the model calls CN (true negative rate).")),
    (N_("Balanced accuracy"), N_("Mean of sensitivity and specificity; not swayed by unequal class sizes.")),
    (N_("PPV"), N_("Positive predictive value: of the subjects called AD, the share that are AD. Depends on how common AD "
            "is in the cohort.")),
    (N_("NPV"), N_("Negative predictive value: of the subjects called CN, the share that are CN.")),
    (N_("F1 score"), N_("Harmonic mean of PPV and sensitivity.")),
    (N_("Threshold"), N_("The score at or above which a subject is called AD.")),
    (N_("{level}% confidence interval (CI)"), N_("The range that, in repeated studies of this size, would contain the "
            "true value {level}% of the time. Wide intervals mean few subjects.")),
    (N_("Bootstrap"), N_("Re-computing a figure on many resamples of the subjects to see how much it varies.")),
    (N_("Wilson interval"), N_("A confidence interval for a proportion that behaves well with small counts.")),
    (N_("Cluster bootstrap"), N_("A bootstrap that draws participants with all their scans, for cohorts where some "
            "participants were scanned more than once: their scans are not independent evidence.")),
    (N_("DeLong interval"), N_("An analytic confidence interval for the AUC.")),
    (N_("Brier score"), N_("Mean squared difference between predicted probability and outcome (0 or 1); lower is better.")),
    (N_("Log loss"), N_("Mean negative log-probability given to the true class; punishes confident mistakes.")),
    (N_("ECE"), N_("Expected calibration error: the average gap between predicted probability and observed frequency, "
            "over probability bins.")),
    (N_("Calibration"), N_("Whether predicted probabilities match observed frequencies (a 70% score is AD 70% of the time).")),
    (N_("Decision curve / net benefit"), N_("True positives minus false positives weighted by the odds of the threshold "
            "probability, per subject: the value of acting on the model's calls.")),
    (N_("Grad-CAM"), N_("Gradient-weighted class activation mapping: a heat map of where in the image the model's evidence "
            "for a class comes from, from the gradients of the class score at a convolutional layer, averaged "
            "over the image per channel. With max-pooling or flatten heads it can mark places the score did not use.")),
    (N_("HiResCAM"), N_("High-resolution class activation mapping: like Grad-CAM, but gradient and activation are "
            "multiplied at each place, so the map shows the places the class score actually used.")),
    (N_("Agreement (of the two maps)"), N_("Spearman rank correlation of a subject's Grad-CAM and HiResCAM inside the brain; "
            "1 means the two methods rank the places alike, near 0 that they point at different places.")),
    (N_("Feature map"), N_("The output of one channel of a convolutional layer: what that filter responds to, per voxel.")),
    (N_("t-map"), N_("Voxel-wise t statistic of the AD - CN difference: the mean difference divided by its standard "
            "error. Large absolute values are consistent differences.")),
    (N_("Gain (region)"), N_("Share of the attention map (Grad-CAM or HiResCAM) inside the brain that falls in an atlas "
            "region, divided by the "
            "region's share of the brain volume; above 1 means more attention than the size of the region alone "
            "would give, 1 is what a map spread evenly over the brain gives.")),
    (N_("Spearman correlation"), N_("Rank correlation between two maps; near 0 means unrelated.")),
    (N_("Randomisation sanity check"), N_("Comparing the maps of the trained model with those of the same network with "
            "random weights: faithful explanations must change when the weights do.")),
    (N_("Shortcut"), N_("A feature unrelated to the disease (skull, background, scanner) that the model uses to "
            "separate the classes in this data; it will not generalise.")),
]


# --------------------------------------------------------------------------------------------
# Sentences the evaluation recorded (metrics.json's reasons and threshold note), worded anew
# --------------------------------------------------------------------------------------------

# metrics.json holds the reasons why a figure is not computable, and the threshold's note, as
# heimer_mlflow.metrics wrote them (English). A report in another language words the ones it
# knows anew from their parts; a sentence it does not know is shown as recorded.
RECORDED_FIGURES = {"the AUC": N_("the AUC"), "balanced accuracy": N_("balanced accuracy"),
                    "the calibration fit": N_("the calibration fit"), "F1": "F1", "PPV": "PPV", "NPV": "NPV",
                    "sensitivity": N_("sensitivity"), "specificity": N_("specificity")}
RECORDED_SENTENCES = [
    (r"only one class present \((?P<present>[^)]*)\); (?P<figure>.+) needs both (?P<negative>\S+) and "
     r"(?P<positive>\S+) subjects",
     N_("only one class present ({present}); {figure} needs both {negative} and {positive} subjects")),
    (r"too few subjects \((?P<n_positive>\d+) (?P<positive>\S+), (?P<n_negative>\d+) (?P<negative>\S+)\); "
     r"(?P<figure>.+) needs at least (?P<minimum>\d+) of each",
     N_("too few subjects ({n_positive} {positive}, {n_negative} {negative}); {figure} needs at least {minimum} "
        "of each")),
    (r"too few subjects \((?P<n>\d+)\); the calibration fit needs at least (?P<minimum>\d+)",
     N_("too few subjects ({n}); the calibration fit needs at least {minimum}")),
    (r"all scores are equal; the calibration slope is undefined",
     N_("all scores are equal; the calibration slope is undefined")),
    (r"the scores separate the classes perfectly; the calibration slope is infinite",
     N_("the scores separate the classes perfectly; the calibration slope is infinite")),
    (r"the calibration fit did not converge in (?P<n>\d+) Newton steps",
     N_("the calibration fit did not converge in {n} Newton steps")),
    (r"no (?P<name>\S+) subjects; (?P<figure>\S+) needs at least one",
     N_("no {name} subjects; {figure} needs at least one")),
    (r"no subject called (?P<name>\S+) at threshold (?P<threshold>\S+); (?P<figure>\S+) needs at least one",
     N_("no subject called {name} at threshold {threshold}; {figure} needs at least one")),
    (r"no subjects", N_("no subjects")),
    (r"a subject's score was not finite", N_("a subject's score was not finite")),
    (r"(?P<n>\d+) paired subject\(s\): a paired test needs at least 2",
     N_("{n} paired subject(s): a paired test needs at least 2")),
    (r"no ROC curve: (?P<reason>.+)", N_("no ROC curve: {reason}")),
    (r"not computed", N_("not computed")),
    (r"no value", N_("no value")),
    (r"Subjects are called (?P<positive>\S+) when their score is >= (?P<threshold>\S+); every figure at the "
     r"threshold uses it\. The Youden threshold \(maximising sensitivity \+ specificity - 1\) is chosen on this "
     r"same data, so its sensitivity and specificity are optimistic; it is shown for information only\.",
     N_("Subjects are called {positive} when their score is >= {threshold}; every figure at the threshold uses "
        "it. The Youden threshold (maximising sensitivity + specificity - 1) is chosen on this same data, so its "
        "sensitivity and specificity are optimistic; it is shown for information only.")),
]


def recorded(sentence: str | None) -> str | None:
    """A sentence the evaluation recorded in English, in the report's language when it is one
    of RECORDED_SENTENCES (its parts kept: numbers, class names), else as recorded."""
    if not sentence or current_language() == "en":
        return sentence
    for pattern, message in RECORDED_SENTENCES:
        found = re.fullmatch(pattern, sentence.strip())
        if found:
            parts = found.groupdict()
            if "figure" in parts:
                parts["figure"] = _(RECORDED_FIGURES.get(parts["figure"], parts["figure"]))
            if "reason" in parts:
                parts["reason"] = recorded(parts["reason"])
            return _(message).format(**parts)
    return sentence
