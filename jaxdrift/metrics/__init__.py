"""Drift metrics: how an attribution map moved between two checkpoints (docs/metrics.md).

Single-pair functions take two maps [H, W] (a = TL, b = FT), are pure, jittable and
vmappable, and return NaN for invalid maps. `drift` computes all of them for a batch in one
jitted call; `drift_stream` does so over a whole test set, sharded over every device.
"""

from jaxdrift.geometry import check_grid, grid_weights, upsample
from jaxdrift.metrics.drift import (AUC_QS, FLOAT_OUTPUTS, MAP_QUANTITIES, PAIR_METRICS,
                                    DriftParams, concentration_change, displacement, drift,
                                    entropy_change, gini_change, iou, iou_auc, make_params,
                                    pair_metrics, pearson, peak_displacement, soft_iou, spearman,
                                    ssim)
from jaxdrift.metrics.localization import (energy_inside, localize, mask_iou, pointing_chance,
                                          pointing_game)
from jaxdrift.metrics.maps import (centroid, concentration, entropy, gini, is_valid, peak,
                                   threshold, top_k_count)
from jaxdrift.metrics.nulls import (head_null, null_report, permutation_null, perturbation_null,
                                    shuffled_pairing)
from jaxdrift.metrics.order import pair_order_stats, sort_and_rank, sorted_values, top_values
from jaxdrift.metrics.stats import (SELECTIONS, bootstrap_ci, compare_architectures,
                                    compare_methods, concat_tables, describe, make_table,
                                    rank_architectures, ranking_reversals, select, summarize)
from jaxdrift.metrics.streaming import data_mesh, drift_step, drift_stream, pad_batch
