"""Column names of the results table: the THEORY terms of the project's mathematical
contract, as ``docs/theory.md`` explains them.

Imported by the estimators (``BoundsReport.row()``), by tracking (schema check on write)
and by plotting (which never imports torch), so it depends on nothing.
"""

# Terms reported as value with a 95% interval: columns <term>, <term>_lo, <term>_hi.
INTERVAL_TERMS = (
    "teacher_err",
    "student_err",
    "student_own_err",
    "disagreement",
    "delta_gamma",
    "feat_msd",
    "feat_rel",
    "feat_cka",
    "logit_msd",
    "mmd2",
    "proxy_a_linear",
    "proxy_a_mlp",
    "joint_err_T",
    "joint_err_S",
    "ideal_joint",
    "student_probe_err",
    "ijc_lambda",
    "ijc_gap",
    "pair_disc",
    # the same-recipe probes beside student_probe_err (docs/theory.md: one recipe, three inputs)
    "teacher_probe_err",
    "connected_probe_err",
)

# Fidelity and calibration (docs/theory.md "Fidelity and calibration"): how closely the student's
# predictive distribution follows the teacher's, and how calibrated each one is.
FIDELITY_TERMS = (
    "top1_agreement",
    "pred_kl",
    "teacher_nll",
    "student_nll",
    "teacher_brier",
    "student_brier",
    "teacher_ece",
    "student_ece",
)
INTERVAL_TERMS = INTERVAL_TERMS + FIDELITY_TERMS

# Bounds on student_err (docs/theory.md "Bounds"); each also carries _lo/_hi.
EXACT_BOUNDS = ("bound_coupled", "bound_margin", "bound_feat_markov", "bound_logit_markov",
                "bound_ideal_joint")
ESTIMATED_BOUNDS = ("bound_ben_david",)
BOUNDS = EXACT_BOUNDS + ESTIMATED_BOUNDS

# Scalars without an interval.
SCALARS = (
    "mmd_p",
    "mmd_bandwidth",
    "feat_markov_tau",
    "logit_markov_tau",
    "n_eval",
    "n_fit",
    "dim",
    "n_classes",
    # which candidate is ĥ* on the evaluation split ("teacher"/"probe", a string) and
    # the share of bootstrap replicates in which the probe is ĥ*
    "joint_chosen",
    "joint_probe_share",
)

# Scalars that hold text, not numbers, and the values they may take.
TEXT_SCALARS = {"joint_chosen": ("teacher", "probe")}

# Identify a row: one row per run x checkpoint x split.
KEYS = ("run", "method", "dataset", "seed", "epoch", "step", "split", "checkpoint")

# Terms that may legitimately be missing (NaN): the student has no own head, or the
# caller gave no student-own features.
OPTIONAL_TERMS = ("student_own_err", "student_probe_err")


def interval_columns(term):
    return (term, f"{term}_lo", f"{term}_hi")


def estimate_columns():
    """All estimator columns in table order (no key columns)."""
    cols = []
    for term in INTERVAL_TERMS + BOUNDS:
        cols.extend(interval_columns(term))
    cols.extend(SCALARS)
    return tuple(cols)


ESTIMATE_COLUMNS = estimate_columns()
TABLE_COLUMNS = KEYS + ESTIMATE_COLUMNS

# Human-readable labels for figures and reports.
LABELS = {
    "teacher_err": "teacher error $\\epsilon_T(h_T)$",
    "student_err": "student error $\\epsilon_S(h_T)$",
    "student_own_err": "student own-head error",
    "disagreement": "disagreement $\\delta$",
    "delta_gamma": "margin-crossing rate $\\delta_\\gamma$",
    "feat_msd": "feature MSD $E\\|z_S-z_T\\|^2$",
    "feat_rel": "relative feature distance",
    "feat_cka": "debiased linear CKA",
    "logit_msd": "logit MSD",
    "mmd2": "MMD$^2$",
    "proxy_a_linear": "proxy A-distance (linear)",
    "proxy_a_mlp": "proxy A-distance (MLP)",
    "joint_err_T": "joint-probe error, teacher",
    "joint_err_S": "joint-probe error, student",
    "ideal_joint": "ideal joint error $\\hat\\lambda^*$",
    "student_probe_err": "student probe error (own features $s$)",
    "ijc_lambda": "$\\lambda(h_T)$",
    "ijc_gap": "IJC gap",
    "pair_disc": "pair discrepancy",
    "bound_coupled": "coupled bound (exact)",
    "bound_margin": "margin bound (exact)",
    "bound_feat_markov": "feature Markov bound (exact)",
    "bound_logit_markov": "logit Markov bound (exact)",
    "bound_ideal_joint": "ideal-joint bound (exact)",
    "bound_ben_david": "Ben-David bound (estimate)",
    # same-recipe probes and the choice of the ideal joint classifier
    "teacher_probe_err": "teacher probe error ($t$)",
    "connected_probe_err": "connected probe error ($z_S$)",
    "joint_chosen": "$\\hat h^*$ chosen",
    "joint_probe_share": "share of replicates with $\\hat h^*$ = probe",
}

# fidelity and calibration
LABELS.update({
    "top1_agreement": "top-1 agreement with the teacher",
    "pred_kl": "predictive KL$(p_T\\|p_S)$",
    "teacher_nll": "teacher NLL",
    "student_nll": "student NLL",
    "teacher_brier": "teacher Brier score",
    "student_brier": "student Brier score",
    "teacher_ece": "teacher ECE (15 bins)",
    "student_ece": "student ECE (15 bins)",
})

