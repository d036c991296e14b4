"""Figure 7: does the student behave like its teacher? Top-1 agreement, predictive KL and
the student's ECE across epochs for every method, and the reliability diagram of the
last checkpoint of two students (teacher beside student)."""

from _reference import arguments, calibration_table, output, tables

from ijckd_bounds.plotting import plot_fidelity, plot_reliability, save_figure

args = arguments(__doc__)
bounds, _, _ = tables(args.dataset)
figure = plot_fidelity(bounds, dataset=args.dataset)
for path in save_figure(figure, output(args, "fidelity")):
    print(path)
calibration = calibration_table(args.dataset)
for method in ("kd", "ijckd"):
    figure = plot_reliability(calibration, method=method)
    for path in save_figure(figure, output(args, f"reliability_{method}")):
        print(path)
