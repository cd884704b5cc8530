"""rap_jax/metrics: host-side (numpy) evaluation.

* `pq`: panoptic quality with panopticapi's semantics (SPEC §8): `pq_compute` over files,
  `PQAccumulator` in memory, and ``python -m rap_jax.metrics.pq``; PNG reading, the report and
  the command line are in `pq_io` (re-exported by `pq`).
* `coco_ap`: box and mask AP through pycocotools' COCOeval.
* `relation_accuracy`: the relation-order diagnostic of SPEC §5.5.

Names are imported lazily, so that ``python -m rap_jax.metrics.pq`` runs the module only once.
"""
import importlib

_EXPORTS = {
    "pq_compute": "pq", "PQAccumulator": "pq", "PQInputError": "pq", "PQStat": "pq",
    "format_table": "pq", "read_panoptic_png": "pq", "results_json": "pq",
    "coco_ap": "coco_ap", "detections_to_coco": "coco_ap", "STAT_NAMES": "coco_ap",
    "RelationAccuracy": "relation_accuracy", "match_instances": "relation_accuracy",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
  if name in _EXPORTS:
    return getattr(importlib.import_module(f"rap_jax.metrics.{_EXPORTS[name]}"), name)
  raise AttributeError(f"module 'rap_jax.metrics' has no attribute {name!r}")
