"""Does the demo's drift survive a witness that never reads the gradient? Score-CAM vs the two
gradient methods on the demo's phantoms, per architecture.

    python benchmarks/gradfree_demo.py [--root /work/demo_runs] [--archs ...] [--images 0]
        [--top_k 0] [--chunk 16] [--batch 16]

For each workdir ROOT/<arch> with a TL and an FT checkpoint: the test split (batched as the
drift stage batches it), `jd.cam.compute_pair` with LayerCAM, Grad-CAM++ (eq19) and
Score-CAM (logit) at the canonical layer, and, with the drift stage's placement (the
network's cell centres, `jd.models.cam_grid`) and pointing tolerance (15 px at 224):

* the FT checkpoint's pointing game per method over its true positives on the lesion
  classes (`jd.metrics.localize`);
* the TL-vs-FT drift table per method (`jd.metrics.drift`) over the images both checkpoints
  classify correctly (the study's selection): mean IoU (q = 0.2), displacement, Pearson,
  concentration change, and the ranking of the architectures by IoU (lowest IoU = most drift).

--images limits the test images (0: all); --top_k scores only the k channels of largest
spatial spread per image with Score-CAM (0: every channel). Workdirs without both
checkpoints are reported and skipped. The last line is JSON.
"""

import argparse
import functools
import json
import os
import pathlib
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import jaxdrift as jd  # noqa: E402

METHODS = ("layercam", "gradcam++", "scorecam")
TOLERANCE = 15 / 224  # the drift stage's pointing tolerance, as a fraction of the size
DRIFT_COLUMNS = ("iou", "displacement", "pearson", "concentration_change")


def placement(model, arch, layer, size):
  """The drift stage's placement: network cell centres for a layer on the canonical grid."""
  shapes = jd.models.layer_shapes(model, (1, size, size, 3))
  canonical = shapes[jd.models.default_cam_layer(arch)].shape[1:3]
  on_grid = shapes[layer].shape[1:3] == canonical
  return dict(resolution=(size, size), grid=jd.models.cam_grid(arch, size) if on_grid else None)


def analyse(workdir, args):
  model, tl, config = jd.train.load_checkpoint(workdir, "tl")
  _, ft, _ = jd.train.load_checkpoint(workdir, "ft")
  arch, size = config["arch"], config["input_size"]
  layer = jd.models.default_cam_layer(config["model_arch"])
  place = placement(model, config["model_arch"], layer, size)
  source = jd.data.load(config["data"], "test", data_dir=config.get("data_dir"),
                        **config.get("data_options", {}))
  mesh = jd.data.default_mesh()
  options = {"top_k": args.top_k} if args.top_k else {}
  cost = jd.cam.cost(model, "scorecam", layer, image_shape=(size, size, 3), **options)
  print(f"{arch}: {config['model_arch']} at {size} px, layer {layer}, Score-CAM "
        f"{cost['full_passes']} forward passes per image and checkpoint", flush=True)
  rows = {m: {k: [] for k in DRIFT_COLUMNS + ("valid", "both", "ft_ok", "ft_hit")}
          for m in METHODS}
  seen, start = 0, time.perf_counter()
  preprocess = functools.partial(jd.models.preprocess, config["model_arch"])
  for batch in jd.data.batches(source, preprocess=preprocess, batch_size=args.batch,
                               train=False, image_size=size, mesh=mesh):
    keep = np.array(batch["mask"], bool)
    if args.images:
      keep &= np.cumsum(keep) + seen <= args.images
    if not keep.any():
      break
    seen += int(keep.sum())
    labels = np.asarray(batch["label"])
    pair = jd.cam.compute_pair(model, tl, ft, batch["image"], batch["label"], methods=METHODS,
                               layer=layer, chunk=args.chunk, **options)
    tl_pred, ft_pred = np.asarray(pair["layercam"].logits).argmax(-1)
    for method, res in pair.items():
      d = jd.metrics.drift(res.maps[0], res.maps[1], **place)
      loc = jd.metrics.localize(res.maps[1], batch["lesion_mask"], **place,
                                tolerance=TOLERANCE * size)
      r = rows[method]
      for k in DRIFT_COLUMNS:
        r[k].append(np.asarray(d[k])[keep])
      r["valid"].append(np.asarray(d["valid"])[keep])
      r["both"].append(((tl_pred == labels) & (ft_pred == labels))[keep])
      r["ft_ok"].append((ft_pred == labels)[keep])
      r["ft_hit"].append(np.asarray(loc["pointing_game"])[keep])
  seconds = time.perf_counter() - start
  out = {"arch": arch, "model_arch": config["model_arch"], "layer": layer, "images": seen,
         "seconds": seconds, "scorecam_passes_per_image": cost["full_passes"], "methods": {}}
  for method in METHODS:
    r = {k: np.concatenate(v) for k, v in rows[method].items()}
    sel = r["both"] & r["valid"]
    hits = r["ft_hit"][r["ft_ok"] & np.isfinite(r["ft_hit"])]
    out["methods"][method] = {
        "n_selected": int(sel.sum()), "n_invalid": int((r["both"] & ~r["valid"]).sum()),
        **{k: float(np.mean(r[k][sel])) if sel.any() else float("nan") for k in DRIFT_COLUMNS},
        "ft_pointing_game": float(hits.mean()) if hits.size else float("nan"),
        "ft_pointing_n": int(hits.size)}
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--root", default="/work/demo_runs")
  parser.add_argument("--archs", default=",".join(jd.models.ARCHS))
  parser.add_argument("--images", type=int, default=0, help="test images per arch (0: all)")
  parser.add_argument("--top_k", type=int, default=0, help="Score-CAM channels (0: all)")
  parser.add_argument("--chunk", type=int, default=16)
  parser.add_argument("--batch", type=int, default=16)
  args = parser.parse_args(argv)
  print(f"jax {jax.__version__}, {jax.device_count()} x {jax.devices()[0].platform}",
        flush=True)
  results, skipped = [], {}
  for arch in args.archs.split(","):
    workdir = pathlib.Path(args.root) / arch
    try:
      results.append(analyse(workdir, args))
    except Exception as err:  # a run still training, or absent: say so and go on
      skipped[arch] = f"{type(err).__name__}: {str(err)[:200]}"
      print(f"{arch}: skipped ({skipped[arch]})", flush=True)
  print("\n| arch | method | FT pointing game (n) | IoU | displacement | Pearson | "
        "concentration change | pairs (invalid) |")
  print("|---|---|---|---|---|---|---|---|")
  for res in results:
    for method, m in res["methods"].items():
      print(f"| {res['arch']} | {method} | {m['ft_pointing_game']:.3f} ({m['ft_pointing_n']}) "
            f"| {m['iou']:.3f} | {m['displacement']:.4f} | {m['pearson']:.3f} | "
            f"{m['concentration_change']:+.3f} | {m['n_selected']} ({m['n_invalid']}) |")
  ranking = {method: [r["arch"] for r in sorted(results, key=lambda r: r["methods"][method]
                                                ["iou"])] for method in METHODS}
  for method, order in ranking.items():
    print(f"most drift (lowest IoU) first, {method}: {' > '.join(order)}")
  same = len({tuple(v) for v in ranking.values()}) == 1
  print(f"ranking the same across methods: {same}")
  print(json.dumps({"results": results, "ranking_by_iou": ranking, "same_ranking": same,
                    "skipped": skipped}))


if __name__ == "__main__":
  main()
