"""Issue 21, item 1: property test of `roc_auc` over random score arrays with NaNs.

Needs hypothesis (a test extra in pyproject.toml).
"""

import math

import numpy as np
import pytest
import scipy.stats

hypothesis = pytest.importorskip("hypothesis")
import hypothesis.extra.numpy as hnp  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests import test_reliability_numbers  # noqa: E402

_scores = hnp.arrays(np.float32, st.integers(1, 12),
                     elements=st.one_of(st.sampled_from([0.0, 0.25, 0.5, 1.0, np.nan]),
                                        st.floats(-2, 2, width=32)))


@hypothesis.settings(max_examples=60, deadline=None, derandomize=True)
@hypothesis.given(scores=_scores, data=st.data())
def test_roc_auc_random_scores_with_nans_match_mann_whitney(scores, data):
  positive = data.draw(hnp.arrays(bool, scores.shape))
  auc = test_reliability_numbers.padded_auc(scores, positive)
  pos, neg = scores[positive], scores[~positive]
  if not np.all(np.isfinite(scores)) or pos.size == 0 or neg.size == 0:
    assert math.isnan(auc)
    return
  assert 0.0 <= auc <= 1.0
  u = scipy.stats.mannwhitneyu(pos, neg).statistic  # ties count 1/2
  assert auc == pytest.approx(u / (pos.size * neg.size), abs=1e-6)


