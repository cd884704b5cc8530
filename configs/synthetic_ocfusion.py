"""configs/synthetic_rap.py with the OCFusion pairwise occlusion head in stage 2 instead of RAP's
relation head (the comparison of the original README): same data, model, stage-1 schedule and
validation split; evaluated with the OCFusion and the heuristic fusion on the same detections.

  python -m rap_jax.main --config configs/synthetic_ocfusion.py --workdir runs/synthetic_ocfusion
"""
from configs import synthetic_rap


def get_config():
  return synthetic_rap.get_config(kind="ocfusion")
