"""One training iteration of the original vs ours, from the recorded training fixture.

  python scripts/train_parity.py --fixture ../shared/fixtures/train_small_astronaut_coffee.npz \
      --data ../shared/fixtures/train_data_astronaut_coffee

Builds the batch from the data folder with our input pipeline (checked bit for bit against the
original's network input and GT), converts the small RAP / OCFusion checkpoints beside the
fixture (or takes converted ones), runs our training forward + backward with the original's
injected random draws, and compares targets, losses, gradients (float32 error bound, see
`rap_jax.parity.train_iteration.compare_gradients`) and the two recorded first optimizer steps
(stage 2 finetune, stage 1). Prints ONE line, e.g.

  train_parity: inputs identical, targets identical, losses max rel 2.1e-07 (tol 1e-05), grads
  max rel 0.00053, worst error/bound 0.67 (semantic_head.semantic_final.0.bias; bound ...),
  optimizer steps a, b within 1 ulp (tol 1 ulp; bit-exact 6/11, 27/48 tensors): OK

and exits 0, or 1 when anything is beyond tolerance (the line then ends with FAIL: and what).
Everything lives in rap_jax/parity/train_iteration.py, shared with tests/test_train_losses.py
and tests/test_optim.py.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys

if __name__ == "__main__":  # the repository root on the path when run as a file
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--fixture", required=True, help="train_small_astronaut_coffee.npz")
  p.add_argument("--data", default=None,
                 help="the fixture's training data folder (train_data_astronaut_coffee/); "
                      "without it the batch is taken from the npz")
  p.add_argument("--rap-checkpoint", default=None,
                 help="converted small RAP checkpoint (default: convert rap_small_legacy.pth "
                      "beside the fixture)")
  p.add_argument("--ocfusion-checkpoint", default=None,
                 help="converted small OCFusion checkpoint (default: convert "
                      "ocfusion_small_legacy.pth beside the fixture)")
  p.add_argument("--no-ocfusion", action="store_true", help="skip the OCFusion run")
  p.add_argument("--noise-samples", type=int, default=2,
                 help="perturbed runs that sample the float32 noise of the gradients")
  p.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one)")
  return p.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  from rap_jax.parity import train_iteration  # pylint: disable=import-outside-toplevel
  comparisons = train_iteration.run_all(
      args.fixture, args.data, rap_checkpoint=args.rap_checkpoint,
      ocfusion_checkpoint=args.ocfusion_checkpoint, workdir=args.workdir,
      ocfusion=not args.no_ocfusion, noise_samples=args.noise_samples)
  print(train_iteration.summary_line(comparisons), flush=True)
  return 0 if all(c.ok for c in comparisons) else 1


if __name__ == "__main__":
  sys.exit(main())
