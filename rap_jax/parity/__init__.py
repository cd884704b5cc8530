"""Parity checks of rap_jax against recorded runs of the original (fixtures in ../shared/fixtures).

`train_iteration`: one training iteration (targets, losses, gradients, optimizer steps) of the
original, `train_small_astronaut_coffee.npz`; used by tests/test_train_losses.py,
tests/test_optim.py and scripts/train_parity.py.
"""
