"""The project's vocabulary: the columns of every results table (the THEORY terms of the
project's mathematical contract, as ``docs/theory.md`` explains them), the term groups,
labels and units reports and figures use, the methods in their order with their colours,
the audit's diagnosis texts, and the estimators' defaults.

Imported by the estimators (``BoundsReport.row()``), by tracking (schema check on write),
by reporting and by plotting (which never import torch), so it depends on nothing.
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
    """``(term, term_lo, term_hi)``: a term's value column and its interval's."""
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

# ---- term groups (how reports and figures show each term)
# proportions of evaluation samples, or sums and differences of them: shown in percent
RATE_TERMS = ("teacher_err", "student_err", "student_own_err", "disagreement", "delta_gamma",
              "joint_err_T", "joint_err_S", "ideal_joint", "teacher_probe_err",
              "student_probe_err", "connected_probe_err", "ijc_lambda", "ijc_gap",
              "pair_disc") + BOUNDS
# feature and logit distances, CKA and the domain discrepancies: each on its own scale
DISTANCE_TERMS = ("feat_msd", "feat_rel", "feat_cka", "logit_msd", "mmd2", "proxy_a_linear",
                  "proxy_a_mlp")
# discrepancy estimates that need n >> d (docs/theory.md: flagged when n_eval < 10 * dim)
DISCREPANCY_TERMS = ("feat_cka", "mmd2", "proxy_a_linear", "proxy_a_mlp")
# student_err - teacher_err, derived by the decomposition figure
TRANSFER_GAP = "transfer_gap"
LABELS[TRANSFER_GAP] = "transfer gap $\\epsilon_S - \\epsilon_T$"
# shown in percent: the rates, the transfer gap, agreement and ECE (shares of samples too)
PERCENT_TERMS = frozenset(RATE_TERMS + (TRANSFER_GAP, "top1_agreement", "teacher_ece",
                                        "student_ece"))

# the unit on a figure's axis
_ERROR_UNIT = "error rate (%)"
UNITS = {
    "teacher_err": _ERROR_UNIT, "student_err": _ERROR_UNIT, "student_own_err": _ERROR_UNIT,
    "joint_err_T": _ERROR_UNIT, "joint_err_S": _ERROR_UNIT, "student_probe_err": _ERROR_UNIT,
    "teacher_probe_err": _ERROR_UNIT, "connected_probe_err": _ERROR_UNIT,
    "disagreement": "rate (%)", "delta_gamma": "rate (%)",
    "ideal_joint": "joint error (%)", "ijc_lambda": "joint error (%)",
    "ijc_gap": "gap (% points)", "pair_disc": "gap (% points)", TRANSFER_GAP: "gap (% points)",
    "feat_msd": "squared distance", "logit_msd": "squared distance",
    "feat_rel": "ratio", "feat_cka": "CKA", "mmd2": "MMD$^2$",
    "proxy_a_linear": "distance (0 to 2)", "proxy_a_mlp": "distance (0 to 2)",
    **{bound: _ERROR_UNIT for bound in BOUNDS},
    "top1_agreement": "agreement (%)", "pred_kl": "nats", "teacher_nll": "nats",
    "student_nll": "nats", "teacher_brier": "Brier score", "student_brier": "Brier score",
    "teacher_ece": "ECE (%)", "student_ece": "ECE (%)",
}

# ---- methods: the trainer's registered objectives (train/objectives.METHODS; a test
# checks that the two agree), in the order every figure and table lists them
DISTILLATION_METHODS = ("ce", "kd", "fitnet", "srrl", "simkd", "ijckd")
CONTROL_METHODS = ("ce_connector",)  # controls, not methods a paper compares
METHOD_ORDER = ("teacher",) + DISTILLATION_METHODS
# Okabe & Ito (2008), "Color universal design": each built-in method owns one colour for
# good, teacher black, plain CE grey
METHOD_COLOURS = {
    "teacher": "#000000",
    "ce": "#8c8c8c",
    "kd": "#e69f00",  # orange
    "fitnet": "#56b4e9",  # sky blue
    "srrl": "#009e73",  # bluish green
    "simkd": "#0072b2",  # blue
    "ijckd": "#d55e00",  # vermillion
}
METHOD_LABELS = {"teacher": "teacher", "ce": "CE", "kd": "KD", "fitnet": "FitNet",
                 "srrl": "SRRL", "simkd": "SimKD", "ijckd": "IJCKD"}

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
COMPANION_KEYS = ("run", "method", "epoch", "checkpoint")
# per_class.csv: one row per run x checkpoint x class, each term with _lo/_hi
PER_CLASS_TERMS = ("student_err", "teacher_err", "disagreement", "top1_agreement")
PER_CLASS_ROW = ("class", "n", *(c for t in PER_CLASS_TERMS for c in interval_columns(t)))
PER_CLASS_COLUMNS = COMPANION_KEYS + PER_CLASS_ROW
# margins.csv: one row per evaluation sample x checkpoint (plus the column "sample"); the
# report's margins (``BoundsReport.margins``) name two of them after their symbols
MARGIN_COLUMNS = COMPANION_KEYS + ("teacher_margin", "feat_dist", "disagree")
MARGIN_TABLE_NAMES = {"gamma": "teacher_margin", "distance": "feat_dist"}
# calibration.csv: one row per checkpoint x model (teacher, student) x confidence bin
CALIBRATION_ROW = ("model", "bin", "bin_lo", "bin_hi", "n", "confidence", "accuracy")
CALIBRATION_COLUMNS = COMPANION_KEYS + ("split",) + CALIBRATION_ROW

# The columns each figure reads, a subset of the table it draws from, so a caller's own
# frame needs only these (plotting/select.py checks them).
PER_CLASS_PLOT_COLUMNS = ("run", "method", "epoch", "class")
MARGIN_PLOT_COLUMNS = ("run", "method", "epoch", "teacher_margin", "feat_dist", "disagree")
CALIBRATION_PLOT_COLUMNS = ("run", "method", "epoch") + CALIBRATION_ROW

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
                                   "the student's own head against a probe on z_S "
                                   "(s was not given)")

# ---- the estimators' defaults, written once (every signature and config refers to these)
LEVEL = 0.95  # confidence level of every interval
N_BOOTSTRAP = 1000  # paired-bootstrap resamples of every interval
N_PERMUTATIONS = 200  # sign flips of the MMD² permutation test
