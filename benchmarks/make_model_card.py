"""Export the default model from its training run and write its model card with measured numbers.

    python benchmarks/make_model_card.py --run runs/default_small_v3 --samples 200

Writes dro_sfm/weights/default_small.pt, dro_sfm/weights/README.md, training_curves.png,
error_vs_iterations.png, scores.json (the full scorecard) and regression_scores.json (a small reserved
set that tests/test_default_model.py re-scores). Every number in the card is measured by this script,
except the hand-written status and training history, which come from ``--notes`` (a Markdown file).
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

import torch

from dro_sfm.data.atomic import atomic_write_text
from dro_sfm.train.model_card import (
    error_vs_iterations,
    export_model,
    plot_curves,
    plot_error_vs_iterations,
    read_training_run,
    scores_markdown,
    training_curves,
    write_regression_scores,
)

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "dro_sfm" / "weights"


def real_sample_numbers(model) -> str:
    """Median-scaled AbsRel and pose errors on ../shared 7-Scenes and KITTI tiny, when present."""
    script = Path(__file__).with_name("eval_real_samples.py")
    if not script.exists():
        return "(real-sample evaluation script not available)"
    import subprocess
    import sys

    out = subprocess.run([sys.executable, str(script), "--weights", str(WEIGHTS_DIR / "default_small.pt")],
                         capture_output=True, text=True)
    return out.stdout.strip() or f"(failed: {out.stderr.strip()[-300:]})"


def head_activity_table(model, n: int = 8) -> str:
    """Markdown table of each head's live-unit fraction on ``n`` reserved samples per kind (at 240x320)."""
    from dro_sfm.train.datasets import collate
    from dro_sfm.train.dormant import head_activity
    from dro_sfm.train.scorecard import reserved_dataset

    rows = []
    for kind in ("indoor", "outdoor"):
        ds = reserved_dataset(kind, 240, 320)
        batch = collate([ds[i] for i in range(n)])
        act = head_activity(model.net, batch["target"], list(batch["refs"].unbind(1)), batch["K"].float())
        rows.append((kind, act))
    names = list(rows[0][1])
    lines = ["| kind | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    lines += [f"| {kind} | " + " | ".join(f"{act[name]:.3f}" for name in names) + " |" for kind, act in rows]
    return "\n".join(lines)


def motion_table(n: int, shapes: list[tuple[int, int]]) -> str:
    """How far the reserved samples move in the image, per kind and image size (Markdown)."""
    from dro_sfm.train.scorecard import motion_statistics

    lines = ["| kind | size | translation parallax px: median (p10–p90) | rotation-induced motion px (median) |",
             "|---|---|---|---|"]
    for kind in ("indoor", "outdoor"):
        for h, w in shapes:
            m = motion_statistics(kind, n, h, w)
            lines.append(f"| {kind} | {h}×{w} | {m['parallax_median']:.1f} ({m['parallax_p10']:.1f}–"
                         f"{m['parallax_p90']:.1f}) | {m['rotation_flow_median']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/default_small")
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--curve-samples", type=int, default=40)
    ap.add_argument("--image-shape", type=int, nargs=2, default=(240, 320), help="size of the scored samples")
    ap.add_argument("--process-shape", type=int, nargs=2, default=None,
                    help="the shipped model's processing shape [default: the run's training shape]")
    ap.add_argument("--notes", default=str(Path(__file__).with_name("model_card_notes.md")),
                    help="Markdown inserted after the card's first paragraph (status, training history)")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    run_dir = Path(args.run)
    run = read_training_run(run_dir)
    process = tuple(args.process_shape or (run.config["data"]["height"], run.config["data"]["width"]))
    model = export_model(run, WEIGHTS_DIR / "default_small.pt", process)
    curves = training_curves(run_dir / "tb")
    plot_curves(curves, WEIGHTS_DIR / "training_curves.png")
    t0 = time.perf_counter()
    table, rows = scores_markdown(model, args.samples)
    t_score = time.perf_counter() - t0
    atomic_write_text(WEIGHTS_DIR / "scores.json", json.dumps(rows, indent=1))
    its = error_vs_iterations(model, args.curve_samples, (0, 4, 8, 12, 16, 20, 24))
    plot_error_vs_iterations(its, WEIGHTS_DIR / "error_vs_iterations.png")
    regression = write_regression_scores(model, WEIGHTS_DIR / "regression_scores.json")
    real = real_sample_numbers(model)
    activity = head_activity_table(model)
    motion = motion_table(args.curve_samples, sorted({tuple(process), tuple(args.image_shape)}))
    notes = Path(args.notes).read_text().strip() + "\n\n" if args.notes and Path(args.notes).is_file() else ""
    cfg = run.config
    config_path = f"configs/{cfg['name']}.yaml"
    size_mb = (WEIGHTS_DIR / "default_small.pt").stat().st_size / 2**20
    wall = f"{run.wall_time_s / 3600:.2f} h" if run.wall_time_s else "unknown"
    its_table = "\n".join(
        f"| {r['kind']} | {r['predictor'].split('-')[1]} | {r['abs_rel']:.3f} | {r['abs_rel_median_scaled']:.3f} | "
        f"{r['rot_deg']:.3f} | {r['tdir_deg']:.2f} |" for r in sorted(its, key=lambda r: (r["kind"],
                                                                                          int(r["predictor"][4:]))))
    averaged = (f"exponential moving average of the training weights (decay {cfg['optim']['ema_decay']} per step)"
                if run.averaged else "the training weights of the last step")
    w_pose = cfg["loss"].get("pose_param_weight", 0.0)
    if cfg["loss"].get("pose_param_translation", "absolute") == "relative":
        w_t = cfg["loss"].get("pose_param_translation_weight", 1.0)
        translation = f"{w_t} × translation distance relative to the true step length"
    else:
        translation = "translation distance in metres"
    pose_param = f" + {w_pose} × direct pose term (chordal rotation + {translation})" if w_pose else ""
    card = f"""# dro-sfm default model (`default_small.pt`)

The model `reconstruct`, `predict` and the README's main job use when no `--weights` is given.

{notes}| | |
|---|---|
| architecture | DRO, `small` preset ({sum(p.numel() for p in model.net.parameters()) / 1e6:.2f} M parameters), \
{model.config.stages} stages × {model.config.steps_per_stage} steps |
| training data | synthetic indoor rooms + outdoor streets from dro-sfm's engine, rendered on the fly \
({cfg['data']['height']}×{cfg['data']['width']}, one reference each side); no real images |
| loss | spec supervised loss (inverse-depth L1 + reprojection pose term, γ = 0.85) + \
{cfg['loss']['feature_weight']} × feature-metric contrastive term{pose_param} |
| rotation factor | {model.config.pose_rotation_scale} on the pose heads' rotation outputs (official 0.01) |
| optimiser | Adam lr {cfg['optim']['lr']}, batch {cfg['optim']['batch_size']}, StepLR {cfg['optim']['lr_step']} × \
{cfg['optim']['lr_gamma']}, grad clip {cfg['optim']['grad_clip']} |
| shipped weights | {averaged} |
| steps | {run.step} |
| wall time | {wall} on a 2-core CPU (shared with other work) |
| depth units | metres (depth range {cfg['data']['min_depth']}–{cfg['data']['max_depth']} m) |
| file size | {size_mb:.1f} MB |
| config | `{config_path}`; continue with `dro-sfm train {config_path} --resume` |

## Accuracy on reserved synthetic samples

Mean over {args.samples} three-view samples per kind from reserved scene seeds (≥ 1e9, never drawn in
training), at {args.image_shape[0]}×{args.image_shape[1]}, processed at the model's {process[0]}×{process[1]} \
(its training shape; `predict` and `reconstruct` resize the same way, as the official inference does) with
depth compared at {args.image_shape[0]}×{args.image_shape[1]}; `dro-K` = K total update steps. Rotation and
translation-direction errors are averaged over both references. Scoring took {t_score / 60:.1f} min.

{table}

Baselines: *constant depth* predicts the training median depth everywhere with zero motion (translation
direction undefined); *constant motion* predicts the mean training motion of each reference; *true shape at the
training median* is the true depth map rescaled to the training median depth: perfect structure with one fixed
scale, the best metric AbsRel a model can reach without reading each scene's absolute scale from its images.

## How far the samples move in the image

Median over the valid pixels of each reference view, then over {args.curve_samples} reserved samples per kind.
Translation parallax is the image motion that carries depth and the translation direction: the difference
between projecting with the true (R, t) and with R alone. Stride-8 feature maps see an eighth of it.

{motion}

## Error vs iteration count ({args.curve_samples} samples per kind)

| kind | steps | AbsRel | AbsRel (median-scaled) | rot. err. ° | transl. dir. err. ° |
|---|---|---|---|---|---|
{its_table}

![error vs iterations](error_vs_iterations.png)

## Training curves

![training curves](training_curves.png)

## Real images never seen in training (no target; median-scaled)

{real}

## Live units in the heads

Fraction of positive pre-activations of each head's hidden ReLU layer on 8 reserved samples per kind
(0 = a dead head: it outputs a constant and learns nothing more; see `dro_sfm/train/dormant.py`).

{activity}

## Regression check

`regression_scores.json` holds the scores of {regression['n_samples']} reserved samples; `tests/test_default_model.py`
re-scores them and must agree within the tolerance stated there.
"""
    atomic_write_text(WEIGHTS_DIR / "README.md", card)
    print(card)


if __name__ == "__main__":
    main()