# ---- layers.csv (docs/theory.md "Layers"): one row per stage probe and per stage pair.
LAYER_TERMS = ("stage_probe_err", "stage_cka")
LAYER_KEYS = ("run", "method", "epoch", "checkpoint", "split")
# probe rows fill model, stage, stage_index, depth; CKA rows the teacher_/student_ ones
LAYER_ESTIMATE_COLUMNS = (
    "model", "stage", "stage_index", "depth",
    "teacher_stage", "teacher_index", "student_stage", "student_index",
    *interval_columns("stage_probe_err"), *interval_columns("stage_cka"),
    "n_eval", "n_fit", "dim",
)
LAYER_COLUMNS = LAYER_KEYS + LAYER_ESTIMATE_COLUMNS
LABELS.update({
    "stage_probe_err": "stage probe error",
    "stage_cka": "stage CKA (debiased)",
})

# ---- the companion tables of a run (tracking/table.py writes them)
# per_class.csv: one row per run x checkpoint x class
PER_CLASS_COLUMNS = ("run", "method", "epoch", "checkpoint", "class", "n",
                     *interval_columns("student_err"), *interval_columns("teacher_err"),
                     *interval_columns("disagreement"), *interval_columns("top1_agreement"))
# margins.csv: one row per evaluation sample x checkpoint (plus the column "sample")
MARGIN_COLUMNS = ("run", "method", "epoch", "checkpoint", "teacher_margin", "feat_dist",
                  "disagree")
# calibration.csv: one row per checkpoint x model (teacher, student) x confidence bin
CALIBRATION_COLUMNS = ("run", "method", "epoch", "checkpoint", "split", "model", "bin",
                       "bin_lo", "bin_hi", "n", "confidence", "accuracy")

# The columns each figure reads, a subset of the table it draws from, so a caller's own
# frame needs only these (plotting/select.py checks them).
PER_CLASS_PLOT_COLUMNS = ("run", "method", "epoch", "class")
MARGIN_PLOT_COLUMNS = ("run", "method", "epoch", "teacher_margin", "feat_dist", "disagree")
CALIBRATION_PLOT_COLUMNS = ("run", "method", "epoch", "model", "bin", "bin_lo", "bin_hi", "n",
                            "confidence", "accuracy")

# ---- the audit's error budget (estimators/budget.py computes it, reporting.py writes it):
# the name of each piece's diagnosis, the advice for a named piece, each piece's formula
# and meaning (docs/theory.md "Audit: an error budget")
UNDETERMINED = "undetermined"

DIAGNOSES = {
    "teacher": "teacher-limited",
    "fit": "fit-limited (the audit's own data)",
    "capacity": "capacity-limited",
    "connector": "connector-limited",
    "alignment": "alignment-limited (IJC violated)",
    "head": "head-limited",
    "representation": "representation-limited",
    UNDETERMINED: "undetermined",
}

# pieces that describe the student (the teacher piece describes the teacher, the fit piece
# the audit's fit split)
STUDENT_PIECES = ("capacity", "connector", "alignment", "head", "representation")

ADVICE = {
    "teacher": "The student already does about as well as the teacher's classifier allows: "
               "a better teacher is the fix.",
    "capacity": "The student's own features separate the classes worse than the teacher's: "
                "no head or connector can recover what is not there. Use a larger student "
                "or train longer.",
    "connector": "The student's own features hold the information, but the map into the "
                 "teacher's space loses it: use a wider or deeper connector, or a stronger "
                 "feature loss.",
    "alignment": "The student's features in the teacher's space are linearly separable, just "
                 "not by the teacher's classifier: raise the feature/logit loss weight, train "
                 "longer, or fine-tune the classifier (see the margin figure and delta_gamma).",
    "head": "A linear probe on the student's own features beats its own head: retrain or "
            "fine-tune the head (or distil into the head with a logit loss).",
    "representation": "The student's features in the teacher's space separate the classes "
                      "worse than the teacher's: a larger student, longer training, or a "
                      "better connector (give the student's own features `s`/`s_fit` to "
                      "split capacity from connector).",
}

# one line per piece: its formula and what it measures (``{target}`` is filled in)
PIECE_DEFINITIONS = {
    "teacher": ("teacher_err", "the teacher classifier h_T's error on the teacher's features"),
    "fit": ("teacher_probe_err − teacher_err",
            "what a probe fitted on the fit split loses against h_T on the teacher's own "
            "features: the audit's data, not the student"),
    "capacity": ("student_probe_err − teacher_probe_err",
                 "same-recipe probes on the student's own features s(x) and on the "
                 "teacher's t(x): what the student's features lack"),
    "connector": ("connected_probe_err − student_probe_err",
                  "same-recipe probes on z_S = p(s(x)) and on s(x): what the connector "
                  "loses"),
    "alignment": ("student_err − connected_probe_err",
                  "h_T against a probe on z_S: features separable by a linear classifier, "
                  "but not by h_T, the IJC violated"),
    "head": ("student_own_err − student_probe_err",
             "the student's own head against a probe on its own features s(x)"),
    "representation": ("connected_probe_err − teacher_probe_err",
                       "same-recipe probes on z_S and on t(x): capacity and connector "
                       "together (the student's own features s were not given)"),
}
PIECE_DEFINITION_HEAD_WITHOUT_S = ("student_own_err − connected_probe_err",
                                   "the student's own head against a probe on z_S (s was not given)")

# ---- the estimators' defaults, written once (every signature and config refers to these)
LEVEL = 0.95  # confidence level of every interval
N_BOOTSTRAP = 1000  # paired-bootstrap resamples of every interval
N_PERMUTATIONS = 200  # sign flips of the MMD² permutation test
